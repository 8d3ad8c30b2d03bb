"""Batched conjugate gradient (the paper's Algorithm 1), shared by every operator.

Vectors have shape ``batch + (k, n)``: one SPD system per batch index, its unknowns laid out
as k rows of n (k = 1 for the general and signed G-CRFs, k = L labels for Potts). Every
system has its own α, β and stopping test; converged systems stop changing while the others
go on. The restarts on the true residual live in :mod:`lowrank_gcrf.refinement`.

Per iteration the loop costs one matvec, two inner products and three vector updates. The
updates come from :func:`lowrank_gcrf.cg_updates.cg_kernels`: in place on NumPy (no
temporaries beyond one scratch vector), one fused kernel each on CuPy, plain array-API
expressions elsewhere.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import array_api_compat
import numpy as np
import scipy.linalg.blas
from array_api_compat import device as _device

from .cg_updates import cg_kernels
from .dtypes import dtype_name
from .errors import GCRFError, IndefiniteSystemError
from .host_reads import to_host


def inner(xp: Any, u: Any, v: Any) -> Any:
    """Per-system inner product over the trailing (k, n) axes, as an array.

    One ``vecdot`` per row (a BLAS dot on NumPy, no ``u * v`` temporary), summed over the k
    rows. NumPy reduces an unbatched system to a NumPy scalar, which is not an array: DLPack
    and the array API need a 0-d array, hence the ``asarray``.
    """
    return xp.asarray(xp.sum(xp.vecdot(u, v, axis=-1), axis=-1))


def power_of_two_scale(xp: Any, v: Any) -> Any:
    """Per system, the power of two nearest below ``max |v|`` (1 where v = 0).

    Dividing a right-hand side by it brings its entries into [1, 2) at most, so that its
    squared norm can neither overflow nor underflow, and it is exact: every operation of a
    solve is homogeneous, so solving for ``v / s`` and multiplying by ``s`` changes no bit
    of the result (only ``atol`` is rescaled). The exponent is clamped to the dtype's range.
    """
    peak = xp.max(xp.abs(v), axis=(-2, -1))
    info = xp.finfo(v.dtype)
    eps_bits = -math.log2(float(info.eps))
    lowest = math.log2(float(info.smallest_normal)) - eps_bits
    highest = math.floor(math.log2(float(info.max)))
    exponent = xp.floor(xp.log2(xp.where(peak > 0, peak, xp.ones_like(peak))))
    return xp.asarray(2.0 ** xp.clip(exponent, lowest, highest))


def cg_sweep(
    xp: Any,
    matvec: Callable[[Any], Any],
    x: Any,
    r: Any,
    rr: Any,
    active: Any,
    tol2: Any,
    budget: int,
    check_every: int = 1,
) -> tuple[Any, Any]:
    """One batched CG run (Algorithm 1) from ``x`` with true residual ``r = b − Mx``.

    Parameters
    ----------
    matvec : callable
        ``v ↦ M v`` for arrays of shape ``batch + (k, n)`` (Eq. 13 or Eq. 15–16).
    x, r : arrays of shape ``batch + (k, n)``
        Not modified (the sweep works on its own copies).
    rr : array of the batch shape
        ``‖r‖²`` per system.
    active : bool array of the batch shape
        Systems to iterate; the others are left unchanged.
    tol2 : array of the batch shape
        Squared residual target per system.
    budget : int
        Most iterations to run.
    check_every : int
        How often the host looks at the convergence and breakdown flags. Per-system
        freezing happens on the device every iteration, so a value above 1 only delays the
        exit (it avoids a GPU→host synchronisation per iteration).

    Returns
    -------
    x : the new iterate
    steps : int array of the batch shape, iterations each system took

    Raises
    ------
    IndefiniteSystemError
        When ``pᵀMp ≤ 0`` for a system still iterating.
    GCRFError
        When ``pᵀMp`` overflowed the working dtype.
    """
    if array_api_compat.is_numpy_namespace(xp) and math.prod(rr.shape) == 1:
        return _single_system_sweep(matvec, x, r, rr, active, tol2, budget)
    kernels = cg_kernels(xp, x)
    # The per-system scalars (α, β, flags) are tiny arrays: each operation on them costs a
    # call, not a pass, so the loop keeps them few and calls the library's own namespace.
    xp = kernels.xp
    x, r = kernels.own(x), kernels.own(r)
    p = kernels.own(r)
    steps = xp.zeros(rr.shape, dtype=xp.int64, device=_device(x))
    # Systems whose pᵀMp is not a positive finite number are frozen, and that pᵀMp kept to
    # tell an overflow from a breakdown at the next check.
    failed = xp.zeros(rr.shape, dtype=xp.bool, device=_device(x))
    failed_pq = xp.zeros_like(rr)
    with np.errstate(over="ignore", invalid="ignore"):  # see _raise_failure
        for it in range(budget):
            q = matvec(p)
            pq = kernels.inner(p, q)
            good = active & (pq > 0) & (pq < math.inf)
            bad = active ^ good
            failed = failed | bad
            failed_pq = xp.where(bad, pq, failed_pq)
            alpha = kernels.ratio(rr, pq, good)
            x, r = kernels.step(x, r, p, q, alpha[..., None, None])
            rr_new = kernels.inner(r, r)
            beta = kernels.ratio(rr_new, rr, good)
            p = kernels.direction(p, r, beta[..., None, None])
            steps = steps + xp.astype(good, xp.int64)
            rr = xp.where(good, rr_new, rr)
            active = good & (rr_new > tol2)
            if (it + 1) % check_every == 0 or it + 1 == budget:
                if bool(to_host(xp, xp.any(failed))):
                    _raise_failure(xp, failed, failed_pq, steps, x.dtype)
                if not bool(to_host(xp, xp.any(active))):
                    break
    return x, steps


def cg_sweeps_in_turn(
    matvecs: list[Callable[[Any], Any]],
    x: Any,
    r: Any,
    rr: Any,
    active: Any,
    tol2: Any,
    budget: int,
) -> tuple[Any, Any]:
    """:func:`cg_sweep` on a NumPy batch, one system after another.

    ``matvecs`` holds each system's own matvec, in ``np.ndindex`` order of the batch. On a
    CPU, a system solved on its own keeps its embeddings in cache from one iteration to the
    next; in lockstep, a batch whose embeddings exceed the cache streams all of them from
    memory at every iteration (``benchmarks.speed.iteration`` measures both). Each system
    also stops at its own convergence.
    """
    x = np.array(x, copy=True, order="C")
    steps = np.zeros(rr.shape, dtype=np.int64)
    for index, matvec in zip(np.ndindex(rr.shape), matvecs, strict=True):
        if active[index]:
            x[index], steps[index] = _single_system_sweep(
                matvec, x[index], r[index], rr[index], active[index], tol2[index], budget
            )
    return x, steps


def _single_system_sweep(
    matvec: Callable[[Any], Any],
    x: Any,
    r: Any,
    rr: Any,
    active: Any,
    tol2: Any,
    budget: int,
) -> tuple[Any, Any]:
    """:func:`cg_sweep` for a single NumPy system, its α, β and tests Python floats.

    With one system, the batched loop's bookkeeping on one-element arrays (about twenty
    NumPy calls of a microsecond each per iteration) costs as much as its vector updates;
    here it is float arithmetic, and the host checks breakdown at every step for free.
    The updates are BLAS level-1 calls in place: ``axpy`` reads two vectors and writes one
    where NumPy's ``x += α·p`` needs a scratch pass more, so an iteration moves 14 vector
    lengths through the cache instead of 18 (the loop is bandwidth-bound at the paper's
    size). It runs the batched loop's recurrence, update for update.
    """
    x = np.array(x, copy=True, order="C")
    steps = 0
    if not bool(np.all(active)):
        return x, np.zeros(rr.shape, dtype=np.int64)
    r = np.array(r, copy=True, order="C")
    p = r.copy()
    axpy, scal = scipy.linalg.blas.get_blas_funcs(("axpy", "scal"), (x,))
    # Flat views of C-contiguous arrays of a BLAS dtype: axpy and scal update them in place.
    flat_x, flat_p, flat_r = x.reshape(-1), p.reshape(-1), r.reshape(-1)
    rho, target = float(rr.item()), float(tol2.item())
    with np.errstate(over="ignore", invalid="ignore"):  # see _raise_failure
        for _ in range(budget):
            q = matvec(p)
            flat_q = np.ascontiguousarray(q).reshape(-1)
            pq = float(np.dot(flat_p, flat_q))
            if not 0.0 < pq < math.inf:
                _raise_failure(np, np.asarray(True), np.asarray(pq), np.asarray(steps), x.dtype)
            alpha = rho / pq
            axpy(flat_p, flat_x, a=alpha)
            axpy(flat_q, flat_r, a=-alpha)
            rho_new = float(np.dot(flat_r, flat_r))
            steps += 1
            scal(rho_new / rho, flat_p)
            axpy(flat_r, flat_p)
            rho = rho_new
            if rho <= target:
                break
    return x, np.full(rr.shape, steps, dtype=np.int64)


def _raise_failure(xp: Any, failed: Any, failed_pq: Any, steps: Any, dtype: Any) -> None:
    """An overflow of pᵀMp (inf or NaN) or a breakdown (pᵀMp ≤ 0), as a clear error.

    The loops test pᵀMp themselves and run with NumPy's overflow warnings off: a warning
    would come before this error, or under ``-W error`` instead of it.
    """
    if bool(to_host(xp, xp.any(failed & ~(failed_pq <= 0)))):
        raise GCRFError(
            f"the matrix-vector product overflowed {dtype_name(dtype)} during conjugate "
            "gradient: the embeddings are too large for this dtype (their squared norm exceeds "
            "its range), or the system is so ill-conditioned in it that the iterates diverged; "
            "rescale the embeddings, increase lam, or use float64"
        )
    count = int(to_host(xp, xp.sum(xp.astype(failed, xp.int64))))
    raise IndefiniteSystemError(
        f"conjugate gradient broke down (pᵀMp ≤ 0) in {count} system(s) after "
        f"{int(to_host(xp, xp.max(steps)))} iteration(s): the system matrix is not positive "
        f"definite in the working precision ({dtype_name(dtype)}), even if it is in exact "
        "arithmetic: its rounding outweighs its smallest eigenvalue. Increase lam, or use "
        "float64 inputs if lam is tiny compared with the squared norm of the embeddings; "
        "method='direct' reports a definite system that is merely too ill-conditioned for the "
        "dtype as a ConvergenceError."
    )
