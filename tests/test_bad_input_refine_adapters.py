"""Bad input to the adapters' ``refine`` (PyTorch's, and TensorFlow's eagerly and inside
``tf.function``): the core's decisions (``test_bad_input_refine.py``) hold for tensors too.

* an empty batch gives an empty result;
* bfloat16 probabilities are refined in float32 and returned in bfloat16, as float16 ones
  are (bfloat16 has no NumPy dtype to cross DLPack with), and their sum to 1 is judged by
  bfloat16's rounding;
* ``channel_axis`` reads a channels-last image as the core does;
* ``spatial_dims`` is checked before it shapes anything (``2.0`` is a ``GCRFTypeError``
  while tracing too);
* the PyTorch function refuses NumPy arrays with ``GCRFTypeError`` (the core takes them);
* the default passes hold the appearance kernel in the lattice, as the core's do.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
torch = pytest.importorskip("torch")
tf = pytest.importorskip("tensorflow")

from bad_input_checks import TRACED, assert_error, maybe_traced  # noqa: E402

import lowrank_gcrf as lg  # noqa: E402
from lowrank_gcrf.adapters import tensorflow as tfa  # noqa: E402
from lowrank_gcrf.adapters import torch as tha  # noqa: E402
from lowrank_gcrf.refine import PROB_FLOOR  # noqa: E402

SMALL = dict(rank=4, landmarks=8)


def inputs(batch=(), labels=3, seed=0):
    """A softmax (..., L, 6, 7) and a uint8 image (..., 3, 6, 7)."""
    rng = np.random.default_rng(seed)
    scores = rng.standard_normal((*batch, labels, 6, 7))
    probs = np.exp(scores) / np.exp(scores).sum(axis=-3, keepdims=True)
    image = rng.integers(0, 256, (*batch, 3, 6, 7), dtype=np.uint8)
    return probs.astype(np.float32), image


def torch_refine(probs, image, **kwargs):
    return tha.refine(torch.from_numpy(probs), torch.from_numpy(image), **SMALL, **kwargs).numpy()


def tf_refine(traced):
    def call(probs, image, **kwargs):
        run = maybe_traced(lambda p, i: tfa.refine(p, i, **SMALL, **kwargs), traced)
        return run(tf.constant(probs), tf.constant(image)).numpy()

    return call


REFINES = pytest.mark.parametrize(
    "refine",
    [torch_refine, tf_refine(False), tf_refine(True)],
    ids=["torch", "tf-eager", "tf-function"],
)


@REFINES
def test_empty_batch_gives_an_empty_result(refine):
    probs, image = inputs(batch=(0,))
    assert refine(probs, image).shape == (0, 3, 6, 7)


@REFINES
def test_channels_last_image_with_channel_axis(refine):
    probs, image = inputs(batch=(2,))
    expected = lg.refine(probs, image, **SMALL)
    got = refine(probs, np.ascontiguousarray(np.moveaxis(image, -3, -1)), channel_axis=-1)
    # One float32 refinement of identical inputs: only the tensors' operation order differs.
    np.testing.assert_allclose(got, expected, atol=1e-5)


@REFINES
def test_spatial_dims_must_be_an_integer(refine):
    probs, image = inputs()
    assert_error(
        lg.GCRFTypeError, "spatial_dims must be an integer", refine, probs, image, spatial_dims=2.0
    )


def refined_as_logits(rounded, image):
    """The core's refinement of probabilities that carry bfloat16's rounding (which its sum
    test refuses in float32): their logarithm, as logits, is the same CRF (a per-pixel
    constant, their sum's deviation from 1, only shifts the class sum)."""
    logits = np.log(np.maximum(rounded, PROB_FLOOR))
    return lg.refine(logits, image, logits=True, **SMALL)


def test_torch_refine_of_bfloat16_probabilities():
    probs, image = inputs(labels=21)
    refined = tha.refine(torch.from_numpy(probs).bfloat16(), torch.from_numpy(image), **SMALL)
    assert refined.dtype == torch.bfloat16
    expected = refined_as_logits(torch.from_numpy(probs).bfloat16().float().numpy(), image)
    # bfloat16 holds the result to 2⁻⁸ relative.
    np.testing.assert_allclose(refined.float().numpy(), expected, atol=2.0**-8)


@TRACED
def test_tf_refine_of_bfloat16_probabilities(traced):
    probs, image = inputs(labels=21)
    bf16 = tf.cast(tf.constant(probs), tf.bfloat16)
    run = maybe_traced(lambda p, i: tfa.refine(p, i, **SMALL), traced)
    refined = run(bf16, tf.constant(image))
    assert refined.dtype == tf.bfloat16
    expected = refined_as_logits(tf.cast(bf16, tf.float32).numpy(), image)
    np.testing.assert_allclose(tf.cast(refined, tf.float32).numpy(), expected, atol=2.0**-8)


def test_torch_refine_refuses_numpy_arrays():
    probs, image = inputs()
    assert_error(lg.GCRFTypeError, "expected torch tensors", tha.refine, probs, image)


@REFINES
def test_auto_is_the_lattice_as_in_the_core(refine):
    """The adapters' default passes hold the appearance kernel in the lattice, as the core's
    do for NumPy arrays; a numeric strength (which sets Â) takes the landmarks there too."""
    probs, image = inputs(batch=(2,))
    np.testing.assert_array_equal(
        refine(probs, image), refine(probs, image, appearance_kernel="lattice")
    )
    # float32 inputs: the core and the adapters filter in float32, in other orders.
    np.testing.assert_allclose(refine(probs, image), lg.refine(probs, image), atol=1e-5)
    np.testing.assert_array_equal(
        refine(probs, image, strength=0.8),
        refine(probs, image, strength=0.8, appearance_kernel="landmarks"),
    )
    with pytest.raises(lg.GCRFError, match=r"strength=0\.8 sets the low-rank Potts resolvent"):
        refine(probs, image, strength=0.8, appearance_kernel="lattice")
