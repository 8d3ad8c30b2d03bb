"""The signed model ``λI + AᵀA − ΓᵀΓ``: what the generic suites (parametrized by
tests/model_cases.py, which draws A and Γ both present) leave out: one factor absent (None),
its identities with the general and Potts models, exact definiteness, factorization reuse.

Tolerances: a solve stops at ``‖b − Mx‖ ≤ rtol‖b‖`` measured in its own dtype; the float64
dense residual of the returned x differs from that by the rounding of one matvec, about
ε·κ, so we assert ``rtol + 10·ε·κ``. Finite differences follow tests/test_gradients.py
(Richardson-extrapolated central differences, float64, κ ≤ 10^2.5: 1e-6 relative).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import lowrank_gcrf as lg
from lowrank_gcrf.signed import SignedOperator
from lowrank_gcrf.testing import reference_solve, relative_residual, signed_dense_matrix

METHODS = ["cg", "direct"]
EPS = {np.float64: 2.0**-52, np.float32: 2.0**-23}


def _lam_for_kappa(A, Gamma, kappa):
    """λ (per system) giving M = λI + AᵀA − ΓᵀΓ the condition number ``kappa``.

    With e_min ≤ e_max the extreme eigenvalues of AᵀA − ΓᵀΓ, κ = (λ + e_max)/(λ + e_min).
    Where that needs λ ≤ 0 (A dominates, D + E ≥ N) or the spectrum is a single point, λ
    is set to |e_max| + |e_min| + 1 and κ is smaller.
    """
    K = signed_dense_matrix(A, Gamma, 0.0)
    e = np.linalg.eigvalsh(K)
    low, high = e[..., 0], e[..., -1]
    lam = (high - kappa * low) / (kappa - 1.0)
    spread = high - low > 1e-6 * (np.abs(high) + np.abs(low))
    fallback = np.abs(high) + np.abs(low) + 1.0
    return np.where(spread & (lam > 1e-3 * np.abs(high) + 1e-12), lam, fallback)


def _draw_system(seed, D, E, N, batch_shape, kappa, per_batch):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((*batch_shape, D, N)) if D else None
    Gamma = rng.standard_normal((*batch_shape, E, N)) if E else None
    lam = _lam_for_kappa(A, Gamma, kappa)
    if not per_batch:
        # One λ for the batch: the largest keeps every system positive definite.
        lam = float(np.max(lam))
    b = rng.standard_normal((*batch_shape, N))
    return A, Gamma, b, lam


@st.composite
def signed_systems(draw, max_rank=5, max_n=24, log10_kappa=(0.3, 6.0)):
    """Systems with A or Γ absent (None)."""
    rank = draw(st.integers(1, max_rank))
    D, E = (rank, 0) if draw(st.booleans()) else (0, rank)
    return _draw_system(
        draw(st.integers(0, 2**31)),
        D,
        E,
        draw(st.integers(1, max_n)),
        draw(st.sampled_from([(), (1,), (3,), (2, 2)])),
        10.0 ** draw(st.floats(*log10_kappa)),
        draw(st.booleans()),
    )


def _kappa(M):
    e = np.linalg.eigvalsh(M)
    return float(np.max(e[..., -1] / e[..., 0]))


@pytest.mark.parametrize("method", ["auto", *METHODS])
@given(system=signed_systems())
def test_matches_dense_reference_float64(method, system):
    A, Gamma, b, lam = system
    M = signed_dense_matrix(A, Gamma, lam)
    kappa = _kappa(M)
    # No residual below about ε·κ can be certified (tests/test_solve.py): ask for no less.
    rtol = max(1e-10, 8 * EPS[np.float64] * kappa)
    x, info = lg.solve_signed(A, Gamma, b, lam, method=method, rtol=rtol, return_info=True)
    assert x.shape == b.shape and x.dtype == np.float64
    assert np.all(relative_residual(M, x, b) <= rtol + 10 * EPS[np.float64] * kappa)
    reference = reference_solve(M, b)
    error = np.linalg.norm(x - reference, axis=-1) / np.linalg.norm(reference, axis=-1)
    assert np.all(error <= kappa * (rtol + 10 * EPS[np.float64] * kappa))
    assert bool(np.all(info.converged))


@pytest.mark.parametrize("method", METHODS)
@given(system=signed_systems(log10_kappa=(0.3, 2.0)))
def test_float32_residual(method, system):
    A, Gamma, b, lam = system
    cast = [None if a is None else a.astype(np.float32) for a in (A, Gamma, b)]
    M = signed_dense_matrix(A, Gamma, lam)
    rtol = 1e-3
    x = lg.solve_signed(*cast, lam, method=method, rtol=rtol)
    assert x.dtype == np.float32
    assert np.all(relative_residual(M, x, b) <= rtol + 10 * EPS[np.float32] * _kappa(M))


@pytest.mark.parametrize("method", METHODS)
@given(seed=st.integers(0, 2**31), batch_shape=st.sampled_from([(), (2,)]))
def test_without_gamma_equals_general_solve(method, seed, batch_shape):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((*batch_shape, 3, 13))
    b = rng.standard_normal((*batch_shape, 13))
    gx = rng.standard_normal((*batch_shape, 13))
    lam = 0.7
    kw = dict(method=method, rtol=1e-12)
    x = lg.solve_signed(A, None, b, lam, **kw)
    np.testing.assert_allclose(x, lg.solve(A, b, lam, **kw), rtol=1e-9, atol=1e-12)
    gA, gGamma, gb, glam = lg.solve_signed_vjp(A, None, x, gx, lam, **kw)
    expected = lg.solve_vjp(A, x, gx, lam, **kw)
    assert gGamma is None
    for got, want in zip((gA, gb, glam), expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-11)


def potts_as_signed(Ahat, L):
    """``A = 1_Lᵀ ⊗ Â`` (D, L·P) and ``Γ = I_L ⊗ Â`` (L·D, L·P), label-major columns."""
    *batch, D, P = Ahat.shape
    A = np.concatenate([Ahat] * L, axis=-1)
    Gamma = np.zeros((*batch, L * D, L * P))
    for label in range(L):
        Gamma[..., label * D : (label + 1) * D, label * P : (label + 1) * P] = Ahat
    return A, Gamma


def potts_gradient_from_signed(gA, gGamma, D, P, L):
    """∂L/∂Â by the chain rule through Â ↦ (1_Lᵀ ⊗ Â, I_L ⊗ Â)."""
    return sum(
        gA[..., k * P : (k + 1) * P] + gGamma[..., k * D : (k + 1) * D, k * P : (k + 1) * P]
        for k in range(L)
    )


@pytest.mark.parametrize("method", METHODS)
@given(
    seed=st.integers(0, 2**31),
    batch_shape=st.sampled_from([(), (2,)]),
    D=st.integers(1, 4),
    P=st.integers(2, 9),
    L=st.integers(2, 4),
)
def test_kronecker_embeddings_equal_potts(method, seed, batch_shape, D, P, L):
    rng = np.random.default_rng(seed)
    Ahat = rng.standard_normal((*batch_shape, D, P))
    mu = np.linalg.eigvalsh(Ahat @ np.swapaxes(Ahat, -1, -2))[..., -1]
    lam = 1.5 * mu  # κ = (λ + (L−1)μ)/(λ − μ) ≤ 2L + 1
    b = rng.standard_normal((*batch_shape, L, P))
    gx = rng.standard_normal((*batch_shape, L, P))
    A, Gamma = potts_as_signed(Ahat, L)
    kw = dict(method=method, rtol=1e-12)
    flat = (*batch_shape, L * P)
    x = lg.solve_signed(A, Gamma, b.reshape(flat), lam, **kw)
    x_potts = lg.solve_potts(Ahat, b, lam, **kw)
    np.testing.assert_allclose(x.reshape(b.shape), x_potts, rtol=1e-8, atol=1e-11)
    gA, gGamma, gb, glam = lg.solve_signed_vjp(A, Gamma, x, gx.reshape(flat), lam, **kw)
    gAhat, gb_potts, glam_potts = lg.solve_potts_vjp(Ahat, x_potts, gx, lam, **kw)
    np.testing.assert_allclose(
        potts_gradient_from_signed(gA, gGamma, D, P, L), gAhat, rtol=1e-7, atol=1e-9
    )
    np.testing.assert_allclose(gb.reshape(b.shape), gb_potts, rtol=1e-8, atol=1e-11)
    np.testing.assert_allclose(glam, glam_potts, rtol=1e-8, atol=1e-11)


@pytest.mark.parametrize("method", ["auto", *METHODS])
def test_attractive_norm_above_lam_is_fine_when_a_compensates(method):
    """‖Γ‖₂² > λ is not needed for definiteness: Γ = 0.9·A gives λI + 0.19·AᵀA ≻ 0."""
    rng = np.random.default_rng(3)
    A = 3.0 * rng.standard_normal((2, 4, 30))
    Gamma = 0.9 * A
    lam = 0.5
    assert np.all(np.linalg.norm(Gamma, ord=2, axis=(-2, -1)) ** 2 > 100 * lam)
    b = rng.standard_normal((2, 30))
    x = lg.solve_signed(A, Gamma, b, lam, method=method, rtol=1e-11)
    np.testing.assert_allclose(
        x, reference_solve(signed_dense_matrix(A, Gamma, lam), b), rtol=1e-7, atol=1e-10
    )


def _critical_lam(A, Gamma):
    """The λ at which M becomes singular: −λ_min(AᵀA − ΓᵀΓ)."""
    return -np.linalg.eigvalsh(signed_dense_matrix(A, Gamma, 0.0))[..., 0]


@pytest.mark.parametrize("method", ["auto", *METHODS])
@given(
    seed=st.integers(0, 2**31),
    D=st.integers(0, 4),
    E=st.integers(1, 4),
    N=st.integers(2, 20),
    relative=st.floats(1e-3, 0.5),
)
def test_definiteness_boundary(method, seed, D, E, N, relative):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((D, N)) if D else None
    Gamma = 2.0 * rng.standard_normal((E, N))
    critical = float(_critical_lam(A, Gamma))
    if critical <= 0:  # A dominates Γ in every direction: PD for every λ > 0
        lg.solve_signed(A, Gamma, rng.standard_normal(N), 1e-3, method=method)
        return
    b = rng.standard_normal(N)
    above = critical * (1 + relative)
    x = lg.solve_signed(A, Gamma, b, above, method=method, rtol=1e-9)
    M = signed_dense_matrix(A, Gamma, above)
    assert relative_residual(M, x, b) <= 1e-9 + 10 * EPS[np.float64] * _kappa(M)
    below = critical * (1 - relative)
    with pytest.raises(lg.IndefiniteSystemError) as caught:
        lg.solve_signed(A, Gamma, b, below, method=method)
    message = str(caught.value)
    assert "Increase lam above" in message and "scale Gamma down" in message
    assert caught.value.lam == pytest.approx(below)
    # The message's threshold is the critical λ, to the digits it prints.
    shown = float(message.split("Increase lam above ")[1].split(",")[0])
    assert shown == pytest.approx(critical, rel=1e-5)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("D", [3, 8], ids=["D+E<N", "D+E>=N"])
def test_repulsive_embeddings_too_large_for_float32_name_the_overflow(method, D):
    """M = λI + 10⁶⁰AᵀA − ΓᵀΓ is definite, but its float32 matvec overflows: refused as an
    overflow, like the general and Potts models' Grams, not as "not positive definite in
    the working precision" (a float64 Gram hides the overflow)."""
    rng = np.random.default_rng(5)
    A = (1e30 * rng.standard_normal((D, 8))).astype(np.float32)
    Gamma = (0.1 * rng.standard_normal((2, 8))).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    with pytest.raises(lg.GCRFError, match=r"Gram matrix of \[A; Gamma\] overflows") as exc:
        lg.solve_signed(A, Gamma, b, 1.0, method=method)
    assert not isinstance(exc.value, lg.IndefiniteSystemError)


def test_indefinite_batch_names_the_bad_systems():
    rng = np.random.default_rng(0)
    Gamma = rng.standard_normal((3, 2, 10))
    critical = _critical_lam(None, Gamma)
    lam = critical * np.array([2.0, 0.5, 3.0])
    with pytest.raises(lg.IndefiniteSystemError, match="in 1 system"):
        lg.solve_signed(None, Gamma, rng.standard_normal((3, 10)), lam)


def richardson_central_difference(f, h):
    coarse = (f(h) - f(-h)) / (2 * h)
    fine = (f(h / 2) - f(-h / 2)) / h
    return (4 * fine - coarse) / 3


@pytest.mark.parametrize("method", METHODS)
@given(system=signed_systems(max_rank=3, max_n=12, log10_kappa=(0.3, 2.5)))
def test_vjp_matches_central_differences(method, system):
    A, Gamma, b, lam = system
    lam = np.broadcast_to(np.asarray(lam, dtype=np.float64), b.shape[:-1]).copy()
    rng = np.random.default_rng(7)
    gx = rng.standard_normal(b.shape)
    kw = dict(method=method, rtol=1e-12)
    x = lg.solve_signed(A, Gamma, b, lam, **kw)
    gA, gGamma, gb, glam = lg.solve_signed_vjp(A, Gamma, x, gx, lam, **kw)
    assert (gA is None) == (A is None) and (gGamma is None) == (Gamma is None)

    def direction(a):
        return None if a is None else rng.standard_normal(a.shape) * np.abs(a).max()

    dA, dGamma, db = direction(A), direction(Gamma), direction(b)
    dlam = rng.uniform(-1, 1, lam.shape) * lam

    def moved(a, d, t):
        return None if a is None else a + t * d

    def f(t):
        xt = lg.solve_signed(
            moved(A, dA, t),
            moved(Gamma, dGamma, t),
            b + t * db,
            lam + t * dlam,
            method="direct",
            rtol=1e-14,
            on_failure="ignore",
        )
        return float(np.sum(gx * xt))

    kappa = _kappa(signed_dense_matrix(A, Gamma, lam))
    numeric = richardson_central_difference(f, 1e-3 / kappa)
    analytic = float(np.sum(gb * db) + np.sum(glam * dlam))
    for g, d in ((gA, dA), (gGamma, dGamma)):
        if g is not None:
            analytic += float(np.sum(g * d))
    scale = max(abs(numeric), np.linalg.norm(gx) * np.linalg.norm(x))
    assert abs(numeric - analytic) <= 1e-6 * scale


def test_factorization_is_reused_and_owned():
    rng = np.random.default_rng(1)
    A, Gamma = rng.standard_normal((2, 40)), 0.05 * rng.standard_normal((3, 40))
    b, gx = rng.standard_normal(40), rng.standard_normal(40)
    op = SignedOperator(A, Gamma, 1.0)
    assert (op.repulsive_rank, op.attractive_rank) == (2, 3)
    # A CG solve proves definiteness first and reports the factorization it built.
    x_cg, info_cg = op.solve(b, method="cg", rtol=1e-12)
    assert info_cg.factorization is not None and info_cg.factorization.complete
    factorization = op.factor()
    x, info = op.solve(b, method="direct", rtol=1e-12, factorization=factorization)
    assert info.factorization is factorization
    np.testing.assert_allclose(x, x_cg, rtol=1e-9, atol=1e-12)
    reused = op.vjp(x, gx, method="direct", rtol=1e-12, factorization=info.factorization)
    fresh = op.vjp(x, gx, method="direct", rtol=1e-12)
    assert reused[3].factorization is factorization
    for got, want in zip(reused[:3], fresh[:3], strict=True):
        np.testing.assert_array_equal(got, want)
    other = SignedOperator(A, Gamma, 1.0)
    with pytest.raises(lg.GCRFError, match="another operator"):
        other.solve(b, factorization=factorization)


def test_mixed_dtypes_promote_and_gradients_keep_the_input_dtype():
    rng = np.random.default_rng(2)
    A = rng.standard_normal((2, 15)).astype(np.float32)
    Gamma = (0.2 * rng.standard_normal((2, 15))).astype(np.float32)
    b = rng.standard_normal(15)
    x = lg.solve_signed(A, Gamma, b, 1.0, rtol=1e-12)
    assert x.dtype == np.float64
    np.testing.assert_allclose(
        x, reference_solve(signed_dense_matrix(A, Gamma, 1.0), b), rtol=1e-9, atol=1e-12
    )
    gA, gGamma, _, _ = lg.solve_signed_vjp(A, Gamma, x, b, 1.0, rtol=1e-12)
    assert gA.dtype == np.float64 and gGamma.dtype == np.float64
    x32 = lg.solve_signed(A, Gamma, b.astype(np.float32), 1.0, rtol=1e-4)
    gA32, gGamma32, _, _ = lg.solve_signed_vjp(A, Gamma, x32, x32, 1.0, rtol=1e-4)
    assert gA32.dtype == np.float32 and gGamma32.dtype == np.float32


def test_x0_and_registry():
    rng = np.random.default_rng(4)
    A, Gamma = rng.standard_normal((2, 12)), 0.2 * rng.standard_normal((1, 12))
    b = rng.standard_normal(12)
    reference = reference_solve(signed_dense_matrix(A, Gamma, 1.0), b)
    x = lg.solve_signed(A, Gamma, b, 1.0, method="cg", x0=reference, rtol=1e-10)
    np.testing.assert_allclose(x, reference, rtol=1e-9)
    op = lg.make_operator("signed", A, 1.0, attractive=Gamma)
    assert isinstance(op, SignedOperator) and "signed" in lg.MODEL_NAMES


@pytest.mark.parametrize(
    ("A", "Gamma", "match"),
    [
        (None, None, "both are None"),
        (np.ones((2, 5)), np.ones((1, 6)), "share the batch shape and N"),
        (np.ones((3, 2, 5)), np.ones((2, 1, 5)), "share the batch shape and N"),
        (np.ones((2, 5)), np.full((1, 5), np.nan), "Gamma contains NaN"),
        (np.ones(5), None, "A must have shape"),
        (None, np.ones((0, 5)), "Gamma has an empty dimension"),
    ],
)
def test_bad_embeddings(A, Gamma, match):
    with pytest.raises(lg.GCRFError, match=match):
        lg.solve_signed(A, Gamma, np.ones(5), 1.0)


def test_attractive_embeddings_refused_by_other_models():
    with pytest.raises(lg.GCRFError, match="belong to the signed model"):
        lg.make_operator("general", np.ones((2, 5)), 1.0, attractive=np.ones((1, 5)))


def test_float32_gram_is_accumulated_in_float64_chunks(monkeypatch):
    """The Gram of a float32 [A; Γ] is summed over column chunks cast to float64 (no float64
    copy of U): the same as one float64 product, whatever the chunking."""
    from lowrank_gcrf import signed_inverse

    rng = np.random.default_rng(5)
    U = rng.standard_normal((2, 3, 50)).astype(np.float32)
    U64 = U.astype(np.float64)
    want = U64 @ np.swapaxes(U64, -1, -2)
    monkeypatch.setattr(signed_inverse, "GRAM_CHUNK_ELEMENTS", 1)
    monkeypatch.setattr(signed_inverse, "GRAM_MIN_COLUMNS", 7)  # 8 chunks, the last of 1
    got = signed_inverse.float64_gram(np, U)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-13)
    op = SignedOperator(U[:, :2], U[:, 2:], 20.0)
    np.testing.assert_allclose(op._gram(), want, rtol=1e-13, atol=1e-13)
