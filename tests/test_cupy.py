"""The core on CuPy arrays (GPU): same answers as NumPy, CuPy in → CuPy out.

Skipped, with the reason, where CuPy or a CUDA device is missing; the portable code path
these exercise is also run under array-api-strict by the other core tests.
"""

from __future__ import annotations

import numpy as np
import pytest

import lowrank_gcrf as lg
from lowrank_gcrf.testing import make_general_system, make_potts_system


def _cupy():
    cp = pytest.importorskip("cupy", reason="CuPy is not installed (extra cuda12/cuda13)")
    try:
        if cp.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("no CUDA device")
    except cp.cuda.runtime.CUDARuntimeError as exc:
        pytest.skip(f"no usable CUDA device: {exc}")
    return cp


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["cg", "direct"])
@pytest.mark.parametrize("potts", [False, True], ids=["general", "potts"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_cupy_matches_numpy(method, potts, dtype):
    cp = _cupy()
    if potts:
        system = make_potts_system(
            0,
            rank=16,
            pixels=100,
            labels=5,
            kappa=100.0,
            batch_shape=(2,),
            dtype=dtype,
            per_batch_lam=True,
        )
        solve, vjp = lg.solve_potts, lg.solve_potts_vjp
    else:
        system = make_general_system(
            0, rank=16, n=300, kappa=100.0, batch_shape=(2,), dtype=dtype, per_batch_lam=True
        )
        solve, vjp = lg.solve, lg.solve_vjp
    rtol = 1e-4 if dtype is np.float32 else 1e-10
    U, b, lam = system.embeddings, system.b, system.lam
    x_np = solve(U, b, lam, method=method, rtol=rtol)
    x_cp, info = solve(
        cp.asarray(U), cp.asarray(b), cp.asarray(lam), method=method, rtol=rtol, return_info=True
    )
    assert isinstance(x_cp, cp.ndarray) and x_cp.dtype == dtype
    assert isinstance(info.residual, cp.ndarray)
    np.testing.assert_allclose(cp.asnumpy(x_cp), x_np, rtol=50 * rtol, atol=0)
    gx = np.ones_like(b)
    grads_np = vjp(U, x_np, gx, lam, method=method, rtol=rtol)
    grads_cp = vjp(cp.asarray(U), x_cp, cp.asarray(gx), cp.asarray(lam), method=method, rtol=rtol)
    for g_cp, g_np in zip(grads_cp, grads_np, strict=True):
        assert isinstance(g_cp, cp.ndarray)
        scale = np.abs(g_np).max()
        np.testing.assert_allclose(cp.asnumpy(g_cp), g_np, rtol=0, atol=100 * rtol * scale)


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["cg", "direct"])
def test_cupy_potts_indefinite_is_detected(method):
    """CuPy's Cholesky returns NaNs instead of raising: the check must still fire."""
    cp = _cupy()
    rng = np.random.default_rng(0)
    Ahat = rng.standard_normal((4, 10))
    mu = float(np.linalg.eigvalsh(Ahat @ Ahat.T).max())
    with pytest.raises(lg.IndefiniteSystemError, match="lam > ‖Ahat‖₂²"):
        lg.solve_potts(
            cp.asarray(Ahat), cp.asarray(rng.standard_normal((3, 10))), 0.5 * mu, method=method
        )


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["cg", "direct"])
@pytest.mark.parametrize("potts", [False, True], ids=["general", "potts"])
def test_cupy_solve_makes_no_implicit_transfer(method, potts):
    """Every device→host read of a solve and its VJP is explicit (lowrank_gcrf.host_reads.to_host:
    convergence flags, iteration counts), so they run under CuPy's transfer guard set to
    "disallow" and give the answers they give without it."""
    cp = _cupy()
    guard = getattr(cp.cuda, "transfer_guard", None)
    if guard is None:
        pytest.skip("this CuPy has no cupy.cuda.transfer_guard")
    if potts:
        system = make_potts_system(
            1, rank=16, pixels=100, labels=5, kappa=100.0, batch_shape=(2,), per_batch_lam=True
        )
        solve, vjp = lg.solve_potts, lg.solve_potts_vjp
    else:
        system = make_general_system(
            1, rank=16, n=300, kappa=100.0, batch_shape=(2,), per_batch_lam=True
        )
        solve, vjp = lg.solve, lg.solve_vjp
    U, b, lam = (cp.asarray(a) for a in (system.embeddings, system.b, system.lam))
    gx = cp.ones_like(b)
    x_free = solve(U, b, lam, method=method, rtol=1e-10)
    with guard("disallow"):
        x, info = solve(U, b, lam, method=method, rtol=1e-10, return_info=True)
        grads = vjp(U, x, gx, lam, method=method, rtol=1e-10)
    assert bool(cp.all(info.converged).get())
    np.testing.assert_array_equal(x.get(), x_free.get())
    for g, g_free in zip(grads, vjp(U, x_free, gx, lam, method=method, rtol=1e-10), strict=True):
        np.testing.assert_array_equal(g.get(), g_free.get())
