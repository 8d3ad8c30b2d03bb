"""Exact solves with a scaled identity plus a low-rank Gram: ``(λI + α UᵀU)⁻¹``.

Both models reduce to this (``docs/maths.md#exact-low-rank-solves``): the general G-CRF is
``λI + AᵀA`` (α = 1); the Potts G-CRF splits into its class sum, ``λI + (L−1)ÂᵀÂ``
(α = L − 1), and its deviations, ``λI − ÂᵀÂ`` (α = −1). With U of shape (D, n):

* D < n: Woodbury through the D×D capacitance ``C = λI + α UUᵀ``,
  ``(λI + αUᵀU)⁻¹ v = (v − α Uᵀ C⁻¹ U v) / λ``;
* D ≥ n: the n×n matrix ``λI + α UᵀU`` itself.

The small matrix is factored by Cholesky in float64 whatever the working dtype, which also
decides positive definiteness exactly enough for the Potts check.
"""

from __future__ import annotations

from typing import Any

from array_api_compat import device as _device

from .cholesky import CholeskyFactor, cholesky_factor
from .dtypes import dtype_name
from .errors import GCRFError


def small_gram(xp: Any, U: Any, name: str = "U") -> Any:
    """The smaller Gram of ``U`` (..., D, n) in float64: ``UUᵀ`` if D < n, else ``UᵀU``.

    Computed in U's dtype (one BLAS product), then promoted: the Gram is shared by every
    capacitance of an operator.

    Raises
    ------
    GCRFError
        The Gram overflowed U's dtype (embeddings too large for it).
    """
    Ut = xp.matrix_transpose(U)
    gram = U @ Ut if U.shape[-2] < U.shape[-1] else Ut @ U
    if not bool(xp.all(xp.isfinite(gram))):
        raise GCRFError(
            f"the Gram matrix of {name} overflows {dtype_name(U.dtype)}: the embeddings are too "
            "large for this dtype (their squared norm exceeds its range); rescale them or use "
            "float64"
        )
    return xp.astype(gram, xp.float64)


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
        cls, xp: Any, U: Any, lam: Any, alpha: float, gram: Any
    ) -> ShiftedLowRankInverse | None:
        """Factor ``λI + α·gram``; ``None`` when it is not positive definite.

        Parameters
        ----------
        U : array (..., D, n)
        lam : array of the batch shape
        gram : the float64 :func:`small_gram` of U
        """
        # In-place updates of arrays made here: D×D float64 temporaries dominate the
        # memory of large-D Potts solves.
        shift = xp.eye(gram.shape[-1], dtype=xp.float64, device=_device(gram))
        shift = shift * xp.astype(lam, xp.float64)[..., None, None]
        shift += alpha * gram
        factor = cholesky_factor(xp, shift)
        del shift
        if factor is None:
            return None
        return cls(xp, U, lam, alpha, factor)

    def apply(self, v: Any) -> Any:
        """``(λI + α UᵀU)⁻¹ v`` for v of shape (..., k, n), in v's dtype."""
        xp = self.xp
        U = self.U
        if U.shape[-2] >= U.shape[-1]:
            w = self.factor.solve(xp.astype(xp.matrix_transpose(v), xp.float64))
            return xp.astype(xp.matrix_transpose(w), v.dtype)
        t = xp.astype(U @ xp.matrix_transpose(v), xp.float64)
        s = xp.astype(self.factor.solve(t), v.dtype)
        correction = xp.matrix_transpose(xp.matrix_transpose(U) @ s)
        return (v - self.alpha * correction) / self.lam[..., None, None]
