"""Bad input to the signed model, and what it shares with the other models: inputs of the
wrong kind and systems at the edge of definiteness or of the working precision.

Decisions these tests pin down (for every model where they apply):

* an embedding of fewer than 2 dimensions is a ``GCRFError`` giving its layout and shape;
* a right-hand side, ``x0`` or embedding that is not an array (a Python list) is a
  ``GCRFTypeError`` naming it: the core takes arrays only;
* arrays of a non-floating dtype (object, strings) are a ``GCRFTypeError`` naming them,
  checked before any value is looked at;
* a system proven positive definite but too ill-conditioned for its dtype fails as
  ill-conditioned (``ConvergenceError``, or ``ConvergenceWarning`` with
  ``on_failure="warn"``), as the general model does; only a system within rounding of
  singular relative to λ — Potts: ``λ − ‖Â‖₂²``; signed: the smallest eigenvalue of
  ``I − Γ(λI + AᵀA)⁻¹Γᵀ`` — is an ``IndefiniteSystemError`` "in the working precision"
  (CG's own breakdown, pᵀMp ≤ 0 in the working precision, stays one: never masked);
* λ set to ‖Â‖₂² (or, signed, to the critical λ), however it was computed, is an
  ``IndefiniteSystemError`` for every method;
* a finite input of any magnitude is checked without a floating-point warning.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lowrank_gcrf as lg
from lowrank_gcrf.signed import SignedOperator
from lowrank_gcrf.testing import signed_dense_matrix
from lowrank_gcrf.validation import check_finite

METHODS = ["auto", "direct", "cg"]


def signed_system(seed=0, D=3, E=2, N=12, dtype=np.float64, gamma_scale=0.2):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((D, N)) / 4
    Gamma = gamma_scale * rng.standard_normal((E, N)) / np.sqrt(N)
    b = rng.standard_normal(N)
    return A.astype(dtype), Gamma.astype(dtype), b.astype(dtype)


def model_inputs(model, dtype=np.float64):
    """(call, arguments) of one well-posed system of ``model``; the arguments by name."""
    rng = np.random.default_rng(1)
    if model == "potts":
        args = dict(Ahat=rng.standard_normal((3, 8)) / 10, b=rng.standard_normal((2, 8)))
        return lg.solve_potts, {k: v.astype(dtype) for k, v in args.items()}
    if model == "general":
        args = dict(A=rng.standard_normal((3, 8)) / 4, b=rng.standard_normal(8))
        return lg.solve, {k: v.astype(dtype) for k, v in args.items()}
    A, Gamma, b = signed_system(1, dtype=dtype)
    return lg.solve_signed, dict(A=A, Gamma=Gamma, b=b)


def call(solve, args, **kwargs):
    return solve(*args.values(), 1.0, **kwargs)


# -- shapes and types --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "layout"), [("A", r"\(\.\.\., D, N\)"), ("Gamma", r"\(\.\.\., E, N\)")]
)
@pytest.mark.parametrize("shape", [(), (12,)])
def test_embeddings_of_fewer_than_two_dimensions(where, layout, shape):
    A, Gamma, b = signed_system()
    args = dict(A=A, Gamma=Gamma)
    args[where] = np.ones(shape)
    message = f"{where} must have shape {layout} with at least 2 dimensions, got shape"
    with pytest.raises(lg.GCRFError, match=message):
        lg.solve_signed(args["A"], args["Gamma"], b, 1.0)
    with pytest.raises(lg.GCRFError, match=message):
        SignedOperator(args["A"], args["Gamma"], 1.0)


@pytest.mark.parametrize("dtype", ["object", "U3", "S3", "complex128", "int64", "bool"])
@pytest.mark.parametrize("where", ["A", "Gamma", "b"])
def test_non_floating_dtypes_are_type_errors(where, dtype):
    """Object and string arrays were passed to isfinite before their dtype was checked."""
    A, Gamma, b = signed_system()
    args = dict(A=A, Gamma=Gamma, b=b)
    args[where] = args[where].astype(dtype)
    with pytest.raises(lg.GCRFTypeError, match=f"{where} has dtype"):
        lg.solve_signed(args["A"], args["Gamma"], args["b"], 1.0)
    if where != "b":
        with pytest.raises(lg.GCRFTypeError, match=f"{where} has dtype"):
            SignedOperator(args["A"], args["Gamma"], 1.0)


@pytest.mark.parametrize("dtype", ["object", "U3"])
@pytest.mark.parametrize("model", ["general", "potts"])
def test_non_floating_dtypes_in_every_model(model, dtype):
    solve, args = model_inputs(model)
    for name in args:
        bad = dict(args, **{name: args[name].astype(dtype)})
        with pytest.raises(lg.GCRFTypeError, match=f"{name} has dtype {np.dtype(dtype).name}"):
            call(solve, bad)


@pytest.mark.parametrize("model", ["general", "potts", "signed"])
def test_lists_are_type_errors_naming_the_argument(model):
    """A Potts b given as a list was reported as "got shape ()"; every model and argument
    says it is a list instead."""
    solve, args = model_inputs(model)
    for name in args:
        bad = dict(args, **{name: args[name].tolist()})
        with pytest.raises(lg.GCRFTypeError, match=f"expected arrays .* but {name} is a list"):
            call(solve, bad)
    x0 = np.zeros_like(args["b"]).tolist()
    with pytest.raises(lg.GCRFTypeError, match="but x0 is a list"):
        call(solve, args, x0=x0)


# -- ill-conditioned, not indefinite -------------------------------------------------------


def large_repulsive_system(seed, scale, gamma_scale=1e-3, N=30):
    """float32 A with ‖A‖₂² ≈ scale² (up to 1e16) and a small Γ: positive definite with
    a smallest eigenvalue near λ = 1, but κ far beyond float32."""
    rng = np.random.default_rng(seed)
    A = (scale * rng.standard_normal((4, N)) / np.sqrt(N)).astype(np.float32)
    Gamma = (gamma_scale * rng.standard_normal((2, N))).astype(np.float32)
    return A, Gamma, rng.standard_normal(N).astype(np.float32)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("scale", [1e6, 1e7])
def test_ill_conditioned_signed_system_raises_convergence_error(method, scale):
    """‖A‖₂² of 1e12 and 1e14 against λ = 1 in float32: it used to be reported as
    indefinite "in the working precision", its smallest eigenvalue near 1 = λ."""
    A, Gamma, b = large_repulsive_system(0, scale)
    with pytest.raises(lg.ConvergenceError, match="too ill-conditioned for the dtype float32"):
        lg.solve_signed(A, Gamma, b, 1.0, method=method)
    with pytest.warns(lg.ConvergenceWarning, match="too ill-conditioned"):
        x = lg.solve_signed(A, Gamma, b, 1.0, method=method, on_failure="warn")
    assert x.shape == b.shape and np.all(np.isfinite(x))
    # As the general model does for the same A.
    with pytest.raises(lg.ConvergenceError):
        lg.solve(A, b, 1.0, method="direct" if method == "auto" else method)


def test_diverging_cg_iterates_are_named_not_indefinite():
    """At ‖A‖₂² ≈ 1e16, CG's float32 iterates diverge until pᵀMp overflows: an error that
    says so, without NumPy's overflow warning before it."""
    A, Gamma, b = large_repulsive_system(0, 1e8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(lg.GCRFError, match=r"overflowed float32.*iterates diverged") as exc:
            lg.solve_signed(A, Gamma, b, 1.0, method="cg")
    assert not isinstance(exc.value, lg.IndefiniteSystemError)
    with pytest.raises(lg.ConvergenceError):
        lg.solve_signed(A, Gamma, b, 1.0, method="direct")


@settings(max_examples=15)
@given(
    seed=st.integers(0, 2**31 - 1),
    log_scale=st.floats(0.0, 8.0),
    log_gamma=st.floats(-4.0, -1.2),
    method=st.sampled_from(METHODS),
    policy=st.sampled_from(["raise", "warn"]),
)
def test_definite_systems_are_never_called_indefinite(seed, log_scale, log_gamma, method, policy):
    """Whatever A's size, a system whose Schur complement I − Γ(λI + AᵀA)⁻¹Γᵀ is far from
    singular (‖Γ‖₂² ≤ 0.3 λ) solves, or fails as ill-conditioned. CG on the unknowns may
    fail in its own ways, named as such: iterates that diverge until they overflow, or a
    breakdown pᵀMp ≤ 0 of the float32 matvec, which is never masked (``docs/maths.md``)."""
    A, Gamma, b = large_repulsive_system(seed, 10.0**log_scale, 10.0**log_gamma)
    assert np.linalg.norm(Gamma.astype(np.float64), 2) ** 2 <= 0.3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", lg.ConvergenceWarning)
        try:
            lg.solve_signed(A, Gamma, b, 1.0, method=method, on_failure=policy)
        except lg.ConvergenceError:
            pass
        except lg.GCRFError as exc:
            assert method == "cg", str(exc)
            assert "iterates diverged" in str(exc) or "broke down (pᵀMp ≤ 0)" in str(exc)


@pytest.mark.parametrize("scale", [1e5, 1e7])
def test_smallest_eigenvalue_is_accurate_beside_a_large_repulsive_term(scale):
    """The eigenvalue estimate errs by about ε‖U‖₂² (it used to err by √ε‖U‖₂² where U is
    rank deficient, and by 0.3 of λ_min at ‖A‖₂² ≈ 4e15)."""
    A, Gamma, _ = large_repulsive_system(1, scale, gamma_scale=0.1)
    for G in (Gamma, 0.5 * A[:2]):
        low, high = SignedOperator(A, G, 1.0).extreme_eigenvalues()
        M = signed_dense_matrix(A.astype(np.float64), G.astype(np.float64), 1.0)
        e = np.linalg.eigvalsh(M)
        tolerance = 100 * np.finfo(np.float64).eps * e[-1]
        assert abs(float(low) - e[0]) <= tolerance and abs(float(high) - e[-1]) <= tolerance


def test_attractive_term_cancelling_a_large_repulsive_one_is_singular_in_float32():
    """Γ = A, both large: M = λI exactly, but H = λ(λI + AAᵀ)⁻¹ is within float32's
    rounding of 0 (and the float64 factorization cannot settle it): not an indefinite
    verdict with a made-up negative eigenvalue."""
    A, _, b = large_repulsive_system(2, 1e5)
    with pytest.raises(lg.IndefiniteSystemError, match="singular in the working precision"):
        lg.solve_signed(A, A.copy(), b, 1.0)


def test_undecidable_in_float64_says_so():
    """‖A‖₂² ≈ 1.6e18 against λ ≈ 1e-3, Γ within 0.5 % of A: M is indefinite (λ_min ≈ −4.9),
    but float64 rounds its eigenvalues by thousands. The error says float64 cannot decide,
    and quotes no eigenvalue as a proof."""
    A = np.array([[-1.2097850275690515e09, 3.7651932494419193e08]])
    Gamma = np.array([[-1.2040130547884624e09, 3.7472292395492882e08]])
    with pytest.raises(lg.IndefiniteSystemError, match="could not be proven positive definite"):
        lg.solve_signed(A, Gamma, np.ones(2), 0.001037013766527863)


# -- at the definiteness boundary ----------------------------------------------------------


def spectral_norms(Ahat):
    """‖Â‖₂² as a user may compute it: SVD, and the largest eigenvalue of either Gram."""
    U = np.asarray(Ahat, dtype=np.float64)
    return [
        np.linalg.norm(U, 2) ** 2,
        np.linalg.svd(U, compute_uv=False)[0] ** 2,
        np.linalg.eigvalsh(U @ U.T)[-1],
        np.linalg.eigvalsh(U.T @ U)[-1],
    ]


@settings(max_examples=30)
@given(
    seed=st.integers(0, 2**31 - 1),
    D=st.integers(1, 12),
    P=st.integers(2, 60),
    labels=st.integers(2, 5),
    which=st.integers(0, 3),
    method=st.sampled_from(METHODS),
)
def test_potts_lam_at_the_spectral_norm_is_indefinite(seed, D, P, labels, which, method):
    """λ = ‖Â‖₂², by any of four computations: never a ConvergenceError ("auto" gave one).
    (CG may also break down on it, pᵀMp ≤ 0: that is an IndefiniteSystemError too.)"""
    rng = np.random.default_rng(seed)
    Ahat = rng.standard_normal((D, P))
    lam = spectral_norms(Ahat)[which]
    with pytest.raises(lg.IndefiniteSystemError, match="not positive definite"):
        lg.solve_potts(Ahat, rng.standard_normal((labels, P)), lam, method=method)


@settings(max_examples=20)
@given(
    seed=st.integers(0, 2**31 - 1),
    E=st.integers(1, 4),
    N=st.integers(6, 30),
    dtype=st.sampled_from([np.float32, np.float64]),
    method=st.sampled_from(METHODS),
)
def test_signed_lam_at_the_critical_value_is_indefinite(seed, E, N, dtype, method):
    """Without A the critical λ is ‖Γ‖₂²: at it, indefinite or singular in the working
    precision, for every method and dtype."""
    rng = np.random.default_rng(seed)
    Gamma = rng.standard_normal((E, N)).astype(dtype)
    lam = spectral_norms(Gamma)[0]
    with pytest.raises(lg.IndefiniteSystemError, match="Increase lam"):
        lg.solve_signed(None, Gamma, rng.standard_normal(N).astype(dtype), lam, method=method)


# -- magnitudes ----------------------------------------------------------------------------


@settings(max_examples=20)
@given(
    dtype=st.sampled_from([np.float32, np.float64]),
    exponent=st.floats(0.5, 1.0),
    method=st.sampled_from(METHODS),
)
def test_huge_right_hand_sides_are_checked_without_warnings(dtype, exponent, method):
    """‖b‖² overflows (entries up to 1e300 in float64, 1e37 in float32): the finiteness
    check falls through to its exact test silently, and the solve scales b exactly."""
    top = 300 if dtype == np.float64 else 37
    A, Gamma, b = signed_system(3, dtype=dtype)
    big = (b.astype(np.float64) * 10.0 ** (top * exponent)).astype(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_finite(np, big, "b")
        x = lg.solve_signed(A, Gamma, big, 1.0, method=method)
    unit = lg.solve_signed(A, Gamma, b, 1.0, method=method)
    scale = 10.0 ** (top * exponent)
    np.testing.assert_allclose(x / scale, unit, rtol=1e-3 if dtype == np.float32 else 1e-8)
    with pytest.raises(lg.GCRFError, match="b contains NaN or Inf"):
        big[0] = np.inf
        check_finite(np, big, "b")


@pytest.mark.parametrize("model", ["general", "potts", "signed"])
def test_overflowing_results_raise_without_warnings(model):
    """A gradient beyond float64, or a float32 solution beyond float32: the library's
    overflow error, with no NumPy warning before it (under ``-W error``, instead of it)."""
    solve, args = model_inputs(model)
    vjp = {"general": lg.solve_vjp, "potts": lg.solve_potts_vjp, "signed": lg.solve_signed_vjp}
    embeddings = [v for k, v in args.items() if k != "b"]
    huge = args["b"] * 1e300
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x = solve(*embeddings, huge, 1.0)
        with pytest.raises(lg.GCRFError, match=r"the gradient of .+ overflows float64"):
            vjp[model](*embeddings, x, huge, 1.0)
        # λ and the embeddings' squared norms scaled alike: definite, and x = O(b/λ).
        single = [(e * 1e-15).astype(np.float32) for e in embeddings]
        with pytest.raises(lg.GCRFError, match="x overflows float32"):
            solve(*single, (args["b"] * 1e30).astype(np.float32), 1e-30)
