"""Exact solves with a scaled identity plus a low-rank Gram: ``(λI + α UᵀU)⁻¹``.

The general and Potts models reduce to this (``docs/maths.md#exact-low-rank-solves``): the
general G-CRF is ``λI + AᵀA`` (α = 1); the Potts G-CRF splits into its class sum,
``λI + (L−1)ÂᵀÂ`` (α = L − 1), and its deviations, ``λI − ÂᵀÂ`` (α = −1). The signed
G-CRF ``λI + AᵀA − ΓᵀΓ`` does not: its capacitance ``λS + UUᵀ`` is indefinite, and
:class:`~lowrank_gcrf.signed_inverse.SignedInverse` factors it by block elimination instead
(``docs/maths.md#exact-solve``). With U of shape (D, n):

* D < n: Woodbury through the D×D capacitance ``C = λI + α UUᵀ``,
  ``(λI + αUᵀU)⁻¹ v = (v − α Uᵀ C⁻¹ U v) / λ``;
* D ≥ n: the n×n matrix ``λI + α UᵀU`` itself.

The small matrix is factored by Cholesky in the dtype of the Gram it is built from: float64
(:func:`small_gram`) wherever its condition number is unbounded, which also decides positive
definiteness exactly enough for the Potts check; the working dtype (:func:`working_gram`)
where the caller knows it is small (the Potts class sum: κ ≤ L).
"""

from __future__ import annotations

from typing import Any

import array_api_compat

from .cholesky import CholeskyFactor, cholesky_factor
from .dtypes import dtype_name
from .errors import GCRFError
from .host_reads import to_host
from .threads import gram_threads


def gram_overflow_error(name: str, dtype: Any) -> GCRFError:
    """The error of embeddings whose Gram (their squared norm) exceeds ``dtype``'s range."""
    return GCRFError(
        f"the Gram matrix of {name} overflows {dtype_name(dtype)}: the embeddings are too "
        "large for this dtype (their squared norm exceeds its range); rescale them or use "
        "float64"
    )


def working_gram(xp: Any, U: Any, name: str = "U") -> Any:
    """The smaller Gram of ``U`` (..., D, n) in U's dtype: ``UUᵀ`` if D < n, else ``UᵀU``.

    Raises
    ------
    GCRFError
        The Gram overflowed U's dtype (embeddings too large for it).
    """
    Ut = xp.matrix_transpose(U)
    with gram_threads(xp, tuple(U.shape)):
        gram = U @ Ut if U.shape[-2] < U.shape[-1] else Ut @ U
    if not bool(to_host(xp, xp.all(xp.isfinite(gram)))):
        raise gram_overflow_error(name, U.dtype)
    return gram


def small_gram(xp: Any, U: Any, name: str = "U") -> Any:
    """:func:`working_gram` promoted to float64 (computed in U's dtype: one BLAS product)."""
    return xp.astype(working_gram(xp, U, name), xp.float64)


def shifted_gram(xp: Any, gram: Any, lam: Any, alpha: float, *, overwrite: bool = False) -> Any:
    """``λI + α·gram`` in gram's dtype, without an identity temporary.

    With ``overwrite`` it is built in ``gram``'s memory where the library has mutable views
    (NumPy, CuPy); elsewhere, and without ``overwrite``, it is a new array.
    """
    n = gram.shape[-1]
    lam = xp.astype(lam, gram.dtype)
    if array_api_compat.is_numpy_namespace(xp) or array_api_compat.is_cupy_namespace(xp):
        shifted = gram if overwrite else xp.asarray(gram, copy=True)
        if not shifted.flags.c_contiguous:
            shifted = xp.ascontiguousarray(shifted)
        shifted *= alpha
        # The diagonal of a C-contiguous (…, n, n) batch: every (n + 1)-th entry of its rows.
        flat = xp.reshape(shifted, (*shifted.shape[:-2], n * n))
        flat[..., :: n + 1] += lam[..., None]
        return shifted
    eye = xp.eye(n, dtype=gram.dtype, device=array_api_compat.device(gram))
    return alpha * gram + lam[..., None, None] * eye


class ShiftedLowRankInverse:
    """``(λI + α UᵀU)⁻¹`` for a batch, applied to rows ``v`` of shape (..., k, n).

    Build it with :meth:`factor_from_gram`; it holds the Cholesky factor of the small matrix.
    """

    def __init__(self, xp: Any, U: Any, lam: Any, alpha: float, factor: CholeskyFactor):
        self.xp = xp
        self.U = U
        self.lam = lam
        self.alpha = alpha
        self.factor = factor

    @classmethod
    def factor_from_gram(
        cls,
        xp: Any,
        U: Any,
        lam: Any,
        alpha: float,
        gram: Any,
        *,
        overwrite: bool = False,
        hold: Any = None,
    ) -> ShiftedLowRankInverse | None:
        """Factor ``λI + α·gram`` in gram's dtype; ``None`` when it is not positive definite.

        Parameters
        ----------
        U : array (..., D, n)
        lam : array of the batch shape
        gram : :func:`small_gram` (float64) or :func:`working_gram` of U
        overwrite : bool
            Build the factor in ``gram``'s memory (NumPy; ``gram`` is then consumed): a
            D = 1024 float64 capacitance is 8 MB, and the memory of large-D Potts solves is
            these D×D arrays.
        hold : dtype, optional
            The dtype to keep the factor in once factored (default: gram's). Holding a
            float64 factor in float32 costs no accuracy that the apply keeps: its product
            ``U v`` is rounded to U's dtype first, an error that ``C⁻¹`` amplifies by κ(C)
            just as the rounded factor's does.
        """
        factor = cholesky_factor(xp, shifted_gram(xp, gram, lam, alpha, overwrite=overwrite))
        if factor is None:
            return None
        if hold is not None and factor.inverse_lower.dtype != hold:
            factor = CholeskyFactor(xp, xp.astype(factor.inverse_lower, hold))
        return cls(xp, U, lam, alpha, factor)

    def apply(self, v: Any) -> Any:
        """``(λI + α UᵀU)⁻¹ v`` for v of shape (..., k, n), in v's dtype."""
        xp = self.xp
        U = self.U
        dtype = self.factor.inverse_lower.dtype
        if U.shape[-2] >= U.shape[-1]:
            w = self.factor.solve(xp.astype(xp.matrix_transpose(v), dtype))
            return xp.astype(xp.matrix_transpose(w), v.dtype)
        t = xp.astype(U @ xp.matrix_transpose(v), dtype)
        s = xp.astype(self.factor.solve(t), v.dtype)
        correction = xp.matrix_transpose(s) @ U
        return (v - self.alpha * correction) / self.lam[..., None, None]
