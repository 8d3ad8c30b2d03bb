"""Bad input to the adapters' functions of every model (``solve``, ``solve_potts``,
``solve_signed``): PyTorch's, and TensorFlow's eagerly and inside ``tf.function``. The layers
are in ``test_bad_input_layers.py``, the core in ``test_bad_input_core.py``.

The decisions are those of ``test_bad_input_core.py`` (integer, boolean and complex tensors
and booleans as λ refused with ``GCRFTypeError``, finite tolerances, integer ``maxiter``,
overflow as an error): the adapters follow the core's policy, through the same functions.
Every error test asserts the exception type and a fragment of its message. Inside
``tf.function`` a core error raised while the graph runs arrives as
``tf.errors.InvalidArgumentError`` carrying the core's class name and message; errors of the
call itself are raised while tracing, with their own type.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
torch = pytest.importorskip("torch")
tf = pytest.importorskip("tensorflow")

from bad_input_checks import (  # noqa: E402
    KEYWORD_ERRORS,
    LAM_TYPE_ERRORS,
    METHODS,
    RTOL,
    TRACED,
    assert_close,
    assert_error,
    core_gradients,
    core_system,
    maybe_traced,
    one_torch_thread,  # noqa: F401 (a fixture)
)
from model_cases import each_model  # noqa: E402

import lowrank_gcrf as lg  # noqa: E402
from lowrank_gcrf.adapters import tensorflow as tfa  # noqa: E402
from lowrank_gcrf.adapters import torch as tha  # noqa: E402

# Overflow tests overflow on purpose; the error, not NumPy's warning, is what they check.
pytestmark = pytest.mark.filterwarnings(
    "ignore:overflow encountered:RuntimeWarning", "ignore:invalid value encountered:RuntimeWarning"
)


def torch_solve(case):
    """The PyTorch adapter's function of ``case``'s model, on stacked embeddings."""
    return functools.partial(case.adapter_solve, tha)


def tf_solve(case):
    """The TensorFlow adapter's function of ``case``'s model, on stacked embeddings."""
    return functools.partial(case.adapter_solve, tfa)


# -- PyTorch: values ---------------------------------------------------------------------


@pytest.mark.parametrize("scale", [1e20, 1e-25, 1e200, 1e-200])
@pytest.mark.parametrize("batch", [(), (2,)])
@pytest.mark.parametrize("method", METHODS)
@each_model
def test_torch_any_magnitude_of_b(case, method, batch, scale):
    """|b| = 1e20 or 1e-25 in float32 (1e200, 1e-200 in float64) is solved, not x = 0."""
    dtype = np.float32 if 1e-30 < scale < 1e30 else np.float64
    U, b, lam = core_system(case, dtype, batch)
    expected = case.solve(U, b, lam, method=method, rtol=RTOL[dtype]) * dtype(scale)
    x = torch_solve(case)(
        torch.from_numpy(U), torch.from_numpy(b * dtype(scale)), lam, method=method,
        rtol=RTOL[dtype],
    )  # fmt: skip
    assert_close(x.numpy() / dtype(scale), expected / dtype(scale), 100 * RTOL[dtype])


@pytest.mark.parametrize(
    ("batch", "lam_kind"),
    [((), "float"), ((), "0-d tensor"), ((2,), "float"), ((2,), "0-d tensor"), ((2,), "batch")],
)
@each_model
def test_torch_backward(case, batch, lam_kind):
    """The backward of an unbatched system too (it once crashed in DLPack: "from_dlpack
    received an invalid capsule"), with λ a float, a 0-d tensor or one per system."""
    U, b, lam = core_system(case, np.float64, batch)
    lam = np.full(batch, lam) if lam_kind == "batch" else lam
    weights = np.random.default_rng(0).standard_normal(b.shape)
    U_t, b_t = (torch.tensor(a, requires_grad=True) for a in (U, b))
    lam_t = (
        lam if lam_kind == "float" else torch.tensor(lam, dtype=torch.float64, requires_grad=True)
    )
    x = torch_solve(case)(U_t, b_t, lam_t, rtol=RTOL[np.float64])
    (x * torch.from_numpy(weights)).sum().backward()
    expected = core_gradients(case, U, b, lam, weights, RTOL[np.float64])
    got = [U_t.grad, b_t.grad] + ([] if lam_kind == "float" else [lam_t.grad.sum()])
    for g, e in zip(got, expected, strict=False):
        assert_close(g.numpy(), e, 100 * RTOL[np.float64])


@each_model
def test_torch_gradient_overflow_raises(case):
    """A float32 cotangent whose solve overflows raises, rather than giving inf/NaN gradients."""
    U, b, lam = core_system(case, np.float32)
    U_t = torch.tensor(U, requires_grad=True)
    x = torch_solve(case)(U_t, torch.from_numpy(b), lam)
    with pytest.raises(lg.GCRFError, match=r"the gradient of \w+ overflows float32"):
        (x * 3e38).sum().backward()


# -- PyTorch: types, λ, keywords ---------------------------------------------------------


def bad_calls(library: str, case, category: str) -> list:
    """(args, kwargs, error, fragment) of bad calls of one category, with ``library``'s
    tensors: λ of the wrong type, bad keywords, non-floating tensors."""
    U, b, lam = core_system(case)
    if library == "torch":
        tensor, cast = torch.as_tensor, torch.Tensor.to
        dtypes = (torch.int64, torch.int32, torch.bool, torch.complex64)
    else:
        tensor, cast = tf.constant, tf.cast
        dtypes = (tf.int32, tf.int64, tf.bool, tf.complex64)
    U_t, b_t = tensor(U), tensor(b)
    if category == "lam":
        return [((U_t, b_t, v), {}, lg.GCRFTypeError, f) for v, f in LAM_TYPE_ERRORS]
    if category == "lam tensors":
        tensors = [(tensor(1 + 5j), "got complex"), (tensor(True), "got bool")]
        return [((U_t, b_t, v), {}, lg.GCRFTypeError, f) for v, f in tensors]
    if category == "keywords":
        return [((U_t, b_t, lam), k, e, f) for k, e, f in KEYWORD_ERRORS]
    casts = [(U_t, cast(b_t, d)) for d in dtypes] + [(cast(U_t, d), b_t) for d in dtypes]
    return [((*pair, lam), {}, lg.GCRFTypeError, "real floating") for pair in casts]


CATEGORIES = pytest.mark.parametrize("category", ["lam", "lam tensors", "keywords", "dtypes"])


@CATEGORIES
@each_model
def test_torch_refuses_bad_input(case, category):
    """The core's errors for a complex λ tensor (which must not lose its imaginary part) or
    a boolean one (not taken as 1), for bad keywords (no raw TypeError, OverflowError or
    ValueError), and for integer or boolean tensors (refused as the core and TensorFlow
    refuse them, not cast to float silently)."""
    for args, kwargs, error, fragment in bad_calls("torch", case, category):
        assert_error(error, fragment, torch_solve(case), *args, **kwargs)
    U, b, lam = core_system(case)
    assert_error(lg.GCRFTypeError, "expected torch tensors", torch_solve(case), U, b, lam)


def half_precision_overflow(case):
    """Zero embeddings, b = 6e4 and λ = 0.5: x = b/λ = 1.2e5 does not fit in float16."""
    U, b, _ = core_system(case)
    return np.zeros_like(U, np.float16), np.full_like(b, 6e4, np.float16), 0.5


@each_model
def test_torch_half_precision_overflow_raises(case):
    """A float16 result above 65504 raises, not inf (it is solved in float32, then cast)."""
    U, b, lam = half_precision_overflow(case)
    args = (torch.from_numpy(U), torch.from_numpy(b), lam)
    assert_error(lg.GCRFError, "x overflows float16", torch_solve(case), *args)


@pytest.mark.parametrize("method", METHODS)
@each_model
def test_adapters_name_an_overflowing_gram(case, method):
    """Float32 embeddings of 1e30 are reported as an overflow through the adapters, not as
    "lam is too small" or "not positive definite"."""
    U, b, lam = core_system(case, np.float32)
    U = U * np.float32(1e30)
    fragment = "overflow"
    args = (torch.from_numpy(U), torch.from_numpy(b), lam)
    assert_error(lg.GCRFError, fragment, torch_solve(case), *args, method=method)
    args = (tf.constant(U), tf.constant(b), lam)
    assert_error(lg.GCRFError, fragment, tf_solve(case), *args, method=method)
    traced = tf.function(tf_solve(case), autograph=False)
    assert_error(tf.errors.InvalidArgumentError, fragment, traced, *args, method=method)


# -- TensorFlow: eager and inside tf.function --------------------------------------------


def tf_gradients(solve, U, b, lam, weights, **kwargs):
    """x and (∂L/∂U, ∂L/∂b, ∂L/∂λ) of L = Σ weights·x by a gradient tape (eager or traced)."""
    with tf.GradientTape() as tape:
        tape.watch([U, b, lam])
        x = solve(U, b, lam, **kwargs)
        loss = tf.reduce_sum(x * weights)
    return x, tape.gradient(loss, [U, b, lam])


@TRACED
@each_model
def test_tf_gradients(case, traced):
    """The backward of an unbatched system, eagerly and in a graph (where it once failed
    with "No module named cupy" and UnknownError); batched too, with a 0-d λ tensor (its
    gradient is summed over the batch)."""
    run = maybe_traced(tf_gradients, traced)
    for batch in [(), (2,)]:
        U, b, lam = core_system(case, np.float64, batch)
        weights = np.random.default_rng(3).standard_normal(b.shape)
        _, grads = run(
            tf_solve(case), tf.constant(U), tf.constant(b), tf.constant(lam, tf.float64), weights,
            rtol=RTOL[np.float64],
        )  # fmt: skip
        expected = core_gradients(case, U, b, lam, weights, RTOL[np.float64])
        for g, e in zip(grads, expected, strict=True):
            assert_close(g.numpy(), e, 100 * RTOL[np.float64])


@each_model
def test_tf_gradient_of_a_variable_lam(case):
    """The gradient of λ a tf.Variable (an unbatched system)."""
    U, b, lam = core_system(case)
    lam_v = tf.Variable(lam, dtype=tf.float64)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf_solve(case)(tf.constant(U), tf.constant(b), lam_v, rtol=1e-11))
    expected = core_gradients(case, U, b, lam, np.ones_like(b), 1e-11)[2]
    assert_close(tape.gradient(loss, lam_v).numpy(), expected, 100 * RTOL[np.float64])


@TRACED
@each_model
def test_tf_any_magnitude_of_b(case, traced):
    """Float32 |b| = 1e20 or 1e-25 is solved (not x = 0), unbatched and batched, direct and
    cg."""
    solve = maybe_traced(tf_solve(case), traced)
    for batch in [(), (2,)]:
        U, b, lam = core_system(case, np.float32, batch)
        for scale, method in [(1e20, "direct"), (1e-25, "cg")]:
            expected = case.solve(U, b, lam, method=method) * np.float32(scale)
            x = solve(tf.constant(U), tf.constant(b * np.float32(scale)), lam, method=method)
            assert_close(x.numpy() / scale, expected / scale, 100 * RTOL[np.float32])


@CATEGORIES
@each_model
def test_tf_refuses_bad_input_eagerly_and_while_tracing(case, category):
    """The core's errors, eagerly and while tracing, for: a complex λ (which must not lose
    its imaginary part), lam=None or '1.0' (not TensorFlow's ValueError or
    UnimplementedError), bad keywords (no raw Python errors), non-floating tensors."""
    traced = tf.function(tf_solve(case), autograph=False)
    for args, kwargs, error, fragment in bad_calls("tensorflow", case, category):
        assert_error(error, fragment, tf_solve(case), *args, **kwargs)
        assert_error(error, fragment, traced, *args, **kwargs)


@TRACED
@each_model
def test_tf_half_precision_overflow_raises(case, traced):
    """A float16 result above 65504 raises, not inf (eagerly: GCRFError; in a graph
    TensorFlow's InvalidArgumentError with the same message)."""
    U, b, lam = half_precision_overflow(case)
    error = tf.errors.InvalidArgumentError if traced else lg.GCRFError
    solve = maybe_traced(tf_solve(case), traced)
    assert_error(error, "x overflows float16", solve, tf.constant(U), tf.constant(b), lam)


@TRACED
@each_model
def test_tf_gradient_overflow_raises(case, traced):
    """A float32 cotangent whose solve overflows raises, not inf/NaN gradients (eager: the
    core's GCRFError; in a graph: InvalidArgumentError with the core's message)."""
    U, b, lam = core_system(case, np.float32)
    weights = np.full(b.shape, 3e38, np.float32)
    args = (tf_solve(case), tf.constant(U), tf.constant(b), tf.constant(lam, tf.float32))
    error = tf.errors.InvalidArgumentError if traced else lg.GCRFError
    assert_error(error, "overflows float32", maybe_traced(tf_gradients, traced), *args, weights)


# -- the signed model's two factors, before they are stacked ------------------------------

SIGNED_FACTOR_ERRORS = [
    # (A, Gamma) as (shape, dtype) or None; the error and a fragment of its message
    (((4, 30), "float32"), ((2, 30), "int32"), lg.GCRFTypeError, "Gamma has dtype int32"),
    (((4, 30), "bool"), ((2, 30), "float32"), lg.GCRFTypeError, "A has dtype bool"),
    (((30,), "float32"), None, lg.GCRFError, "A must have shape (..., D, N)"),
    (None, ((30,), "float64"), lg.GCRFError, "Gamma must have shape (..., E, N)"),
    (((4, 30), "float32"), ((2,), "float32"), lg.GCRFError, "Gamma must have shape"),
]


def signed_factor(spec, framework):
    if spec is None:
        return None
    shape, dtype = spec
    value = np.ones(shape, dtype=dtype)
    return torch.from_numpy(value) if framework == "torch" else tf.constant(value)


@pytest.mark.parametrize(("A", "Gamma", "error", "fragment"), SIGNED_FACTOR_ERRORS)
@pytest.mark.parametrize("framework", ["torch", "tensorflow"])
def test_signed_factors_are_checked_before_they_are_stacked(A, Gamma, error, fragment, framework):
    """An integer or boolean factor is refused, not cast by the concatenation (a bool Γ
    gave a misleading IndefiniteSystemError); a factor of fewer than 2 dimensions gets the
    core's shape message, not an IndexError from the stacking."""
    adapter = tha if framework == "torch" else tfa
    A, Gamma = signed_factor(A, framework), signed_factor(Gamma, framework)
    b = np.zeros(30, dtype=np.float32)
    b = torch.from_numpy(b) if framework == "torch" else tf.constant(b)
    assert_error(error, fragment, adapter.solve_signed, A, Gamma, b, 1.0)
