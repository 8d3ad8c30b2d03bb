"""The report returned with a solution: :class:`SolveInfo`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import array_api_compat

from .host_reads import to_host


@dataclass(frozen=True)
class SolveInfo:
    """How a batch of G-CRF systems was solved.

    Every array field has the batch shape ``(...,)`` and lives in the inputs' array library.

    Attributes
    ----------
    method : str
        ``"cg"`` (conjugate gradient, the paper's Algorithm 1) or ``"direct"`` (exact
        low-rank solve with iterative refinement); ``"passes"`` for
        :func:`~lowrank_gcrf.refine`'s mean-field passes.
    iterations : array of int
        Per system: CG iterations, or exact low-rank solves for ``"direct"`` (1 for the
        solve itself, plus one per iterative-refinement step); the passes for ``"passes"``.
    residual : array of float
        True relative residual ``‖b − Mx‖ / ‖b‖`` per system, recomputed from the returned x
        by a matvec (0 where b = 0); for ``"passes"``, that of the last resolvent solve, or
        NaN where the passes solve no linear system (the lattice's).
    converged : array of bool
        Whether ``‖b − Mx‖ ≤ max(rtol·‖b‖, atol)`` for that system (True for the passes,
        which run a fixed number of steps).
    factorization : Factorization or None
        The solver state the solve used (None for a CG solve that needed none): pass it
        back as ``factorization=`` to reuse it, e.g. in the backward pass.
    """

    method: str
    iterations: Any
    residual: Any
    converged: Any
    factorization: Any = field(default=None, repr=False, compare=False)

    @property
    def all_converged(self) -> bool:
        """True when every system of the batch converged."""
        xp = array_api_compat.array_namespace(self.converged)
        return bool(to_host(xp, xp.all(self.converged)))
