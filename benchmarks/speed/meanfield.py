"""Mean-field inference of the fully connected CRF (Krähenbühl and Koltun) via pydensecrf2.

The paper quotes 200 ms per 321×321 image for dense-CRF mean field; this measures the same
code (``pydensecrf2``, single-threaded C++ with a permutohedral lattice) at the paper's
network output size (41×41) and at full image size (321×321), 21 labels, with DeepLab's
usual kernels (Gaussian: sxy 3, compat 3; bilateral: sxy 80, srgb 13, compat 10).

The image is a piecewise-constant colour scene (a coarse random grid upsampled) with mild
noise, because the lattice's cost grows with the number of distinct (position, colour)
cells and pure noise would overstate it. The unaries come from random softmax scores.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from .measure import median


def unavailable() -> str | None:
    """Why pydensecrf2 cannot be used here (``None`` when it can)."""
    try:
        import pydensecrf.densecrf  # noqa: F401
    except ImportError as exc:
        return f"pydensecrf2 is not importable ({exc}); pip install cython pydensecrf2"
    return None


def scene(side: int, labels: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An RGB image (side, side, 3) uint8 and softmax scores (labels, side·side) float32."""
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 256, size=(8, 8, 3))
    image = np.repeat(np.repeat(cells, -(-side // 8), axis=0), -(-side // 8), axis=1)
    image = image[:side, :side] + rng.normal(0.0, 4.0, size=(side, side, 3))
    image = np.ascontiguousarray(np.clip(image, 0, 255).astype(np.uint8))
    scores = rng.dirichlet(np.ones(labels), size=side * side).T.astype(np.float32)
    return image, scores


def _crf(image: np.ndarray, scores: np.ndarray) -> Any:
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    side = image.shape[0]
    crf = dcrf.DenseCRF2D(side, side, scores.shape[0])
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(scores)))
    crf.addPairwiseGaussian(sxy=3, compat=3)
    crf.addPairwiseBilateral(sxy=80, srgb=13, rgbim=image, compat=10)
    return crf


def measure(
    side: int, labels: int, iterations: int, *, repeats: int, budget_s: float
) -> dict[str, Any]:
    """Median setup (lattice construction) and inference times of one configuration.

    Returns
    -------
    dict with ``side``, ``pixels``, ``labels``, ``iterations``, ``setup_s``,
    ``inference_s``, ``total_s`` (medians) and ``repeats``.
    """
    image, scores = scene(side, labels)
    setups, inferences = [], []
    spent = 0.0
    # One warm-up, then repeat within the budget.
    for attempt in range(repeats + 1):
        start = time.perf_counter()
        crf = _crf(image, scores)
        built = time.perf_counter()
        crf.inference(iterations)
        done = time.perf_counter()
        spent += done - start
        if attempt:
            setups.append(built - start)
            inferences.append(done - built)
        if attempt and spent > budget_s:
            break
    setup, inference = median(setups), median(inferences)
    return {
        "side": side,
        "pixels": side * side,
        "labels": labels,
        "iterations": iterations,
        "setup_s": setup,
        "inference_s": inference,
        "total_s": setup + inference,
        "repeats": len(setups),
    }
