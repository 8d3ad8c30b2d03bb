"""Rank-D feature maps of the dense CRF's Gaussian kernels, as Potts embeddings.

The fully connected CRF of Krähenbühl and Koltun couples pixels i and j by

* appearance: ``w_a · exp(−|pᵢ−pⱼ|²/2θα² − |Iᵢ−Iⱼ|²/2θβ²)``,
* smoothness: ``w_s · exp(−|pᵢ−pⱼ|²/2θγ²)``,

with p the pixel position and I its colour. Both are Gaussian kernels
``k(f, g) = exp(−|f − g|²/2)`` of scaled features ``f = (p/θα, I/θβ)`` and ``f = p/θγ``, so a
feature map ``Φ`` (m × P) with ``ΦᵀΦ ≈ W`` gives Potts G-CRF embeddings Â whose pairwise
matrix ``ÂᵀÂ`` approximates the dense CRF's kernel (Eq. 11–12).

Approximations (:data:`APPROXIMATIONS`), each from m landmarks or random features
(:mod:`lowrank_gcrf.kernel_approximation`):

* ``"nystrom-kmeans"`` (default): Nyström on landmarks placed by k-means in the joint feature
  space (low-dimensional: 1–3 position and C colour dimensions), so that landmarks follow
  the image's actual colours and regions;
* ``"nystrom-random"``: Nyström on pixels drawn uniformly;
* ``"rff"``: random Fourier features ``√(2/m) cos(Ωf + β)``, ``Ω ~ N(0, I)`` (Rahimi & Recht).

Normalisation (:data:`NORMALIZATIONS`): ``"symmetric"`` replaces W by ``Δ^{-1/2} W Δ^{-1/2}``
with the degrees ``Δ = diag(W1)``, as in spectral clustering; its largest eigenvalue is 1
for the exact kernel, so every image gets the same propagation strength whatever its size
and content. ``"none"`` keeps W.

Rank: the m-dimensional map is compressed to the top D ≤ m eigen-directions of the
(normalised) approximate kernel (:func:`potts_embeddings`), so that the solve pays for D
while the approximation has m landmarks. Finally the embeddings are scaled so that
``‖Â‖₂² = strength · λ`` exactly (from the eigenvalues of the D × D Gram ``ÂÂᵀ``).

The m × P kernel values are computed in chunks of :data:`CHUNK_PIXELS` pixels. The
symmetric normalisation needs them twice (the degrees, then the embeddings): up to
:data:`KERNEL_CACHE_BYTES` the first pass keeps its chunks for the second, beyond that they
are computed again rather than held whole.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import array_api_compat
import numpy as np

from .errors import GCRFError
from .kernel_approximation import KernelBlock, kernel_block

#: Kernel approximations, the default first.
APPROXIMATIONS = ("nystrom-kmeans", "nystrom-random", "rff")
#: Kernel normalisations, the default first.
NORMALIZATIONS = ("symmetric", "none")
#: Random pixels on which the top eigen-directions of the kernel are found when compressing
#: m landmarks to a smaller rank (all pixels of smaller images).
SAMPLE_PIXELS = 8192
#: Degrees below this fraction of the mean degree are raised to it (approximate kernels can
#: give a pixel a degree near 0 or, for random features, below 0).
DEGREE_FLOOR = 1e-3
#: Pixels per chunk of kernel values (m × CHUNK_PIXELS at a time): 4 MiB at m = 128 in
#: float32, the size from which NumPy asks for transparent huge pages, so that kept chunks
#: (below) cost far fewer page faults; no slower to compute than smaller chunks.
CHUNK_PIXELS = 8192
#: Kernel values (m × P) up to this size are kept from the degrees' pass for the embeddings'
#: instead of computed again (61 MiB for a 300 × 400 image at m = 128 in float32): their
#: exponentials took about a sixth of ``refine``'s time, twice.
KERNEL_CACHE_BYTES = 128 * 2**20


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


@dataclass(frozen=True)
class FactoredFeatures:
    """A feature map ``Φ = T K`` in factors: Φ (m × P) and K are never held whole.

    Attributes
    ----------
    T : array (m, m), float64
        Block diagonal: each block's Nyström transform (identity for random features)
        times the square root of its kernel weight.
    blocks : tuple of KernelBlock
        K stacks their kernel values, block after block.
    """

    T: Any
    blocks: tuple[KernelBlock, ...]

    @property
    def num_pixels(self) -> int:
        return int(self.blocks[0].features.shape[0])

    def values(self, xp: Any, rows: Any) -> Any:
        """K at the pixels ``rows`` (a slice or an index array): (m, n)."""
        parts = []
        for block in self.blocks:
            F = (
                block.features[rows, :]
                if isinstance(rows, slice)
                else xp.take(block.features, rows, axis=0)
            )
            parts.append(block.values(xp, F))
        return parts[0] if len(parts) == 1 else xp.concat(parts, axis=0)


def smoothness_share(landmarks: int, w_smooth: float, w_appearance: float) -> int:
    """The landmarks given to the smoothness kernel: a quarter when both kernels are on."""
    if w_smooth == 0:
        return 0
    if w_appearance == 0:
        return landmarks
    return max(1, landmarks // 4)


def dense_crf_features(
    xp: Any,
    image: Any,
    *,
    sxy: float,
    srgb: float,
    sxy_smooth: float,
    w_appearance: float,
    w_smooth: float,
    landmarks: int,
    approximation: str,
    seed: int,
    dtype: Any,
) -> FactoredFeatures:
    """``Φ = T K`` with ``ΦᵀΦ ≈ w_a K_appearance + w_s K_smooth`` for one image (C, *spatial).

    The smoothness kernel gets :func:`smoothness_share` of the landmarks; T is block
    diagonal with ``√w_a`` and ``√w_s`` times the blocks' transforms. The features and
    kernel values are in ``dtype``, or in float64 where the scaled features are too large
    for it (:func:`kernel_dtype`).

    Raises
    ------
    GCRFError
        A bandwidth so small for this image that even float64 cannot evaluate the kernel.
    """
    m_smooth = smoothness_share(landmarks, w_smooth, w_appearance)
    scales = []
    if landmarks > m_smooth:
        scales.append(appearance_scales(xp, image, sxy=sxy, srgb=srgb))
    if m_smooth:
        scales.append((("sxy_smooth", position_extent(image), sxy_smooth),))
    dtype = kernel_dtype(xp, dtype, scales)
    blocks, transforms = [], []
    if landmarks > m_smooth:
        F = pixel_features(xp, image, sxy=sxy, srgb=srgb, dtype=dtype)
        block, T = kernel_block(xp, F, landmarks - m_smooth, approximation=approximation, seed=seed)
        blocks.append(block)
        transforms.append(math.sqrt(w_appearance) * T)
    if m_smooth:
        F = pixel_features(xp, image, sxy=sxy_smooth, srgb=None, dtype=dtype)
        block, T = kernel_block(xp, F, m_smooth, approximation=approximation, seed=seed + 1)
        blocks.append(block)
        transforms.append(math.sqrt(w_smooth) * T)
    return FactoredFeatures(_block_diagonal(xp, transforms), tuple(blocks))


#: A kernel's coordinate groups as ``(name of the bandwidth, extent, bandwidth)``.
Scales = tuple[tuple[str, float, float], ...]


def position_extent(image: Any) -> float:
    """A bound on the pixel positions' norm in ``image`` (C, *spatial)."""
    return math.hypot(*(n - 1 for n in image.shape[1:]))


def appearance_scales(xp: Any, image: Any, *, sxy: float, srgb: float) -> Scales:
    """The appearance kernel's coordinate groups (positions, colours) in ``image``."""
    return (("sxy", position_extent(image), sxy), ("srgb", colour_extent(xp, image), srgb))


def feature_norm(scales: Scales) -> float:
    """A bound on the norm of a kernel's scaled features: its groups' extents over their
    bandwidths, combined."""
    return math.hypot(*(extent / bandwidth for _, extent, bandwidth in scales))


def colour_extent(xp: Any, image: Any) -> float:
    """A bound on the colour vectors' norm in ``image`` (C, *spatial): √C · max |I|."""
    top = max(abs(float(xp.max(image))), abs(float(xp.min(image))))
    return math.sqrt(image.shape[0]) * top


def kernel_dtype(xp: Any, dtype: Any, scales: list[Scales]) -> Any:
    """The dtype to compute the kernels in: ``dtype``, else float64, else a GCRFError.

    Each kernel's features f are its coordinates' extents divided by their bandwidths,
    ``scales`` giving ``(name, extent, bandwidth)`` per coordinate group and kernel. The
    Gaussian's exponent ``−|f − g|²/2`` is computed as ``f·g − |f|²/2 − |g|²/2`` (one matrix
    product), which rounds by about ε·|f|²: beyond ``|f| = 1/√ε`` that exceeds 1 and the
    kernel values are wrong by more than a factor e (NaN and inf further on). Random
    features' phases ``Ωf + β`` are held to the same bound, with room to spare. A dtype
    whose bound the features pass is used; float32 features beyond it are computed in
    float64, whose bound, about 6.7e7, only a bandwidth many orders of magnitude below
    the image's resolution breaks.
    """
    magnitudes = [feature_norm(kernel) for kernel in scales]
    for candidate in (dtype, xp.float64):
        limit = 1.0 / math.sqrt(float(xp.finfo(candidate).eps))
        if all(magnitude <= limit for magnitude in magnitudes):
            return candidate
    raise bandwidth_too_small(
        scales,
        limit,
        "(1/√ε of float64) at which the rounding of the Gaussian kernel's exponent "
        "−|f − g|²/2 exceeds 1",
    )


def bandwidth_too_small(scales: list[Scales], limit: float, why: str) -> GCRFError:
    """The error naming the bandwidth of ``scales`` (as :func:`kernel_dtype`'s) whose
    features reach furthest beyond ``limit`` (|f| at most; ``why`` says what breaks there),
    and a value that keeps every coordinate group within it."""
    name, extent, bandwidth = max(
        (term for kernel in scales for term in kernel), key=lambda term: term[1] / term[2]
    )
    what = "colour vectors" if name == "srgb" else "pixel positions"
    return GCRFError(
        f"{name} = {bandwidth!r} is too small for this image: the {what} reach {extent:.4g}, "
        f"{extent / bandwidth:.3g} bandwidths, beyond the {limit:.3g} {why}; use "
        f"{name} ≥ {math.sqrt(2.0) * extent / limit:.3g}"
    )


def _block_diagonal(xp: Any, matrices: list[Any]) -> Any:
    if len(matrices) == 1:
        return matrices[0]
    a, b = matrices
    device = array_api_compat.device(a)
    top = xp.concat([a, xp.zeros((a.shape[0], b.shape[1]), dtype=a.dtype, device=device)], axis=1)
    bottom = xp.concat(
        [xp.zeros((b.shape[0], a.shape[1]), dtype=a.dtype, device=device), b], axis=1
    )
    return xp.concat([top, bottom], axis=0)


def _chunks(n: int) -> list[slice]:
    return [slice(start, min(start + CHUNK_PIXELS, n)) for start in range(0, n, CHUNK_PIXELS)]


def potts_embeddings(
    xp: Any, features: FactoredFeatures, *, rank: int, normalization: str, seed: int
) -> Any:
    """Embeddings Â (rank, P): the top ``rank`` eigen-directions of the (normalised)
    approximate kernel ``ΦᵀΦ``, before the strength scaling.

    * ``"symmetric"``: degrees ``Δ = ΦᵀΦ1 = Kᵀ Tᵀ T (K1)`` (one pass over the pixels for
      K1), floored at :data:`DEGREE_FLOOR` times their mean ``‖TK1‖²/P``; the kernel is
      ``Δ^{-1/2} ΦᵀΦ Δ^{-1/2}``. ``"none"``: ``ΦᵀΦ``. (Degrees from a pixel sample were
      tried and cost validation mIoU: their errors spread the clusters' top eigenvalues, so
      that after the strength scaling most clusters propagate less than asked.)
    * When Φ has more than ``rank`` rows, ``Â = V_Dᵀ T K Δ^{-1/2}`` with V_D the top ``rank``
      eigenvectors of the m × m Gram of ``T K Δ^{-1/2}`` on :data:`SAMPLE_PIXELS` random
      pixels (all of a smaller image): the best rank-D part of the kernel as that sample
      sees it. Otherwise ``Â = T K Δ^{-1/2}``, zero-padded to ``rank`` rows.
    """
    T = features.T
    P = features.num_pixels
    dtype = features.blocks[0].features.dtype
    device = array_api_compat.device(T)
    weights = floor = None
    kept = None
    if normalization == "symmetric":
        chunks = (features.values(xp, c) for c in _chunks(P))
        if T.shape[1] * P * xp.finfo(dtype).bits // 8 <= KERNEL_CACHE_BYTES:
            chunks = kept = list(chunks)
        k = sum(xp.astype(xp.sum(K, axis=1), xp.float64) for K in chunks)
        Tk = T @ k
        weights = xp.astype(xp.matrix_transpose(T) @ Tk, dtype)
        floor = DEGREE_FLOOR * float(xp.sum(Tk * Tk)) / P
        if not floor >= float(xp.finfo(dtype).smallest_normal):
            # The approximate kernel vanishes at every pixel to the precision of dtype
            # (k-means centres fall between the pixels of a kernel narrower than their
            # spacing): it couples no pixels, and degrees that underflow cannot normalise it.
            return xp.zeros((rank, P), dtype=dtype, device=device)

    def normalised(product: Any, K: Any) -> Any:
        """``product`` (·, n), a product with the kernel values K (m, n), times ``Δ^{-1/2}``
        of K's pixels: applied after the product, to its fewer rows."""
        if weights is None:
            return product
        d = xp.maximum(xp.matrix_transpose(K) @ weights, floor)
        return product / xp.astype(xp.sqrt(d), product.dtype)[None, :]

    if T.shape[0] > rank:
        rng = np.random.default_rng(seed + 2)
        columns = np.sort(rng.permutation(P)[:SAMPLE_PIXELS])
        sample = features.values(xp, xp.asarray(columns, device=device))
        projected = normalised(T @ xp.astype(sample, xp.float64), sample)
        _, V = xp.linalg.eigh(projected @ xp.matrix_transpose(projected))
        T = xp.matrix_transpose(V[:, -rank:]) @ T
    B = xp.astype(T, dtype)
    values = kept if kept is not None else (features.values(xp, c) for c in _chunks(P))
    Ahat = xp.concat([normalised(B @ K, K) for K in values], axis=1)
    if Ahat.shape[0] < rank:
        padding = xp.zeros((rank - Ahat.shape[0], P), dtype=dtype, device=device)
        Ahat = xp.concat([Ahat, padding], axis=0)
    return Ahat


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
