"""The CG loop itself: the single-system path against the batched one, and its failures.

A NumPy solve of one system runs a loop whose per-system scalars are Python floats and
whose updates are BLAS ``axpy`` calls; every other case runs the batched loop. Both
implement the same recurrence but round differently (``axpy`` fuses the multiply-add), and
finite-precision CG amplifies such differences once it has lost orthogonality. So the two
paths are compared by what CG guarantees: each stops with a recursive residual below
``tol·‖b‖``, which (the recursive and the true residual agreeing to rounding here) bounds
each solution's error by ``κ·tol`` relative to ‖x‖, so they differ by at most ``2κ·tol``;
and their step counts differ only where a rounding difference moved the stopping
threshold's crossing (measured: at most 5 steps in 200, over 400 random systems).
"""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from model_cases import each_model

import lowrank_gcrf as lg
from lowrank_gcrf.cg import cg_sweep, inner


def _diagonal_system(rng, n, kappa):
    d = np.geomspace(1.0, kappa, n)
    rng.shuffle(d)
    return d, rng.standard_normal((1, n))


def _sweep(d, b, tol_factor=1e-10, budget=10_000):
    """cg_sweep from x = 0 on the systems ``diag(d) x = b`` (b: batch + (1, n))."""
    rr = inner(np, b, b)
    return cg_sweep(
        np, lambda v: d * v, np.zeros_like(b), b, rr, rr > 0, tol_factor**2 * rr, budget
    )


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(2, 200),
    log_kappa=st.floats(0.0, 3.0),
)
def test_single_system_path_matches_batched_loop(seed, n, log_kappa):
    rng = np.random.default_rng(seed)
    kappa = 10.0**log_kappa
    d, b = _diagonal_system(rng, n, kappa)
    _, other = _diagonal_system(rng, n, kappa)
    tol = 1e-10
    x_one, steps_one = _sweep(d, b, tol)
    x_batch, steps_batch = _sweep(d, np.stack([b, other]), tol)
    assert steps_one.shape == () and steps_batch.shape == (2,)
    assert abs(int(steps_one) - int(steps_batch[0])) <= 2 + int(steps_batch[0]) // 20
    for x in (x_one, x_batch[0]):
        # Each solved the system (true residual at the target, up to rounding) …
        assert np.linalg.norm(b - d * x) <= 2 * tol * np.linalg.norm(b)
    # … so they agree to what the stopping test guarantees.
    assert np.linalg.norm(x_one - x_batch[0]) <= 2 * kappa * tol * np.linalg.norm(x_one)


@pytest.mark.parametrize("batch", [(), (1,), (2,)], ids=["unbatched", "batch1", "batch2"])
def test_breakdown_raises_in_both_paths(batch):
    """An indefinite matvec makes pᵀMp ≤ 0: IndefiniteSystemError, never an answer."""
    rng = np.random.default_rng(0)
    d = np.concatenate([np.ones(5), -np.ones(5)])
    b = np.broadcast_to(rng.standard_normal((1, 10)), (*batch, 1, 10)).copy()
    b[..., 5:] *= 3.0
    with pytest.raises(lg.IndefiniteSystemError, match="broke down"):
        _sweep(d, b)


@pytest.mark.parametrize("batch", [(), (2,)], ids=["unbatched", "batch2"])
def test_inputs_untouched_and_result_not_a_view(batch):
    rng = np.random.default_rng(1)
    d, b = _diagonal_system(rng, 30, 10.0)
    b = np.broadcast_to(b, (*batch, 1, 30)).copy()
    before = b.copy()
    x, _ = _sweep(d, b)
    np.testing.assert_array_equal(b, before)
    assert not np.shares_memory(x, b)


@pytest.mark.parametrize("policy", ["raise", "warn", "ignore"])
@each_model
def test_only_raise_and_warn_diagnose(monkeypatch, case, policy):
    """``on_failure="ignore"`` returns what it has, as documented: the model's diagnosis of a
    failed solve (for Potts and signed an eigensolve, which may raise IndefiniteSystemError)
    is for "raise" and "warn" only."""
    system = case.make(0, rank=4, pixels=10, labels=3, kappa=100.0)
    op = case.operator(system.embeddings, system.lam, system.num_labels)
    calls = []
    monkeypatch.setattr(type(op), "_diagnose_failure", lambda self, info: calls.append(1))
    with pytest.warns(lg.ConvergenceWarning) if policy == "warn" else nullcontext():
        try:
            x, info = op.solve(system.b, method="cg", maxiter=1, on_failure=policy)
        except lg.ConvergenceError:
            assert policy == "raise"
        else:
            assert policy != "raise" and not bool(info.converged) and x.shape == system.b.shape
    assert len(calls) == (policy != "ignore")


@each_model
def test_numpy_batch_solved_system_by_system_equals_each_alone(case):
    """A NumPy batch of distinct embeddings is solved one system after another; each
    result and iteration count is that system's own solve (float64, κ ≤ 100 and λ spread
    over two decades: 1e-12)."""
    system = case.make(2, rank=4, pixels=10, labels=3, kappa=100.0, batch_shape=(3,))
    U, b = system.embeddings, system.b
    lam = system.lam * np.array([1.0, 10.0, 100.0])  # a larger λ keeps every model definite
    x, info = case.operator(U, lam, system.num_labels).solve(b, method="cg", rtol=1e-10)
    for i in range(3):
        alone = case.operator(U[i], lam[i], system.num_labels)
        x_i, info_i = alone.solve(b[i], method="cg", rtol=1e-10)
        np.testing.assert_allclose(x[i], x_i, rtol=1e-12, atol=1e-14)
        assert int(info.iterations[i]) == int(info_i.iterations)
