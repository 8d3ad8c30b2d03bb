"""Backward pass: VJPs against finite differences and dense torch autograd, reuse, scaling.

Finite differences: central differences of f(θ) = ⟨gx, x(θ)⟩ along random directions as
large as θ itself, in float64, extrapolated from steps h and h/2 (Richardson), so the
truncation error is O((h·rank·κ)⁴): a relative step h moves M by about h·rank·κ relative to
its smallest eigenvalue (near the Potts boundary λ ≈ μ_max likewise). With h = 1e-3/κ that
is ≈ 1e-10, and the rounding error, about ε·κ·|f|/h = ε·κ²·1e3·|f|, stays below 2e-8·|f|
for κ ≤ 10^2.5. We assert 1e-6 relative agreement.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import lowrank_gcrf as lg
from lowrank_gcrf.testing import (
    dense_matrix,
    make_general_system,
    make_potts_system,
    potts_dense_matrix,
)

METHODS = ["cg", "direct"]
TIGHT = dict(rtol=1e-12)


def _system(potts: bool, seed: int, batch_shape, kappa=100.0, dtype=np.float64):
    if potts:
        return make_potts_system(
            seed,
            rank=3,
            pixels=7,
            labels=3,
            kappa=kappa,
            batch_shape=batch_shape,
            dtype=dtype,
            per_batch_lam=True,
        )
    return make_general_system(
        seed, rank=3, n=11, kappa=kappa, batch_shape=batch_shape, dtype=dtype, per_batch_lam=True
    )


def _solve(potts, U, b, lam, method):
    fn = lg.solve_potts if potts else lg.solve
    return fn(U, b, lam, method=method, **TIGHT)


def _vjp(potts, U, x, gx, lam, method):
    fn = lg.solve_potts_vjp if potts else lg.solve_vjp
    return fn(U, x, gx, lam, method=method, **TIGHT)


def richardson_central_difference(f, h: float) -> float:
    """f'(0) from central differences at h and h/2, extrapolated: error O(h⁴)."""
    coarse = (f(h) - f(-h)) / (2 * h)
    fine = (f(h / 2) - f(-h / 2)) / h
    return (4 * fine - coarse) / 3


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("potts", [False, True], ids=["general", "potts"])
@given(
    seed=st.integers(0, 2**31),
    batch_shape=st.sampled_from([(), (2,), (2, 2)]),
    log10_kappa=st.floats(0.5, 2.5),
)
def test_vjp_matches_central_differences(method, potts, seed, batch_shape, log10_kappa):
    system = _system(potts, seed, batch_shape, kappa=10**log10_kappa)
    U, b, lam = system.embeddings, system.b, np.asarray(system.lam)
    rng = np.random.default_rng(seed + 1)
    gx = rng.standard_normal(b.shape)
    x = _solve(potts, U, b, lam, method)
    gU, gb, glam = _vjp(potts, U, x, gx, lam, method)
    assert gU.shape == U.shape and gb.shape == b.shape and glam.shape == batch_shape

    # Directions as large as the point itself: then a step t changes M by about
    # 2t‖U‖²/λ_min ≤ 2t·rank·κ relative, which the step h below keeps small.
    dU, db = rng.standard_normal(U.shape), rng.standard_normal(b.shape)
    dU *= np.linalg.norm(U) / np.linalg.norm(dU)
    db *= np.linalg.norm(b) / np.linalg.norm(db)
    dlam = rng.uniform(-1, 1, batch_shape) * lam

    def f(t):
        return float(np.sum(gx * _solve(potts, U + t * dU, b + t * db, lam + t * dlam, "direct")))

    h = 1e-3 / system.kappa
    numeric = richardson_central_difference(f, h)
    analytic = np.sum(gU * dU) + np.sum(gb * db) + np.sum(glam * dlam)
    assert analytic == pytest.approx(numeric, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("potts", [False, True], ids=["general", "potts"])
def test_vjp_entrywise_central_differences(method, potts):
    """Every entry of ∂L/∂U, ∂L/∂b and ∂L/∂λ on one small batched problem."""
    system = _system(potts, 7, (2,))
    U, b, lam = system.embeddings, system.b, system.lam
    gx = np.random.default_rng(3).standard_normal(b.shape)
    gU, gb, glam = _vjp(potts, U, _solve(potts, U, b, lam, method), gx, lam, method)
    h = 1e-6

    def loss(U_, b_, lam_):
        return float(np.sum(gx * _solve(potts, U_, b_, lam_, "direct")))

    for grad, arr, which in ((gU, U, 0), (gb, b, 1), (glam, lam, 2)):
        numeric = np.zeros_like(arr)
        for idx in np.ndindex(arr.shape):
            e = np.zeros_like(arr)
            e[idx] = h
            args_p, args_m = [U, b, lam], [U, b, lam]
            args_p[which], args_m[which] = arr + e, arr - e
            numeric[idx] = (loss(*args_p) - loss(*args_m)) / (2 * h)
        np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("potts", [False, True], ids=["general", "potts"])
def test_vjp_matches_dense_torch_autograd(method, potts):
    """Against torch.linalg.solve on the explicitly formed matrix, differentiated by autograd."""
    torch = pytest.importorskip("torch")
    system = _system(potts, 11, (3,), kappa=300.0)
    U, b, lam = system.embeddings, system.b, system.lam
    gx = np.random.default_rng(5).standard_normal(b.shape)
    gU, gb, glam = _vjp(potts, U, _solve(potts, U, b, lam, method), gx, lam, method)

    Ut = torch.tensor(U, requires_grad=True)
    bt = torch.tensor(b, requires_grad=True)
    lt = torch.tensor(lam, requires_grad=True)
    K = Ut.transpose(-1, -2) @ Ut
    if potts:
        L = b.shape[-2]
        C = torch.ones(L, L, dtype=torch.float64) - torch.eye(L, dtype=torch.float64)
        K = torch.einsum("kj,...pq->...kpjq", C, K).reshape(*b.shape[:-2], b[0].size, -1)
    M = K + lt[..., None, None] * torch.eye(K.shape[-1], dtype=torch.float64)
    x = torch.linalg.solve(M, bt.reshape(*b.shape[:1], -1, 1))[..., 0].reshape(b.shape)
    (x * torch.tensor(gx)).sum().backward()
    np.testing.assert_allclose(gU, Ut.grad.numpy(), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(gb, bt.grad.numpy(), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(glam, lt.grad.numpy(), rtol=1e-8, atol=1e-10)


def test_dense_references_agree_with_matvec():
    """The testing module's dense matrices are the operators' matvecs (label-major)."""
    rng = np.random.default_rng(0)
    A = rng.standard_normal((2, 3, 8))
    v = rng.standard_normal((2, 8))
    op = lg.GeneralOperator(A, 0.7)
    np.testing.assert_allclose(
        dense_matrix(A, 0.7) @ v[..., None], op.matvec(v[..., None, :])[..., 0, :, None]
    )
    Ahat = rng.standard_normal((3, 5))
    V = rng.standard_normal((4, 5))
    np.testing.assert_allclose(
        potts_dense_matrix(Ahat, 0.7, 4) @ V.reshape(-1),
        lg.PottsOperator(Ahat, 0.7, 4).matvec(V).reshape(-1),
    )


# -- factorization reuse ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("potts", "per_factorization"), [(False, 1), (True, 2)], ids=["general", "potts"]
)
def test_backward_of_direct_reuses_the_factorization(monkeypatch, potts, per_factorization):
    """Forward + backward with method="direct" factors the capacitance(s) exactly once when
    the backward is handed the forward's factorization (solver state is a value)."""
    from lowrank_gcrf import woodbury

    calls = []
    original = woodbury.cholesky_factor

    def counting(xp, matrix):
        calls.append(matrix.shape)
        return original(xp, matrix)

    monkeypatch.setattr(woodbury, "cholesky_factor", counting)
    system = _system(potts, 1, (2,))
    op = (
        lg.PottsOperator(system.embeddings, system.lam, system.num_labels)
        if potts
        else lg.GeneralOperator(system.embeddings, system.lam)
    )
    x, info = op.solve(system.b, method="direct", **TIGHT)
    assert len(calls) == per_factorization
    gx = np.ones_like(x)
    op.vjp(x, gx, method="direct", factorization=info.factorization, **TIGHT)
    op.vjp(x, 2 * gx, method="direct", factorization=info.factorization, **TIGHT)
    assert len(calls) == per_factorization


def test_cg_backward_reports_and_raises():
    system = _system(False, 2, (2,), kappa=1e4)
    op = lg.GeneralOperator(system.embeddings, system.lam)
    x, _ = op.solve(system.b, method="cg", **TIGHT)
    gx = np.random.default_rng(0).standard_normal(x.shape)
    *_, info = op.vjp(x, gx, method="cg", **TIGHT)
    assert info.method == "cg" and np.all(info.iterations > 0) and np.all(info.converged)
    assert np.all(info.residual <= 1e-12)
    with pytest.raises(lg.ConvergenceError, match="after 1 CG iterations"):
        op.vjp(x, gx, method="cg", maxiter=1, **TIGHT)


# -- cotangent scaling -----------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("potts", [False, True], ids=["general", "potts"])
def test_tiny_cotangent_float32(method, potts):
    system = _system(potts, 4, (2,), kappa=10.0, dtype=np.float32)
    U, b, lam = system.embeddings, system.b, system.lam
    x = _solve_f32(potts, U, b, lam, method)
    unit = np.random.default_rng(0).standard_normal(b.shape).astype(np.float32)
    unit /= np.linalg.norm(unit.reshape(2, -1), axis=-1).reshape((2,) + (1,) * (b.ndim - 1))
    big = _vjp_f32(potts, U, x, unit, lam, method)
    tiny = _vjp_f32(potts, U, x, unit * np.float32(1e-30), lam, method)
    for t, g in zip(tiny, big, strict=True):
        assert np.all(np.isfinite(t))
        expected = np.float32(1e-30) * g
        # Normwise float32 rounding: entries that cancel can differ more in relative terms.
        np.testing.assert_allclose(t, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def _solve_f32(potts, U, b, lam, method):
    fn = lg.solve_potts if potts else lg.solve
    return fn(U, b, lam, method=method, rtol=1e-5)


def _vjp_f32(potts, U, x, gx, lam, method):
    fn = lg.solve_potts_vjp if potts else lg.solve_vjp
    return fn(U, x, gx, lam, method=method, rtol=1e-5)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("potts", [False, True], ids=["general", "potts"])
def test_zero_cotangent_gives_exact_zeros(method, potts):
    system = _system(potts, 9, (2,))
    U, b, lam = system.embeddings, system.b, system.lam
    x = _solve(potts, U, b, lam, method)
    gx = np.zeros_like(b)
    gx[0] = 1.0
    gU, gb, glam = _vjp(potts, U, x, gx, lam, method)
    assert np.all(gU[1] == 0) and np.all(gb[1] == 0) and glam[1] == 0
    assert np.any(gU[0] != 0)


# -- memory at the paper's size ----------------------------------------------------------------


@pytest.mark.parametrize(("potts", "rank"), [(False, 128), (True, 128), (True, 1024)], ids=str)
def test_forward_backward_memory_paper_size(potts, rank):
    """Forward + backward (direct) in float32 peaks well under 10× the inputs' bytes."""
    import tracemalloc

    P, L = 41 * 41, 21
    if potts:
        system = make_potts_system(0, rank=rank, pixels=P, labels=L, kappa=1e3, dtype=np.float32)
        op = lg.PottsOperator(system.embeddings, system.lam, L)
    else:
        system = make_general_system(0, rank=rank, n=L * P, kappa=1e3, dtype=np.float32)
        op = lg.GeneralOperator(system.embeddings, system.lam)
    inputs = system.embeddings.nbytes + system.b.nbytes
    gx = np.ones_like(system.b)
    tracemalloc.start()
    x, _ = op.solve(system.b, method="direct", rtol=1e-4)
    gU, *_ = op.vjp(x, gx, method="direct", rtol=1e-4)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert np.all(np.isfinite(gU)) and gU.dtype == np.float32
    assert peak < 10 * inputs, f"peak {peak / 1e6:.1f} MB vs inputs {inputs / 1e6:.1f} MB"


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("potts", [False, True], ids=["general", "potts"])
def test_vjp_same_in_every_array_library(ns, method, potts):
    """The backward pass uses only portable calls: array-api-strict gives NumPy's answer."""
    system = _system(potts, 12, (2,))
    U, b, lam = system.embeddings, system.b, system.lam
    gx = np.random.default_rng(1).standard_normal(b.shape)
    x = _solve(potts, U, b, lam, method)
    expected = _vjp(potts, U, x, gx, lam, method)
    got = _vjp(potts, ns(U), ns(x), ns(gx), ns(lam), method)
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(ns.numpy(g), e, rtol=1e-10, atol=1e-12)
