"""PyTorch adapter: the dense G-CRF solve as an autograd function and ``nn.Module`` layers.

Split by role:

* :mod:`~lowrank_gcrf.adapters.torch.autograd`: the core solve as an autograd function;
* :mod:`~lowrank_gcrf.adapters.torch.functional`: the differentiable solves and the
  layers' scalings of the embeddings, ``strength_scaled`` and ``pd_scaled``;
* :mod:`~lowrank_gcrf.adapters.torch.modules`: ``DenseGCRF``;
* :mod:`~lowrank_gcrf.adapters.torch.heads`: ``GCRFHead``;
* :mod:`~lowrank_gcrf.adapters.torch.traceable_solve`: the solve in PyTorch operations only,
  that exporters trace, and :mod:`~lowrank_gcrf.adapters.torch.custom_op`: the core's exact
  solve as the ``torch.library`` custom op ``lowrank_gcrf::solve`` (``exact_solve``);
* :mod:`~lowrank_gcrf.adapters.torch.image_refine`: ``refine``.

Everything a layer decides that is not a tensor operation is in
:mod:`lowrank_gcrf.adapters.layer_plan`, :mod:`~lowrank_gcrf.adapters.layer_shapes` and
:mod:`~lowrank_gcrf.adapters.head_plan`, and the one door to the core is
:mod:`lowrank_gcrf.adapters.bridge`.

The adapter holds no maths of its own, and core errors propagate unchanged.

``gcrf_solve``, ``potts_solve`` and ``signed_solve``, the names of version 0.1, stay
importable as aliases of :func:`solve`, :func:`solve_potts` and :func:`solve_signed`.
"""

from lowrank_gcrf.adapters.torch.custom_op import exact_solve
from lowrank_gcrf.adapters.torch.functional import (
    pd_scaled,
    solve,
    solve_potts,
    solve_signed,
    strength_scaled,
)
from lowrank_gcrf.adapters.torch.heads import GCRFHead
from lowrank_gcrf.adapters.torch.image_refine import refine
from lowrank_gcrf.adapters.torch.modules import DenseGCRF

# The names of version 0.1.
gcrf_solve, potts_solve, signed_solve = solve, solve_potts, solve_signed

__all__ = [
    "DenseGCRF",
    "GCRFHead",
    "exact_solve",
    "pd_scaled",
    "refine",
    "solve",
    "solve_potts",
    "solve_signed",
    "strength_scaled",
]
