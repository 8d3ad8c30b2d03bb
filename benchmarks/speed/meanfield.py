"""The speed of mean-field inference of the fully connected CRF (:mod:`benchmarks.densecrf`).

The paper quotes 200 ms per 321×321 image for dense-CRF mean field; this measures the same
code (``pydensecrf2``, single-threaded C++ with a permutohedral lattice) at the paper's
network output size (41×41) and at full image size (321×321), 21 labels, with DeepLab's
usual kernels (Gaussian: sxy 3, compat 3; bilateral: sxy 80, srgb 13, compat 10).

The image is a piecewise-constant colour scene (a coarse random grid upsampled) with mild
noise, because the lattice's cost grows with the number of distinct (position, colour)
cells and pure noise would overstate it. The unaries come from random softmax scores.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np

from ..densecrf import dense_crf

#: the kernels named above, in :mod:`benchmarks.densecrf`'s terms
KERNELS = {"sxy": 80.0, "srgb": 13.0, "w_appearance": 10.0, "sxy_smooth": 3.0, "w_smooth": 3.0}


def scene(side: int, labels: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An RGB image (side, side, 3) uint8 and softmax scores (labels, side·side) float32."""
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 256, size=(8, 8, 3))
    image = np.repeat(np.repeat(cells, -(-side // 8), axis=0), -(-side // 8), axis=1)
    image = image[:side, :side] + rng.normal(0.0, 4.0, size=(side, side, 3))
    image = np.ascontiguousarray(np.clip(image, 0, 255).astype(np.uint8))
    scores = rng.dirichlet(np.ones(labels), size=side * side).T.astype(np.float32)
    return image, scores


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
        crf = dense_crf(scores, image, **KERNELS)
        built = time.perf_counter()
        crf.inference(iterations)
        done = time.perf_counter()
        spent += done - start
        if attempt:
            setups.append(built - start)
            inferences.append(done - built)
        if attempt and spent > budget_s:
            break
    setup, inference = statistics.median(setups), statistics.median(inferences)
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
