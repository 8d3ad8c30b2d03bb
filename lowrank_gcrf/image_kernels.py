"""Rank-D feature maps of the dense CRF's Gaussian kernels, as Potts embeddings.

The fully connected CRF of Krähenbühl and Koltun couples pixels i and j by

* appearance: ``w_a · exp(−|pᵢ−pⱼ|²/2θα² − |Iᵢ−Iⱼ|²/2θβ²)``,
* smoothness: ``w_s · exp(−|pᵢ−pⱼ|²/2θγ²)``,

with p the pixel position and I its colour. Both are Gaussian kernels
``k(f, g) = exp(−|f − g|²/2)`` of scaled features ``f = (p/θα, I/θβ)`` and ``f = p/θγ``, so a
feature map ``Φ`` (D × P) with ``ΦᵀΦ ≈ W`` gives the Potts G-CRF embeddings ``Â`` whose
pairwise matrix ``ÂᵀÂ`` approximates the dense CRF's kernel at rank D (Eq. 11–12).

Approximations (:data:`APPROXIMATIONS`):

* ``"nystrom-kmeans"`` (default): Nyström on landmarks placed by k-means in the joint feature
  space (low-dimensional: 1–3 position and C colour dimensions), so that landmarks follow
  the image's actual colours and regions;
* ``"nystrom-random"``: Nyström on pixels drawn uniformly;
* ``"rff"``: random Fourier features ``√(2/D) cos(Ωf + β)``, ``Ω ~ N(0, I)`` (Rahimi & Recht).

Normalisation (:data:`NORMALIZATIONS`): ``"symmetric"`` replaces W by ``Δ^{-1/2} W Δ^{-1/2}``
with the degrees ``Δ = diag(W1)``, as in spectral clustering; its largest eigenvalue is 1
for the exact kernel, so every image gets the same propagation strength whatever its size
and content. ``"none"`` keeps W. Either way the embeddings are finally scaled so that
``‖Â‖₂² = strength · λ`` exactly (from the eigenvalues of the D × D Gram ``ÂÂᵀ``).
"""

from __future__ import annotations

import math
from typing import Any

import array_api_compat
import numpy as np

from .errors import GCRFError

#: Kernel approximations, the default first.
APPROXIMATIONS = ("nystrom-kmeans", "nystrom-random", "rff")
#: Kernel normalisations, the default first.
NORMALIZATIONS = ("symmetric", "none")
#: Lloyd iterations of the k-means landmark placement.
KMEANS_ITERATIONS = 8
#: k-means runs on a random subsample of this many pixels per landmark (at least 4096).
KMEANS_PIXELS_PER_LANDMARK = 16
#: Nyström drops eigen-directions of the landmark kernel below this fraction of the largest:
#: their inverse square roots would amplify rounding errors of float32 features.
NYSTROM_RTOL = 1e-6
#: Degrees below this fraction of the largest are raised to it (approximate kernels can give
#: a pixel a degree near 0 or, for random features, below 0).
DEGREE_FLOOR = 1e-3


def pixel_features(xp: Any, image: Any, *, sxy: float, srgb: float | None, dtype: Any) -> Any:
    """The scaled features ``(p/sxy, I/srgb)`` of every pixel of one image.

    Parameters
    ----------
    image : array (C, *spatial)
        Colours on the scale of ``srgb``.
    sxy : float
        Position bandwidth in pixels.
    srgb : float or None
        Colour bandwidth; ``None`` for position-only features (the smoothness kernel).

    Returns
    -------
    array (P, S + C) or (P, S): S = number of spatial dimensions, P their product,
    row-major like ``image.reshape(C, -1)``.
    """
    spatial = tuple(image.shape[1:])
    device = array_api_compat.device(image)
    axes = [xp.arange(n, dtype=dtype, device=device) / sxy for n in spatial]
    grids = xp.meshgrid(*axes, indexing="ij")
    columns = [xp.reshape(g, (-1,)) for g in grids]
    if srgb is not None:
        colours = xp.reshape(xp.astype(image, dtype), (image.shape[0], -1)) / srgb
        columns.extend(colours[c, :] for c in range(image.shape[0]))
    return xp.stack(columns, axis=1)


def _squared_distances(xp: Any, X: Any, Y: Any) -> Any:
    """``|xᵢ − yⱼ|²`` for rows of X (n, f) and Y (m, f), clamped at 0 against rounding."""
    d = xp.sum(X * X, axis=1)[:, None] + xp.sum(Y * Y, axis=1)[None, :] - 2.0 * (X @ Y.T)
    return xp.maximum(d, 0.0)


def _subsample(xp: Any, F: Any, size: int, rng: np.random.Generator) -> Any:
    rows = rng.permutation(F.shape[0])[:size]
    return xp.take(F, xp.asarray(rows, device=array_api_compat.device(F)), axis=0)


def kmeans_landmarks(xp: Any, F: Any, m: int, rng: np.random.Generator) -> Any:
    """``m`` landmarks by Lloyd's k-means on a random subsample of the rows of F (P, f).

    Starts from m random pixels; a cluster that empties keeps its previous centre. Cluster
    sums are one-hot matrix products, so the same code runs on every array library.
    """
    size = min(F.shape[0], max(4096, KMEANS_PIXELS_PER_LANDMARK * m))
    X = _subsample(xp, F, size, rng)
    centres = X[:m, :]
    labels = xp.arange(m, device=array_api_compat.device(F))
    for _ in range(KMEANS_ITERATIONS):
        nearest = xp.argmin(_squared_distances(xp, X, centres), axis=1)
        onehot = xp.astype(nearest[:, None] == labels[None, :], X.dtype)
        counts = xp.sum(onehot, axis=0)
        sums = onehot.T @ X
        centres = xp.where(counts[:, None] > 0, sums / xp.maximum(counts, 1.0)[:, None], centres)
    return centres


def gaussian_kernel(xp: Any, X: Any, Y: Any) -> Any:
    """``exp(−|xᵢ − yⱼ|²/2)`` for rows of X (n, f) and Y (m, f), shape (n, m).

    One matrix product of the augmented rows ``(x, −|x|²/2, 1)·(y, 1, −|y|²/2)`` gives the
    exponent, so that the n × m array is written once before the exponential.
    """
    device = array_api_compat.device(X)
    ones_x = xp.ones((X.shape[0], 1), dtype=X.dtype, device=device)
    ones_y = xp.ones((Y.shape[0], 1), dtype=Y.dtype, device=device)
    half_x = -0.5 * xp.sum(X * X, axis=1, keepdims=True)
    half_y = -0.5 * xp.sum(Y * Y, axis=1, keepdims=True)
    left = xp.concat([X, half_x, ones_x], axis=1)
    right = xp.concat([Y, ones_y, half_y], axis=1)
    return xp.exp(xp.minimum(left @ right.T, 0.0))


def nystrom_features(xp: Any, F: Any, landmarks: Any) -> Any:
    """Nyström features ``Φ = Λ^{-1/2} Uᵀ K(landmarks, F)`` with ``K_mm = UΛUᵀ``.

    ``ΦᵀΦ = K_Pm K_mm⁺ K_mP``: exact on the landmarks' span. The m × m eigendecomposition is
    done in float64 (it is small), the m × P product in F's dtype.

    Returns
    -------
    array (m, P)
    """
    K_mm = gaussian_kernel(xp, landmarks, landmarks)
    w, U = xp.linalg.eigh(xp.astype(K_mm, xp.float64))
    keep = w > NYSTROM_RTOL * w[-1]
    scale = xp.where(keep, 1.0 / xp.sqrt(xp.where(keep, w, 1.0)), 0.0)
    projection = xp.astype((U * scale[None, :]).T, F.dtype)
    return projection @ gaussian_kernel(xp, landmarks, F)


def fourier_features(xp: Any, F: Any, m: int, rng: np.random.Generator) -> Any:
    """Random Fourier features ``√(2/m) cos(Ωfᵀ + β)``, ``Ω ~ N(0, I)``, ``β ~ U(0, 2π)``.

    Returns
    -------
    array (m, P)
    """
    omega = rng.standard_normal((m, F.shape[1]))
    phase = rng.uniform(0.0, 2.0 * math.pi, size=(m, 1))
    device = array_api_compat.device(F)
    omega = xp.asarray(omega, dtype=F.dtype, device=device)
    phase = xp.asarray(phase, dtype=F.dtype, device=device)
    return math.sqrt(2.0 / m) * xp.cos(omega @ F.T + phase)


def gaussian_kernel_features(xp: Any, F: Any, rank: int, *, approximation: str, seed: int) -> Any:
    """A rank-``rank`` feature map of ``exp(−|fᵢ − fⱼ|²/2)`` over the rows of F (P, f).

    Rows beyond the number of pixels (Nyström with rank > P) are zero.

    Returns
    -------
    array (rank, P)
    """
    rng = np.random.default_rng(seed)
    if approximation == "rff":
        return fourier_features(xp, F, rank, rng)
    m = min(rank, F.shape[0])
    if approximation == "nystrom-kmeans":
        landmarks = kmeans_landmarks(xp, F, m, rng)
    else:
        landmarks = _subsample(xp, F, m, rng)
    Phi = nystrom_features(xp, F, landmarks)
    if m < rank:
        padding = xp.zeros((rank - m, F.shape[0]), dtype=F.dtype, device=array_api_compat.device(F))
        Phi = xp.concat([Phi, padding])
    return Phi


def smoothness_rank(rank: int, w_smooth: float, w_appearance: float) -> int:
    """The rows given to the smoothness kernel: a quarter of the rank when both are on."""
    if w_smooth == 0:
        return 0
    if w_appearance == 0:
        return rank
    return max(1, rank // 4)


def dense_crf_features(
    xp: Any,
    image: Any,
    *,
    sxy: float,
    srgb: float,
    sxy_smooth: float,
    w_appearance: float,
    w_smooth: float,
    rank: int,
    approximation: str,
    seed: int,
    dtype: Any,
) -> Any:
    """``Φ`` (rank, P) with ``ΦᵀΦ ≈ w_a K_appearance + w_s K_smooth`` for one image (C, *spatial).

    The appearance rows are ``√w_a`` times a feature map of the appearance kernel, the
    smoothness rows (:func:`smoothness_rank`) ``√w_s`` times one of the smoothness kernel.
    """
    r_smooth = smoothness_rank(rank, w_smooth, w_appearance)
    blocks = []
    if rank > r_smooth:
        F = pixel_features(xp, image, sxy=sxy, srgb=srgb, dtype=dtype)
        Phi = gaussian_kernel_features(
            xp, F, rank - r_smooth, approximation=approximation, seed=seed
        )
        blocks.append(math.sqrt(w_appearance) * Phi)
    if r_smooth:
        F = pixel_features(xp, image, sxy=sxy_smooth, srgb=None, dtype=dtype)
        Phi = gaussian_kernel_features(xp, F, r_smooth, approximation=approximation, seed=seed + 1)
        blocks.append(math.sqrt(w_smooth) * Phi)
    return xp.concat(blocks, axis=0) if len(blocks) > 1 else blocks[0]


def normalized(xp: Any, Phi: Any, normalization: str) -> Any:
    """The features of ``Δ^{-1/2} W Δ^{-1/2}`` (``"symmetric"``) or of W (``"none"``).

    Degrees ``Δ = ΦᵀΦ1`` are computed in O(DP); those below :data:`DEGREE_FLOOR` times the
    largest are raised to it.
    """
    if normalization == "none":
        return Phi
    degrees = Phi.T @ xp.sum(Phi, axis=1)
    degrees = xp.maximum(degrees, DEGREE_FLOOR * xp.max(degrees))
    return Phi / xp.sqrt(degrees)[None, :]


def scaled_to_strength(xp: Any, Ahat: Any, *, strength: float, lam: float) -> Any:
    """``Â`` scaled so that ``‖Â‖₂² = strength · λ`` (Potts condition with margin 1 − strength).

    ``‖Â‖₂²`` is the largest eigenvalue of the D × D Gram ``ÂÂᵀ``, computed in float64.
    Works on a batch (..., D, P): each image is scaled by its own norm. A zero Â stays 0.
    """
    gram = xp.astype(Ahat @ xp.matrix_transpose(Ahat), xp.float64)
    mu = xp.linalg.eigvalsh(gram)[..., -1]
    factor = xp.where(mu > 0, xp.sqrt(strength * lam / xp.where(mu > 0, mu, 1.0)), 0.0)
    return Ahat * xp.astype(factor, Ahat.dtype)[..., None, None]


def check_kernel_options(approximation: str, normalization: str) -> None:
    """Raise a :class:`GCRFError` naming the choices when an option is unknown."""
    if approximation not in APPROXIMATIONS:
        raise GCRFError(
            f"approximation must be one of {', '.join(APPROXIMATIONS)}; got {approximation!r}"
        )
    if normalization not in NORMALIZATIONS:
        raise GCRFError(
            f"normalization must be one of {', '.join(NORMALIZATIONS)}; got {normalization!r}"
        )
