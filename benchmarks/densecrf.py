"""The dense-CRF contender: mean field of the fully connected CRF (Krähenbühl and Koltun) by
pydensecrf2, single-threaded C++ with a permutohedral lattice.

The kernels take the names of :func:`lowrank_gcrf.refine.refine`: an appearance (bilateral)
kernel of position bandwidth ``sxy`` and colour bandwidth ``srgb`` with weight
``w_appearance``, and a smoothness (Gaussian) kernel of bandwidth ``sxy_smooth`` with weight
``w_smooth``; pydensecrf2 calls the weights ``compat`` (Potts compatibilities).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def unavailable() -> str | None:
    """Why pydensecrf2 cannot be used here (``None`` when it can)."""
    try:
        import pydensecrf.densecrf  # noqa: F401
    except ImportError as exc:
        return f"pydensecrf2 is not importable ({exc}); pip install -e '.[densecrf]'"
    return None


def dense_crf(
    probs: np.ndarray,
    rgb: np.ndarray,
    *,
    sxy: float,
    srgb: float,
    w_appearance: float,
    sxy_smooth: float,
    w_smooth: float,
) -> Any:
    """pydensecrf2's ``DenseCRF2D``, its unary and both kernels set: ready for inference.

    Parameters
    ----------
    probs : ndarray (L, H, W) or (L, H·W), float32
        Class probabilities; the unary energy is their negative logarithm.
    rgb : ndarray (H, W, 3), uint8
        The image.
    sxy, srgb, w_appearance, sxy_smooth, w_smooth : float
        The kernels (module docstring).
    """
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    height, width = rgb.shape[:2]
    crf = dcrf.DenseCRF2D(width, height, probs.shape[0])
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs)))
    crf.addPairwiseGaussian(sxy=sxy_smooth, compat=w_smooth)
    crf.addPairwiseBilateral(
        sxy=sxy, srgb=srgb, rgbim=np.ascontiguousarray(rgb), compat=w_appearance
    )
    return crf


def mean_field(probs: np.ndarray, rgb: np.ndarray, *, iterations: int, **kernels: float) -> Any:
    """Marginals (L, H, W) float32 after ``iterations`` mean-field steps (:func:`dense_crf`)."""
    labels, height, width = probs.shape
    crf = dense_crf(probs, rgb, **kernels)
    return np.asarray(crf.inference(iterations), dtype=np.float32).reshape(labels, height, width)
