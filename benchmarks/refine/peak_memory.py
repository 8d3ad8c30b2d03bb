"""Peak memory of one refinement, measured in a fresh process (run as a module).

    python -m benchmarks.refine.peak_memory METHOD INPUTS.npz

prints JSON ``{"rss_bytes": ..., "tracemalloc_bytes": ...}``: the growth of the process's
peak resident set size (``resource.getrusage(...).ru_maxrss``) over one call, after the
inputs exist and every library is loaded and warmed up on a tiny image, and for ours also the
peak of NumPy allocations seen by ``tracemalloc`` (pydensecrf2 allocates in C++, which
tracemalloc cannot see, so only the RSS figure compares the two). ``METHOD`` is ``mf5``,
``mf10`` or ``ours``; ``INPUTS.npz`` holds ``probs`` and ``image`` (written by the caller,
so that generating the scene does not raise the peak before the call).
"""

from __future__ import annotations

import json
import resource
import sys
import tracemalloc

import numpy as np
from threadpoolctl import threadpool_limits

from .contenders import meanfield, ours
from .scenes import make_scene


def _call(method: str, probs: np.ndarray, image: np.ndarray) -> np.ndarray:
    if method == "ours":
        return ours(probs, image)
    return meanfield(probs, image, iterations=int(method[2:]))


def main() -> None:
    method, inputs = sys.argv[1], np.load(sys.argv[2])
    with threadpool_limits(1):
        warm = make_scene("test", 24, 0)
        _call(method, warm.unaries["coarse"], warm.image)
        probs, image = inputs["probs"], inputs["image"]
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        tracemalloc.start()
        _call(method, probs, image)
        _, traced = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    traced_bytes = traced if method == "ours" else None
    print(json.dumps({"rss_bytes": (after - before) * 1024, "tracemalloc_bytes": traced_bytes}))


if __name__ == "__main__":
    main()
