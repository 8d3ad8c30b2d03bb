"""Where a benchmark runs and how it is measured: device arrays, wall time and peak memory.

:class:`Device` hides the difference between the CPU (NumPy, SciPy, torch on CPU) and a
CUDA GPU (CuPy, cupyx.scipy, torch on CUDA): array transfer, synchronisation before a clock
is read, the sparse-CG and dense-Cholesky kernels of the SciPy contenders, and a peak-memory
meter per array library:

* NumPy (CPU): ``tracemalloc`` — NumPy reports its data buffers to it;
* torch on CPU: torch's allocator is invisible to ``tracemalloc``, so the allocation and
  free events of ``torch.profiler(profile_memory=True)`` are replayed in time order;
* CuPy: a ``cupy.cuda.MemoryHook`` counting live bytes; torch on CUDA:
  ``torch.cuda.max_memory_allocated``.

Every meter reports the peak of the bytes allocated *during* the call above those live before
it (outputs included), so the numbers compare across libraries.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

#: Memory meter names, as reported in the results.
TRACEMALLOC = "tracemalloc"
TORCH_PROFILER = "torch.profiler"
CUPY_HOOK = "cupy MemoryHook"
TORCH_CUDA = "torch.cuda.max_memory_allocated"


class DeviceUnavailableError(RuntimeError):
    """The requested device (CUDA) cannot be used here; the message says why."""


class Device:
    """A place to run the benchmark: ``"cpu"`` or ``"cuda"``.

    Parameters
    ----------
    name : {"cpu", "cuda"}

    Raises
    ------
    DeviceUnavailableError
        For ``"cuda"`` without CuPy or without a visible GPU.
    """

    def __init__(self, name: str):
        if name not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {name!r}")
        self.name = name
        if name == "cpu":
            import scipy.linalg
            import scipy.sparse.linalg

            self.xp = np
            self.sparse_linalg = scipy.sparse.linalg
            self.linalg = scipy.linalg
            return
        try:
            import cupy
            import cupyx.scipy.linalg
            import cupyx.scipy.sparse.linalg
        except ImportError as exc:
            raise DeviceUnavailableError(
                "--device cuda needs CuPy: pip install -e '.[cuda12]' (or '.[cuda13]') on a "
                f"machine with an NVIDIA GPU ({exc})"
            ) from exc
        try:
            count = cupy.cuda.runtime.getDeviceCount()
        except cupy.cuda.runtime.CUDARuntimeError as exc:
            raise DeviceUnavailableError(f"--device cuda: no usable CUDA device ({exc})") from exc
        if count == 0:
            raise DeviceUnavailableError("--device cuda: CuPy sees no CUDA device")
        self.xp = cupy
        self.sparse_linalg = cupyx.scipy.sparse.linalg
        self.linalg = cupyx.scipy.linalg

    @property
    def torch_device(self) -> str:
        """The torch device string of this device."""
        return self.name

    def asarray(self, a: np.ndarray) -> Any:
        """A NumPy array on this device (a no-op on the CPU)."""
        return a if self.xp is np else self.xp.asarray(a)

    def to_numpy(self, a: Any) -> np.ndarray:
        """An array of this device's library (or a torch tensor) as NumPy."""
        if hasattr(a, "detach"):
            return a.detach().cpu().numpy()
        if self.xp is np:
            return np.asarray(a)
        return self.xp.asnumpy(a)

    def sync(self) -> None:
        """Wait for queued GPU work, so that a clock read after it is honest."""
        if self.name == "cuda":
            self.xp.cuda.get_current_stream().synchronize()
            # torch queues its own work; a run without torch contenders need not import it.
            torch = sys.modules.get("torch")
            if torch is not None and torch.cuda.is_available():
                torch.cuda.synchronize()

    def cg(self, operator: Any, b: Any, rtol: float, maxiter: int) -> tuple[Any, int, int]:
        """SciPy's (or cupyx's) CG on one system: ``(x, info, iterations)``."""
        count = [0]

        def callback(_: Any) -> None:
            count[0] += 1

        # SciPy (1.12) and CuPy (13) renamed tol to rtol; older CuPy only has tol.
        parameters = inspect.signature(self.sparse_linalg.cg).parameters
        key = "rtol" if "rtol" in parameters else "tol"
        x, info = self.sparse_linalg.cg(
            operator, b, atol=0.0, maxiter=maxiter, callback=callback, **{key: rtol}
        )
        return x, int(info), count[0]

    def spd_solver(self, matrix: Any) -> Callable[[Any], Any]:
        """Factor a dense SPD matrix once by Cholesky; return ``v ↦ matrix⁻¹ v``."""
        if self.name == "cpu":
            factor = self.linalg.cho_factor(matrix, lower=True, check_finite=False)
            return lambda v: self.linalg.cho_solve(factor, v, check_finite=False)
        lower = self.xp.linalg.cholesky(matrix)

        def solve(v: Any) -> Any:
            y = self.linalg.solve_triangular(lower, v, lower=True)
            return self.linalg.solve_triangular(lower, y, lower=True, trans="T")

        return solve

    def memory_meter(self, library: str) -> tuple[str, Callable[[Callable[[], Any]], int]]:
        """``(meter name, peak(fn))`` for calls that allocate with ``library``.

        Parameters
        ----------
        library : {"array", "torch"}
            ``"array"``: this device's array library (NumPy or CuPy); ``"torch"``: torch.
        """
        if library == "array":
            if self.name == "cpu":
                return TRACEMALLOC, _tracemalloc_peak
            return CUPY_HOOK, _cupy_peak
        if self.name == "cpu":
            return TORCH_PROFILER, _torch_cpu_peak
        return TORCH_CUDA, _torch_cuda_peak


def _tracemalloc_peak(fn: Callable[[], Any]) -> int:
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


def _torch_cpu_peak(fn: Callable[[], Any]) -> int:
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


def _torch_cuda_peak(fn: Callable[[], Any]) -> int:
    import torch

    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def _cupy_peak(fn: Callable[[], Any]) -> int:
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


def time_call(
    fn: Callable[[], Any],
    device: Device,
    *,
    repeats: int,
    budget_s: float,
    min_time_s: float = 0.2,
    max_repeats: int = 25,
) -> tuple[list[float], Any]:
    """Wall times (``time.perf_counter``, seconds) of ``fn()`` after one warm-up call.

    The warm-up call's result is returned. It is also the only sample when it alone took
    longer than ``budget_s`` (a second run would teach nothing: nothing is compiled or
    cached across calls). Otherwise calls repeat until there are ``repeats`` samples and
    ``min_time_s`` has been spent, up to ``max_repeats`` samples, and never past
    ``budget_s``: millisecond calls get many samples, because on a shared machine a
    preempted call costs a whole scheduler time slice (a bimodal distribution whose median
    needs more than a handful of samples to settle).
    """
    start = time.perf_counter()
    result = fn()
    device.sync()
    first = time.perf_counter() - start
    if first > budget_s:
        return [first], result
    samples: list[float] = []
    spent = first
    while len(samples) < max_repeats and (
        not samples or (spent < budget_s and (len(samples) < repeats or spent < min_time_s))
    ):
        start = time.perf_counter()
        fn()
        device.sync()
        elapsed = time.perf_counter() - start
        samples.append(elapsed)
        spent += elapsed
    return samples, result


def median(samples: list[float]) -> float:
    """The median of timing samples."""
    return statistics.median(samples)


@contextlib.contextmanager
def threads(count: int) -> Iterator[dict[str, Any]]:
    """Pin every BLAS/OpenMP pool (threadpoolctl) and torch's intra-op pool to ``count``.

    Yields the thread configuration to record: the pools as threadpoolctl reports them
    inside the limit (library, version, threads, architecture — e.g. OPENBLAS_CORETYPE's
    effect) and the relevant environment variables.
    """
    import torch
    from threadpoolctl import threadpool_info, threadpool_limits

    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        with threadpool_limits(limits=count):
            pools = [
                {
                    key: pool.get(key)
                    for key in (
                        "user_api",
                        "internal_api",
                        "prefix",
                        "version",
                        "num_threads",
                        "architecture",
                        "threading_layer",
                    )
                }
                for pool in threadpool_info()
            ]
            env = {
                key: os.environ.get(key)
                for key in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OPENBLAS_CORETYPE")
            }
            yield {"threads": count, "torch_threads": count, "pools": pools, "environment": env}
    finally:
        torch.set_num_threads(previous)
