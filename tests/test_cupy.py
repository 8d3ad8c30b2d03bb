"""The core on CuPy arrays (GPU): same answers as NumPy, CuPy in → CuPy out.

Skipped, with the reason, where CuPy or a CUDA device is missing; the portable code path
these exercise is also run under array-api-strict by the other core tests.
"""

from __future__ import annotations

import numpy as np
import pytest
from model_cases import INDEFINITE_CASES, each_model

import lowrank_gcrf as lg


def _cupy():
    cp = pytest.importorskip("cupy", reason="CuPy is not installed (extra cuda12/cuda13)")
    try:
        if cp.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("no CUDA device")
    except cp.cuda.runtime.CUDARuntimeError as exc:
        pytest.skip(f"no usable CUDA device: {exc}")
    return cp


def _system(case, seed: int, dtype=np.float64):
    """D = 16 and N = 300 (general; signed with E = 2 more rows) or P = 60, L = 5 (Potts)."""
    return case.make(
        seed, rank=16, pixels=60, labels=5, kappa=100.0, batch_shape=(2,), dtype=dtype,
        per_batch_lam=True,
    )  # fmt: skip


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["cg", "direct"])
@each_model
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_cupy_matches_numpy(method, case, dtype):
    cp = _cupy()
    system = _system(case, 0, dtype)
    rtol = 1e-4 if dtype is np.float32 else 1e-10
    U, b, lam = system.args()
    x_np = case.solve(U, b, lam, method=method, rtol=rtol)
    x_cp, info = case.solve(
        *system.args(cp.asarray), method=method, rtol=rtol, return_info=True
    )  # fmt: skip
    assert isinstance(x_cp, cp.ndarray) and x_cp.dtype == dtype
    assert isinstance(info.residual, cp.ndarray)
    np.testing.assert_allclose(cp.asnumpy(x_cp), x_np, rtol=50 * rtol, atol=0)
    gx = np.ones_like(b)
    grads_np = case.vjp(U, x_np, gx, lam, method=method, rtol=rtol)
    grads_cp = case.vjp(
        cp.asarray(U), x_cp, cp.asarray(gx), cp.asarray(lam), method=method, rtol=rtol
    )  # fmt: skip
    for g_cp, g_np in zip(grads_cp, grads_np, strict=True):
        assert isinstance(g_cp, cp.ndarray)
        scale = np.abs(g_np).max()
        np.testing.assert_allclose(cp.asnumpy(g_cp), g_np, rtol=0, atol=100 * rtol * scale)


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["cg", "direct"])
@pytest.mark.parametrize("case", INDEFINITE_CASES, ids=str)
def test_cupy_indefinite_is_detected(method, case):
    """CuPy's Cholesky returns NaNs instead of raising: the check must still fire."""
    cp = _cupy()
    system = _system(case, 0)
    U, b, _ = system.args(cp.asarray)
    lam = cp.asarray(case.indefinite_lam(system))
    with pytest.raises(lg.IndefiniteSystemError, match=case.indefinite_message):
        case.solve(U, b, lam, method=method)


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["cg", "direct"])
@each_model
def test_cupy_solve_makes_no_implicit_transfer(method, case):
    """Every device→host read of a solve and its VJP is explicit (lowrank_gcrf.host_reads:
    convergence flags, iteration counts), so they run under CuPy's transfer guard set to
    "disallow" and give the answers they give without it."""
    cp = _cupy()
    guard = getattr(cp.cuda, "transfer_guard", None)
    if guard is None:
        pytest.skip("this CuPy has no cupy.cuda.transfer_guard")
    U, b, lam = _system(case, 1).args(cp.asarray)
    gx = cp.ones_like(b)
    x_free = case.solve(U, b, lam, method=method, rtol=1e-10)
    with guard("disallow"):
        x, info = case.solve(U, b, lam, method=method, rtol=1e-10, return_info=True)
        grads = case.vjp(U, x, gx, lam, method=method, rtol=1e-10)
    assert bool(cp.all(info.converged).get())
    np.testing.assert_array_equal(x.get(), x_free.get())
    free = case.vjp(U, x_free, gx, lam, method=method, rtol=1e-10)
    for g, g_free in zip(grads, free, strict=True):
        np.testing.assert_array_equal(g.get(), g_free.get())


@pytest.mark.gpu
@pytest.mark.parametrize("passes", [0, 2])
def test_cupy_refine_landmarks_match_numpy(passes):
    """``refine`` on CuPy arrays with the landmarks: the exact solve or the landmarks'
    passes, as NumPy computes them, in float64 (kernel values, k-means and the solve on
    another library: agreement to ~1e-9 of probabilities that sum to 1)."""
    cp = _cupy()
    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.ones(4), size=(2, 20, 24)).transpose(0, 3, 1, 2)
    image = rng.integers(0, 256, (2, 3, 20, 24), dtype=np.uint8)
    kw = dict(rank=8, landmarks=24, passes=passes, appearance_kernel="landmarks")
    expected = lg.refine(probs, image, **kw)
    got = lg.refine(cp.asarray(probs), cp.asarray(image), **kw)
    assert isinstance(got, cp.ndarray) and got.dtype == np.float64
    np.testing.assert_allclose(cp.asnumpy(got), expected, rtol=0, atol=1e-8)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_cupy_refine_defaults_are_the_lattice_as_numpy(dtype):
    """The defaults on CuPy arrays are the lattice's passes (the batch's factors in cuSPARSE),
    as NumPy's. Both filter in float32 and sum in another order: ~1e-7 relative of messages
    of weight ≤ 40, 1e-5 in the probabilities (as the adapters' lattice against the core's)."""
    cp = _cupy()
    rng = np.random.default_rng(4)
    probs = rng.dirichlet(np.ones(4), size=(2, 20, 24)).transpose(0, 3, 1, 2).astype(dtype)
    image = rng.integers(0, 256, (2, 3, 20, 24), dtype=np.uint8)
    expected, expected_info = lg.refine(probs, image, return_info=True)
    got, info = lg.refine(cp.asarray(probs), cp.asarray(image), return_info=True)
    assert isinstance(got, cp.ndarray) and got.dtype == dtype
    np.testing.assert_allclose(cp.asnumpy(got), expected, rtol=0, atol=1e-5)
    # The lattice's passes solve no system: NaN residuals, as NumPy's.
    assert np.isnan(cp.asnumpy(info.residual)).all() and np.isnan(expected_info.residual).all()
    # "lattice" asks for what "auto" chose (cuSPARSE's sums need not repeat bit for bit).
    lattice = lg.refine(cp.asarray(probs), cp.asarray(image), appearance_kernel="lattice")
    np.testing.assert_allclose(cp.asnumpy(lattice), cp.asnumpy(got), rtol=0, atol=1e-6)
