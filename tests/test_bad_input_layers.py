"""Bad input to the layers of every model: the PyTorch ``DenseGCRF`` module and the Keras
``DenseGCRF`` layer (eagerly and traced, as ``model.fit`` runs it). The decisions are those
of ``test_bad_input_core.py``; the cases are shared with ``test_bad_input_adapters.py``.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
torch = pytest.importorskip("torch")
tf = pytest.importorskip("tensorflow")

from bad_input_checks import (  # noqa: E402
    LAM_TYPE_ERRORS,
    LAYER_KEYWORD_ERRORS,
    RTOL,
    TRACED,
    assert_close,
    assert_error,
    core_gradients,
    maybe_traced,
    one_torch_thread,  # noqa: F401 (a fixture)
)
from model_cases import MODEL_CASES, each_model, top_eigenvalue  # noqa: E402

import lowrank_gcrf as lg  # noqa: E402
from lowrank_gcrf.adapters import tensorflow as tfa  # noqa: E402
from lowrank_gcrf.adapters import torch as tha  # noqa: E402

#: The models whose raw layers clamp (some of) their embeddings to ‖·‖₂² ≤ max_strength·λ.
bounded_models = pytest.mark.parametrize(
    "case", [case for case in MODEL_CASES if case.bounded_rows is not None], ids=str
)


def layer_inputs(case, dtype=np.float32):
    """Unary (B, L, H, W) = (1, 2, 2, 3) and embeddings with D = 3 (B, *channels, H, W), so
    small that no bound is active: the layer's system is the core's on the same values."""
    rng = np.random.default_rng(2)
    unary = rng.standard_normal((1, 2, 2, 3)).astype(dtype)
    embeddings = 0.1 * rng.standard_normal((1, *case.embedding_channels(3, 2), 2, 3))
    system = case.layer_system(unary, embeddings, 2.0)
    if case.bounded_rows is not None:
        assert np.all(top_eigenvalue(system.embeddings[:, case.bounded_rows]) < 0.9 * 2.0)
    return unary, embeddings.astype(dtype)


@each_model
def test_torch_layer_takes_a_tensor_lam(case):
    """DenseGCRF(lam=torch.tensor(2.)) is DenseGCRF(lam=2.), not "different library than
    the embeddings"."""
    unary, embeddings = (torch.from_numpy(a) for a in layer_inputs(case))
    by_float = tha.DenseGCRF(lam=2.0, **case.layer_kwargs())(unary, embeddings)
    by_tensor = tha.DenseGCRF(lam=torch.tensor(2.0), **case.layer_kwargs())(unary, embeddings)
    torch.testing.assert_close(by_tensor, by_float)


@each_model
def test_torch_layer_any_magnitude_of_unary(case):
    """The output is linear in the unaries, so 1e20 × unary gives 1e20 × output (not 0)."""
    unary, embeddings = (torch.from_numpy(a) for a in layer_inputs(case))
    layer = tha.DenseGCRF(lam=2.0, method="cg", **case.layer_kwargs())
    large = layer(unary * 1e20, embeddings)
    assert_close(large / 1e20, layer(unary, embeddings), 100 * RTOL[np.float32])


def core_lam_gradient(case, unary, embeddings, lam):
    """−Σ gᵀx of the layer's output summed, from the core (no bound active)."""
    system = case.layer_system(unary, embeddings, lam)
    U, b, _ = system.args()
    return core_gradients(case, U, b, lam, np.ones_like(b), 1e-12)[2]


@each_model
def test_torch_layer_learns_lam(case):
    """A learnt λ is a 0-d tensor shared by the batch; its gradient is −Σ gᵀx summed over
    the batch."""
    unary, embeddings = (torch.from_numpy(a).double() for a in layer_inputs(case))
    layer = tha.DenseGCRF(lam=2.0, learn_lam=True, rtol=1e-12, **case.layer_kwargs())
    layer(unary, embeddings).sum().backward()
    g_lam = core_lam_gradient(case, unary.numpy(), embeddings.numpy(), 2.0)
    sigmoid = 1 - np.exp(-2.0)  # d softplus / d raw at softplus(raw) = 2
    # raw_lam is a float32 parameter: λ, and so its gradient, has float32 digits.
    assert_close(layer.raw_lam.grad.numpy(), g_lam * sigmoid, 1e-6)


def bounded_layer_inputs(case, dtype):
    """Unary (1, L = 3, 4, 4) and embeddings with D = 4 whose bounded rows are far above the
    bound; the others (signed: A) small, so that the layer's κ stays that of its bound."""
    rng = np.random.default_rng(5)
    unary = rng.standard_normal((1, 3, 4, 4)).astype(dtype)
    embeddings = rng.standard_normal((1, *case.embedding_channels(4, 3), 4, 4))
    free = np.ones(embeddings.shape[1], dtype=bool)
    free[case.bounded_rows] = False
    embeddings[:, free] *= 0.01
    return unary, embeddings.astype(dtype)


def bounded_layer_tolerance(case, dtype) -> float:
    """Inputs rounded to ``dtype`` and the layer's rtol (1000ε of float32), times the
    layer's κ (Potts: at most (1 + (L − 1)ρ)/(1 − ρ) = 28 with ρ = pd_bound = 0.9)."""
    unary, embeddings = bounded_layer_inputs(case, np.float64)
    kappa = case.layer_system(unary, embeddings, 1.0).kappa
    return kappa * (2 * float(np.finfo(dtype).eps) + 1000 * 2.0**-23)


BOUNDED_MAGNITUDES = pytest.mark.parametrize(
    ("dtype", "scale"), [(np.float16, 100.0), (np.float32, 1e19)], ids=["float16", "float32"]
)


def scaled_bounded_rows(case, embeddings, scale):
    scaled = embeddings.copy()
    scaled[:, case.bounded_rows] *= scale
    return scaled


@BOUNDED_MAGNITUDES
@bounded_models
def test_torch_layer_any_magnitude_of_bounded_embeddings(case, dtype, scale):
    """The layer rescales its bounded embeddings (Potts: Â, signed: Γ) to the bound, so
    that c times them gives the output of the embeddings themselves; a float16 Gram above
    65504 or a float32 one above 3e38 raised a raw LinAlgError."""
    unary, embeddings = bounded_layer_inputs(case, dtype)
    layer = tha.DenseGCRF(lam=1.0, **case.layer_kwargs())
    expected = layer(torch.from_numpy(unary).double(), torch.from_numpy(embeddings).double())
    big = torch.from_numpy(scaled_bounded_rows(case, embeddings, dtype(scale)))
    got = layer(torch.from_numpy(unary), big)
    assert got.dtype == torch.from_numpy(unary).dtype
    assert_close(got.double().numpy(), expected.numpy(), bounded_layer_tolerance(case, dtype))


def test_torch_layer_refuses_bad_arguments():
    assert_error(lg.GCRFTypeError, "one number", tha.DenseGCRF, lam=torch.tensor([1.0, 2.0]))
    assert_error(lg.GCRFError, "lam must be finite and > 0", tha.DenseGCRF, lam=0.0)
    for bad, fragment in LAM_TYPE_ERRORS:
        assert_error(lg.GCRFTypeError, fragment, tha.DenseGCRF, lam=bad)
    for kwargs, error, fragment in LAYER_KEYWORD_ERRORS:
        assert_error(error, fragment, tha.DenseGCRF, **kwargs)


# -- Keras layer -------------------------------------------------------------------------


@pytest.fixture
def channels_first():
    """Keras layers default to ``keras.config.image_data_format()``: make it channels first,
    the layout the PyTorch layer takes."""
    previous = tf.keras.config.image_data_format()
    tf.keras.config.set_image_data_format("channels_first")
    yield
    tf.keras.config.set_image_data_format(previous)


@each_model
def test_keras_layer_takes_a_tensor_lam(case, channels_first):
    """DenseGCRF(lam=tf.constant(2.)) is DenseGCRF(lam=2.), not "got EagerTensor"."""
    unary, embeddings = layer_inputs(case)
    by_float = tfa.DenseGCRF(lam=2.0, **case.layer_kwargs())(unary, embeddings)
    by_tensor = tfa.DenseGCRF(lam=tf.constant(2.0), **case.layer_kwargs())(unary, embeddings)
    np.testing.assert_array_equal(by_tensor.numpy(), by_float.numpy())


@each_model
def test_keras_layer_any_magnitude_of_unary(case, channels_first):
    """1e20 × unary gives 1e20 × output (not 0), eagerly and traced as model.predict runs
    it."""
    unary, embeddings = layer_inputs(case)
    layer = tfa.DenseGCRF(lam=2.0, method="cg", **case.layer_kwargs())
    small = layer(unary, embeddings).numpy()
    for run in (layer, tf.function(layer)):
        large = run(unary * np.float32(1e20), embeddings).numpy()
        assert_close(large / 1e20, small, 100 * RTOL[np.float32])


@TRACED
@each_model
def test_keras_layer_learns_lam(case, traced, channels_first):
    """The gradient of the learnt λ's weight, as model.fit takes it (traced) and eagerly."""
    unary, embeddings = layer_inputs(case, np.float64)
    layer = tfa.DenseGCRF(
        lam=2.0, learn_lam=True, rtol=1e-12, dtype="float64", **case.layer_kwargs()
    )

    def gradient():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(unary, embeddings))
        return tape.gradient(loss, layer.raw_lam)

    g_lam = core_lam_gradient(case, unary, embeddings, 2.0)
    sigmoid = 1 - np.exp(-2.0)  # d softplus / d raw at softplus(raw) = 2
    # The weight is float32 (Keras keeps λ in float32): its gradient has float32 digits.
    assert_close(maybe_traced(gradient, traced)().numpy(), g_lam * sigmoid, 1e-6)


@BOUNDED_MAGNITUDES
@bounded_models
def test_keras_layer_any_magnitude_of_bounded_embeddings(case, dtype, scale, channels_first):
    """As for PyTorch: an InvalidArgumentError from eigvalsh where the Gram overflowed."""
    unary, embeddings = bounded_layer_inputs(case, dtype)
    kwargs = case.layer_kwargs()
    expected = tfa.DenseGCRF(lam=1.0, dtype="float64", **kwargs)(unary, embeddings)
    layer = tfa.DenseGCRF(lam=1.0, dtype=np.dtype(dtype).name, **kwargs)
    got = layer(unary, scaled_bounded_rows(case, embeddings, dtype(scale)))
    assert got.dtype == np.dtype(dtype).name
    assert_close(got.numpy(), expected.numpy(), bounded_layer_tolerance(case, dtype))


def test_keras_layer_refuses_bad_arguments():
    assert_error(lg.GCRFTypeError, "one number", tfa.DenseGCRF, lam=tf.constant([1.0, 2.0]))
    assert_error(lg.GCRFError, "lam must be finite and > 0", tfa.DenseGCRF, lam=-1.0)
    for bad, fragment in LAM_TYPE_ERRORS:
        assert_error(lg.GCRFTypeError, fragment, tfa.DenseGCRF, lam=bad)
    for kwargs, error, fragment in LAYER_KEYWORD_ERRORS:
        assert_error(error, fragment, tfa.DenseGCRF, **kwargs)


# -- what the positive-definiteness rescaling sees before the core -----------------------


def broken_embeddings(case, kind: str) -> np.ndarray:
    """float64 embeddings of ``layer_inputs`` with a NaN, an Inf, or rows ×1e200 (finite,
    but their Gram beyond float64) in the rows the layer rescales."""
    _, embeddings = layer_inputs(case, np.float64)
    rows = embeddings[:, case.bounded_rows]
    if kind == "overflow":
        rows *= 1e200
    else:
        rows.reshape(-1)[0] = {"nan": np.nan, "inf": np.inf}[kind]
    embeddings[:, case.bounded_rows] = rows
    return embeddings


BROKEN = pytest.mark.parametrize(
    ("kind", "fragment"),
    [
        ("nan", "contains NaN or Inf"),
        ("inf", "contains NaN or Inf"),
        ("overflow", "overflows float64"),
    ],
)


@BROKEN
@bounded_models
def test_torch_bounded_layer_names_embeddings_it_cannot_rescale(case, kind, fragment):
    """NaN/Inf embeddings and a Gram beyond float64 get the core's message naming the
    embeddings, not a failed eigensolve or zeroed embeddings."""
    unary, _ = layer_inputs(case, np.float64)
    layer = tha.DenseGCRF(**case.layer_kwargs())
    embeddings = torch.from_numpy(broken_embeddings(case, kind))
    assert_error(lg.GCRFError, fragment, layer, torch.from_numpy(unary), embeddings)


@TRACED
@BROKEN
@bounded_models
def test_keras_bounded_layer_names_embeddings_it_cannot_rescale(
    case, kind, fragment, traced, channels_first
):
    """As the PyTorch layer; inside tf.function as InvalidArgumentError with the core's
    message."""
    unary, _ = layer_inputs(case, np.float64)
    layer = tfa.DenseGCRF(**case.layer_kwargs(), dtype="float64")
    call = maybe_traced(layer, traced)
    error = tf.errors.InvalidArgumentError if traced else lg.GCRFError
    assert_error(
        error, fragment, call, tf.constant(unary), tf.constant(broken_embeddings(case, kind))
    )


@each_model
def test_torch_layer_with_a_diverged_lam_names_lam(case):
    """A learnt λ that diverged to NaN is blamed, not the embeddings it would rescale."""
    unary, embeddings = (torch.from_numpy(a) for a in layer_inputs(case))
    layer = tha.DenseGCRF(learn_lam=True, **case.layer_kwargs())
    with torch.no_grad():
        layer.raw_lam.fill_(float("nan"))
    assert_error(lg.GCRFError, "lam must be finite and > 0", layer, unary, embeddings)


@TRACED
@each_model
def test_keras_layer_with_a_diverged_lam_names_lam(case, traced, channels_first):
    unary, embeddings = (tf.constant(a) for a in layer_inputs(case))
    layer = tfa.DenseGCRF(learn_lam=True, **case.layer_kwargs())
    layer(unary, embeddings)
    layer.raw_lam.assign(float("nan"))
    error = tf.errors.InvalidArgumentError if traced else lg.GCRFError
    assert_error(
        error, "lam must be finite and > 0", maybe_traced(layer, traced), unary, embeddings
    )


@each_model
def test_torch_layer_refuses_numpy_embeddings(case):
    unary, embeddings = layer_inputs(case)
    layer = tha.DenseGCRF(**case.layer_kwargs())
    assert_error(
        lg.GCRFTypeError, "expected torch tensors", layer, torch.from_numpy(unary), embeddings
    )


@bounded_models
def test_keras_float64_layer_bounds_with_float64_lam(case, channels_first):
    """A fixed λ that float32 rounds (0.3) reaches the bound in float64: the Keras layer
    gives the PyTorch layer's float64 output to rounding."""
    unary, embeddings = bounded_layer_inputs(case, np.float64)
    keras_layer = tfa.DenseGCRF(lam=0.3, **case.layer_kwargs(), dtype="float64")
    torch_layer = tha.DenseGCRF(lam=0.3, **case.layer_kwargs())
    got = keras_layer(tf.constant(unary), tf.constant(embeddings)).numpy()
    expected = torch_layer(torch.from_numpy(unary), torch.from_numpy(embeddings)).numpy()
    # Each float64 solve is within κ·rtol of the exact one (rtol = 1000ε); the float32
    # rounding of λ moved the output by 2e-7.
    kappa = case.layer_system(unary, embeddings, 0.3).kappa
    assert_close(got, expected, 2 * kappa * 1000 * float(np.finfo(np.float64).eps))


# -- the learnt strength (the default layer) ---------------------------------------------------


@each_model
@pytest.mark.parametrize("scale", [0.0, 1e-30, 1e30], ids=["zero", "tiny", "huge"])
def test_learnt_strength_layers_take_embeddings_of_any_scale(case, scale):
    """The strength scaling divides each block by its peak before its Gram: the float32
    layers give the unit-scale result (scale invariance) at 1e±30, and the unary alone
    (x = b/λ) for zero embeddings, with finite gradients."""
    unary, embeddings = layer_inputs(case)
    kwargs = case.layer_kwargs(learnt=True)
    E = torch.from_numpy(embeddings * np.float32(scale if scale else 1)).requires_grad_()
    given = E if scale else 0 * E
    x = tha.DenseGCRF(**kwargs)(torch.from_numpy(unary), given)
    x.square().sum().backward()
    assert torch.isfinite(E.grad).all()
    expected = tha.DenseGCRF(**kwargs)(torch.from_numpy(unary), torch.from_numpy(embeddings))
    expected = unary if scale == 0.0 else expected.detach().numpy()
    # float32: the bound's squarings and the solve each round at ~1e-7 relative.
    assert_close(x.detach().numpy(), expected, rtol=1e-5)
    keras_layer = tfa.DenseGCRF(data_format="channels_first", **kwargs)
    got = keras_layer(tf.constant(unary), tf.constant(given.detach().numpy()))
    assert_close(got.numpy(), expected, rtol=1e-5)


@each_model
@pytest.mark.parametrize("bad", [np.nan, np.inf], ids=["nan", "inf"])
def test_learnt_strength_layers_name_embeddings_that_are_not_finite(case, bad):
    unary, embeddings = layer_inputs(case)
    embeddings[0, 0, 0, 0] = bad
    name = "Ahat" if case.name == "potts" else "A"
    with pytest.raises(lg.GCRFError, match=f"{name} contains NaN or Inf"):
        tha.DenseGCRF(**case.layer_kwargs(learnt=True))(
            torch.from_numpy(unary), torch.from_numpy(embeddings)
        )
    layer = tfa.DenseGCRF(data_format="channels_first", **case.layer_kwargs(learnt=True))
    with pytest.raises(lg.GCRFError, match=f"{name} contains NaN or Inf"):
        layer(tf.constant(unary), tf.constant(embeddings))
