"""The exact inverse of the signed operator ``M = λI + UᵀSU`` (``docs/maths.md#exact-solve``),
and the float64 Gram ``UUᵀ`` it is factored from.

The Gram is accumulated in float64 over column chunks of U (:func:`float64_gram`): casting a
float32 U whole would hold a float64 copy of it, twice its memory (37 MB at the paper's
size, D + E = 130 and N = 35301), where a chunk is a few MB.
"""

from __future__ import annotations

import math
from typing import Any

from .cholesky import CholeskyFactor
from .threads import gram_threads

#: The float64 elements of U's columns that :func:`float64_gram` casts at a time (4 MiB: 4032
#: columns at D + E = 130), never fewer than :data:`GRAM_MIN_COLUMNS` columns.
GRAM_CHUNK_ELEMENTS = 2**19
#: The fewest columns of a chunk, so that every product stays a BLAS-sized one.
GRAM_MIN_COLUMNS = 256


def float64_gram(xp: Any, U: Any) -> Any:
    """``UUᵀ`` (..., r, r) in float64 for U (..., r, n), accumulated in float64.

    A float64 U is one product; any other dtype is cast to float64 a chunk of columns at a
    time, ``UUᵀ = Σ_c U_c U_cᵀ``, so that the memory beyond U is a chunk and the r×r sums:
    as accurate as one float64 product (both sum in float64, the chunks in another order).
    """
    Ut = xp.matrix_transpose
    rows = math.prod(int(size) for size in U.shape[:-1])
    n = int(U.shape[-1])
    with gram_threads(xp, tuple(U.shape)):
        if U.dtype == xp.float64:
            return U @ Ut(U)
        step = max(GRAM_MIN_COLUMNS, GRAM_CHUNK_ELEMENTS // max(rows, 1))
        gram = None
        for start in range(0, n, step):
            chunk = xp.astype(U[..., start : min(start + step, n)], xp.float64)
            part = chunk @ Ut(chunk)
            del chunk  # before the next chunk is cast: one chunk at a time
            gram = part if gram is None else gram + part
        return gram


class SignedInverse:
    """``M⁻¹`` of ``M = λI + UᵀSU`` from float64 Cholesky factors of small matrices.

    With ``K = λS + UUᵀ`` (Woodbury): ``M⁻¹ v = (v − Uᵀ K⁻¹ U v) / λ``. K is indefinite; its
    block LDLᵀ uses two SPD factors: ``C_A = λI + AAᵀ`` and the Schur complement
    ``λH = λI − ΓΓᵀ + ΓAᵀ C_A⁻¹ AΓᵀ``, which is positive definite exactly when M is.
    When ``D + E ≥ N``, ``dense`` holds the Cholesky factor of M itself instead.
    """

    def __init__(
        self,
        xp: Any,
        U: Any,
        lam: Any,
        num_repulsive: int,
        repulsive: CholeskyFactor | None,
        schur: CholeskyFactor | None,
        cross: Any,
        dense: CholeskyFactor | None = None,
    ):
        self.xp = xp
        self.U = U
        self.lam = lam
        self.num_repulsive = num_repulsive
        self.repulsive = repulsive
        self.schur = schur
        self.cross = cross
        self.dense = dense

    def _capacitance_solve(self, t: Any) -> Any:
        """``K⁻¹ t`` for t (..., D + E, k) in float64, by block elimination."""
        xp = self.xp
        d = self.num_repulsive
        if self.schur is None:
            return self.repulsive.solve(t)
        w = t[..., d:, :]
        if self.repulsive is None:
            return -self.schur.solve(w)
        u = t[..., :d, :]
        cross_t = xp.matrix_transpose(self.cross)
        q = self.schur.solve(cross_t @ self.repulsive.solve(u) - w)
        p = self.repulsive.solve(u - self.cross @ q)
        return xp.concat([p, q], axis=-2)

    def apply(self, v: Any) -> Any:
        """``M⁻¹ v`` for v of shape (..., k, N), in v's dtype."""
        xp = self.xp
        if self.dense is not None:
            w = self.dense.solve(xp.astype(xp.matrix_transpose(v), xp.float64))
            return xp.astype(xp.matrix_transpose(w), v.dtype)
        t = xp.astype(self.U @ xp.matrix_transpose(v), xp.float64)
        z = xp.astype(self._capacitance_solve(t), v.dtype)
        correction = xp.matrix_transpose(xp.matrix_transpose(self.U) @ z)
        return (v - correction) / self.lam[..., None, None]
