"""How well each rank-D feature map reproduces the dense CRF's kernel, against the exact one.

On small images (the exact P × P kernel must fit in memory) the appearance + smoothness
kernel ``W = w_a K_a + w_s K_s`` is formed exactly and compared with ``ΦᵀΦ`` from
:func:`lowrank_gcrf.image_kernels.dense_crf_features`, before and after the symmetric
normalisation ``Δ^{-1/2} W Δ^{-1/2}`` (each with its own degrees: exact for W, ``ΦᵀΦ1`` for
the approximation). The error is ``‖W − ΦᵀΦ‖_F / ‖W‖_F``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lowrank_gcrf.image_kernels import dense_crf_features, normalized, pixel_features


def exact_kernel(image: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    """The dense P × P kernel ``w_a K_appearance + w_s K_smooth`` in float64."""

    def gaussian(F: np.ndarray) -> np.ndarray:
        sq = (F * F).sum(1)
        return np.exp(-0.5 * np.maximum(sq[:, None] + sq[None, :] - 2 * F @ F.T, 0.0))

    Fa = pixel_features(np, image, sxy=p["sxy"], srgb=p["srgb"], dtype=np.float64)
    Fs = pixel_features(np, image, sxy=p["sxy_smooth"], srgb=None, dtype=np.float64)
    return p["w_appearance"] * gaussian(Fa) + p["w_smooth"] * gaussian(Fs)


def _symmetric(W: np.ndarray) -> np.ndarray:
    d = W.sum(1)
    return W / np.sqrt(np.outer(d, d))


def kernel_errors(
    image: np.ndarray, p: dict[str, Any], *, rank: int, approximation: str, seed: int = 0
) -> dict[str, float]:
    """Relative Frobenius errors of one approximation on one image (C, *spatial)."""
    W = exact_kernel(image, p)
    Phi = dense_crf_features(
        np, image, rank=rank, approximation=approximation, seed=seed, dtype=np.float64, **p
    )
    S_hat = normalized(np, Phi, "symmetric")
    return {
        "raw": float(np.linalg.norm(W - Phi.T @ Phi) / np.linalg.norm(W)),
        "symmetric": float(
            np.linalg.norm(_symmetric(W) - S_hat.T @ S_hat) / np.linalg.norm(_symmetric(W))
        ),
    }
