"""The solve driver: the outer loop that solves ``M x = b`` for an operator, by CG or directly.

:meth:`~lowrank_gcrf.operators.GCRFOperator.solve` and
:meth:`~lowrank_gcrf.operators.GCRFOperator.vjp` check their inputs and lay them out in rows
(..., k, n) in the compute dtype; :func:`solve_rows` then picks the method and its budget
(:mod:`lowrank_gcrf.method`), prepares what the method needs (the factorization, the proof
of definiteness, the capacitance system), scales the right-hand sides to unit size and runs
:func:`~lowrank_gcrf.refinement.residual_correction` with one of two corrections:

* ``"cg"``: a CG sweep (Algorithm 1, :mod:`lowrank_gcrf.cg`) on the residual system, on the
  unknowns or on the capacitance system (:mod:`lowrank_gcrf.capacitance`);
* ``"direct"``: the exact low-rank solve ``M⁻¹ r``, i.e. iterative refinement.

:func:`report_failure` applies the ``on_failure`` policy to systems left above tolerance.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from .cg import cg_sweep, cg_sweeps_in_turn, inner, power_of_two_scale
from .dtypes import dtype_name
from .errors import ConvergenceError, ConvergenceWarning
from .factorization import Factorization
from .host_reads import to_host
from .info import SolveInfo
from .method import choose_method, default_maxiter
from .options import SolverOptions
from .refinement import Correction, residual_correction
from .validation import is_numpy

if TYPE_CHECKING:
    from .operators import GCRFOperator

# A GPU should not be synchronised with the host at every CG step.
_DEVICE_CHECK_EVERY = 8


def solve_rows(
    op: GCRFOperator,
    b: Any,
    x0: Any,
    options: SolverOptions,
    factorization: Factorization | None,
) -> tuple[Any, Any, SolveInfo]:
    """Solve ``M x = b`` on unit-scaled right-hand sides; ``(x / scale, scale, info)``.

    The power-of-two scaling keeps ``‖b‖²`` representable (a float32 b of 1e20 would
    square to inf and a float32 b of 1e-25 to 0), exactly.

    Parameters
    ----------
    op : GCRFOperator
    b : array (..., k, n)
        Checked right-hand sides in the row layout and ``op``'s compute dtype.
    x0 : array shaped like b, or None
    options : SolverOptions
    factorization : Factorization or None
        ``op``'s own (checked); replaced here by what the method needs where it holds
        less (the exact inverse for ``"direct"``).
    """
    xp = op.xp
    method = choose_method(options.method, op)
    maxiter = default_maxiter(method, op) if options.maxiter is None else options.maxiter
    if method == "direct" and not (factorization and factorization.complete):
        factorization = op.factor()
    elif factorization is None:
        factorization = op._cg_factorization()
    scale = power_of_two_scale(xp, b)
    b = b / scale[..., None, None]
    x0 = None if x0 is None else x0 / scale[..., None, None]
    bnorm = xp.sqrt(inner(xp, b, b))
    tol = xp.maximum(options.rtol * bnorm, options.atol / scale)
    x, iterations, rr = residual_correction(
        xp, op.matvec, b, x0, tol, maxiter, _correction(op, method, tol, factorization)
    )
    rnorm = xp.sqrt(rr)
    residual = xp.where(bnorm > 0, rnorm / xp.where(bnorm > 0, bnorm, 1.0), rnorm * scale)
    info = SolveInfo(
        method=method,
        # asarray: NumPy reduces unbatched results to scalars, which are not arrays.
        iterations=xp.asarray(iterations),
        residual=xp.asarray(residual),
        converged=xp.asarray(rnorm <= tol),
        factorization=factorization,
    )
    return x, scale, info


def _correction(
    op: GCRFOperator, method: str, tol: Any, factorization: Factorization | None
) -> Correction:
    """The step of :func:`~lowrank_gcrf.refinement.residual_correction` for ``method``.

    ``"cg"``: a CG sweep on the residual system. ``"direct"``: the exact low-rank solve
    ``M⁻¹ r`` — the first step from x = 0 is the Woodbury solve itself, later ones are
    iterative refinement (Woodbury is subtractive and loses about log10(κ) digits).
    """
    xp = op.xp
    if method == "cg":
        capacitance = factorization.capacitance if factorization is not None else None
        space = op if capacitance is None else capacitance
        sweep = _cg_sweep(op, space, tol)

        def cg_step(x: Any, r: Any, rr: Any, active: Any, budget: int, first: bool) -> Any:
            # A restart follows a sweep whose recurrence met tol while the true residual
            # did not (finite precision): aim it below tol so that it lands under it.
            target = tol if first else 0.5 * tol
            if capacitance is None:
                return sweep(x, r, rr, active, target * target, budget)
            # Z = 0 already meets the target where r has no part in U's row space (U = 0
            # among others), and CG would break down on that zero right-hand side.
            rhs = capacitance.project(r)
            rr_z = inner(xp, rhs, rhs)
            tol2_z = capacitance.tolerance_squared(target)
            z, steps = sweep(
                xp.zeros_like(rhs), rhs, rr_z, active & (rr_z > tol2_z), tol2_z, budget
            )
            return x + capacitance.lift(r, z, active), steps

        return cg_step
    solver = factorization.solver

    def direct_step(x: Any, r: Any, rr: Any, active: Any, budget: int, first: bool) -> Any:
        step = xp.where(active[..., None, None], solver.apply(r), xp.zeros_like(r))
        return x + step, xp.astype(active, xp.int64)

    return direct_step


def _cg_sweep(op: GCRFOperator, space: Any, tol: Any) -> Callable[..., tuple[Any, Any]]:
    """``sweep(x, r, rr, active, tol2, budget)``: one CG sweep on ``space`` (the operator or
    a capacitance system), a NumPy batch one system after another."""
    xp = op.xp
    if is_numpy(xp) and tol.shape == op.batch_shape and tol.size > 1:
        systems = [space.system_at(index).matvec for index in np.ndindex(tol.shape)]

        def in_turn(x: Any, r: Any, rr: Any, active: Any, tol2: Any, budget: int) -> Any:
            return cg_sweeps_in_turn(systems, x, r, rr, active, tol2, budget)

        return in_turn
    check_every = 1 if is_numpy(xp) else _DEVICE_CHECK_EVERY

    def batched(x: Any, r: Any, rr: Any, active: Any, tol2: Any, budget: int) -> Any:
        return cg_sweep(xp, space.matvec, x, r, rr, active, tol2, budget, check_every)

    return batched


def report_failure(op: GCRFOperator, x: Any, info: SolveInfo, options: SolverOptions) -> None:
    """Apply the ``on_failure`` policy to systems above tolerance.

    Called from the public methods directly: the warning's ``stacklevel`` counts the frames
    above this one.
    """
    xp = op.xp
    # "ignore" asks for the iterate as it is: no diagnosis (it can cost an eigensolve).
    if options.on_failure == "ignore" or bool(to_host(xp, xp.all(info.converged))):
        return
    op._diagnose_failure(info)
    failed = ~info.converged
    count = int(xp.sum(xp.astype(failed, xp.int64)))
    worst = float(xp.max(xp.where(failed, info.residual, xp.zeros_like(info.residual))))
    iters = int(xp.max(info.iterations))
    what = "CG iterations" if info.method == "cg" else "exact solves (with refinement)"
    message = (
        f"{info.method} solve did not reach rtol={options.rtol:g}, atol={options.atol:g} in "
        f"{count} of {info.converged.size} system(s): relative residual {worst:.3g} after "
        f"{iters} {what}. The system is too ill-conditioned for the dtype "
        f"{dtype_name(op.dtype)} ({op.condition_hint}): raise rtol, increase lam, use "
        "float64, or raise maxiter."
    )
    if options.on_failure == "raise":
        raise ConvergenceError(message, x=x, info=info)
    if options.on_failure == "warn":
        warnings.warn(message, ConvergenceWarning, stacklevel=4)
