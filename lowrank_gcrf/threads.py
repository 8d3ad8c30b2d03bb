"""BLAS threads of the library's own calls: one thread for the small products of the
iterations, the user's pool for the large ones.

Measured on 2 cores (``python -m benchmarks.speed.threads``): with every BLAS pool at its
default size, the small products of a solve (a CG iteration's ``(k, D) @ (D, D)``, the
triangular solves of a factor) ran many times slower than in one thread, because NumPy and
SciPy each load an OpenBLAS with its own pool and the hot path alternates between the two,
whose spinning threads fight over the cores (and with a framework's own threads in
training). A large matrix product over all pixels (the Gram ``UUᵀ``, ``2·D²·n`` flops)
gains from every core instead.

So the core's entry points (a solve, a vector-Jacobian product, a factorization, ``refine``)
run with every BLAS pool limited to one thread (:func:`core_method`, :func:`core_function`),
and NumPy's Grams large enough to pay for more threads (:func:`gram_threads`) run with
:func:`get_num_threads` of them, by default the size the pools had when the call
began. SciPy's pool (the Cholesky factorizations) stays at one thread: its threads would
spin on after a factorization against NumPy's next product. The user's settings are
restored when the call returns, whatever happens in it; nothing changes while the library
is not running. NumPy only: CuPy arrays need no CPU threads.
"""

from __future__ import annotations

import contextlib
import functools
import numbers
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import array_api_compat
import numpy as np
from threadpoolctl import ThreadpoolController

from .errors import GCRFError

#: A Gram ``UUᵀ`` (or ``UᵀU``) runs with :func:`get_num_threads` BLAS threads when its
#: smaller side is at least this: measured in the full general and Potts solves at the
#: paper's size on 2 cores (``benchmarks.speed.threads``), a second thread cost 10 % at
#: D = 128, nothing at D = 256, and saved 22–28 % (general) and 7–8 % (Potts) at
#: D = 512–1024. Smaller Grams, and every other product, run in one thread.
GRAM_THREADS_MIN_RANK = 512

_F = TypeVar("_F", bound=Callable[..., Any])


class _BlasPools:
    """The BLAS pools of the process, limited while the library runs.

    Each thread's innermost request counts (a large product inside a one-thread call asks
    for more); concurrent calls from several threads (a distributed strategy's replicas)
    share the pools, which run with the smallest of their requests. The sizes found before
    the first request return after the last.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._controller: ThreadpoolController | None = None
        self._requests: dict[int, list[int]] = {}
        self._saved: list[tuple[Any, int]] = []
        self.user_threads = 1

    def _libraries(self) -> list[Any]:
        if self._controller is None:
            # Scanning the loaded libraries takes milliseconds: once, at the first call,
            # when NumPy's and SciPy's BLAS are both loaded (the core imports them).
            self._controller = ThreadpoolController()
        return [lib for lib in self._controller.lib_controllers if lib.user_api == "blas"]

    @contextlib.contextmanager
    def limited(self, threads: int | None, library: str | None = None) -> Iterator[None]:
        """The pools at ``threads`` (None: as the user left them) while the block runs;
        with ``library``, only the pools whose path holds it (the others keep this
        thread's previous request)."""
        me = threading.get_ident()
        with self._lock:
            if not self._requests:
                self._saved = [(lib, lib.num_threads) for lib in self._libraries()]
                self.user_threads = max((n for _, n in self._saved), default=1)
            count = self.user_threads if threads is None else threads
            self._requests.setdefault(me, []).append((count, library))
            self._apply()
        try:
            yield
        finally:
            with self._lock:
                stack = self._requests[me]
                stack.pop()
                if not stack:
                    del self._requests[me]
                self._apply()

    def _apply(self) -> None:
        if not self._requests:
            for lib, threads in self._saved:
                lib.set_num_threads(threads)
            self._saved = []
            return
        for lib, saved in self._saved:
            threads = min(
                _effective(stack, lib.filepath, saved) for stack in self._requests.values()
            )
            if lib.num_threads != threads:
                lib.set_num_threads(threads)

    def separate(self, library: str) -> bool:
        """Whether ``library`` has a BLAS pool of its own, apart from the others'."""
        paths = [lib.filepath for lib, _ in self._saved]
        return len(paths) > 1 and any(library in path for path in paths)

    def active(self) -> bool:
        """Whether this thread is inside a library call."""
        return threading.get_ident() in self._requests


def _effective(stack: list[tuple[int, str | None]], path: str, saved: int) -> int:
    """The thread count a thread's requests give the pool at ``path``: its innermost
    request that names no library or this one's."""
    for count, library in reversed(stack):
        if library is None or library in path:
            return count
    return saved


_POOLS = _BlasPools()
_num_threads: int | None = None


def set_num_threads(threads: int | None) -> None:
    """Set the number of BLAS threads of the library's large products.

    Parameters
    ----------
    threads : int ≥ 1 or None
        The threads of the products large enough to gain from them (Gram matrices whose
        smaller side is at least :data:`~lowrank_gcrf.threads.GRAM_THREADS_MIN_RANK`, in
        NumPy's pool); every other product of the library runs in one thread, which is
        fastest for the small products of the iterations. None (the default) takes the size
        the BLAS pools have when a call begins: the user's setting (``OPENBLAS_NUM_THREADS``,
        ``threadpoolctl``) or the number of cores. 1 runs everything in one thread (for
        example beside a framework whose own threads use the cores).

    Notes
    -----
    The limits hold only while the library runs and are undone when each call returns;
    the process's BLAS settings are never changed behind the caller's back.

    Examples
    --------
    >>> import lowrank_gcrf as lg
    >>> lg.set_num_threads(1)
    >>> lg.get_num_threads()
    1
    >>> lg.set_num_threads(None)
    """
    global _num_threads
    if threads is not None and (
        isinstance(threads, bool) or not isinstance(threads, numbers.Integral) or threads < 1
    ):
        raise GCRFError(f"threads must be a positive integer or None, got {threads!r}")
    _num_threads = None if threads is None else int(threads)


def get_num_threads() -> int | None:
    """The number of BLAS threads of the library's large products (None: automatic, the
    pools' size when a call begins); see :func:`set_num_threads`.

    Examples
    --------
    >>> import lowrank_gcrf as lg
    >>> lg.get_num_threads() is None   # automatic, the default
    True
    """
    return _num_threads


def one_blas_thread(xp: Any) -> contextlib.AbstractContextManager[None]:
    """One BLAS thread while the block runs, on NumPy (``xp`` its namespace)."""
    return _POOLS.limited(1) if _uses_cpu_blas(xp) else contextlib.nullcontext()


def core_method(method: _F) -> _F:
    """Run ``method`` of an operator on NumPy arrays (its ``xp``) with one BLAS thread."""

    @functools.wraps(method)
    def limited(self: Any, *args: Any, **kwargs: Any) -> Any:
        with one_blas_thread(getattr(self, "xp", None)):
            return method(self, *args, **kwargs)

    return limited  # type: ignore[return-value]


def core_function(function: _F) -> _F:
    """Run ``function`` with one BLAS thread when its first argument is a NumPy array."""

    @functools.wraps(function)
    def limited(*args: Any, **kwargs: Any) -> Any:
        first = args[0] if args else None
        with one_blas_thread(np if array_api_compat.is_numpy_array(first) else None):
            return function(*args, **kwargs)

    return limited  # type: ignore[return-value]


def gram_threads(xp: Any, shape: tuple[int, ...]) -> contextlib.AbstractContextManager[None]:
    """:func:`get_num_threads` BLAS threads in NumPy's pool for the Gram of a U of
    ``shape`` (..., r, n) within a core call, if it is large enough to gain from them
    (:data:`GRAM_THREADS_MIN_RANK`). SciPy's pool stays as it is: raising it too woke its
    threads, which spun against the Gram's and cost the gain (measured: a 1024×1681 Gram in
    21 ms with both pools at 2 threads, 13 ms with NumPy's alone). Where one BLAS serves
    both, its pool is raised."""
    if not (_uses_cpu_blas(xp) and min(shape[-2:]) >= GRAM_THREADS_MIN_RANK and _POOLS.active()):
        return contextlib.nullcontext()  # outside a core call the pools are the user's
    return _POOLS.limited(_num_threads, "numpy" if _POOLS.separate("numpy") else None)


def _uses_cpu_blas(xp: Any) -> bool:
    return xp is not None and "numpy" in getattr(xp, "__name__", "")
