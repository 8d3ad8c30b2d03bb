"""The solver state a solve of an operator hands to later solves of it: :class:`Factorization`.

Named for what a direct solve holds; a CG solve's holds a proof of definiteness or the
capacitance system it iterated in instead, or nothing at all (its docstring lists the cases).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Factorization:
    """The solver state a solve of one operator hands to later solves of it (its backward
    pass above all): a value, never a cache.

    It holds what that solve built, which is a factorization only for a direct solve:

    * direct: the exact inverse ``M⁻¹`` (``solver``), from Cholesky factors of small
      capacitance matrices; :meth:`GCRFOperator.factor` returns the same;
    * CG: the proof that M is positive definite where the model needs one (Potts:
      ``certificate``; signed with Γ: ``solver``, since the factor that proves it also
      solves), and the capacitance system CG iterates in where it pays (``capacitance``).
      A general-model CG solve that needs neither reports None instead.

    Attributes
    ----------
    solver : object or None
        Applies ``M⁻¹`` (``solver.apply(v)``); None when the solve built no exact inverse.
    certificate : object or None
        How M was proved positive definite (Potts: ``"frobenius"`` or ``"cholesky"``), so
        that later CG solves with this factorization need not prove it again.
    capacitance : object or None
        Where a CG solve iterates when not on the unknowns themselves: the k×D capacitance
        system built on the Gram (:class:`~lowrank_gcrf.capacitance.CapacitanceSystem`),
        for Potts with D < P (on the proof's Gram) and the general model with D ≤ 128.
    """

    owner: object = field(repr=False)
    solver: Any = field(default=None, repr=False)
    certificate: Any = field(default=None, repr=False)
    capacitance: Any = field(default=None, repr=False)

    @property
    def complete(self) -> bool:
        """Whether it can apply ``M⁻¹`` (a direct solve needs that)."""
        return self.solver is not None
