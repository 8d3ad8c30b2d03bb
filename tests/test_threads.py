"""The library's BLAS threads (``lowrank_gcrf.threads``): one thread for the core's calls,
the user's pool (or ``set_num_threads``) for its large products, and the process's settings
untouched outside them, whatever happens inside."""

from __future__ import annotations

import contextlib
import threading

import numpy as np
import pytest
from threadpoolctl import ThreadpoolController, threadpool_limits

import lowrank_gcrf as lg
import lowrank_gcrf.woodbury
from lowrank_gcrf import threads
from lowrank_gcrf.testing import make_general_system, make_potts_system


def blas_threads() -> list[int]:
    """The thread count of every BLAS pool now."""
    return list(blas_pools().values())


def blas_pools() -> dict[str, int]:
    """The thread count of every BLAS pool now, by the library's path."""
    return {
        lib.filepath: lib.num_threads
        for lib in ThreadpoolController().lib_controllers
        if lib.user_api == "blas"
    }


@pytest.fixture
def two_thread_pools():
    """The user's pools at 2 threads (the size this machine's defaults give them), and the
    library's setting back to automatic afterwards."""
    with threadpool_limits(limits=2, user_api="blas"):
        yield
    lg.set_num_threads(None)


@pytest.fixture
def seen_threads(monkeypatch):
    """The pools' thread counts inside every Gram the core computes, with U's shape."""
    seen = []
    real = threads.gram_threads

    @contextlib.contextmanager
    def spy(xp, shape):
        with real(xp, shape):
            seen.append((blas_pools(), shape))
            yield

    monkeypatch.setattr(lowrank_gcrf.woodbury, "gram_threads", spy)
    return seen


def test_the_users_pools_are_untouched_outside_the_library(two_thread_pools):
    system = make_potts_system(0, rank=4, pixels=30, labels=3, kappa=10.0)
    before = blas_threads()
    lg.solve_potts(system.embeddings, system.b, system.lam)
    assert blas_threads() == before == [2] * len(before)


def test_a_failing_call_restores_the_pools(two_thread_pools):
    system = make_potts_system(0, rank=4, pixels=30, labels=3, kappa=10.0)
    with pytest.raises(lg.IndefiniteSystemError):
        lg.solve_potts(system.embeddings * 10, system.b, system.lam)
    assert set(blas_threads()) == {2}


def test_small_products_run_in_one_thread(two_thread_pools, monkeypatch):
    """Inside a solve every pool has one thread, except for the large products."""
    inside = []
    matvec = lg.GeneralOperator.matvec

    def spy(self, v):
        inside.append(blas_threads())
        return matvec(self, v)

    monkeypatch.setattr(lg.GeneralOperator, "matvec", spy)
    system = make_general_system(0, rank=3, n=40, kappa=10.0)
    lg.solve(system.embeddings, system.b, system.lam, method="cg")
    assert inside and all(set(counts) == {1} for counts in inside)


def numpy_pool(pools: dict[str, int]) -> int:
    """The thread count of NumPy's pool (the only one where NumPy and SciPy share one)."""
    own = [n for path, n in pools.items() if "numpy" in path]
    return own[0] if own else next(iter(pools.values()))


def test_large_grams_use_the_users_pool_and_set_num_threads(two_thread_pools, seen_threads):
    """A Gram whose smaller side is at least GRAM_THREADS_MIN_RANK runs with NumPy's pool at
    the user's size, or at set_num_threads(n), every other pool at one thread; a smaller
    Gram in one thread."""
    rank = threads.GRAM_THREADS_MIN_RANK
    rng = np.random.default_rng(0)
    large = rng.standard_normal((rank, rank + 100)).astype(np.float32) / (4 * rank)
    small = rng.standard_normal((rank // 2, rank + 100)).astype(np.float32) / (4 * rank)
    for A in (large, small):
        lg.solve(A, np.ones(A.shape[1], np.float32), 1.0, method="direct")
    lg.set_num_threads(1)
    lg.solve(large, np.ones(large.shape[1], np.float32), 1.0, method="direct")
    (large_default, _), (small_default, _), (large_one, _) = seen_threads
    assert numpy_pool(large_default) == 2
    assert sorted(large_default.values()) == [1] * (len(large_default) - 1) + [2]
    assert set(small_default.values()) == {1} and set(large_one.values()) == {1}


def test_concurrent_calls_restore_the_pools(two_thread_pools):
    """Calls from several threads share the pools; the user's sizes return after the last."""
    systems = [
        make_potts_system(seed, rank=4, pixels=40, labels=3, kappa=10.0) for seed in range(4)
    ]
    errors = []

    def solve(system):
        try:
            for _ in range(20):
                lg.solve_potts(system.embeddings, system.b, system.lam)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    workers = [threading.Thread(target=solve, args=(s,)) for s in systems]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert not errors
    assert set(blas_threads()) == {2}


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_set_num_threads_refuses_what_is_not_a_positive_integer(bad):
    with pytest.raises(lg.GCRFError, match="threads must be a positive integer or None"):
        lg.set_num_threads(bad)
    assert lg.get_num_threads() is None


@pytest.mark.parametrize("kernel", ["lattice", "landmarks"])
def test_the_adapters_refine_builds_its_appearance_in_one_thread(
    two_thread_pools, monkeypatch, kernel
):
    """The PyTorch adapter's refine builds the image's lattice or embeddings in the core with
    one BLAS thread, as the core's refine does (the pools contended with torch's), and leaves
    the user's pools as they were."""
    torch = pytest.importorskip("torch")
    import lowrank_gcrf.adapters.bridge as bridge
    from lowrank_gcrf.adapters.torch import refine

    inside = []
    for name in ("appearance_lattices", "image_embeddings"):
        real = getattr(bridge, name)

        def spy(*args, real=real, **kwargs):
            inside.append(blas_threads())
            return real(*args, **kwargs)

        monkeypatch.setattr(bridge, name, spy)
    probs = torch.softmax(torch.randn(3, 8, 9, generator=torch.Generator().manual_seed(0)), 0)
    image = torch.randint(0, 256, (3, 8, 9), dtype=torch.uint8)
    before = blas_threads()
    refine(probs, image, appearance_kernel=kernel, rank=4, landmarks=8)
    assert len(inside) == 1 and set(inside[0]) == {1}
    assert blas_threads() == before == [2] * len(before)
