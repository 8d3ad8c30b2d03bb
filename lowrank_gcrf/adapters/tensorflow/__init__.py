"""TensorFlow adapter: the dense G-CRF solve as a custom-gradient op and Keras 3 layers.

Split by role:

* :mod:`~lowrank_gcrf.adapters.tensorflow.op`: the core solve as a custom-gradient op
  (DLPack, eager and graph modes, XLA);
* :mod:`~lowrank_gcrf.adapters.tensorflow.functional`: the differentiable solves and the
  layers' scalings of the embeddings, ``strength_scaled`` and ``pd_scaled``;
* :mod:`~lowrank_gcrf.adapters.tensorflow.layers`: ``DenseGCRF``, with its shape operations
  in :mod:`~lowrank_gcrf.adapters.tensorflow.layout_ops`;
* :mod:`~lowrank_gcrf.adapters.tensorflow.heads`: ``GCRFHead``;
* :mod:`~lowrank_gcrf.adapters.tensorflow.image_refine`: ``refine``.

Everything a layer decides that is not a tensor operation is in
:mod:`lowrank_gcrf.adapters.layer_plan`, :mod:`~lowrank_gcrf.adapters.layer_shapes` and
:mod:`~lowrank_gcrf.adapters.head_plan`, and the one door to the core is
:mod:`lowrank_gcrf.adapters.bridge`.

Importing this module registers the Keras layers (package ``lowrank_gcrf``), which loading a
``.keras`` file that holds them needs.

``gcrf_solve``, ``potts_solve`` and ``signed_solve``, the names of version 0.1, stay
importable as aliases of :func:`solve`, :func:`solve_potts` and :func:`solve_signed`.
"""

from lowrank_gcrf.adapters.tensorflow.functional import (
    pd_scaled,
    solve,
    solve_potts,
    solve_signed,
    strength_scaled,
)
from lowrank_gcrf.adapters.tensorflow.heads import GCRFHead
from lowrank_gcrf.adapters.tensorflow.image_refine import refine
from lowrank_gcrf.adapters.tensorflow.layers import DenseGCRF
from lowrank_gcrf.adapters.tensorflow.op import XLAUnsupportedError

# The names of version 0.1.
gcrf_solve, potts_solve, signed_solve = solve, solve_potts, solve_signed

__all__ = [
    "DenseGCRF",
    "GCRFHead",
    "XLAUnsupportedError",
    "pd_scaled",
    "refine",
    "solve",
    "solve_potts",
    "solve_signed",
    "strength_scaled",
]
