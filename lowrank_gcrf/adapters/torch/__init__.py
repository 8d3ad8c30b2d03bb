"""PyTorch adapter: the dense G-CRF solve as an autograd function and ``nn.Module`` layers.

Split by role: :mod:`~lowrank_gcrf.adapters.torch.autograd` (the core solve as an autograd
function), :mod:`~lowrank_gcrf.adapters.torch.functional` (the differentiable solves and
``pd_scaled``), :mod:`~lowrank_gcrf.adapters.torch.modules` (``DenseGCRF``),
:mod:`~lowrank_gcrf.adapters.torch.heads` (``GCRFHead``) and
:mod:`~lowrank_gcrf.adapters.torch.image_refine` (``refine``). Everything a layer decides
that is not a tensor operation is in :mod:`lowrank_gcrf.adapters.layer_plan`, and the one
door to the core is :mod:`lowrank_gcrf.adapters.bridge`.

The adapter holds no maths of its own, and core errors propagate unchanged.
"""

from lowrank_gcrf.adapters.torch.functional import (
    gcrf_solve,
    pd_scaled,
    potts_solve,
    signed_solve,
    solve,
    solve_potts,
    solve_signed,
)
from lowrank_gcrf.adapters.torch.heads import GCRFHead
from lowrank_gcrf.adapters.torch.image_refine import refine
from lowrank_gcrf.adapters.torch.modules import DenseGCRF

__all__ = [
    "DenseGCRF",
    "GCRFHead",
    "gcrf_solve",
    "pd_scaled",
    "potts_solve",
    "refine",
    "signed_solve",
    "solve",
    "solve_potts",
    "solve_signed",
]
