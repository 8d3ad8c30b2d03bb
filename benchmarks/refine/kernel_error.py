"""How well each rank-D embedding reproduces the dense CRF's kernel, against the exact one.

On small images (the exact P × P kernel must fit in memory) the appearance + smoothness
kernel ``W = w_a K_a + w_s K_s`` is formed exactly and compared with ``ÂᵀÂ`` from
:func:`lowrank_gcrf.image_kernels.potts_embeddings` (before the strength scaling): without
normalisation against W, with the symmetric one against ``Δ^{-1/2} W Δ^{-1/2}`` (exact
degrees). The error is the relative Frobenius error ``‖X − ÂᵀÂ‖_F / ‖X‖_F``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lowrank_gcrf.image_kernels import dense_crf_features, pixel_features, potts_embeddings


def exact_kernels(image: np.ndarray, p: dict[str, Any]) -> dict[str, np.ndarray]:
    """The dense P × P kernel ``w_a K_appearance + w_s K_smooth`` (``"none"``) and its
    symmetric normalisation (``"symmetric"``), in float64."""

    def gaussian(F: np.ndarray) -> np.ndarray:
        sq = (F * F).sum(1)
        return np.exp(-0.5 * np.maximum(sq[:, None] + sq[None, :] - 2 * F @ F.T, 0.0))

    Fa = pixel_features(np, image, sxy=p["sxy"], srgb=p["srgb"], dtype=np.float64)
    Fs = pixel_features(np, image, sxy=p["sxy_smooth"], srgb=None, dtype=np.float64)
    W = p["w_appearance"] * gaussian(Fa) + p["w_smooth"] * gaussian(Fs)
    d = W.sum(1)
    return {"none": W, "symmetric": W / np.sqrt(np.outer(d, d))}


def kernel_error(
    image: np.ndarray,
    exact: dict[str, np.ndarray],
    p: dict[str, Any],
    *,
    rank: int,
    landmarks: int,
    approximation: str,
    normalization: str,
    seed: int = 0,
) -> float:
    """Relative Frobenius error of one rank-D embedding on one image (C, *spatial)."""
    features = dense_crf_features(
        np,
        image,
        landmarks=landmarks,
        approximation=approximation,
        seed=seed,
        dtype=np.float64,
        **p,
    )
    Ahat = potts_embeddings(np, features, rank=rank, normalization=normalization, seed=seed)
    X = exact[normalization]
    return float(np.linalg.norm(X - Ahat.T @ Ahat) / np.linalg.norm(X))
