"""Batched conjugate gradient (the paper's Algorithm 1), shared by every operator.

Vectors have shape ``batch + (k, n)``: one SPD system per batch index, its unknowns laid out
as k rows of n (k = 1 for the general G-CRF, k = L labels for Potts). Every system has its
own α, β and stopping test; converged systems stop changing while the others go on. The
restarts on the true residual live in :mod:`lowrank_gcrf.refinement`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from array_api_compat import device as _device

from .dtypes import dtype_name
from .errors import GCRFError, IndefiniteSystemError


def inner(xp: Any, u: Any, v: Any) -> Any:
    """Per-system inner product over the trailing (k, n) axes, as an array.

    NumPy reduces an unbatched system to a NumPy scalar, which is not an array: DLPack and
    the array API need a 0-d array, hence the ``asarray``.
    """
    return xp.asarray(xp.sum(u * v, axis=(-2, -1)))


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
    p = r
    steps = xp.zeros(rr.shape, dtype=xp.int64, device=_device(x))
    broken = xp.zeros(rr.shape, dtype=xp.bool, device=_device(x))
    overflow = xp.zeros(rr.shape, dtype=xp.bool, device=_device(x))
    zero = xp.zeros_like(rr)
    one = xp.ones_like(rr)
    for it in range(budget):
        q = matvec(p)
        pq = inner(xp, p, q)
        overflow = overflow | (active & ~xp.isfinite(pq))
        broken = broken | (active & ~(pq > 0))
        alpha = xp.where(active & (pq > 0), rr / xp.where(pq > 0, pq, one), zero)
        x = x + alpha[..., None, None] * p
        r = r - alpha[..., None, None] * q
        rr_new = inner(xp, r, r)
        beta = xp.where(active, rr_new / xp.where(rr > 0, rr, one), zero)
        p = r + beta[..., None, None] * p
        steps = steps + xp.astype(active, xp.int64)
        rr = xp.where(active, rr_new, rr)
        active = active & (rr_new > tol2) & ~broken
        if (it + 1) % check_every == 0 or it + 1 == budget:
            if bool(xp.any(overflow)):
                _raise_overflow(x.dtype)
            if bool(xp.any(broken)):
                _raise_breakdown(xp, broken, steps)
            if not bool(xp.any(active)):
                break
    return x, steps


def _raise_overflow(dtype: Any) -> None:
    raise GCRFError(
        f"the matrix-vector product overflowed {dtype_name(dtype)} during conjugate gradient: "
        "the embeddings are too large for this dtype (their squared norm exceeds its range); "
        "rescale them or use float64"
    )


def _raise_breakdown(xp: Any, broken: Any, steps: Any) -> None:
    count = int(xp.sum(xp.astype(broken, xp.int64)))
    raise IndefiniteSystemError(
        f"conjugate gradient broke down (pᵀMp ≤ 0) in {count} system(s) after "
        f"{int(xp.max(steps))} iteration(s): the system matrix is not positive definite in "
        "the working precision. Increase lam, or use float64 inputs if lam is tiny compared "
        "with the squared norm of the embeddings."
    )
