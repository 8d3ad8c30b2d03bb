"""TensorFlow adapter: the dense G-CRF solve as a custom-gradient op and Keras 3 layers.

Split by role: :mod:`~lowrank_gcrf.adapters.tensorflow.op` (the core solve as a
custom-gradient op: DLPack, eager and graph modes, XLA), :mod:`~lowrank_gcrf.adapters.
tensorflow.functional` (the differentiable solves and ``pd_scaled``),
:mod:`~lowrank_gcrf.adapters.tensorflow.layers` (``DenseGCRF``) with its shape operations in
:mod:`~lowrank_gcrf.adapters.tensorflow.layout_ops`, :mod:`~lowrank_gcrf.adapters.
tensorflow.heads` (``GCRFHead``) and :mod:`~lowrank_gcrf.adapters.tensorflow.image_refine`
(``refine``). Everything a layer decides that is not a tensor operation is in
:mod:`lowrank_gcrf.adapters.layer_plan`, and the one door to the core is
:mod:`lowrank_gcrf.adapters.bridge`.

Importing this module registers the Keras layers (package ``lowrank_gcrf``), which loading a
``.keras`` file that holds them needs.
"""

from lowrank_gcrf.adapters.tensorflow.functional import (
    gcrf_solve,
    pd_scaled,
    potts_solve,
    signed_solve,
    solve,
    solve_potts,
    solve_signed,
)
from lowrank_gcrf.adapters.tensorflow.heads import GCRFHead
from lowrank_gcrf.adapters.tensorflow.image_refine import refine
from lowrank_gcrf.adapters.tensorflow.layers import DenseGCRF
from lowrank_gcrf.adapters.tensorflow.op import XLAUnsupportedError

__all__ = [
    "DenseGCRF",
    "GCRFHead",
    "XLAUnsupportedError",
    "gcrf_solve",
    "pd_scaled",
    "potts_solve",
    "refine",
    "signed_solve",
    "solve",
    "solve_potts",
    "solve_signed",
]
