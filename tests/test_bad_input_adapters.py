"""Bad input to the adapters and layers: PyTorch functions and ``DenseGCRF``; TensorFlow eager,
inside ``tf.function`` and the Keras ``DenseGCRF``.

The decisions are those of ``test_bad_input_core.py`` (integer, boolean and complex tensors
and booleans as λ refused with ``GCRFTypeError``, finite tolerances, integer ``maxiter``,
overflow as an error): the adapters follow the core's policy, through the same functions.
Every error test asserts the exception type and a fragment of its message. Inside
``tf.function`` a core error raised while the graph runs arrives as
``tf.errors.InvalidArgumentError`` carrying the core's class name and message; errors of the
call itself are raised while tracing, with their own type.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
torch = pytest.importorskip("torch")
tf = pytest.importorskip("tensorflow")

import lowrank_gcrf as lg  # noqa: E402
from lowrank_gcrf.adapters import tensorflow as tfa  # noqa: E402
from lowrank_gcrf.adapters import torch as tha  # noqa: E402
from lowrank_gcrf.testing import make_general_system, make_potts_system  # noqa: E402

MODELS = ["general", "potts"]
METHODS = ["direct", "cg"]
CORE_SOLVE = {"general": lg.solve, "potts": lg.solve_potts}
CORE_VJP = {"general": lg.solve_vjp, "potts": lg.solve_potts_vjp}
TORCH_SOLVE = {"general": tha.gcrf_solve, "potts": tha.potts_solve}
TF_SOLVE = {"general": tfa.gcrf_solve, "potts": tfa.potts_solve}
# One tolerance per dtype for the solves and the comparisons with the core.
RTOL = {np.float32: 1e-5, np.float64: 1e-11}
# Overflow tests overflow on purpose; the error, not NumPy's warning, is what they check.
pytestmark = pytest.mark.filterwarnings(
    "ignore:overflow encountered:RuntimeWarning", "ignore:invalid value encountered:RuntimeWarning"
)

LAM_TYPE_ERRORS = [
    (None, "lam must be a positive float or an array"),
    ("1.0", "lam must be a positive float or an array"),
    (True, "lam must be real and positive, got bool"),
    (np.bool_(True), "lam must be real and positive, got bool"),
    (1 + 5j, "lam must be real and positive, got complex"),
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
    """Tiny tensors gain nothing from threads on a shared 2-core runner."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def core_system(model: str, dtype=np.float64, batch=()):
    """NumPy (embeddings, b, λ), κ = 10: general D = 3, N = 12; Potts D = 3, P = 6, L = 3."""
    if model == "potts":
        s = make_potts_system(1, rank=3, pixels=6, labels=3, kappa=10.0, batch_shape=batch)
    else:
        s = make_general_system(1, rank=3, n=12, kappa=10.0, batch_shape=batch)
    return s.embeddings.astype(dtype), s.b.astype(dtype), s.lam


def core_gradients(model, U, b, lam, weights, rtol):
    """(∂L/∂U, ∂L/∂b, ∂L/∂λ summed over the batch) of L = Σ weights·x, from the core."""
    x = CORE_SOLVE[model](U, b, lam, rtol=rtol)
    g_u, g_b, g_lam = CORE_VJP[model](U, x, weights, lam, rtol=rtol)
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


# -- PyTorch: values ---------------------------------------------------------------------


@pytest.mark.parametrize("scale", [1e20, 1e-25, 1e200, 1e-200])
@pytest.mark.parametrize("batch", [(), (2,)])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("model", MODELS)
def test_torch_any_magnitude_of_b(model, method, batch, scale):
    """D1: |b| = 1e20 or 1e-25 in float32 (1e200, 1e-200 in float64) returned x = 0."""
    dtype = np.float32 if 1e-30 < scale < 1e30 else np.float64
    U, b, lam = core_system(model, dtype, batch)
    expected = CORE_SOLVE[model](U, b, lam, method=method, rtol=RTOL[dtype]) * dtype(scale)
    x = TORCH_SOLVE[model](
        torch.from_numpy(U), torch.from_numpy(b * dtype(scale)), lam, method=method,
        rtol=RTOL[dtype],
    )  # fmt: skip
    assert_close(x.numpy() / dtype(scale), expected / dtype(scale), 100 * RTOL[dtype])


@pytest.mark.parametrize(
    ("batch", "lam_kind"),
    [((), "float"), ((), "0-d tensor"), ((2,), "float"), ((2,), "0-d tensor"), ((2,), "batch")],
)
@pytest.mark.parametrize("model", MODELS)
def test_torch_backward(model, batch, lam_kind):
    """D2: the unbatched backward crashed ("from_dlpack received an invalid capsule")."""
    U, b, lam = core_system(model, np.float64, batch)
    lam = np.full(batch, lam) if lam_kind == "batch" else lam
    weights = np.random.default_rng(0).standard_normal(b.shape)
    U_t, b_t = (torch.tensor(a, requires_grad=True) for a in (U, b))
    lam_t = (
        lam if lam_kind == "float" else torch.tensor(lam, dtype=torch.float64, requires_grad=True)
    )
    x = TORCH_SOLVE[model](U_t, b_t, lam_t, rtol=RTOL[np.float64])
    (x * torch.from_numpy(weights)).sum().backward()
    expected = core_gradients(model, U, b, lam, weights, RTOL[np.float64])
    got = [U_t.grad, b_t.grad] + ([] if lam_kind == "float" else [lam_t.grad.sum()])
    for g, e in zip(got, expected, strict=False):
        assert_close(g.numpy(), e, 100 * RTOL[np.float64])


@pytest.mark.parametrize("model", MODELS)
def test_torch_gradient_overflow_raises(model):
    """D4: a float32 cotangent whose solve overflows gave inf/NaN gradients."""
    U, b, lam = core_system(model, np.float32)
    U_t = torch.tensor(U, requires_grad=True)
    x = TORCH_SOLVE[model](U_t, torch.from_numpy(b), lam)
    with pytest.raises(lg.GCRFError, match=r"the gradient of \w+ overflows float32"):
        (x * 3e38).sum().backward()


# -- PyTorch: types, λ, keywords ---------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
def test_torch_refuses_non_floating_and_foreign_tensors(model):
    """Integer and boolean tensors were cast to float silently (the core and TensorFlow
    refused them)."""
    U, b, lam = core_system(model)
    U_t, b_t = torch.from_numpy(U), torch.from_numpy(b)
    solve = TORCH_SOLVE[model]
    for dtype in (torch.int64, torch.int32, torch.bool, torch.complex64):
        assert_error(lg.GCRFTypeError, "real floating", solve, U_t, b_t.to(dtype), lam)
        assert_error(lg.GCRFTypeError, "real floating", solve, U_t.to(dtype), b_t, lam)
    assert_error(lg.GCRFTypeError, "expected torch tensors", solve, U, b, lam)


@pytest.mark.parametrize("model", MODELS)
def test_torch_refuses_bad_lam(model):
    """D6: a complex λ tensor lost its imaginary part; a boolean one was taken as 1."""
    U, b, _ = core_system(model)
    tensors = [(torch.tensor(1 + 5j), "got complex64"), (torch.tensor(True), "got bool")]
    for bad, fragment in LAM_TYPE_ERRORS + tensors:
        assert_error(
            lg.GCRFTypeError, fragment, TORCH_SOLVE[model], torch.from_numpy(U),
            torch.from_numpy(b), bad,
        )  # fmt: skip


@pytest.mark.parametrize("model", MODELS)
def test_torch_refuses_bad_keywords(model):
    """D5: raw TypeError, OverflowError or ValueError from the keywords."""
    U, b, lam = core_system(model)
    for kwargs, error, fragment in KEYWORD_ERRORS:
        assert_error(
            error, fragment, TORCH_SOLVE[model], torch.from_numpy(U), torch.from_numpy(b), lam,
            **kwargs,
        )  # fmt: skip


def layer_inputs(dtype=np.float32):
    """Unary (B, L, H, W) = (1, 2, 2, 3) and general embeddings (B, D, L, H, W), D = 3."""
    rng = np.random.default_rng(2)
    unary = rng.standard_normal((1, 2, 2, 3)).astype(dtype)
    return unary, rng.standard_normal((1, 3, 2, 2, 3)).astype(dtype)


def test_torch_layer_takes_a_tensor_lam():
    """D9: DenseGCRF(lam=torch.tensor(2.)) said "different library than the embeddings"."""
    unary, embeddings = (torch.from_numpy(a) for a in layer_inputs())
    by_float = tha.DenseGCRF(lam=2.0)(unary, embeddings)
    torch.testing.assert_close(tha.DenseGCRF(lam=torch.tensor(2.0))(unary, embeddings), by_float)


def test_torch_layer_any_magnitude_of_unary():
    """D1 through the layer: the output is linear in the unaries, so 1e20 × unary gives
    1e20 × output (it gave 0)."""
    unary, embeddings = (torch.from_numpy(a) for a in layer_inputs())
    layer = tha.DenseGCRF(lam=2.0, method="cg")
    large = layer(unary * 1e20, embeddings)
    assert_close(large / 1e20, layer(unary, embeddings), 100 * RTOL[np.float32])


def test_torch_layer_learns_lam():
    """D2 through the layer: a learnt λ is a 0-d tensor shared by the batch; its gradient is
    −Σ gᵀx summed over the batch."""
    unary, embeddings = (torch.from_numpy(a).double() for a in layer_inputs())
    layer = tha.DenseGCRF(lam=2.0, learn_lam=True, rtol=1e-12)
    layer(unary, embeddings).sum().backward()
    A = embeddings.reshape(1, 3, -1).numpy()
    gx = np.ones((1, A.shape[-1]))
    g_lam = core_gradients("general", A, unary.reshape(1, -1).numpy(), 2.0, gx, 1e-12)[2]
    sigmoid = 1 - np.exp(-2.0)  # d softplus / d raw at softplus(raw) = 2
    # raw_lam is a float32 parameter: λ, and so its gradient, has float32 digits.
    assert_close(layer.raw_lam.grad.numpy(), g_lam * sigmoid, 1e-6)


def test_torch_layer_refuses_bad_arguments():
    assert_error(lg.GCRFTypeError, "one number", tha.DenseGCRF, lam=torch.tensor([1.0, 2.0]))
    assert_error(lg.GCRFError, "lam must be finite and > 0", tha.DenseGCRF, lam=0.0)
    for bad, fragment in LAM_TYPE_ERRORS:
        assert_error(lg.GCRFTypeError, fragment, tha.DenseGCRF, lam=bad)
    for kwargs, error, fragment in LAYER_KEYWORD_ERRORS:
        assert_error(error, fragment, tha.DenseGCRF, **kwargs)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("model", MODELS)
def test_adapters_name_an_overflowing_gram(model, method):
    """D9 through the adapters: float32 embeddings of 1e30 were reported as "lam is too
    small" or "not positive definite"."""
    U, b, lam = core_system(model, np.float32)
    U = U * np.float32(1e30)
    fragment = "overflow"
    args = (torch.from_numpy(U), torch.from_numpy(b), lam)
    assert_error(lg.GCRFError, fragment, TORCH_SOLVE[model], *args, method=method)
    args = (tf.constant(U), tf.constant(b), lam)
    assert_error(lg.GCRFError, fragment, TF_SOLVE[model], *args, method=method)
    traced = tf.function(TF_SOLVE[model], autograph=False)
    assert_error(tf.errors.InvalidArgumentError, fragment, traced, *args, method=method)


# -- TensorFlow: eager and inside tf.function --------------------------------------------

TRACED = pytest.mark.parametrize("traced", [False, True], ids=["eager", "tf.function"])


def tf_gradients(solve, U, b, lam, weights, **kwargs):
    """x and (∂L/∂U, ∂L/∂b, ∂L/∂λ) of L = Σ weights·x by a gradient tape (eager or traced)."""
    with tf.GradientTape() as tape:
        tape.watch([U, b, lam])
        x = solve(U, b, lam, **kwargs)
        loss = tf.reduce_sum(x * weights)
    return x, tape.gradient(loss, [U, b, lam])


def maybe_traced(f, traced: bool):
    return tf.function(f, autograph=False) if traced else f


@TRACED
@pytest.mark.parametrize("model", MODELS)
def test_tf_gradients(model, traced):
    """D2: the unbatched backward failed ("No module named cupy" eagerly, UnknownError in
    a graph); batched too, with a 0-d λ tensor (its gradient is summed over the batch)."""
    run = maybe_traced(tf_gradients, traced)
    for batch in [(), (2,)]:
        U, b, lam = core_system(model, np.float64, batch)
        weights = np.random.default_rng(3).standard_normal(b.shape)
        _, grads = run(
            TF_SOLVE[model], tf.constant(U), tf.constant(b), tf.constant(lam, tf.float64), weights,
            rtol=RTOL[np.float64],
        )  # fmt: skip
        expected = core_gradients(model, U, b, lam, weights, RTOL[np.float64])
        for g, e in zip(grads, expected, strict=True):
            assert_close(g.numpy(), e, 100 * RTOL[np.float64])


def test_tf_gradient_of_a_variable_lam():
    """D2 with λ a tf.Variable (an unbatched system)."""
    U, b, lam = core_system("general")
    lam_v = tf.Variable(lam, dtype=tf.float64)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tfa.gcrf_solve(tf.constant(U), tf.constant(b), lam_v, rtol=1e-11))
    expected = core_gradients("general", U, b, lam, np.ones_like(b), 1e-11)[2]
    assert_close(tape.gradient(loss, lam_v).numpy(), expected, 100 * RTOL[np.float64])


@TRACED
@pytest.mark.parametrize("model", MODELS)
def test_tf_any_magnitude_of_b(model, traced):
    """D1: x = 0 for float32 |b| = 1e20 or 1e-25, unbatched and batched, direct and cg."""
    solve = maybe_traced(TF_SOLVE[model], traced)
    for batch in [(), (2,)]:
        U, b, lam = core_system(model, np.float32, batch)
        for scale, method in [(1e20, "direct"), (1e-25, "cg")]:
            expected = CORE_SOLVE[model](U, b, lam, method=method) * np.float32(scale)
            x = solve(tf.constant(U), tf.constant(b * np.float32(scale)), lam, method=method)
            assert_close(x.numpy() / scale, expected / scale, 100 * RTOL[np.float32])


def tf_bad_inputs(model: str, category: str) -> list:
    """(args, kwargs, error, fragment) of bad calls of one category."""
    U, b, lam = core_system(model)
    U_t, b_t = tf.constant(U), tf.constant(b)
    if category == "lam":
        tensors = [(tf.constant(1 + 5j), "got complex128"), (tf.constant(True), "got bool")]
        return [((U_t, b_t, v), {}, lg.GCRFTypeError, f) for v, f in LAM_TYPE_ERRORS + tensors]
    if category == "keywords":
        return [((U_t, b_t, lam), k, e, f) for k, e, f in KEYWORD_ERRORS]
    return [
        ((U_t, tf.cast(b_t, d), lam), {}, lg.GCRFTypeError, "real floating")
        for d in (tf.int32, tf.int64, tf.bool, tf.complex64)
    ]


@pytest.mark.parametrize("category", ["lam", "keywords", "dtypes"])
@pytest.mark.parametrize("model", MODELS)
def test_tf_refuses_bad_input_eagerly_and_while_tracing(model, category):
    """D6 (complex λ lost its imaginary part), D10 (lam=None: ValueError; lam='1.0':
    UnimplementedError), D5 (raw Python errors from keywords), non-floating tensors."""
    traced = tf.function(TF_SOLVE[model], autograph=False)
    for args, kwargs, error, fragment in tf_bad_inputs(model, category):
        assert_error(error, fragment, TF_SOLVE[model], *args, **kwargs)
        assert_error(error, fragment, traced, *args, **kwargs)


@TRACED
@pytest.mark.parametrize("model", MODELS)
def test_tf_gradient_overflow_raises(model, traced):
    """D4: a float32 cotangent whose solve overflows gave inf/NaN gradients (eager: the
    core's GCRFError; in a graph: InvalidArgumentError with the core's message)."""
    U, b, lam = core_system(model, np.float32)
    weights = np.full(b.shape, 3e38, np.float32)
    args = (TF_SOLVE[model], tf.constant(U), tf.constant(b), tf.constant(lam, tf.float32))
    error = tf.errors.InvalidArgumentError if traced else lg.GCRFError
    assert_error(error, "overflows float32", maybe_traced(tf_gradients, traced), *args, weights)


# -- Keras layer -------------------------------------------------------------------------


@pytest.fixture
def channels_first():
    """Keras layers default to ``keras.config.image_data_format()``: make it channels first,
    the layout the PyTorch layer takes."""
    previous = tf.keras.config.image_data_format()
    tf.keras.config.set_image_data_format("channels_first")
    yield
    tf.keras.config.set_image_data_format(previous)


def test_keras_layer_takes_a_tensor_lam(channels_first):
    """D9: DenseGCRF(lam=tf.constant(2.)) said "got EagerTensor"."""
    unary, embeddings = layer_inputs()
    by_float = tfa.DenseGCRF(lam=2.0)(unary, embeddings)
    by_tensor = tfa.DenseGCRF(lam=tf.constant(2.0))(unary, embeddings)
    np.testing.assert_array_equal(by_tensor.numpy(), by_float.numpy())


def test_keras_layer_any_magnitude_of_unary(channels_first):
    """D1 through the layer, eagerly and traced as model.predict runs it."""
    unary, embeddings = layer_inputs()
    layer = tfa.DenseGCRF(lam=2.0, method="cg")
    small = layer(unary, embeddings).numpy()
    for run in (layer, tf.function(layer)):
        large = run(unary * np.float32(1e20), embeddings).numpy()
        assert_close(large / 1e20, small, 100 * RTOL[np.float32])


@TRACED
def test_keras_layer_learns_lam(traced, channels_first):
    """D2 through the Keras layer: the gradient of the learnt λ's weight, as model.fit
    takes it (traced) and eagerly."""
    unary, embeddings = layer_inputs(np.float64)
    layer = tfa.DenseGCRF(lam=2.0, learn_lam=True, rtol=1e-12, dtype="float64")

    def gradient():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(unary, embeddings))
        return tape.gradient(loss, layer.raw_lam)

    A = embeddings.reshape(1, 3, -1)
    gx = np.ones((1, A.shape[-1]))
    g_lam = core_gradients("general", A, unary.reshape(1, -1), 2.0, gx, 1e-12)[2]
    sigmoid = 1 - np.exp(-2.0)  # d softplus / d raw at softplus(raw) = 2
    # The weight is float32 (Keras keeps λ in float32): its gradient has float32 digits.
    assert_close(maybe_traced(gradient, traced)().numpy(), g_lam * sigmoid, 1e-6)


def test_keras_layer_refuses_bad_arguments():
    assert_error(lg.GCRFTypeError, "one number", tfa.DenseGCRF, lam=tf.constant([1.0, 2.0]))
    assert_error(lg.GCRFError, "lam must be finite and > 0", tfa.DenseGCRF, lam=-1.0)
    for bad, fragment in LAM_TYPE_ERRORS:
        assert_error(lg.GCRFTypeError, fragment, tfa.DenseGCRF, lam=bad)
    for kwargs, error, fragment in LAYER_KEYWORD_ERRORS:
        assert_error(error, fragment, tfa.DenseGCRF, **kwargs)
