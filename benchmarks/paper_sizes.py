"""The paper's problem sizes, written once for every benchmark.

The paper (Chandra, Usunier, Kokkinos, ICCV 2017, Sec. 3.4) times its G-CRF on the output of
a stride-8 network for 321×321 images: 41×41 pixels and the 21 PASCAL VOC labels, with the
general model at D = 128 and the Potts model at D = 128 (its Table 1), and Potts at D = 1024
as the large-D case this library must also handle.
"""

from __future__ import annotations

#: pixels per side of the network output the paper's G-CRF runs on
PAPER_SIDE = 41
#: P, the pixels of one paper-size image
PAPER_PIXELS = PAPER_SIDE * PAPER_SIDE
#: L, the PASCAL VOC labels
PAPER_LABELS = 21
#: (model, D) of the paper-size configurations every speed suite measures
PAPER_MODELS = (("general", 128), ("potts", 128), ("potts", 1024))
