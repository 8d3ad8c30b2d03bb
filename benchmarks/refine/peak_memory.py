"""Peak memory of one refinement, measured in a fresh process (run as a module).

    python -m benchmarks.refine.peak_memory METHOD INPUTS.npz

prints JSON ``{"rss_bytes": ..., "tracemalloc_bytes": ...}``: the peak resident set size
during one call above the resident set size before it (Linux: the peak ``VmHWM`` is reset
through ``/proc/self/clear_refs`` just before the call), after the inputs are loaded and the
method has run once on a 24×24 crop of them; for ours also the peak of NumPy allocations
seen by ``tracemalloc`` (pydensecrf2 allocates in C++, which tracemalloc cannot see, so only
the RSS figure compares the two). ``METHOD`` is ``mf5``, ``mf10`` or ``ours``;
``INPUTS.npz`` holds ``probs`` (L, H, W) and ``image`` (3, H, W).
"""

from __future__ import annotations

import json
import sys
import tracemalloc
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from .contenders import meanfield, ours

STATUS = Path("/proc/self/status")


def _call(method: str, probs: np.ndarray, image: np.ndarray) -> np.ndarray:
    if method == "ours":
        return ours(probs, image)
    return meanfield(probs, image, iterations=int(method[2:]))


def _status_kb(field: str) -> int:
    for line in STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} missing from {STATUS}")


def main() -> None:
    method, inputs = sys.argv[1], np.load(sys.argv[2])
    probs, image = inputs["probs"], inputs["image"]
    with threadpool_limits(1):
        crop = np.ascontiguousarray(probs[:, :24, :24])
        _call(
            method, crop / crop.sum(axis=0, keepdims=True), np.ascontiguousarray(image[:, :24, :24])
        )
        before = _status_kb("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")
        tracemalloc.start()
        _call(method, probs, image)
        _, traced = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        peak = _status_kb("VmHWM")
    traced_bytes = traced if method == "ours" else None
    print(json.dumps({"rss_bytes": (peak - before) * 1024, "tracemalloc_bytes": traced_bytes}))


if __name__ == "__main__":
    main()
