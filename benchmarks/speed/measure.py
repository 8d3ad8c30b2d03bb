"""Where the speed benchmark runs: device arrays, synchronisation, solvers, memory meters
and thread pools.

:class:`Device` hides the difference between the CPU (NumPy, SciPy, torch on CPU) and a
CUDA GPU (CuPy, cupyx.scipy, torch on CUDA): array transfer, synchronisation before a clock
is read (:func:`benchmarks.timing.time_call`), the sparse-CG and dense-Cholesky kernels of
the SciPy contenders, and the peak-memory meter of each array library
(:mod:`benchmarks.memory`). :func:`threads` pins the thread pools a run measures with.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from .. import memory


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
                return memory.TRACEMALLOC, memory.tracemalloc_peak
            return memory.CUPY_HOOK, memory.cupy_peak
        if self.name == "cpu":
            return memory.TORCH_PROFILER, memory.torch_cpu_peak
        return memory.TORCH_CUDA, memory.torch_cuda_peak


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
