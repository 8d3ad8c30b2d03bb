"""Bad input to ``refine``: every input gets a correct answer or a clear error of the
library's classes naming the argument.

Decisions these tests pin down:

* refine's numbers may be Python or NumPy scalars (as ``lg.solve``'s λ); booleans,
  strings, None, lists and complex numbers are refused with ``GCRFTypeError`` naming the
  parameter, an integer parameter given a float too; ``seed`` must be ≥ 0;
* ``spatial_dims`` is an integer 1, 2 or 3 (``2.0`` and ``True`` refused);
* an empty batch gives an empty result, as the solvers do;
* ``image`` is read as (..., C, *spatial), or with ``channel_axis`` (scikit-image's keyword)
  naming its channel axis: ``channel_axis=-1`` for (..., H, W, C), the layout of
  scikit-image, PIL and pydensecrf, which the shape error suggests;
* colours are on the 0–255 scale: an integer image above 255 or a floating one above 510
  (12- and 16-bit images) warns, as a floating image within [−1, 1] does;
* a bandwidth far below the image's resolution is computed in float64 where float32
  cannot evaluate the kernel, and refused (naming it and the smallest usable value) where
  float64 cannot either; the kernel weights' scale never overflows (only their ratio
  matters);
* probabilities that carry float32's rounding pass the sum test whatever dtype holds them;
* finite logits of any magnitude are refined without a floating-point warning.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lowrank_gcrf as lg
from lowrank_gcrf.image_embeddings import refine_embeddings
from lowrank_gcrf.refine_inputs import RefineParameters, check_refine_inputs

FLOAT_PARAMETERS = ["sxy", "srgb", "sxy_smooth", "w_appearance", "w_smooth", "strength", "lam"]
INTEGER_PARAMETERS = ["rank", "landmarks", "seed"]
# Small and quick: rank 4 from 8 landmarks on 6 × 7 images.
SMALL = dict(rank=4, landmarks=8)


def softmax(z: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def inputs(seed=0, batch=(), labels=3, channels=3, spatial=(6, 7), dtype=np.float64):
    """(probs, uint8 image) of the given shapes, channels first."""
    rng = np.random.default_rng(seed)
    probs = softmax(rng.normal(0, 2, (*batch, labels, *spatial)), axis=len(batch))
    image = rng.integers(0, 256, (*batch, channels, *spatial), dtype=np.uint8)
    return probs.astype(dtype), image


def assert_probabilities(refined, like):
    assert refined.shape == like.shape and refined.dtype == like.dtype
    assert np.all(np.isfinite(refined))
    axis = -3 if like.ndim >= 3 else 0
    np.testing.assert_allclose(refined.sum(axis=axis), 1.0, rtol=0, atol=1e-5)


@pytest.fixture
def no_warnings():
    """Any warning raised inside the test fails it."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


# -- empty batches -----------------------------------------------------------------------


@pytest.mark.parametrize("batch", [(0,), (2, 0), (0, 3)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_empty_batch_gives_an_empty_result(batch, dtype):
    probs = np.zeros((*batch, 3, 6, 7), dtype=dtype)
    image = np.zeros((*batch, 3, 6, 7), dtype=np.uint8)
    refined, info = lg.refine(probs, image, return_info=True, **SMALL)
    assert refined.shape == probs.shape and refined.dtype == dtype
    assert info.residual.shape == batch and info.converged.shape == batch
    Ahat = refine_embeddings(image, RefineParameters(**SMALL), spatial_dims=2, dtype=dtype)
    assert Ahat.shape == (0, 4, 42) and Ahat.dtype == dtype


def test_no_pixels_is_an_error_naming_the_spatial_shape():
    with pytest.raises(lg.GCRFError, match=r"no pixels: their spatial shape is \(0, 7\)"):
        lg.refine(np.zeros((3, 0, 7)), np.zeros((3, 0, 7), dtype=np.uint8))


# -- parameter types ---------------------------------------------------------------------


@pytest.mark.parametrize("value", [2.0, True, np.bool_(True), "2", None, [2]], ids=repr)
def test_spatial_dims_must_be_an_integer(value):
    probs, image = inputs()
    with pytest.raises(lg.GCRFTypeError, match="spatial_dims must be an integer"):
        lg.refine(probs, image, spatial_dims=value)


def test_spatial_dims_as_a_numpy_integer():
    probs, image = inputs()
    expected = lg.refine(probs, image, **SMALL)
    np.testing.assert_array_equal(
        lg.refine(probs, image, spatial_dims=np.int64(2), **SMALL), expected
    )


NOT_A_NUMBER = st.one_of(
    st.text(max_size=3),
    st.none(),
    st.lists(st.floats(0.1, 10.0), min_size=1, max_size=2),
    st.complex_numbers(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.booleans().map(np.bool_),
)


@given(name=st.sampled_from(FLOAT_PARAMETERS + INTEGER_PARAMETERS), value=NOT_A_NUMBER)
def test_parameters_of_the_wrong_type_name_themselves(name, value):
    if name == "strength" and isinstance(value, str):
        # A string is a strength's type ("auto"): any other is a wrong value, named so.
        with pytest.raises(lg.GCRFError, match=r"^strength must be 'auto' or a number in"):
            RefineParameters(strength=value)
        return
    expected = "'auto' or a real number" if name == "strength" else "an? (real number|integer)"
    with pytest.raises(lg.GCRFTypeError, match=f"^{name} must be {expected}, got"):
        RefineParameters(**{name: value})


def test_strength_auto_is_the_default_and_accepted():
    assert RefineParameters().strength == "auto"
    assert RefineParameters(strength="auto").strength == "auto"
    with pytest.raises(lg.GCRFError, match="strength must be 'auto' or a number"):
        RefineParameters(strength="Auto")


@given(name=st.sampled_from(INTEGER_PARAMETERS), value=st.floats(1.0, 64.0))
def test_integer_parameters_refuse_floats(name, value):
    with pytest.raises(lg.GCRFTypeError, match=f"^{name} must be an integer, got float"):
        RefineParameters(**{name: value})


@given(seed=st.integers(max_value=-1))
def test_negative_seed(seed):
    with pytest.raises(lg.GCRFError, match="seed must be an integer ≥ 0"):
        RefineParameters(seed=seed)


@pytest.mark.parametrize("value", ["yes", None, 1, 1.0], ids=repr)
def test_logits_must_be_a_boolean(value):
    probs, image = inputs()
    with pytest.raises(lg.GCRFTypeError, match="logits must be True or False"):
        lg.refine(probs, image, logits=value)


NUMPY_FLOATS = [np.float16, np.float32, np.float64]
NUMPY_INTEGERS = [np.int8, np.int32, np.int64, np.uint8, np.uint64]
# Values that every NumPy type above holds (strength: the floating ones).
VALUES = dict(
    sxy=40,
    srgb=20,
    sxy_smooth=2,
    w_appearance=3,
    w_smooth=1,
    strength=0.75,
    lam=2,
    rank=3,
    landmarks=9,
    seed=5,
)


@settings(max_examples=10)
@given(name=st.sampled_from(FLOAT_PARAMETERS + INTEGER_PARAMETERS), data=st.data())
def test_numpy_scalars_are_python_numbers(name, data):
    """A NumPy scalar is accepted and gives the result of the Python number it equals."""
    if name in INTEGER_PARAMETERS:
        kinds, python = NUMPY_INTEGERS, int
    else:
        kinds, python = NUMPY_FLOATS + ([] if name == "strength" else NUMPY_INTEGERS), float
    value = data.draw(st.sampled_from(kinds))(VALUES[name])
    params = RefineParameters(**{**SMALL, name: value})
    assert type(getattr(params, name)) is python and getattr(params, name) == python(value)
    probs, image = inputs(1)
    np.testing.assert_array_equal(
        lg.refine(probs, image, **{**SMALL, name: value}),
        lg.refine(probs, image, **{**SMALL, name: python(value)}),
    )


# -- image layout ------------------------------------------------------------------------


@settings(max_examples=10)
@given(
    seed=st.integers(0, 2**31 - 1),
    batch=st.sampled_from([(), (2,), (1, 2)]),
    spatial=st.sampled_from([(9,), (5, 6), (3, 4, 2)]),
    channels=st.integers(1, 4),
    data=st.data(),
)
def test_channel_axis_reads_any_layout(seed, batch, spatial, channels, data):
    """The image with its channels moved to any axis, named by channel_axis (negative or
    not), refines as the channels-first image does."""
    probs, image = inputs(seed, batch, 3, channels, spatial)
    expected = lg.refine(probs, image, spatial_dims=len(spatial), **SMALL)
    source = len(batch)
    target = data.draw(st.integers(0, image.ndim - 1))
    moved = np.ascontiguousarray(np.moveaxis(image, source, target))
    axis = target - image.ndim if data.draw(st.booleans()) else target
    got = lg.refine(probs, moved, spatial_dims=len(spatial), channel_axis=axis, **SMALL)
    np.testing.assert_array_equal(got, expected)
    shape = check_refine_inputs(
        probs, moved, spatial_dims=len(spatial), logits=False, channel_axis=axis
    )
    assert shape.batch == batch and shape.spatial == spatial
    Ahat = refine_embeddings(
        moved,
        RefineParameters(**SMALL),
        spatial_dims=len(spatial),
        dtype=np.float64,
        channel_axis=axis,
    )
    np.testing.assert_array_equal(
        Ahat,
        refine_embeddings(
            image, RefineParameters(**SMALL), spatial_dims=len(spatial), dtype=np.float64
        ),
    )


@pytest.mark.parametrize("channels", [3, 4])
@pytest.mark.parametrize("batch", [(), (2,)])
def test_channels_last_image_suggests_channel_axis(batch, channels):
    probs, image = inputs(2, batch, 3, channels)
    last = np.moveaxis(image, len(batch), -1)
    with pytest.raises(lg.GCRFError, match=r"channels last .* pass channel_axis=-1") as exc:
        lg.refine(probs, last)
    assert str(tuple(last.shape)) in str(exc.value)
    assert "resize" not in str(exc.value)


@pytest.mark.parametrize(
    ("image_shape", "channel_axis"),
    [((3, 6, 8), None), ((6, 8, 3), -1), ((2, 3, 6, 7), None), ((6, 7, 5), None)],
)
def test_mismatched_image_says_what_to_do(image_shape, channel_axis):
    """Spatial shapes that differ, or a batch the probabilities lack: the message gives
    both shapes as read, names channel_axis and the resize."""
    probs, _ = inputs()
    image = np.zeros(image_shape, dtype=np.uint8)
    with pytest.raises(lg.GCRFError, match="image must be") as exc:
        lg.refine(probs, image, channel_axis=channel_axis)
    message = str(exc.value)
    assert "channel_axis" in message and "resize" in message
    assert str(image_shape) in message and "spatial (6, 7)" in message


@pytest.mark.parametrize(
    ("channel_axis", "error"),
    [
        (3, lg.GCRFError),
        (-4, lg.GCRFError),
        (1.0, lg.GCRFTypeError),
        (True, lg.GCRFTypeError),
        ("last", lg.GCRFTypeError),
    ],
    ids=repr,
)
def test_bad_channel_axis(channel_axis, error):
    probs, image = inputs()
    with pytest.raises(error, match="channel_axis"):
        lg.refine(probs, image, channel_axis=channel_axis)


def test_grayscale_image_needs_a_channel_axis():
    probs, image = inputs(channels=1)
    with pytest.raises(lg.GCRFError, match="grayscale image needs a channel axis of length 1"):
        lg.refine(probs, image[0])
    lg.refine(probs, image[0][None], **SMALL)


# -- image scale -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "top"),
    [(np.uint16, 4095), (np.uint16, 65535), (np.int32, 1023), (np.float32, 4095.0)],
)
def test_images_beyond_the_0_255_scale_warn(dtype, top):
    probs, image = inputs(3)
    image[0, 0, 0] = 255
    wide = (image.astype(np.float64) * (top / 255)).astype(dtype)
    with pytest.warns(UserWarning, match=f"values up to {top:g}.*0–255 scale"):
        lg.refine(probs, wide, **SMALL)


@pytest.mark.parametrize("dtype", [np.uint16, np.int64, np.float32, np.float64])
def test_images_on_the_0_255_scale_do_not_warn(dtype, no_warnings):
    """A wider dtype on the 0–255 scale, and a floating one resampled a little beyond."""
    probs, image = inputs(4)
    wide = image.astype(dtype)
    if np.issubdtype(dtype, np.floating):
        wide = wide * 1.1  # a resampling filter's overshoot
    np.testing.assert_allclose(
        lg.refine(probs, wide, **SMALL),
        lg.refine(probs, wide.astype(np.float64), **SMALL),
        rtol=0,
        atol=1e-12,
    )


# -- extreme kernel parameters -----------------------------------------------------------


@settings(max_examples=15)
@given(
    name=st.sampled_from(["sxy", "srgb", "sxy_smooth"]),
    exponent=st.integers(-300, 0),
    dtype=st.sampled_from([np.float32, np.float64]),
    seed=st.integers(0, 2**31 - 1),
)
def test_tiny_bandwidths_give_a_result_or_name_themselves(name, exponent, dtype, seed):
    """A result (float64 kernels where float32 cannot evaluate them) or a GCRFError naming
    the bandwidth and the smallest value that works for this image, which does."""
    probs, image = inputs(seed, dtype=dtype)
    keywords = dict(SMALL, w_smooth=1.0) if name == "sxy_smooth" else dict(SMALL)
    try:
        refined = lg.refine(probs, image, **keywords, **{name: 10.0**exponent})
    except lg.GCRFError as exc:
        message = str(exc)
        assert message.startswith(f"{name} = ") and "too small for this image" in message
        smallest = float(message.rsplit(f"use {name} ≥ ", 1)[1])
        refined = lg.refine(probs, image, **keywords, **{name: smallest})
    assert_probabilities(refined, probs)


@pytest.mark.parametrize("name", ["sxy", "srgb", "sxy_smooth"])
def test_narrow_kernels_in_float32_are_computed_in_float64(name):
    """Beyond float32's precision the kernels come from float64 features: the float32
    refinement then agrees with the float64 one to float32's precision."""
    probs, image = inputs(5)
    keywords = dict(SMALL, w_smooth=1.0, **{name: 1e-3})
    refined = lg.refine(probs.astype(np.float32), image, **keywords)
    assert_probabilities(refined, probs.astype(np.float32))
    np.testing.assert_allclose(refined, lg.refine(probs, image, **keywords), rtol=0, atol=1e-4)


@pytest.mark.parametrize("weights", [dict(w_appearance=1e300), dict(w_appearance=1e-300)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_only_the_ratio_of_kernel_weights_matters(weights, dtype, no_warnings):
    probs, image = inputs(6, dtype=dtype)
    # The weights scale Â (the lattice's passes have weights of their own).
    landmarks = dict(SMALL, appearance_kernel="landmarks")
    np.testing.assert_allclose(
        lg.refine(probs, image, **weights, **landmarks),
        lg.refine(probs, image, w_appearance=1.0, **landmarks),
        rtol=0,
        atol=1e-5 if dtype == np.float32 else 1e-12,
    )
    both = {key: 2.0 * value for key, value in weights.items()} | dict(
        w_smooth=weights["w_appearance"]
    )
    assert_probabilities(lg.refine(probs, image, **both, **SMALL), probs)


# -- values ------------------------------------------------------------------------------


@settings(max_examples=15)
@given(
    labels=st.integers(2, 40),
    scale=st.floats(0.1, 30.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_float32_softmax_held_in_float64_passes(labels, scale, seed):
    """A float32 softmax carries float32's rounding in any dtype; a sum off by more than
    that rounding still fails."""
    rng = np.random.default_rng(seed)
    z = (scale * rng.standard_normal((labels, 6, 7))).astype(np.float32)
    probs = softmax(z, axis=0).astype(np.float64)
    image = rng.integers(0, 256, (3, 6, 7), dtype=np.uint8)
    assert_probabilities(lg.refine(probs, image, **SMALL), probs)
    with pytest.raises(lg.GCRFError, match="does not sum to 1"):
        lg.refine(probs * (1 + 1e-3), image, **SMALL)


@settings(max_examples=15)
@given(
    dtype=st.sampled_from([np.float32, np.float64]),
    exponent=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_huge_logits_refine_without_warnings(dtype, exponent, seed):
    """Logits up to 1e300 (float64) or 1e37 (float32): the exact solve's refined probabilities
    are the one-hot argmax of the solve, which is linear in the logits, and nothing warns,
    neither there nor in the mean-field passes (whose messages are bounded). (A fixed
    strength: the automatic one reads the logits' confidence, which their scale changes.)"""
    top = 300 if dtype == np.float64 else 37
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((3, 6, 7))
    image = rng.integers(0, 256, (3, 6, 7), dtype=np.uint8)
    logits = (z * 10.0 ** (top * exponent)).astype(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        refined = lg.refine(logits, image, logits=True, strength=0.7, passes=0, **SMALL)
        passes = lg.refine(logits, image, logits=True, strength=0.7, **SMALL)
    assert_probabilities(refined, logits)
    assert_probabilities(passes, logits)
    # Softmax keeps the argmax of the solve's scores, which scale with the logits.
    unit = lg.refine(z, image, logits=True, strength=0.7, passes=0, **SMALL)
    assert np.mean(refined.argmax(axis=0) == unit.argmax(axis=0)) > 0.9
