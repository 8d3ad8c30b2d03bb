"""The implementations compared by the speed benchmark, in table order.

* ``ours-auto``, ``ours-direct``, ``ours-cg``: :mod:`lowrank_gcrf`'s operators; the
  backward pass reuses the forward's operator (and so its cached factorization).
* ``scipy-cg``: ``scipy.sparse.linalg.cg`` on a ``LinearOperator`` with the same matvec,
  one system at a time; backward = a second CG solve plus the same gradient formula.
* ``dense-cholesky``: the N×N matrix formed and factored (``scipy.linalg.cho_factor``),
  only while N ≤ :data:`~benchmarks.speed.array_contenders.MAX_DENSE_UNKNOWNS`.
* ``linear-operator``: GPyTorch's ``linear_operator`` Woodbury solve of
  ``LowRankRootAddedDiagLinearOperator`` with torch autograd (general model only; see
  :data:`~benchmarks.speed.torch_contenders.LINEAR_OPERATOR_POTTS`).
* ``torch-unrolled-cg``: CG written in torch for as many iterations as ``scipy-cg`` needed,
  differentiated by autograd through every iteration — the memory cost of not having an
  analytic backward.

The interface they implement is :class:`~benchmarks.speed.contender_interface.Contender`.
"""

from __future__ import annotations

from .array_contenders import DenseCholesky, Ours, ScipyCG
from .contender_interface import Contender
from .torch_contenders import LinearOperatorWoodbury, TorchUnrolledCG


def all_contenders() -> list[Contender]:
    """Every contender, ``scipy-cg`` before ``torch-unrolled-cg`` (which needs its count)."""
    return [
        Ours("auto"),
        Ours("direct"),
        Ours("cg"),
        ScipyCG(),
        DenseCholesky(),
        LinearOperatorWoodbury(),
        TorchUnrolledCG(),
    ]


#: the contenders' names, in table order
CONTENDER_NAMES = tuple(c.name for c in all_contenders())
