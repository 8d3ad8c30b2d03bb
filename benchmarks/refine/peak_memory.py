"""Peak memory of one refinement, measured in a fresh process (run as a module).

    python -m benchmarks.refine.peak_memory METHOD INPUTS.npz

prints JSON ``{"rss_bytes": ..., "tracemalloc_bytes": ...}``: the peak resident set size
during one call above the resident set size before it (:func:`benchmarks.memory.rss_peak`),
after the inputs are loaded and the method has run once on a 24×24 crop of them; for ours
also the peak of NumPy allocations seen by ``tracemalloc`` (pydensecrf2 allocates in C++,
which tracemalloc cannot see, so only the RSS figure compares the two). ``METHOD`` is
``mf5``, ``mf10`` or ``ours``; ``INPUTS.npz`` holds ``probs`` (L, H, W) and ``image``
(3, H, W).
"""

from __future__ import annotations

import json
import sys

import numpy as np
from threadpoolctl import threadpool_limits

from ..memory import rss_peak, tracemalloc_peak
from .contenders import meanfield, ours


def _call(method: str, probs: np.ndarray, image: np.ndarray) -> np.ndarray:
    if method == "ours":
        return ours(probs, image)
    return meanfield(probs, image, iterations=int(method[2:]))


def main() -> None:
    method, inputs = sys.argv[1], np.load(sys.argv[2])
    probs, image = inputs["probs"], inputs["image"]
    traced: list[int] = []
    with threadpool_limits(1):
        crop = np.ascontiguousarray(probs[:, :24, :24])
        _call(
            method, crop / crop.sum(axis=0, keepdims=True), np.ascontiguousarray(image[:, :24, :24])
        )
        # tracemalloc runs inside the RSS window, as one call serves both meters.
        rss = rss_peak(lambda: traced.append(tracemalloc_peak(lambda: _call(method, probs, image))))
    traced_bytes = traced[0] if method == "ours" else None
    print(json.dumps({"rss_bytes": rss, "tracemalloc_bytes": traced_bytes}))


if __name__ == "__main__":
    main()
