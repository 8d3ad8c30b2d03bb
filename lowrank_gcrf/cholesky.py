"""Cholesky factorization of batches of small SPD matrices, and solves with it.

This is the one place where the core uses library-specific kernels: the array API has a
Cholesky but no triangular solve. On NumPy the triangular solves come from SciPy (batched);
elsewhere (CuPy, array-api-strict) the solve falls back to ``xp.linalg.solve`` on the
matrix itself, which is portable and, for the D×D capacitance matrices solved here, cheap.
"""

from __future__ import annotations

from typing import Any

import scipy.linalg

from .validation import is_numpy


class CholeskyFactor:
    """A batch of SPD matrices ``C`` (..., n, n) with a verified Cholesky factor.

    Build it with :func:`cholesky_factor`, which also decides positive definiteness.
    """

    def __init__(self, xp: Any, matrix: Any, lower: Any):
        self.xp = xp
        self.lower = lower
        # Only the portable fallback solves with the matrix itself; don't keep it otherwise.
        self.matrix = None if is_numpy(xp) else matrix

    def solve(self, rhs: Any) -> Any:
        """``C⁻¹ rhs`` for ``rhs`` of shape (..., n, k)."""
        if is_numpy(self.xp):
            y = scipy.linalg.solve_triangular(self.lower, rhs, lower=True, check_finite=False)
            return scipy.linalg.solve_triangular(
                self.lower, y, lower=True, trans="T", check_finite=False
            )
        return self.xp.linalg.solve(self.matrix, rhs)


def cholesky_factor(xp: Any, matrix: Any) -> CholeskyFactor | None:
    """Factor ``matrix`` (..., n, n); ``None`` when some matrix of the batch is not PD.

    Failure is detected both by an exception (NumPy) and by a non-finite factor (CuPy,
    which by default returns NaNs instead of raising).
    """
    try:
        lower = xp.linalg.cholesky(matrix)
    except (ValueError, ArithmeticError, RuntimeError):
        return None
    if not bool(xp.all(xp.isfinite(lower))):
        return None
    return CholeskyFactor(xp, matrix, lower)
