"""Peak memory of one call, by the allocator that serves it.

Every meter reports the peak of the bytes allocated *during* the call above those live
before it (outputs included), so the numbers compare across libraries:

* NumPy (CPU): ``tracemalloc`` — NumPy reports its data buffers to it;
* torch on CPU: torch's allocator is invisible to ``tracemalloc``, so the allocation and
  free events of ``torch.profiler(profile_memory=True)`` are replayed in time order;
* CuPy: a ``cupy.cuda.MemoryHook`` counting live bytes; torch on CUDA:
  ``torch.cuda.max_memory_allocated``;
* any native code (pydensecrf2's C++): the process's resident set size, through Linux's
  peak ``VmHWM``, reset just before the call.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

#: Meter names, as reported in the results.
TRACEMALLOC = "tracemalloc"
TORCH_PROFILER = "torch.profiler"
CUPY_HOOK = "cupy MemoryHook"
TORCH_CUDA = "torch.cuda.max_memory_allocated"

STATUS = Path("/proc/self/status")


def tracemalloc_peak(fn: Callable[[], Any]) -> int:
    """Peak bytes that ``fn()`` allocated through Python's allocators (NumPy included)."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null: Kineto writes a line to it at every profiler
    start and stop, whatever its log-level variables say, burying the progress bar."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def torch_cpu_peak(fn: Callable[[], Any]) -> int:
    """Peak bytes that ``fn()`` allocated through torch's CPU allocator."""
    from torch.profiler import ProfilerActivity, profile

    with (
        _native_stderr_silenced(),
        profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof,
    ):
        fn()
    events = sorted(
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]"
    )
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def torch_cuda_peak(fn: Callable[[], Any]) -> int:
    """Peak bytes that ``fn()`` allocated through torch's CUDA allocator."""
    import torch

    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def cupy_peak(fn: Callable[[], Any]) -> int:
    """Peak bytes that ``fn()`` allocated through CuPy's memory pool."""
    import cupy

    class PeakHook(cupy.cuda.MemoryHook):
        name = "PeakHook"

        def __init__(self) -> None:
            self.live = 0
            self.peak = 0

        def malloc_postprocess(self, device_id, size, mem_size, mem_ptr, pmem_id):
            self.live += mem_size
            self.peak = max(self.peak, self.live)

        def free_postprocess(self, device_id, mem_size, mem_ptr, pmem_id):
            self.live -= mem_size

    hook = PeakHook()
    with hook:
        fn()
        cupy.cuda.get_current_stream().synchronize()
    return hook.peak


def _status_kb(field: str) -> int:
    for line in STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} missing from {STATUS}")


def rss_peak(fn: Callable[[], Any]) -> int:
    """Peak growth (bytes) of the resident set size during ``fn()`` (Linux only).

    The kernel's high-water mark ``VmHWM`` is reset (``/proc/self/clear_refs``) just before
    the call, so the peak is the call's; memory freed earlier but kept by the allocators
    makes the growth a lower bound. Run it in a fresh process after a warm-up call on small
    inputs, so that imports and one-time initialisation are not counted.
    """
    before = _status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    fn()
    return (_status_kb("VmHWM") - before) * 1024
