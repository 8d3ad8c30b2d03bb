"""Bad input to the layers: the PyTorch ``DenseGCRF`` module and the Keras ``DenseGCRF``
layer (eagerly and traced, as ``model.fit`` runs it). The decisions are those of
``test_bad_input_core.py``; the cases are shared with ``test_bad_input_adapters.py``.
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

import lowrank_gcrf as lg  # noqa: E402
from lowrank_gcrf.adapters import tensorflow as tfa  # noqa: E402
from lowrank_gcrf.adapters import torch as tha  # noqa: E402


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


#: κ of a Potts layer's system: at most (1 + (L − 1)ρ) / (1 − ρ) with ρ = pd_bound = 0.9.
POTTS_LAYER_KAPPA = (1 + 2 * 0.9) / (1 - 0.9)


def potts_layer_inputs(dtype):
    """Unary (1, L = 3, 4, 4) and Potts embeddings (1, D = 4, 4, 4), above the bound."""
    rng = np.random.default_rng(5)
    unary = rng.standard_normal((1, 3, 4, 4)).astype(dtype)
    return unary, rng.standard_normal((1, 4, 4, 4)).astype(dtype)


def potts_layer_tolerance(dtype) -> float:
    """Inputs rounded to ``dtype`` and the layer's rtol (1000ε of float32), times κ."""
    return POTTS_LAYER_KAPPA * (2 * float(np.finfo(dtype).eps) + 1000 * 2.0**-23)


POTTS_MAGNITUDES = pytest.mark.parametrize(
    ("dtype", "scale"), [(np.float16, 100.0), (np.float32, 1e19)], ids=["float16", "float32"]
)


@POTTS_MAGNITUDES
def test_torch_potts_layer_any_magnitude_of_embeddings(dtype, scale):
    """The Potts layer rescales its embeddings to the bound, so that c·Â gives the output of
    Â; a float16 Gram above 65504 or a float32 one above 3e38 raised a raw LinAlgError."""
    unary, embeddings = (torch.from_numpy(a) for a in potts_layer_inputs(dtype))
    layer = tha.DenseGCRF(lam=1.0, potts=True)
    expected = layer(unary.double(), embeddings.double())
    got = layer(unary, embeddings * scale)
    assert got.dtype == unary.dtype
    assert_close(got.double().numpy(), expected.numpy(), potts_layer_tolerance(dtype))


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


@POTTS_MAGNITUDES
def test_keras_potts_layer_any_magnitude_of_embeddings(dtype, scale, channels_first):
    """As for PyTorch: an InvalidArgumentError from eigvalsh where the Gram overflowed."""
    unary, embeddings = potts_layer_inputs(dtype)
    expected = tfa.DenseGCRF(lam=1.0, potts=True, dtype="float64")(unary, embeddings)
    layer = tfa.DenseGCRF(lam=1.0, potts=True, dtype=np.dtype(dtype).name)
    got = layer(unary, embeddings * dtype(scale))
    assert got.dtype == np.dtype(dtype).name
    assert_close(got.numpy(), expected.numpy(), potts_layer_tolerance(dtype))


def test_keras_layer_refuses_bad_arguments():
    assert_error(lg.GCRFTypeError, "one number", tfa.DenseGCRF, lam=tf.constant([1.0, 2.0]))
    assert_error(lg.GCRFError, "lam must be finite and > 0", tfa.DenseGCRF, lam=-1.0)
    for bad, fragment in LAM_TYPE_ERRORS:
        assert_error(lg.GCRFTypeError, fragment, tfa.DenseGCRF, lam=bad)
    for kwargs, error, fragment in LAYER_KEYWORD_ERRORS:
        assert_error(error, fragment, tfa.DenseGCRF, **kwargs)
