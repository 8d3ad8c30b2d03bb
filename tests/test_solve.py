"""Forward solves against dense float64 references (scipy.linalg.solve on the formed M).

Tolerances. A solve asked for rtol returns x whose residual, evaluated in the working
precision, is ≤ rtol·‖b‖. Evaluating Mx in a precision with unit roundoff ε itself errs by
about ε‖M‖‖x‖ ≤ ε·κ·‖b‖ (‖x‖ ≤ ‖b‖/λ_min), so no residual below ~ε·κ can be certified: we
measured 0.1–0.7·ε·κ on these sizes. We therefore ask for ``rtol = max(base, 8·ε·κ)`` and
accept a float64 residual up to ``rtol + 2·ε·κ``. The forward error then obeys the
rigorous bound ‖x − x*‖/‖x*‖ ≤ κ·residual. float32 is drawn up to κ = 10⁵, where
8·ε·κ ≈ 0.1 still says something; κ = 10⁶ in float32 is tested to raise instead.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from model_cases import REGISTRY, each_model

import lowrank_gcrf as lg
from lowrank_gcrf.testing import relative_residual

METHODS = ["cg", "direct", "auto"]
DTYPES = [np.float32, np.float64]
BASE_RTOL = {np.float32: 1e-5, np.float64: 1e-10}
MAX_LOG10_KAPPA = {np.float32: 5.0, np.float64: 6.0}


def request_rtol(dtype, kappa: float) -> float:
    return max(BASE_RTOL[dtype], 8 * np.finfo(dtype).eps * kappa)


def solve_system(ns, system, method, rtol, **kw):
    return system.case.solve(*system.args(ns), method=method, rtol=rtol, **kw)


def check_against_reference(ns, system, method) -> None:
    dtype = system.b.dtype.type
    eps = np.finfo(dtype).eps
    rtol = request_rtol(dtype, system.kappa)
    x, info = solve_system(ns, system, method, rtol, return_info=True)
    x = ns.numpy(x)
    assert x.dtype == system.b.dtype and x.shape == system.b.shape
    M = system.dense()
    flat_x = x.reshape(system.flat_b().shape)
    residual = relative_residual(M, flat_x, system.flat_b())
    slack = 2 * eps * system.kappa
    assert np.all(residual <= rtol + slack), (residual, rtol)
    # info.residual is the true residual of the returned x, up to evaluation rounding.
    np.testing.assert_allclose(ns.numpy(info.residual), residual, rtol=0, atol=slack)
    assert bool(np.all(ns.numpy(info.converged)))
    x_ref = system.reference()
    err = np.linalg.norm((x - x_ref).reshape((*residual.shape, -1)), axis=-1)
    ref = np.linalg.norm(x_ref.reshape((*residual.shape, -1)), axis=-1)
    assert np.all(err <= system.kappa * (rtol + slack) * ref * (1 + 1e-6) + 1e-300)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@each_model
def test_matches_dense_reference(ns, case, method, dtype):
    log10_kappa = (np.log10(2.0), MAX_LOG10_KAPPA[dtype])

    @given(case.systems(dtype=dtype, log10_kappa=log10_kappa))
    def run(system):
        check_against_reference(ns, system, method)

    run()


@pytest.mark.parametrize("method", ["cg", "direct"])
@each_model
def test_rank_at_least_unknowns(ns, case, method):
    """D ≥ N (D ≥ P for Potts, D + E ≥ N signed): the exact solve works in the n×n space."""
    system = case.make(3, rank=16, pixels=5, labels=3, kappa=50.0)
    check_against_reference(ns, system, method)


@pytest.mark.parametrize("method", ["cg", "direct"])
@each_model
def test_per_batch_lam_differs_per_system(ns, case, method):
    """λ of a batch, one per system (growing λ keeps every model definite), is each
    system's own λ: the batched solve is each system's solve alone (float64, κ ≤ 100)."""
    system = case.make(5, rank=4, pixels=4, labels=3, kappa=100.0, batch_shape=(3,))
    U, b, lam = system.embeddings, system.b, system.lam * np.array([1.0, 10.0, 100.0])
    x = ns.numpy(case.solve(ns(U), ns(b), ns(lam), method=method, rtol=1e-12))
    for i in range(3):
        single = case.solve(ns(U[i]), ns(b[i]), float(lam[i]), method="direct", rtol=1e-12)
        np.testing.assert_allclose(x[i], ns.numpy(single), rtol=1e-9)


@each_model
def test_float32_beyond_precision_raises_convergence_error(ns, case):
    """κ = 10⁶ in float32: rtol = 1e-5 is below what float32 can certify (≈ ε·κ ≈ 0.1)."""
    system = case.make(11, rank=8, pixels=20, labels=3, kappa=1e6, dtype=np.float32)
    for method in ("cg", "direct"):
        with pytest.raises(lg.ConvergenceError, match="did not reach rtol=1e-05") as exc:
            solve_system(ns, system, method, 1e-5)
        assert exc.value.info.method == method
        assert exc.value.x.shape == system.b.shape


@each_model
def test_cg_maxiter_raises_with_residual_and_iterations(ns, case):
    system = case.make(2, rank=10, pixels=10, labels=3, kappa=1e4)
    with pytest.raises(lg.ConvergenceError) as exc:
        solve_system(ns, system, "cg", 1e-10, maxiter=2)
    message = str(exc.value)
    assert "relative residual" in message and "after 2 CG iterations" in message
    residual = float(ns.numpy(exc.value.info.residual))
    assert residual > 1e-10 and f"{residual:.3g}" in message


@pytest.mark.parametrize("method", ["cg", "direct"])
@each_model
def test_zero_rhs_gives_zero(ns, case, method):
    system = case.make(1, rank=3, pixels=7, labels=2, kappa=10.0, batch_shape=(2,))
    b = system.b.copy()
    b[1] = 0.0
    x, info = case.solve(ns(system.embeddings), ns(b), system.lam, method=method, return_info=True)
    x = ns.numpy(x)
    assert np.all(x[1] == 0.0)
    assert float(ns.numpy(info.residual)[1]) == 0.0


@each_model
def test_warm_start_from_solution_needs_no_iterations(ns, case):
    system = case.make(4, rank=5, pixels=10, labels=2, kappa=100.0)
    x0 = system.reference()
    x, info = solve_system(ns, system, "cg", 1e-8, x0=ns(x0), return_info=True)
    assert int(ns.numpy(info.iterations)) == 0
    np.testing.assert_allclose(ns.numpy(x), x0)


@pytest.mark.parametrize("method", ["cg", "direct"])
@each_model
def test_inputs_are_not_modified(ns, case, method):
    system = case.make(
        6, rank=4, pixels=9, labels=3, kappa=30.0, batch_shape=(2,), per_batch_lam=True
    )
    arrays = [system.embeddings, system.b, system.lam, np.ones_like(system.b)]
    before = [a.copy() for a in arrays]
    converted = [ns(a) for a in arrays]
    case.solve(converted[0], converted[1], converted[2], method=method, x0=converted[3])
    for a, b in zip(converted, before, strict=True):
        np.testing.assert_array_equal(ns.numpy(a), b)


@each_model
def test_half_precision_computed_in_float32(case):
    system = case.make(8, rank=4, pixels=8, labels=2, kappa=10.0, dtype=np.float32)
    U16, b16 = system.embeddings.astype(np.float16), system.b.astype(np.float16)
    x16 = case.solve(U16, b16, system.lam, rtol=1e-4)
    assert x16.dtype == np.float16
    x32 = case.solve(U16.astype(np.float32), b16.astype(np.float32), system.lam, rtol=1e-4)
    np.testing.assert_array_equal(x16, x32.astype(np.float16))


@each_model
def test_mixed_float_dtypes_promote(case):
    system = case.make(9, rank=3, pixels=5, labels=2, kappa=10.0)
    U32 = system.embeddings.astype(np.float32)
    x = case.solve(U32, system.b, system.lam, rtol=1e-12)
    assert x.dtype == np.float64
    expected = case.solve(U32.astype(np.float64), system.b, system.lam, rtol=1e-12)
    np.testing.assert_allclose(x, expected, rtol=1e-10)


@pytest.mark.parametrize(
    ("model", "rank", "expected"),
    [
        ("general", 16, "direct"),
        ("general", 2048, "cg"),
        ("potts", 16, "direct"),
        # Every Potts and signed solve must prove definiteness, which is a factorization.
        ("potts", 2048, "direct"),
        ("signed", 2048, "direct"),
    ],
)
def test_auto_rule(model, rank, expected):
    from lowrank_gcrf.method import choose_method

    op = REGISTRY[model].operator(np.zeros((rank, 8)), 1.0, num_labels=3)
    assert choose_method("auto", op) == expected


# -- Potts positive definiteness ----------------------------------------------------------
# Potts only: its messages quote ‖Â‖₂²; the signed model's definiteness boundary is tested in
# test_signed.py, and the general model is definite for every λ > 0.


def _potts_at(factor: float, ns, seed=0, dtype=np.float64):
    """A Potts system with λ = factor·μ_max, μ_max of Â as rounded to ``dtype``."""
    rng = np.random.default_rng(seed)
    Ahat = rng.standard_normal((4, 10)).astype(dtype)
    mu = float(np.linalg.eigvalsh(Ahat.astype(np.float64) @ Ahat.T.astype(np.float64)).max())
    b = rng.standard_normal((3, 10)).astype(dtype)
    return ns(Ahat), ns(b), factor * mu, mu


@pytest.mark.parametrize("method", METHODS)
def test_potts_indefinite_detected_for_every_method(ns, method):
    Ahat, b, lam, mu = _potts_at(0.5, ns)
    with pytest.raises(lg.IndefiniteSystemError, match="lam > ‖Ahat‖₂²") as exc:
        lg.solve_potts(Ahat, b, lam, method=method)
    assert f"lam = {lam:.6g}" in str(exc.value) and f"‖Ahat‖₂² = {mu:.6g}" in str(exc.value)
    assert exc.value.lam == pytest.approx(lam) and exc.value.mu_max == pytest.approx(mu)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_potts_definiteness_boundary(ns, method, dtype):
    """Just above μ_max the system solves; just below it raises IndefiniteSystemError.

    At λ = μ_max exactly, rounding of the Gram (relative ε) decides which side of the
    boundary the computed matrix falls on: the solve must then fail loudly, either as
    indefinite or as not converging, never return a silent answer.
    """
    margin = 1e-3 if dtype is np.float32 else 1e-8
    cases = (
        (1 + margin, None),
        (1.0, (lg.IndefiniteSystemError, lg.ConvergenceError)),
        (1 - margin, lg.IndefiniteSystemError),
    )
    for factor, error in cases:
        Ahat, b, lam, _ = _potts_at(factor, ns, dtype=dtype)
        if error is None:
            # κ ≈ L/margin: ask only for what the dtype can certify there.
            rtol = request_rtol(dtype, 3 / margin)
            lg.solve_potts(Ahat, b, lam, method=method, rtol=rtol, maxiter=10_000)
        else:
            with pytest.raises(error):
                lg.solve_potts(Ahat, b, lam, method=method)


def test_potts_indefinite_in_one_batch_element_names_it(ns):
    rng = np.random.default_rng(2)
    Ahat = rng.standard_normal((2, 3, 8))
    mus = np.linalg.eigvalsh(Ahat @ np.swapaxes(Ahat, -1, -2)).max(axis=-1)
    lam = np.array([2 * mus[0], 0.5 * mus[1]])
    with pytest.raises(lg.IndefiniteSystemError, match="in 1 system") as exc:
        lg.solve_potts(ns(Ahat), ns(rng.standard_normal((2, 4, 8))), ns(lam))
    assert exc.value.mu_max == pytest.approx(mus[1])


def test_single_label_potts_is_scaled_identity(ns):
    Ahat = np.random.default_rng(0).standard_normal((3, 5)) * 10
    b = np.ones((1, 5))
    np.testing.assert_allclose(ns.numpy(lg.solve_potts(ns(Ahat), ns(b), 2.0)), b / 2)


# -- the paper's size ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "rank"),
    [
        ("general", 128),
        ("potts", 128),
        ("potts", 1024),
        ("signed", 128),
    ],
)
@pytest.mark.parametrize("method", ["cg", "direct"])
def test_paper_size_float32_without_dense_matrix(model, rank, method):
    """41×41 pixels, L = 21: never allocates anything near N² (N = 35301)."""
    import tracemalloc

    P, L = 41 * 41, 21
    case = REGISTRY[model]
    system = case.make(0, rank=rank, pixels=P, labels=L, kappa=100.0, dtype=np.float32)
    inputs = system.embeddings.nbytes + system.b.nbytes
    tracemalloc.start()
    x, info = case.solve(*system.args(), method=method, rtol=1e-4, return_info=True)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert x.dtype == np.float32 and bool(np.all(info.converged))
    assert float(info.residual) <= 1e-4
    n = L * P
    assert peak < 0.01 * n * n * 4, peak
    assert peak < 10 * inputs, (peak, inputs)


# -- bad input ------------------------------------------------------------------------------


def _general(n=6, d=2):
    rng = np.random.default_rng(0)
    return rng.standard_normal((d, n)), rng.standard_normal(n)


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "message"),
    [
        ((np.ones(6), np.ones(6), 1.0), {}, lg.GCRFError, r"A must have shape \(\.\.\., D, N\)"),
        ((np.ones((2, 6)), np.ones(5), 1.0), {}, lg.GCRFError, r"b has shape \(5,\)"),
        ((np.ones((3, 2, 6)), np.ones((2, 6)), 1.0), {}, lg.GCRFError, "leading batch"),
        ((np.ones((2, 6)), np.ones(6), 0.0), {}, lg.GCRFError, "lam must be finite and > 0"),
        ((np.ones((2, 6)), np.ones(6), -1.0), {}, lg.GCRFError, "got -1.0"),
        ((np.ones((2, 6)), np.ones(6), float("nan")), {}, lg.GCRFError, "lam must be finite"),
        ((np.ones((2, 6)), np.ones(6), np.ones(3)), {}, lg.GCRFError, "batch shape"),
        ((np.ones((2, 6)), np.ones(6), "1"), {}, lg.GCRFTypeError, "lam must be a positive"),
        ((np.ones((2, 6), dtype=int), np.ones(6), 1.0), {}, lg.GCRFTypeError, "dtype int64"),
        ((np.ones((2, 6)), np.ones(6, dtype=bool), 1.0), {}, lg.GCRFTypeError, "b has dtype"),
        (([[1.0] * 6] * 2, np.ones(6), 1.0), {}, lg.GCRFTypeError, "expected arrays"),
        ((np.ones((2, 6)), np.ones(6), 1.0), {"method": "lu"}, lg.GCRFError, "method must be"),
        ((np.ones((2, 6)), np.ones(6), 1.0), {"rtol": -1.0}, lg.GCRFError, "rtol ≥ 0"),
        ((np.ones((2, 6)), np.ones(6), 1.0), {"rtol": 0.0}, lg.GCRFError, "not both zero"),
        ((np.ones((2, 6)), np.ones(6), 1.0), {"maxiter": -3}, lg.GCRFError, "maxiter"),
        ((np.ones((2, 6)), np.ones(6), 1.0), {"x0": np.ones(5)}, lg.GCRFError, "x0 has shape"),
        ((np.ones((0, 6)), np.ones(6), 1.0), {}, lg.GCRFError, "empty dimension"),
    ],
)
def test_bad_input_general(args, kwargs, error, message):
    """The general model's messages; every model's bad input is in test_bad_input_core.py."""
    with pytest.raises(error, match=message):
        lg.solve(*args, **kwargs)


@pytest.mark.parametrize(("where", "value"), [("U", np.nan), ("b", np.inf), ("x0", np.nan)])
@each_model
def test_non_finite_inputs_rejected(ns, case, where, value):
    system = case.make(0, rank=2, pixels=3, labels=2, kappa=10.0)
    arrays = {"U": system.embeddings.copy(), "b": system.b.copy(), "x0": np.zeros_like(system.b)}
    arrays[where][..., 0] = value
    name = case.embedding_name if where == "U" else where
    with pytest.raises(lg.GCRFError, match=f"{name} contains NaN or Inf"):
        case.solve(ns(arrays["U"]), ns(arrays["b"]), system.lam, x0=ns(arrays["x0"]))


def test_mixed_array_libraries_rejected():
    xps = pytest.importorskip("array_api_strict")
    A, b = _general()
    with pytest.raises(lg.GCRFTypeError, match="different array libraries"):
        lg.solve(xps.asarray(A), b, 1.0)
    with pytest.raises(lg.GCRFTypeError, match="lam is an array from a different library"):
        lg.solve(A, b, xps.asarray(1.0))


def test_errors_are_value_errors():
    assert issubclass(lg.GCRFError, ValueError)
    assert issubclass(lg.GCRFTypeError, TypeError)
    for cls in (lg.IndefiniteSystemError, lg.ConvergenceError, lg.GCRFTypeError):
        assert issubclass(cls, lg.GCRFError)


def test_potts_rhs_needs_label_axis():
    with pytest.raises(lg.GCRFError, match=r"\(\.\.\., L, P\)"):
        lg.solve_potts(np.ones((2, 5)) * 0.1, np.ones(5), 1.0)
    with pytest.raises(lg.GCRFError, match=r"b has shape \(3, 4\)"):
        lg.solve_potts(np.ones((2, 5)) * 0.1, np.ones((3, 4)), 1.0)


@given(n=st.integers(1, 5))
@each_model
def test_zero_embeddings_give_b_over_lam(case, n):
    system = case.make(0, rank=2, pixels=n, labels=2, kappa=10.0)
    x = case.solve(np.zeros_like(system.embeddings), system.b, 4.0, method="cg")
    np.testing.assert_allclose(x, system.b / 4.0)


@each_model
def test_info_all_converged(ns, case):
    system = case.make(0, rank=2, pixels=3, labels=2, kappa=10.0, batch_shape=(2,))
    _, info = solve_system(ns, system, "auto", 1e-5, return_info=True)
    assert info.all_converged is True
