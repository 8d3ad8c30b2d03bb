"""Residual correction: the outer loop shared by CG restarts and direct-solve refinement.

Both methods repeat ``x ← x + c(b − Mx)`` on the *true* residual, evaluated by matvec:

* direct: c is the exact low-rank solve, so this is iterative refinement, recovering the
  digits Woodbury's subtraction loses (``docs/maths.md#accuracy``);
* cg: c is a CG sweep; restarting from the true residual closes the gap that finite
  precision opens between CG's recurrence residual and ``b − Mx``.

The loop stops when every system meets its tolerance, when the budget is spent, or when no
unconverged system's residual halved since the previous correction (the working precision
is exhausted: more steps would not help).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from array_api_compat import device

from .cg import inner
from .host_reads import to_host

#: ``correct(x, r, rr, active, budget, first) -> (x, steps)``: improve the active systems.
Correction = Callable[[Any, Any, Any, Any, int, bool], tuple[Any, Any]]


def residual_correction(
    xp: Any,
    matvec: Callable[[Any], Any],
    b: Any,
    x: Any,
    tol: Any,
    budget: int,
    correct: Correction,
) -> tuple[Any, Any, Any]:
    """Correct ``x`` until ``‖b − Mx‖ ≤ tol`` per system, or no further progress.

    Parameters
    ----------
    b : array of shape ``batch + (k, n)``
    x : array shaped like b, or None for zero
    tol : array of the batch shape
        Absolute residual target per system.
    budget : int
        Total steps (CG iterations or refinement steps) per system.
    correct : callable
        ``(x, r, rr, active, remaining_budget, first) -> (x, steps)``; ``first`` tells
        the first correction from later ones (restarts, refinement steps).

    Returns
    -------
    x : the final iterate
    iterations : int array of the batch shape, steps each system took
    rr : ``‖b − Mx‖²`` of the returned x, per system
    """
    tol2 = tol * tol
    iterations = xp.zeros(tol.shape, dtype=xp.int64, device=device(b))
    used = 0
    previous = None
    # From x = 0 the residual is b itself: no matvec.
    r = b if x is None else b - matvec(x)
    x = xp.zeros_like(b) if x is None else x
    while True:
        if previous is not None:
            r = b - matvec(x)
        rr = inner(xp, r, r)
        active = rr > tol2
        if used >= budget or not bool(to_host(xp, xp.any(active))):
            break
        if previous is not None:
            progress = xp.any(active & (rr < 0.25 * previous))
            if not bool(to_host(xp, progress)):
                break
        x, steps = correct(x, r, rr, active, budget - used, previous is None)
        iterations = iterations + steps
        used += int(to_host(xp, xp.max(steps)))
        previous = rr
    return x, iterations, rr
