"""The Potts refinement with the dense CRF's smoothness kernel held exactly, by filtering.

The smoothness kernel ``k(pᵢ, pⱼ) = exp(−|pᵢ − pⱼ|²/2θγ²)`` is a few pixels wide: far from low
rank, but a separable Gaussian filter G applies it exactly in O(P) per product (one 1-D
filter per spatial axis, truncated at :data:`TRUNCATE` θγ, zero outside the image). Its
symmetric normalisation ``N = Δ^{-1/2} G Δ^{-1/2}`` with the exact degrees ``Δ = G1`` has
‖N‖₂ = 1 (G is nonnegative and symmetric: N is similar to the row-stochastic Δ⁻¹G, and its
top eigenvector is Δ^{1/2}1).

With the low-rank appearance embeddings Â the pairwise matrix is ``K = ÂᵀÂ + σ λ N`` with
``‖ÂᵀÂ‖₂ = α_a λ`` and ``α_a + σ = α`` (the strength shared in proportion to the kernels'
weights), so ``‖K‖₂ ≤ α λ < λ``. The Potts system ``(λI + (J − I) ⊗ K) x = b`` (Eq. 11–12)
splits into the per-pixel class sum, which the softmax ignores, and the deviations from it,

    (λI − K) y_k = b_k − b̄,    k = 1 … L,

one symmetric positive definite system per label, solved by conjugate gradients with the
exact low-rank part as preconditioner, ``(λI − ÂᵀÂ)⁻¹ = λ⁻¹(I + Âᵀ(λI − ÂÂᵀ)⁻¹Â)``
(Woodbury), which leaves the condition number ``(1 − α_a)/(1 − α)`` (≤ 20 for α ≤ 0.95).
"""

from __future__ import annotations

import math
from typing import Any

import array_api_compat
import numpy as np

from .errors import ConvergenceError
from .info import SolveInfo

#: The smoothness kernel is cut at this many bandwidths: its value there is exp(−4.5), 1.1 %
#: of the centre, and each 1-D filter drops 0.27 % of the Gaussian's mass.
TRUNCATE = 3.0
#: CG iterations at most: the preconditioned condition number is at most 20 for strengths up
#: to 0.95, for which rtol 1e-4 takes about 25.
MAX_ITERATIONS = 200


def gaussian_weights(sigma: float, length: int) -> np.ndarray:
    """The 1-D filter ``exp(−t²/2σ²)``, t = −r … r with r = ⌈TRUNCATE·σ⌉, and no longer than
    an axis of ``length`` pixels needs (not normalised: the kernel's value is 1 at distance
    0, like the dense CRF's)."""
    radius = min(math.ceil(TRUNCATE * sigma), length - 1)
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    # A bandwidth far below a pixel overflows (t/σ)² to inf: its weight is then exp(−inf) = 0.
    with np.errstate(over="ignore"):
        return np.exp(-0.5 * (t / sigma) ** 2)


def _ndimage(xp: Any) -> Any:
    """scipy's or CuPy's ndimage for their arrays; None for other array libraries."""
    if array_api_compat.is_cupy_namespace(xp):
        from cupyx.scipy import ndimage
    elif array_api_compat.is_numpy_namespace(xp):
        from scipy import ndimage
    else:
        return None
    return ndimage


def _banded(weights: np.ndarray, length: int) -> np.ndarray:
    """The symmetric ``length × length`` matrix of the 1-D filter (zero outside the axis)."""
    radius = (weights.size - 1) // 2
    offsets = np.arange(length)[:, None] - np.arange(length)[None, :]
    inside = np.abs(offsets) <= radius
    return np.where(inside, weights[np.clip(offsets + radius, 0, weights.size - 1)], 0.0)


def gaussian_filter(xp: Any, x: Any, sigma: float, spatial_dims: int) -> Any:
    """``G x``: the Gaussian kernel of bandwidth ``sigma`` pixels applied over the trailing
    ``spatial_dims`` axes of ``x`` (zero outside the image), one axis at a time: by
    ``ndimage.correlate1d`` for NumPy and CuPy, by a product with the axis's banded matrix
    for other array libraries (the same sums, at O(length) per pixel instead of O(radius))."""
    ndimage = _ndimage(xp)
    device = array_api_compat.device(x)
    for axis in range(x.ndim - spatial_dims, x.ndim):
        weights = gaussian_weights(sigma, x.shape[axis])
        if ndimage is not None:
            weights = xp.asarray(weights, dtype=x.dtype)
            x = ndimage.correlate1d(x, weights, axis=axis, mode="constant")
            continue
        band = xp.asarray(_banded(weights, x.shape[axis]), dtype=x.dtype, device=device)
        order = [i for i in range(x.ndim) if i != axis] + [axis]
        inverse = [order.index(i) for i in range(x.ndim)]
        x = xp.permute_dims(xp.permute_dims(x, tuple(order)) @ band, tuple(inverse))
    return x


class NormalisedSmoothness:
    """``N = Δ^{-1/2} G Δ^{-1/2}`` over images of one spatial shape (module docstring)."""

    def __init__(self, xp: Any, spatial: tuple[int, ...], sigma: float, dtype: Any, device: Any):
        self.xp, self.sigma, self.spatial_dims = xp, sigma, len(spatial)
        ones = xp.ones(spatial, dtype=xp.float64, device=device)
        degrees = gaussian_filter(xp, ones, sigma, self.spatial_dims)
        self.scale = xp.astype(1.0 / xp.sqrt(degrees), dtype)

    def apply(self, y: Any) -> Any:
        """``N y`` for y (..., *spatial)."""
        filtered = gaussian_filter(self.xp, self.scale * y, self.sigma, self.spatial_dims)
        return self.scale * filtered


def _inner(xp: Any, u: Any, v: Any) -> Any:
    """Per-image inner products of (n, ...) arrays, in float64."""
    n = u.shape[0]
    return xp.sum(xp.astype(xp.reshape(u * v, (n, -1)), xp.float64), axis=1)


def solve_deviations(
    xp: Any,
    Ahat: Any,
    smoothness: NormalisedSmoothness,
    share: Any,
    b: Any,
    *,
    lam: float,
    rtol: float,
) -> tuple[Any, SolveInfo]:
    """The deviations y of the Potts MAP with ``K = ÂᵀÂ + σ λ N`` (module docstring).

    Parameters
    ----------
    Ahat : array (n, D, P)
        Appearance embeddings, ``‖Âᵢ‖₂² = α_a λ`` per image.
    smoothness : NormalisedSmoothness
        N for the images' spatial shape.
    share : array (n,)
        σ per image, with ``α_a + σ < 1``.
    b : array (n, L, *spatial)
        Unary scores.
    lam : float
        λ.
    rtol : float
        Per image, ``‖r‖ ≤ rtol ‖b − b̄‖`` over all its labels.

    Returns
    -------
    y : array like b
        ``y_k = x_k − x̄``: the Potts MAP up to a per-pixel constant (which softmax ignores).
    info : SolveInfo
        ``method="cg"``; iterations, the true relative residual of the deviation systems and
        convergence per image.

    Raises
    ------
    ConvergenceError
        An image above ``rtol`` after :data:`MAX_ITERATIONS` (float32 rounding limits the
        attainable residual to about κ·ε ≈ 2e-6 ≪ 1e-4, so this signals a bug).
    """
    n, labels = b.shape[0], b.shape[1]
    pixels = Ahat.shape[-1]
    dtype = b.dtype
    shape = b.shape
    sigma = xp.reshape(xp.astype(share, dtype), (n,) + (1,) * (b.ndim - 1))
    At = xp.matrix_transpose(Ahat)
    gram = xp.astype(Ahat @ At, xp.float64)
    eye = xp.eye(gram.shape[-1], dtype=xp.float64)
    capacitance = xp.astype(xp.linalg.inv(lam * eye - gram), dtype)

    def low_rank(y: Any, middle: Any | None = None) -> Any:
        coefficients = xp.reshape(y, (n, labels, pixels)) @ At  # (n, L, D)
        if middle is not None:
            coefficients = coefficients @ middle
        return xp.reshape(coefficients @ Ahat, shape)

    def matvec(y: Any) -> Any:
        return lam * y - low_rank(y) - lam * sigma * smoothness.apply(y)

    def precondition(r: Any) -> Any:
        return (r + low_rank(r, capacitance)) / lam

    rhs = b - xp.mean(b, axis=1, keepdims=True)
    # The recurrence's residual drifts from the true one by rounding: stopping at half the
    # tolerance keeps the true residual, checked at the end, below it.
    target = 0.5 * rtol * xp.sqrt(_inner(xp, rhs, rhs))
    y = precondition(rhs)
    r = rhs - matvec(y)
    z = precondition(r)
    p = z
    rz = _inner(xp, r, z)
    iterations = xp.zeros((n,), dtype=xp.int64)
    for _ in range(MAX_ITERATIONS):
        active = xp.sqrt(_inner(xp, r, r)) > target
        if not bool(xp.any(active)):
            break
        q = matvec(p)
        pq = _inner(xp, p, q)
        step = xp.where(active, rz / xp.where(pq > 0, pq, 1.0), 0.0)
        step_b = xp.reshape(xp.astype(step, dtype), sigma.shape)
        y = y + step_b * p
        r = r - step_b * q
        z = precondition(r)
        rz_new = _inner(xp, r, z)
        # A converged image keeps its iterate: its direction is reset, not grown.
        beta = xp.where(active, rz_new / xp.where(rz > 0, rz, 1.0), 0.0)
        beta = xp.reshape(xp.astype(beta, dtype), sigma.shape)
        p = z + beta * p
        rz = xp.where(active, rz_new, rz)
        iterations = iterations + xp.astype(active, xp.int64)
    true = rhs - matvec(y)
    norm = xp.sqrt(_inner(xp, rhs, rhs))
    residual = xp.sqrt(_inner(xp, true, true)) / xp.where(norm > 0, norm, 1.0)
    converged = residual <= rtol
    info = SolveInfo(method="cg", iterations=iterations, residual=residual, converged=converged)
    if not bool(xp.all(converged)):
        raise ConvergenceError(
            f"the refinement's CG did not reach rtol={rtol:g} in {MAX_ITERATIONS} iterations "
            f"(largest relative residual {float(xp.max(residual)):.3g})",
            x=y,
            info=info,
        )
    return y, info
