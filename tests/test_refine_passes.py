"""``refine(passes=n)`` (the default, n = 2) against the dense float64 passes it computes:
the landmarks' resolvent, and the lattice's normalised kernel from its sparse factors."""

from __future__ import annotations

import dataclasses
import types

import numpy as np
import pytest
from refine_cases import dense_gaussian, inputs

from lowrank_gcrf.errors import GCRFError, GCRFTypeError
from lowrank_gcrf.image_embeddings import refine_embeddings
from lowrank_gcrf.image_kernels import pixel_features
from lowrank_gcrf.permutohedral import permutohedral_lattice
from lowrank_gcrf.refine import PROB_FLOOR, refine
from lowrank_gcrf.refine_inputs import RefineParameters
from lowrank_gcrf.refine_passes import (
    APPEARANCE_WEIGHT,
    LATTICE_APPEARANCE_WEIGHT,
    LATTICE_SMOOTH_WEIGHT,
    PASSES_STRENGTH,
    SMOOTH_WEIGHT,
)
from lowrank_gcrf.smooth_refine import gaussian_filter

KW = dict(sxy=5.0, srgb=30.0, sxy_smooth=1.5, rank=6, landmarks=20)


def softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def dense_passes(probs, image, *, passes, strength, lam=1.0, **kw):
    """The passes of :mod:`lowrank_gcrf.refine_passes` with dense float64 matrices: the
    resolvent by ``np.linalg.solve`` of ``λI − ÂᵀÂ``, the smoothness as a dense kernel."""
    labels, spatial = probs.shape[0], probs.shape[1:]
    params = RefineParameters(strength=strength, lam=lam, **kw)
    (A,) = refine_embeddings(image[None], params, spatial_dims=len(spatial), dtype=np.float64)
    np.testing.assert_allclose(np.linalg.norm(A, 2) ** 2, strength * lam, rtol=1e-10)
    P = A.shape[1]
    resolvent = (1.0 - strength) * lam * np.linalg.inv(lam * np.eye(P) - A.T @ A)
    G = dense_gaussian(spatial, kw["sxy_smooth"]) - np.eye(P)
    b = np.log(np.maximum(probs.reshape(labels, P), PROB_FLOOR))
    q = softmax(b, axis=0)
    for _ in range(passes):
        x = b + APPEARANCE_WEIGHT * q @ resolvent + SMOOTH_WEIGHT * q @ G
        q = softmax(x, axis=0)
    return q.reshape(probs.shape)


@pytest.mark.parametrize(
    ("spatial", "passes", "strength", "lam"),
    [((9,), 1, 0.5, 1.0), ((5, 6), 2, 0.8, 1.0), ((5, 6), 3, 0.95, 0.3), ((3, 4, 3), 2, 0.0, 1.0)],
)
def test_passes_match_the_dense_float64_passes(spatial, passes, strength, lam):
    probs, image = inputs(1, 3, spatial)
    out, info = refine(
        probs,
        image,
        spatial_dims=len(spatial),
        passes=passes,
        strength=strength,
        lam=lam,
        return_info=True,
        **KW,
    )
    expected = dense_passes(probs, image, passes=passes, strength=strength, lam=lam, **KW)
    # float64 throughout, the resolvent's condition number ≤ 1/(1 − α) = 20: the scores
    # agree to ~1e-13 · β, far inside 1e-9.
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-9)
    assert info.method == "passes" and int(info.iterations) == passes
    assert float(info.residual) < 1e-12 and bool(info.converged)


def test_landmark_passes_default_to_the_fixed_automatic_strength():
    probs, image = inputs(2, 4, (6, 7), batch=(2,))
    kw = KW | {"appearance_kernel": "landmarks"}
    out = refine(probs, image, **kw)
    for i in range(2):
        expected = dense_passes(probs[i], image[i], passes=2, strength=PASSES_STRENGTH, **KW)
        np.testing.assert_allclose(out[i], expected, rtol=0, atol=1e-9)
        np.testing.assert_array_equal(refine(probs[i], image[i], **kw), out[i])
    assert np.abs(out - probs).max() > 0.05


def dense_lattice_passes(probs, image, *, passes, sxy, srgb, sxy_smooth):
    """The lattice's passes with dense float64 matrices: ``K = W B Wᵀ`` multiplied out from
    the lattice's sparse factors, ``N = Δ^{-1/2} K Δ^{-1/2}`` without its diagonal's
    full-lattice value (:meth:`~PermutohedralLattice.self_weights`)."""
    labels, spatial = probs.shape[0], probs.shape[1:]
    features = pixel_features(np, image, sxy=sxy, srgb=srgb, dtype=np.float32)
    lattice = permutohedral_lattice(features)
    W = lattice.weights.toarray().astype(np.float64)
    B = np.eye(lattice.num_vertices)
    for step in lattice.blur:
        B = step.toarray().astype(np.float64) @ B
    K = W @ B @ W.T
    scale = 1.0 / np.sqrt(K.sum(axis=1))
    N = scale[:, None] * K * scale[None, :] - np.diag(lattice.self_weights() * scale**2)
    P = K.shape[0]
    G = dense_gaussian(spatial, sxy_smooth) - np.eye(P)
    b = np.log(np.maximum(probs.reshape(labels, P), PROB_FLOOR))
    q = softmax(b, axis=0)
    for _ in range(passes):
        x = b + LATTICE_APPEARANCE_WEIGHT * q @ N.T + LATTICE_SMOOTH_WEIGHT * q @ G
        q = softmax(x, axis=0)
    return q.reshape(probs.shape)


@pytest.mark.parametrize(("spatial", "passes"), [((6, 7), 2), ((9,), 1), ((3, 4, 3), 3)])
def test_default_is_two_lattice_passes_with_numpy(spatial, passes):
    probs, image = inputs(5, 4, spatial, batch=(2,))
    kw = dict(sxy=KW["sxy"], srgb=KW["srgb"], sxy_smooth=KW["sxy_smooth"])
    dims = len(spatial)
    out, info = refine(probs, image, spatial_dims=dims, passes=passes, return_info=True, **kw)
    for i in range(2):
        expected = dense_lattice_passes(probs[i], image[i], passes=passes, **kw)
        # The lattice filters in float32 (features, weights, blur): the messages, up to
        # w_a ≤ 40 times a normalised sum, carry float32 rounding of ~1e-6 relative.
        np.testing.assert_allclose(out[i], expected, rtol=0, atol=2e-5)
    assert np.abs(out - probs).max() > 0.05
    assert info.method == "passes" and np.isnan(info.residual).all()
    if passes == 2:
        np.testing.assert_array_equal(out, refine(probs, image, spatial_dims=dims, **kw))


def test_self_weights_are_the_diagonal_where_the_lattice_is_full():
    """A pixel's own term, left out of the lattice's message, is the diagonal of ``W B Wᵀ``
    wherever the blur finds every neighbour (the inside of a dense cloud of 2-D features),
    and no less than it elsewhere (a blur step into an absent lattice point adds nothing)."""
    rng = np.random.default_rng(6)
    features = rng.normal(size=(1500, 2)).astype(np.float32) * 3.0
    lattice = permutohedral_lattice(features)
    diagonal = np.diag(lattice.filter(np.eye(1500, dtype=np.float32)))
    own = lattice.self_weights()
    assert (own >= diagonal - 1e-6).all()
    inside = np.linalg.norm(features, axis=1) < 3.0
    assert inside.sum() > 500
    np.testing.assert_allclose(own[inside], diagonal[inside], rtol=1e-6)
    assert (own > diagonal + 1e-3).any()


def test_lattice_needs_numpy_arrays_the_passes_and_no_strength():
    probs, image = inputs(7, 3, (5, 6))
    with pytest.raises(GCRFError, match="option of the mean-field passes"):
        RefineParameters(passes=0, appearance_kernel="lattice")
    with pytest.raises(GCRFError, match=r"strength=0\.7 sets the low-rank Potts resolvent"):
        RefineParameters(strength=0.7, appearance_kernel="lattice")
    with pytest.raises(GCRFError, match="appearance_kernel must be one of"):
        RefineParameters(appearance_kernel="grid")
    with pytest.raises(GCRFError, match="puts the smoothness kernel in the rank-D"):
        RefineParameters(w_smooth=1.0, appearance_kernel="lattice")
    # What concerns Â (a strength, Â's smoothness part) makes "auto" take the landmarks.
    for asked in (dict(strength=0.8), dict(w_smooth=1.0)):
        np.testing.assert_array_equal(
            refine(probs, image, **KW, **asked),
            refine(probs, image, appearance_kernel="landmarks", **KW, **asked),
        )
    xps = pytest.importorskip("array_api_strict")
    with pytest.raises(GCRFError, match="needs NumPy or CuPy arrays"):
        refine(xps.asarray(probs), xps.asarray(image), appearance_kernel="lattice", **KW)


@pytest.mark.parametrize(("kernel", "atol"), [("landmarks", 1e-10), ("lattice", 1e-5)])
def test_logits_give_the_result_of_their_softmax(kernel, atol):
    # float64 throughout for the landmarks; the lattice filters in float32, where q's last
    # bits (a softmax of logits or of their log-softmax) may round to neighbouring float32
    # values: ~1e-7 relative, times w_a ≤ 40.
    rng = np.random.default_rng(3)
    z = rng.normal(0.0, 2.0, (3, 6, 5))
    image = rng.integers(0, 256, (3, 6, 5)).astype(np.uint8)
    kw = dict(KW, appearance_kernel=kernel)
    np.testing.assert_allclose(
        refine(z, image, logits=True, **kw), refine(softmax(z, 0), image, **kw), atol=atol
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("kernel", "most"), [("lattice", 10), ("landmarks", 5)])
def test_passes_clean_label_noise_in_texture_better_than_the_exact_solve(seed, kernel, most):
    # Two textured regions (grey levels 70 and 170, noise σ = 25); 30 % of the pixels show
    # one of the three other labels at 0.7. The exact solve leaves 7–13 of the 576 pixels
    # wrong for these seeds, the landmarks' passes at most 5 and the lattice's at most 10
    # (deterministic: seeded inputs and kernels). The lattice's kernel is the exact one:
    # grey levels far from their region's (noise beyond srgb = 13) couple to few pixels,
    # where the rank-D kernel pools the whole region.
    rng = np.random.default_rng(seed)
    truth = np.zeros((24, 24), dtype=int)
    truth[:, 12:] = 1
    grey = np.where(truth == 1, 170, 70) + rng.normal(0, 25, truth.shape)
    image = grey.clip(0, 255)[None].astype(np.uint8)
    wrong = rng.random(truth.shape) < 0.3
    shown = np.where(wrong, (truth + rng.integers(1, 4, truth.shape)) % 4, truth)
    probs = np.full((4, 24, 24), 0.1)
    np.put_along_axis(probs, shown[None], 0.7, axis=0)
    exact = int((refine(probs, image, passes=0).argmax(0) != truth).sum())
    passes = int((refine(probs, image, appearance_kernel=kernel).argmax(0) != truth).sum())
    assert passes <= most and passes < exact


@pytest.mark.parametrize(
    ("passes", "error", "match"),
    [(-1, GCRFError, "passes must be an integer ≥ 0"), (1.5, GCRFTypeError, "passes")],
)
def test_bad_passes_raise(passes, error, match):
    with pytest.raises(error, match=match):
        RefineParameters(passes=passes)
    with pytest.raises(GCRFTypeError):
        RefineParameters(passes=True)


def test_the_exact_smoothness_kernel_is_an_option_of_the_exact_solve():
    with pytest.raises(GCRFError, match="option of the exact solve"):
        RefineParameters(smooth_kernel="exact", w_smooth=3.0)
    dataclasses.replace(RefineParameters(passes=0), smooth_kernel="exact", w_smooth=3.0)


def test_gaussian_filter_by_banded_products_equals_ndimage():
    xps = pytest.importorskip("array_api_strict")
    x = np.random.default_rng(4).normal(size=(2, 3, 7, 5, 4))
    for sigma in (0.7, 1.5, 40.0):
        expected = gaussian_filter(np, x, sigma, 3)
        got = np.asarray(gaussian_filter(xps, xps.asarray(x), sigma, 3))
        # The same products summed in another order: float64 rounding, ~1e-15 relative.
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("spatial", [(9,), (7, 5), (6, 5, 4)], ids=["1d", "2d", "3d"])
def test_tensorflow_gaussian_filter_equals_ndimage_with_unknown_lengths(spatial):
    """The TensorFlow adapter's smoothness filter (depthwise convolutions) against the core's
    ndimage filter, eagerly and in a graph whose spatial lengths are unknown (the filter is
    then as long as the bandwidth asks, zero-padded)."""
    tf = pytest.importorskip("tensorflow")
    from lowrank_gcrf.adapters.tensorflow.image_refine import _gaussian_filter

    x = np.random.default_rng(5).normal(size=(2, 3, *spatial))
    unknown = (None,) * len(spatial)
    for sigma in (0.3, 1.5, 40.0):
        expected = gaussian_filter(np, x, sigma, len(spatial))
        eager = _gaussian_filter(tf.constant(x), sigma, spatial)
        traced = tf.function(
            lambda v, sigma=sigma: _gaussian_filter(v, sigma, unknown),
            input_signature=[tf.TensorSpec((None, None, *unknown), tf.float64)],
        )
        # The same float64 products summed in another order: ~1e-15 relative.
        for got in (eager, traced(tf.constant(x))):
            np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-12)


def test_lattice_names_a_bandwidth_too_small_for_its_coordinates():
    """Features beyond the lattice's float32 integers: a GCRFError naming the bandwidth and
    a value that works, which does."""
    probs, image = inputs(8, 3, (5, 6))
    with pytest.raises(GCRFError, match="float32 coordinates") as caught:
        refine(probs, image, sxy=1e-9)
    message = str(caught.value)
    assert message.startswith("sxy = 1e-09 is too small for this image")
    smallest = float(message.rsplit("use sxy ≥ ", 1)[1])
    refined = refine(probs, image, sxy=smallest)
    np.testing.assert_allclose(refined.sum(axis=0), 1.0, rtol=0, atol=1e-12)


def test_lattice_in_float32_and_float64_agree_to_float32():
    """The lattice filters in float32 whatever the probabilities' dtype: float64 inputs get
    the float32 refinement up to its rounding (messages of w_a ≤ 40 times normalised sums
    of relative error ~1e-7: probabilities within ~1e-5)."""
    probs, image = inputs(9, 4, (12, 14), batch=(2,))
    double = refine(probs, image)
    single = refine(probs.astype(np.float32), image)
    assert double.dtype == np.float64 and single.dtype == np.float32
    np.testing.assert_allclose(double, single, rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_cupy_branch_is_numpys_refinement(monkeypatch, dtype):
    """The branch CuPy arrays take (the image to the host, the batch's CSR factors in one
    product by :meth:`AppearanceLattices.csr_message`), run here by NumPy arrays posing as
    CuPy's, gives NumPy's own refinement; the landmarks' differ by O(1), so the branch is
    the lattice's. Both filter in float32, summed in another order: ~1e-7 relative of
    messages of weight ≤ 40, 1e-5 in the probabilities."""
    import array_api_compat

    from lowrank_gcrf import refine_passes

    probs, image = inputs(4, 4, (20, 24), batch=(2,))
    probs = probs.astype(dtype)
    expected = refine(probs, image)
    assert np.abs(refine(probs, image, appearance_kernel="landmarks") - expected).max() > 0.1
    posing = types.SimpleNamespace(
        is_numpy_namespace=lambda xp: False,
        is_cupy_namespace=lambda xp: True,
        device=array_api_compat.device,
    )
    monkeypatch.setattr(refine_passes, "array_api_compat", posing)
    got, info = refine(probs, image, return_info=True)
    assert got.dtype == dtype
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    assert np.isnan(info.residual).all()
