"""Cholesky factorization of batches of small SPD matrices, and solves with it.

The factor is kept as its inverse ``L⁻¹``, so that every later solve is two matrix products
``C⁻¹v = L⁻ᵀ(L⁻¹v)`` in the array library's own BLAS. This matters on CPU: NumPy and SciPy
wheels bundle separate OpenBLAS builds whose thread pools contend when calls alternate
between them (measured on 2 cores: 10 ms per Potts Woodbury apply with a SciPy triangular
solve inside, 0.3 ms with matrix products only). The explicit inverse costs D³/3 once and
errs by about κ(L)·ε = √κ(C)·ε, which the iterative refinement downstream corrects.

The array API has a Cholesky but no triangular inverse: on NumPy both come from LAPACK
through SciPy (``potrf`` and ``trtri``, once per factorization, in place: a D = 1024 float64
factor is 8 MB, and a copy per step would double the memory of a large-D Potts solve);
elsewhere from ``xp.linalg.cholesky`` and ``xp.linalg.inv``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.linalg.lapack

from .host_reads import to_host
from .validation import is_numpy


class CholeskyFactor:
    """A batch of SPD matrices ``C = LLᵀ`` (..., n, n), held as ``L⁻¹``.

    Build it with :func:`cholesky_factor`, which also decides positive definiteness.
    """

    def __init__(self, xp: Any, inverse_lower: Any):
        self.xp = xp
        self.inverse_lower = inverse_lower

    def solve(self, rhs: Any) -> Any:
        """``C⁻¹ rhs`` for ``rhs`` of shape (..., n, k)."""
        inv = self.inverse_lower
        return self.xp.matrix_transpose(inv) @ (inv @ rhs)


def cholesky_lower(xp: Any, matrix: Any) -> Any | None:
    """The lower Cholesky factor of ``matrix`` (..., n, n); ``None`` when one is not PD.

    ``matrix`` is consumed: on NumPy, when it owns its C-contiguous memory (a temporary), the
    factor is built in it. Failure is detected both by LAPACK's ``info`` (NumPy) and by a
    non-finite factor (CuPy, which by default returns NaNs instead of raising).
    """
    if is_numpy(xp):
        if not (matrix.flags.owndata and matrix.flags.c_contiguous and matrix.flags.writeable):
            matrix = np.array(matrix, order="C")
        return _numpy_cholesky(matrix)
    try:
        lower = xp.linalg.cholesky(matrix)
    except (ValueError, ArithmeticError, RuntimeError):
        return None
    return lower if bool(to_host(xp, xp.all(xp.isfinite(lower)))) else None


def cholesky_factor(xp: Any, matrix: Any) -> CholeskyFactor | None:
    """Factor ``matrix`` (..., n, n); ``None`` when some matrix of the batch is not PD.

    ``matrix`` is consumed as by :func:`cholesky_lower` (on NumPy the inverse factor then
    takes its memory: no n×n array beyond it).
    """
    lower = cholesky_lower(xp, matrix)
    if lower is None:
        return None
    inverse = _invert_lower(xp, lower)
    return None if inverse is None else CholeskyFactor(xp, inverse)


def _numpy_cholesky(matrix: np.ndarray) -> np.ndarray | None:
    """LAPACK ``potrf`` in place on each matrix of a C-contiguous batch.

    A row-major symmetric C is its own column-major transpose: ``potrf`` of that view as an
    upper factor U (UᵀU = C) leaves ``L = Uᵀ`` in the lower triangle of the row-major array,
    the other triangle cleared.
    """
    for index in np.ndindex(matrix.shape[:-2]):
        view = matrix[index].T
        potrf = scipy.linalg.lapack.get_lapack_funcs("potrf", (view,))
        factor, info = potrf(view, lower=0, clean=1, overwrite_a=1)
        if info != 0 or not np.all(np.isfinite(np.diagonal(factor))):
            return None
        if not np.shares_memory(factor, view):
            matrix[index] = factor.T
    return matrix


def _invert_lower(xp: Any, lower: Any) -> Any | None:
    """``L⁻¹`` for a batch of lower-triangular L; on NumPy in place, overwriting ``lower``.

    ``None`` if a diagonal entry is exactly zero (a singular factor: not PD after all).

    LAPACK's ``trtri`` inverts a triangle in place (n³/3 flops, no extra n×n buffer). NumPy's
    row-major ``L`` is a column-major ``Lᵀ`` (upper), and ``(Lᵀ)⁻¹ = (L⁻¹)ᵀ``.
    """
    if not is_numpy(xp):
        return xp.linalg.inv(lower)
    for index in np.ndindex(lower.shape[:-2]):
        upper = lower[index].T
        trtri = scipy.linalg.lapack.get_lapack_funcs("trtri", (upper,))
        inverse, info = trtri(upper, lower=0, overwrite_c=1)
        if info != 0:
            return None
        if not np.shares_memory(inverse, upper):
            lower[index] = inverse.T
    return lower
