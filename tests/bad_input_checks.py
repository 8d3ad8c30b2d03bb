"""Shared cases and checks of the bad-input tests of the adapters and layers.

NumPy and the core only: the cases (λ of the wrong type, bad solver keywords), the systems
of every model (tests/model_cases.py) and the core's reference results they are compared
with, and the assertions.
"""

from __future__ import annotations

import numpy as np
import pytest

import lowrank_gcrf as lg

METHODS = ["direct", "cg"]
TRACED = pytest.mark.parametrize("traced", [False, True], ids=["eager", "tf.function"])
# One tolerance per dtype for the solves and the comparisons with the core.
RTOL = {np.float32: 1e-5, np.float64: 1e-11}

LAM_TYPE_ERRORS = [
    (None, "lam must be a positive float or an array"),
    ("1.0", "lam must be a positive float or an array"),
    (np.bool_(True), "lam must be real and positive, got bool"),
    (1 + 5j, "lam must be real and positive, got complex"),
    (True, "lam must be real and positive, got bool"),
]
KEYWORD_ERRORS = [
    ({"maxiter": 2.0}, lg.GCRFTypeError, "maxiter must be an integer or None"),
    ({"maxiter": float("inf")}, lg.GCRFTypeError, "maxiter must be an integer or None"),
    ({"rtol": "abc"}, lg.GCRFTypeError, "rtol must be a real number"),
    ({"rtol": None}, lg.GCRFTypeError, "rtol must be a real number"),
    ({"rtol": float("nan")}, lg.GCRFError, "both finite; got rtol=nan"),
    ({"atol": float("inf")}, lg.GCRFError, "both finite; got atol=inf"),
    ({"method": "lu"}, lg.GCRFError, "method must be one of"),
    ({"tol": 1e-3}, lg.GCRFError, "unknown solver keyword(s) tol"),
]
# A layer's rtol=None is its dtype-dependent default; it takes no unknown keywords.
LAYER_KEYWORD_ERRORS = [
    case for case in KEYWORD_ERRORS if case[0] not in ({"rtol": None}, {"tol": 1e-3})
]


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny tensors gain nothing from threads on a shared 2-core runner (import it into a
    test module to use it there)."""
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def core_system(case, dtype=np.float64, batch=()):
    """NumPy (embeddings, b, λ), κ = 10: D = 3 and N = 12 (general; signed with E = 2 more
    rows) or P = 4, L = 3 (Potts)."""
    system = case.make(1, rank=3, pixels=4, labels=3, kappa=10.0, batch_shape=batch, dtype=dtype)
    return system.args()


def core_gradients(case, U, b, lam, weights, rtol):
    """(∂L/∂U, ∂L/∂b, ∂L/∂λ summed over the batch) of L = Σ weights·x, from the core."""
    x = case.solve(U, b, lam, rtol=rtol)
    g_u, g_b, g_lam = case.vjp(U, x, weights, lam, rtol=rtol)
    return g_u, g_b, np.sum(g_lam)


def assert_close(got, expected, rtol):
    """‖got − expected‖ ≤ rtol·‖expected‖: two solves to a relative residual ε of a system
    with κ = 10 agree to about κε in norm, not entry by entry."""
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    assert np.linalg.norm(got - expected) <= rtol * np.linalg.norm(expected), (got, expected)


def assert_error(error, fragment, call, *args, **kwargs):
    """``call(*args, **kwargs)`` raises ``error`` with ``fragment`` in its message."""
    with pytest.raises(error) as exc:
        call(*args, **kwargs)
    assert fragment in str(exc.value), str(exc.value)


def maybe_traced(f, traced: bool):
    """``f`` itself, or ``f`` as a ``tf.function`` (without autograph: plain Python calls)."""
    if not traced:
        return f
    import tensorflow as tf

    return tf.function(f, autograph=False)
