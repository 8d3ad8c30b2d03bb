"""Backward pass: VJPs against finite differences and dense torch autograd, reuse, scaling.

Finite differences: central differences of f(θ) = ⟨gx, x(θ)⟩ along random directions as
large as θ itself, in float64, extrapolated from steps h and h/2 (Richardson), so the
truncation error is O((h·rank·κ)⁴): a relative step h moves M by about h·rank·κ relative to
its smallest eigenvalue (near the Potts boundary λ ≈ μ_max likewise). With h = 1e-3/κ that
is ≈ 1e-10, and the rounding error, about ε·κ·|f|/h = ε·κ²·1e3·|f|, stays below 2e-8·|f|
for κ ≤ 10^2.5. We assert 1e-6 relative agreement.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from model_cases import ATTRACTIVE_DIM, REGISTRY, each_model

import lowrank_gcrf as lg

METHODS = ["cg", "direct"]
TIGHT = dict(rtol=1e-12)


def _system(case, seed: int, batch_shape, kappa=100.0, dtype=np.float64):
    """D = 3 and N = 12 (general, signed with E = 2 more rows) or P = 4, L = 3 (Potts)."""
    return case.make(
        seed, rank=3, pixels=4, labels=3, kappa=kappa, batch_shape=batch_shape, dtype=dtype,
        per_batch_lam=True,
    )  # fmt: skip


def _solve(case, U, b, lam, method):
    return case.solve(U, b, lam, method=method, **TIGHT)


def _vjp(case, U, x, gx, lam, method):
    return case.vjp(U, x, gx, lam, method=method, **TIGHT)


def richardson_central_difference(f, h: float) -> float:
    """f'(0) from central differences at h and h/2, extrapolated: error O(h⁴)."""
    coarse = (f(h) - f(-h)) / (2 * h)
    fine = (f(h / 2) - f(-h / 2)) / h
    return (4 * fine - coarse) / 3


@pytest.mark.parametrize("method", METHODS)
@each_model
@given(
    seed=st.integers(0, 2**31),
    batch_shape=st.sampled_from([(), (2,), (2, 2)]),
    log10_kappa=st.floats(0.5, 2.5),
)
def test_vjp_matches_central_differences(method, case, seed, batch_shape, log10_kappa):
    system = _system(case, seed, batch_shape, kappa=10**log10_kappa)
    U, b, lam = system.embeddings, system.b, np.asarray(system.lam)
    rng = np.random.default_rng(seed + 1)
    gx = rng.standard_normal(b.shape)
    x = _solve(case, U, b, lam, method)
    gU, gb, glam = _vjp(case, U, x, gx, lam, method)
    assert gU.shape == U.shape and gb.shape == b.shape and glam.shape == batch_shape

    # Directions as large as the point itself: then a step t changes M by about
    # 2t‖U‖²/λ_min ≤ 2t·rank·κ relative, which the step h below keeps small.
    dU, db = rng.standard_normal(U.shape), rng.standard_normal(b.shape)
    dU *= np.linalg.norm(U) / np.linalg.norm(dU)
    db *= np.linalg.norm(b) / np.linalg.norm(db)
    dlam = rng.uniform(-1, 1, batch_shape) * lam

    def f(t):
        return float(np.sum(gx * _solve(case, U + t * dU, b + t * db, lam + t * dlam, "direct")))

    h = 1e-3 / system.kappa
    numeric = richardson_central_difference(f, h)
    analytic = np.sum(gU * dU) + np.sum(gb * db) + np.sum(glam * dlam)
    assert analytic == pytest.approx(numeric, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("method", METHODS)
@each_model
def test_vjp_entrywise_central_differences(method, case):
    """Every entry of ∂L/∂U, ∂L/∂b and ∂L/∂λ on one small batched problem."""
    system = _system(case, 7, (2,))
    U, b, lam = system.embeddings, system.b, system.lam
    gx = np.random.default_rng(3).standard_normal(b.shape)
    gU, gb, glam = _vjp(case, U, _solve(case, U, b, lam, method), gx, lam, method)
    h = 1e-6

    def loss(U_, b_, lam_):
        return float(np.sum(gx * _solve(case, U_, b_, lam_, "direct")))

    for grad, arr, which in ((gU, U, 0), (gb, b, 1), (glam, lam, 2)):
        numeric = np.zeros_like(arr)
        for idx in np.ndindex(arr.shape):
            e = np.zeros_like(arr)
            e[idx] = h
            args_p, args_m = [U, b, lam], [U, b, lam]
            args_p[which], args_m[which] = arr + e, arr - e
            numeric[idx] = (loss(*args_p) - loss(*args_m)) / (2 * h)
        np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)


def _torch_low_rank_term(torch, model, U, labels):
    """The model's M − λI formed densely from the embeddings, differentiably."""
    if model == "signed":
        signature = torch.ones(U.shape[-2], dtype=U.dtype)
        signature[-ATTRACTIVE_DIM:] = -1.0
        return U.transpose(-1, -2) @ (signature[:, None] * U)
    K = U.transpose(-1, -2) @ U
    if model == "potts":
        C = torch.ones(labels, labels, dtype=U.dtype) - torch.eye(labels, dtype=U.dtype)
        K = torch.einsum("kj,...pq->...kpjq", C, K)
        K = K.reshape(*K.shape[:-4], labels * K.shape[-3], -1)
    return K


@pytest.mark.parametrize("method", METHODS)
@each_model
def test_vjp_matches_dense_torch_autograd(method, case):
    """Against torch.linalg.solve on the explicitly formed matrix, differentiated by autograd."""
    torch = pytest.importorskip("torch")
    system = _system(case, 11, (3,), kappa=300.0)
    U, b, lam = system.embeddings, system.b, system.lam
    gx = np.random.default_rng(5).standard_normal(b.shape)
    gU, gb, glam = _vjp(case, U, _solve(case, U, b, lam, method), gx, lam, method)

    Ut = torch.tensor(U, requires_grad=True)
    bt = torch.tensor(b, requires_grad=True)
    lt = torch.tensor(lam, requires_grad=True)
    K = _torch_low_rank_term(torch, case.name, Ut, system.num_labels)
    M = K + lt[..., None, None] * torch.eye(K.shape[-1], dtype=torch.float64)
    x = torch.linalg.solve(M, bt.reshape(*b.shape[:1], -1, 1))[..., 0].reshape(b.shape)
    (x * torch.tensor(gx)).sum().backward()
    np.testing.assert_allclose(gU, Ut.grad.numpy(), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(gb, bt.grad.numpy(), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(glam, lt.grad.numpy(), rtol=1e-8, atol=1e-10)


@each_model
def test_dense_references_agree_with_matvec(case):
    """The testing module's dense matrices are the operators' matvecs (label-major)."""
    system = _system(case, 0, (2,))
    op = case.operator(system.embeddings, 0.7, system.num_labels)
    v = np.random.default_rng(0).standard_normal(system.b.shape)
    expected = (
        system.case.dense(system.embeddings, 0.7, system.num_labels) @ case.flat(v)[..., None]
    )
    got = op.matvec(v.reshape(2, *op.row_shape))
    np.testing.assert_allclose(got.reshape(2, -1), expected[..., 0])


# -- factorization reuse ----------------------------------------------------------------------

#: Cholesky factorizations of one exact solve: general λI + AAᵀ; Potts the capacitance and
#: the definiteness proof λI − ÂÂᵀ; signed λI + AAᵀ and the Schur complement λH.
FACTORIZATIONS = {"general": 1, "potts": 2, "signed": 2}


@each_model
def test_backward_of_direct_reuses_the_factorization(monkeypatch, case):
    """Forward + backward with method="direct" factors the capacitance(s) exactly once when
    the backward is handed the forward's factorization (solver state is a value)."""
    from lowrank_gcrf import cholesky

    calls = []
    original = cholesky.cholesky_factor

    def counting(xp, matrix):
        calls.append(matrix.shape)
        return original(xp, matrix)

    # Wherever the core imported it.
    for module in list(sys.modules.values()):
        if module.__name__.startswith("lowrank_gcrf.") and (
            getattr(module, "cholesky_factor", None) is original
        ):
            monkeypatch.setattr(module, "cholesky_factor", counting)
    system = _system(case, 1, (2,))
    op = case.operator(system.embeddings, system.lam, system.num_labels)
    x, info = op.solve(system.b, method="direct", **TIGHT)
    assert len(calls) == FACTORIZATIONS[case.name]
    gx = np.ones_like(x)
    op.vjp(x, gx, method="direct", factorization=info.factorization, **TIGHT)
    op.vjp(x, 2 * gx, method="direct", factorization=info.factorization, **TIGHT)
    assert len(calls) == FACTORIZATIONS[case.name]


@each_model
def test_cg_backward_reports_and_raises(case):
    system = _system(case, 2, (2,), kappa=1e4)
    op = case.operator(system.embeddings, system.lam, system.num_labels)
    x, _ = op.solve(system.b, method="cg", **TIGHT)
    gx = np.random.default_rng(0).standard_normal(x.shape)
    *_, info = op.vjp(x, gx, method="cg", **TIGHT)
    assert info.method == "cg" and np.all(info.iterations > 0) and np.all(info.converged)
    assert np.all(info.residual <= 1e-12)
    with pytest.raises(lg.ConvergenceError, match="after 1 CG iterations"):
        op.vjp(x, gx, method="cg", maxiter=1, **TIGHT)


# -- cotangent scaling -----------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
@each_model
def test_tiny_cotangent_float32(method, case):
    system = _system(case, 4, (2,), kappa=10.0, dtype=np.float32)
    U, b, lam = system.embeddings, system.b, system.lam
    x = case.solve(U, b, lam, method=method, rtol=1e-5)
    unit = np.random.default_rng(0).standard_normal(b.shape).astype(np.float32)
    unit /= np.linalg.norm(unit.reshape(2, -1), axis=-1).reshape((2,) + (1,) * (b.ndim - 1))
    big = case.vjp(U, x, unit, lam, method=method, rtol=1e-5)
    tiny = case.vjp(U, x, unit * np.float32(1e-30), lam, method=method, rtol=1e-5)
    for t, g in zip(tiny, big, strict=True):
        assert np.all(np.isfinite(t))
        expected = np.float32(1e-30) * g
        # Normwise float32 rounding: entries that cancel can differ more in relative terms.
        np.testing.assert_allclose(t, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize("method", METHODS)
@each_model
def test_zero_cotangent_gives_exact_zeros(method, case):
    system = _system(case, 9, (2,))
    U, b, lam = system.embeddings, system.b, system.lam
    x = _solve(case, U, b, lam, method)
    gx = np.zeros_like(b)
    gx[0] = 1.0
    gU, gb, glam = _vjp(case, U, x, gx, lam, method)
    assert np.all(gU[1] == 0) and np.all(gb[1] == 0) and glam[1] == 0
    assert np.any(gU[0] != 0)


# -- memory at the paper's size ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "rank"), [("general", 128), ("potts", 128), ("potts", 1024), ("signed", 128)]
)
def test_forward_backward_memory_paper_size(model, rank):
    """Forward + backward (direct) in float32 peaks well under 10× the inputs' bytes."""
    import tracemalloc

    P, L = 41 * 41, 21
    case = REGISTRY[model]
    system = case.make(0, rank=rank, pixels=P, labels=L, kappa=1e3, dtype=np.float32)
    op = case.operator(system.embeddings, system.lam, L)
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
@each_model
def test_vjp_same_in_every_array_library(ns, method, case):
    """The backward pass uses only portable calls: array-api-strict gives NumPy's answer."""
    system = _system(case, 12, (2,))
    U, b, lam = system.embeddings, system.b, system.lam
    gx = np.random.default_rng(1).standard_normal(b.shape)
    x = _solve(case, U, b, lam, method)
    expected = _vjp(case, U, x, gx, lam, method)
    got = _vjp(case, ns(U), ns(x), ns(gx), ns(lam), method)
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(ns.numpy(g), e, rtol=1e-10, atol=1e-12)
