"""CG in the capacitance space: k×D unknowns instead of k×n (``docs/maths.md``).

For ``M = λI + C ⊗ UᵀU`` with D < n (general: U = A, C = [1]; Potts: U = Â, C = J − I), a
correction of x from its residual r solves the capacitance system

    S Z = C (r Uᵀ),   S Z = λZ + C Z G,   G = UUᵀ,

and moves x by ``(r − Z U)/λ``. S's eigenvalues are among M's (λ + cᵢμⱼ for the
eigenvalues cᵢ of C and μⱼ of G), so CG on it takes as many iterations as CG on M, each one
(k, D)@(D, D) product instead of two (k, n)@(n, D)-sized ones: 2n/D times fewer flops (3.3
for Potts at D = 1024, 26 at D = 128, P = 41²). For Potts the Gram G is the one the
definiteness proof computes anyway.

The new residual is ``r − M(r − ZU)/λ = −r_Z U/λ`` with ``r_Z = C(rUᵀ) − SZ``, so
``‖r_x‖ ≤ ‖r_Z‖·‖U‖₂/λ``: given an upper bound β ≥ ‖U‖₂², CG on S aims at the tolerance
times λ/√β (Potts: β = λ, proved; general: the largest absolute row sum of G). The outer
loop checks the true residual ``b − Mx`` as for any CG, so a bound spoiled by rounding
costs a restart, never accuracy.

The signed model ``λI + UᵀSU`` has no such system here: its CG iterates on the unknowns.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any


class CapacitanceSystem:
    """The capacitance system ``S = λI + C ⊗ G`` of one operator (a batch of them).

    Parameters
    ----------
    xp : array namespace
    U : array (..., D, n)
        The embeddings in the working dtype, D < n.
    lam : array of the batch shape
    gram : array (..., D, D)
        ``UUᵀ`` in the working dtype; held, never modified.
    couple : callable
        The coupling C on rows (..., k, m).
    norm_bound : array of the batch shape
        An upper bound on ``‖U‖₂²``, > 0.
    """

    def __init__(
        self,
        xp: Any,
        U: Any,
        lam: Any,
        gram: Any,
        couple: Callable[[Any], Any],
        norm_bound: Any,
    ):
        self.xp = xp
        self.U = U
        self.lam = lam
        self.gram = gram
        self.couple = couple
        self.norm_bound = norm_bound
        self._lam_rows = lam[..., None, None]

    def matvec(self, Z: Any) -> Any:
        """``S Z = λZ + C(Z G)`` for Z of shape (..., k, D)."""
        return self._lam_rows * Z + self.couple(Z @ self.gram)

    def system_at(self, index: tuple[int, ...]) -> CapacitanceSystem:
        """System ``index`` of the batch, sharing the memory."""
        part = copy.copy(self)
        part.U, part.lam, part.gram = self.U[index], self.lam[index], self.gram[index]
        part.norm_bound = self.norm_bound[index]
        part._lam_rows = part.lam[..., None, None]
        return part

    def project(self, r: Any) -> Any:
        """The right-hand side ``C(r Uᵀ)`` of the correction of residual r (..., k, n)."""
        return self.couple(r @ self.xp.matrix_transpose(self.U))

    def tolerance_squared(self, target: Any) -> Any:
        """The squared target on ``‖r_Z‖`` that bounds ``‖r_x‖`` by target: target²λ²/β."""
        return target * target * self.lam * (self.lam / self.norm_bound)

    def lift(self, r: Any, Z: Any, active: Any) -> Any:
        """The correction ``(r − Z U)/λ`` of the active systems, zero for the others."""
        xp = self.xp
        step = (r - Z @ self.U) / self._lam_rows
        return xp.where(active[..., None, None], step, xp.zeros_like(step))


def row_sum_bound(xp: Any, gram: Any) -> Any:
    """``max_i Σ_j |G_ij|`` per system: an upper bound on ``‖G‖₂ = ‖U‖₂²`` (Gershgorin)."""
    bound = xp.max(xp.sum(xp.abs(gram), axis=-1), axis=-1)
    return xp.where(bound > 0, bound, xp.ones_like(bound))
