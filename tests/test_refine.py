"""``refine`` against dense float64 references of the Potts system it builds, its kernel
feature maps against the exact Gaussian kernels, its errors, and the adapters' gradients.

Tolerances. In float64 the direct solve's residual is ≤ 1e-4 (the solve's rtol) but in
practice ~κ·ε ≈ 1e-13 after one exact solve on these tiny systems (κ ≤ (1 + (L−1)ρ)/(1 − ρ)
≤ 100); refined probabilities are compared with atol 1e-7, which leaves 10⁶ room yet fails
on any change of the system. Kernel maps that are exact in exact arithmetic (Nyström on all
pixels) are compared at 1e-6, the eigenvalue cut-off of the Nyström pseudo-inverse.
Adapter gradients (float64): torch.autograd.gradcheck with its defaults; central differences
with step 1e-6 (error ~ ε/step + step² ≈ 1e-10) and TensorFlow's compute_gradient (step
≈ 1e-3, error ~ step² ≈ 1e-6) against the analytic gradient at atol 1e-6.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lowrank_gcrf.errors import GCRFError, GCRFTypeError
from lowrank_gcrf.image_kernels import (
    APPROXIMATIONS,
    NORMALIZATIONS,
    FactoredFeatures,
    dense_crf_features,
    pixel_features,
    potts_embeddings,
    scaled_to_strength,
)
from lowrank_gcrf.kernel_approximation import kernel_block
from lowrank_gcrf.refine import PROB_FLOOR, refine
from lowrank_gcrf.testing import potts_dense_matrix, reference_solve


def softmax(z: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def random_inputs(seed, batch, labels, channels, spatial, dtype=np.float64):
    rng = np.random.default_rng(seed)
    probs = softmax(rng.normal(0, 2, (*batch, labels, *spatial)), axis=len(batch)).astype(dtype)
    image = rng.integers(0, 256, (*batch, channels, *spatial)).astype(np.uint8)
    return probs, image


def reference_refine(probs, image, *, spatial_dims, lam=1.0, **kw):
    """The dense float64 solve of the Potts system refine builds, then softmax."""
    batch = probs.shape[: -spatial_dims - 1]
    labels = probs.shape[-spatial_dims - 1]
    spatial = probs.shape[-spatial_dims:]
    n = math.prod(batch)
    b = np.log(np.maximum(probs, PROB_FLOOR)).reshape(n, labels * math.prod(spatial))
    images = image.reshape(n, image.shape[-spatial_dims - 1], *spatial)
    strength = kw.pop("strength")
    normalization = kw.pop("normalization")
    rank = kw.pop("rank")
    Ahat = np.stack(
        [
            potts_embeddings(
                np,
                dense_crf_features(np, im, dtype=np.float64, **kw),
                rank=rank,
                normalization=normalization,
                seed=kw["seed"],
            )
            for im in images
        ]
    )
    Ahat = scaled_to_strength(np, Ahat, strength=strength, lam=lam)
    mu = np.linalg.norm(Ahat, ord=2, axis=(-2, -1)) ** 2
    np.testing.assert_allclose(mu, strength * lam, rtol=1e-10, atol=1e-300)
    x = reference_solve(potts_dense_matrix(Ahat, lam, labels), b)
    return softmax(x.reshape(n, labels, -1), axis=1).reshape(probs.shape)


KERNEL = dict(sxy=3.0, srgb=40.0, sxy_smooth=1.5, w_appearance=4.0, w_smooth=3.0)


@given(
    seed=st.integers(0, 2**31 - 1),
    spatial=st.sampled_from([(7,), (3, 4), (5, 3), (2, 3, 2)]),
    batch=st.sampled_from([(), (2,), (2, 1)]),
    labels=st.integers(2, 4),
    channels=st.integers(1, 3),
    rank=st.integers(1, 14),
    extra_landmarks=st.integers(0, 10),
    strength=st.floats(0.0, 0.95),
    approximation=st.sampled_from(APPROXIMATIONS),
    normalization=st.sampled_from(NORMALIZATIONS),
    w_smooth=st.sampled_from([0.0, 3.0]),
    lam=st.sampled_from([1.0, 0.3]),
)
def test_refine_equals_dense_float64_solve(
    seed,
    spatial,
    batch,
    labels,
    channels,
    rank,
    strength,
    approximation,
    normalization,
    w_smooth,
    lam,
    extra_landmarks,
):
    probs, image = random_inputs(seed, batch, labels, channels, spatial)
    kw = dict(
        KERNEL,
        w_smooth=w_smooth,
        rank=rank,
        landmarks=rank + extra_landmarks,
        strength=strength,
        approximation=approximation,
        normalization=normalization,
        seed=seed % 7,
    )
    out = refine(probs, image, spatial_dims=len(spatial), lam=lam, passes=0, **kw)
    ref = reference_refine(probs, image, spatial_dims=len(spatial), lam=lam, **kw)
    assert out.shape == probs.shape and out.dtype == probs.dtype
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-7)


def test_volume_matches_dense_reference_and_differs_from_unary():
    probs, image = random_inputs(3, (), 3, 2, (4, 5, 6))
    kw = dict(
        KERNEL,
        rank=12,
        landmarks=24,
        strength=0.9,
        approximation="nystrom-kmeans",
        normalization="symmetric",
        seed=0,
    )
    out = refine(probs, image, spatial_dims=3, passes=0, **kw)
    np.testing.assert_allclose(
        out, reference_refine(probs, image, spatial_dims=3, **kw), rtol=0, atol=1e-7
    )
    assert np.abs(out - probs).max() > 0.05


def test_refine_recovers_a_two_region_image_from_noisy_probabilities():
    # Left half dark, right half bright; the unary is right only 65 % of the time.
    rng = np.random.default_rng(0)
    truth = np.zeros((24, 24), dtype=int)
    truth[:, 12:] = 1
    image = np.where(truth == 1, 200, 40)[None].astype(np.uint8)
    image = np.clip(image + rng.normal(0, 5, image.shape), 0, 255).astype(np.uint8)
    logits = 0.8 * np.stack([truth == 0, truth == 1]) + rng.normal(0, 1.0, (2, 24, 24))
    probs = softmax(logits, axis=0)
    unary_accuracy = (probs.argmax(0) == truth).mean()
    refined = refine(probs, image, sxy=20.0, srgb=20.0, w_smooth=0.0, rank=16, strength=0.9)
    assert unary_accuracy < 0.8
    assert (refined.argmax(0) == truth).mean() > 0.98


def exact_gaussian(F: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * ((F[:, None] - F[None]) ** 2).sum(-1))


def test_nystrom_on_every_pixel_is_the_exact_kernel():
    F = np.random.default_rng(1).normal(0, 1.0, (30, 4))
    for approximation in ("nystrom-random", "nystrom-kmeans"):
        for m in (30, 40):
            block, T = kernel_block(np, F, m, approximation=approximation, seed=0)
            Phi = T @ block.values(np, F)
            np.testing.assert_allclose(Phi.T @ Phi, exact_gaussian(F), rtol=0, atol=1e-6)


def test_random_fourier_features_are_unbiased():
    F = np.random.default_rng(2).normal(0, 0.7, (20, 3))
    gram = np.zeros((20, 20))
    for seed in range(10):
        block, T = kernel_block(np, F, 2000, approximation="rff", seed=seed)
        np.testing.assert_array_equal(T, np.eye(2000))
        Phi = block.values(np, F)
        gram += Phi.T @ Phi / 10
    # The mean of 20000 terms of variance ≤ 2: standard error ≤ 0.01 per entry.
    np.testing.assert_allclose(gram, exact_gaussian(F), rtol=0, atol=0.05)


def test_embeddings_are_the_top_eigenspace_of_the_normalised_kernel():
    image = np.random.default_rng(3).integers(0, 256, (3, 5, 6)).astype(np.uint8)
    F = pixel_features(np, image, sxy=2.0, srgb=60.0, dtype=np.float64)
    block, T = kernel_block(np, F, 30, approximation="nystrom-random", seed=0)
    features = FactoredFeatures(T, (block,))
    W = exact_gaussian(F)
    d = W.sum(1)
    S = W / np.sqrt(np.outer(d, d))
    full = potts_embeddings(np, features, rank=30, normalization="symmetric", seed=0)
    np.testing.assert_allclose(full.T @ full, S, rtol=0, atol=1e-6)
    # Δ^{-1/2} W Δ^{-1/2} of a positive kernel has the top eigenvalue 1 (eigenvector Δ^{1/2}1).
    assert np.linalg.norm(full, ord=2) ** 2 == pytest.approx(1.0, rel=1e-6)
    w, V = np.linalg.eigh(S)
    best = (V[:, -5:] * w[-5:]) @ V[:, -5:].T
    top5 = potts_embeddings(np, features, rank=5, normalization="symmetric", seed=0)
    np.testing.assert_allclose(top5.T @ top5, best, rtol=0, atol=1e-6)
    plain = potts_embeddings(np, features, rank=30, normalization="none", seed=0)
    np.testing.assert_allclose(plain.T @ plain, W, rtol=0, atol=1e-6)


@pytest.mark.parametrize("approximation", APPROXIMATIONS)
def test_kept_kernel_values_give_the_embeddings_of_computing_them_twice(monkeypatch, approximation):
    """The symmetric normalisation's two passes over the kernel values: kept from the first
    (up to KERNEL_CACHE_BYTES) or computed again, over several chunks, the same embeddings."""
    from lowrank_gcrf import image_kernels

    image = np.random.default_rng(7).integers(0, 256, (3, 9, 11)).astype(np.uint8)
    features = dense_crf_features(
        np, image, landmarks=24, approximation=approximation, seed=0, dtype=np.float32, **KERNEL
    )
    monkeypatch.setattr(image_kernels, "CHUNK_PIXELS", 16)
    embeddings = {}
    for cache_bytes in (0, 2**30):
        monkeypatch.setattr(image_kernels, "KERNEL_CACHE_BYTES", cache_bytes)
        embeddings[cache_bytes] = potts_embeddings(
            np, features, rank=8, normalization="symmetric", seed=0
        )
    np.testing.assert_array_equal(embeddings[0], embeddings[2**30])
    assert np.abs(embeddings[0]).max() > 0


def test_strength_zero_returns_the_probabilities():
    probs, image = random_inputs(4, (2,), 3, 3, (6, 5))
    probs = np.maximum(probs, 1e-3)
    probs /= probs.sum(axis=1, keepdims=True)
    refined = refine(probs, image, strength=0.0, passes=0)
    np.testing.assert_allclose(refined, probs, rtol=1e-12)


def test_logits_give_the_result_of_their_softmax():
    rng = np.random.default_rng(5)
    z = rng.normal(0, 1.5, (3, 7, 6))
    image = rng.integers(0, 256, (3, 7, 6)).astype(np.uint8)
    # The exact solve (the passes' own test is in test_refine_passes).
    np.testing.assert_allclose(
        refine(z, image, logits=True, passes=0),
        refine(softmax(z, 0), image, passes=0),
        rtol=0,
        atol=1e-10,
    )


@pytest.mark.parametrize("kernel", ["lattice", "landmarks"])
def test_batch_items_equal_their_single_results_and_seed_is_deterministic(kernel):
    probs, image = random_inputs(6, (3,), 4, 3, (9, 8), dtype=np.float32)
    kw = dict(rank=12, appearance_kernel=kernel)
    out = refine(probs, image, **kw)
    for i in range(3):
        np.testing.assert_array_equal(refine(probs[i], image[i], **kw), out[i])
    np.testing.assert_array_equal(refine(probs, image, **kw), out)
    # The seed places the landmarks; the lattice draws nothing.
    changed = np.abs(refine(probs, image, seed=1, **kw) - out).max()
    assert changed > 0 if kernel == "landmarks" else changed == 0


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_output_dtype_and_inputs_unchanged(dtype):
    probs, image = random_inputs(7, (), 3, 3, (8, 8), dtype=dtype)
    probs_copy, image_copy = probs.copy(), image.copy()
    out, info = refine(probs, image, return_info=True)
    assert out.dtype == dtype and out.shape == probs.shape
    np.testing.assert_array_equal(probs, probs_copy)
    np.testing.assert_array_equal(image, image_copy)
    assert info.all_converged and info.residual.shape == ()


def test_float_image_on_the_255_scale_equals_uint8():
    probs, image = random_inputs(8, (), 3, 3, (8, 8))
    np.testing.assert_array_equal(refine(probs, image.astype(np.float32)), refine(probs, image))
    with pytest.warns(UserWarning, match="0–255"):
        refine(probs, image.astype(np.float32) / 255)


def test_array_api_strict_matches_numpy():
    xps = pytest.importorskip("array_api_strict")
    probs, image = random_inputs(9, (2,), 3, 3, (6, 7), dtype=np.float32)
    # Arrays of other libraries than NumPy have the landmarks' passes ("auto").
    for approximation in APPROXIMATIONS:
        kw = dict(rank=10, approximation=approximation)
        expected = refine(probs, image, appearance_kernel="landmarks", **kw)
        got = refine(xps.asarray(probs), xps.asarray(image), **kw)
        np.testing.assert_allclose(np.asarray(got), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda p, i: (p, i[..., :5]), "image must be"),
        (lambda p, i: (p[None], i), "image must be"),
        (lambda p, i: (p[0, 0], i[0, 0]), "spatial_dims"),
        (lambda p, i: (np.where(p > 0.5, np.nan, p), i), "NaN"),
        (lambda p, i: (p - 0.01, i), "negative"),
        (lambda p, i: (p * 1.01, i), "sum to 1"),
        (lambda p, i: (p, np.full(i.shape, np.nan)), "image contains NaN"),
    ],
)
def test_bad_inputs_raise(change, match):
    probs, image = random_inputs(10, (2,), 3, 3, (6, 6))
    with pytest.raises(GCRFError, match=match):
        refine(*change(probs, image))


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(strength=1.0), "strength"),
        (dict(strength=-0.1), "strength"),
        (dict(rank=0), "rank"),
        (dict(rank=64, landmarks=32), "landmarks"),
        (dict(sxy=0.0), "sxy"),
        (dict(srgb=float("nan")), "srgb"),
        (dict(w_appearance=0.0, w_smooth=0.0), "both 0"),
        (dict(w_smooth=-1.0), "w_smooth"),
        (dict(spatial_dims=4), "spatial_dims"),
        (dict(seed=1.5), "seed"),
        (dict(approximation="svd"), "approximation"),
        (dict(normalization="rw"), "normalization"),
    ],
)
def test_bad_parameters_raise(kw, match):
    probs, image = random_inputs(11, (), 3, 3, (6, 6))
    with pytest.raises(GCRFError, match=match):
        refine(probs, image, **kw)


def test_type_errors():
    probs, image = random_inputs(12, (), 3, 3, (6, 6))
    with pytest.raises(GCRFTypeError, match="floating"):
        refine((probs > 0.3).astype(np.int64), image)
    with pytest.raises(GCRFTypeError, match="uint8"):
        refine(probs, image > 100)
    xps = pytest.importorskip("array_api_strict")
    with pytest.raises(GCRFTypeError, match="different array libraries"):
        refine(probs, xps.asarray(image))


KW = dict(rank=6, landmarks=10, strength=0.8)


def sum_preserving_direction(shape, axis, seed):
    v = np.random.default_rng(seed).normal(size=shape)
    return v - v.mean(axis=axis, keepdims=True)


# The adapters' refinements against the core's: the exact solve and the landmarks' passes
# in float64 alike; the lattice's passes filter in float32 in the core and in the
# probabilities' float64 in the adapters, so that the messages (w_a ≤ 40 times O(1) filtered
# probabilities) differ by ~40·1e-7 at most, 1e-5 after the softmax.
ADAPTER_CASES = pytest.mark.parametrize(
    ("kw", "atol"),
    [
        (KW | {"passes": 0}, 1e-10),
        (KW | {"passes": 2}, 1e-10),
        ({"sxy": 3.0, "srgb": 60.0, "passes": 2}, 1e-5),
    ],
    ids=["exact-solve", "landmarks", "lattice"],
)


@ADAPTER_CASES
def test_torch_refine_matches_core_and_is_differentiable(kw, atol):
    torch = pytest.importorskip("torch")
    from lowrank_gcrf.adapters.torch import refine as torch_refine

    probs, image = random_inputs(13, (2,), 3, 3, (4, 5))
    img = torch.from_numpy(image)
    got = torch_refine(torch.from_numpy(probs), img, **kw)
    np.testing.assert_allclose(got.numpy(), refine(probs, image, **kw), rtol=0, atol=atol)
    z = torch.randn(2, 3, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    z.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda s: torch_refine(s, img, logits=True, **kw), (z,))
    # Probabilities: ∂L/∂p along a direction that keeps them summing to 1, against a
    # central difference of L = Σ w·refine(p). Its error is ~ε·|L|/t + c·t², c up to ~1e7
    # in the lattice's case (measured with w_a = 40: 7e-4 at t = 1e-5, 7e-6 at 1e-6, on
    # probabilities near 0; the smaller default w_a shrinks it): at t = 1e-7, ~1e-7 each.
    v = torch.from_numpy(sum_preserving_direction(probs.shape, 1, 14))
    w = torch.from_numpy(np.random.default_rng(17).normal(size=probs.shape))
    p = torch.from_numpy(probs).requires_grad_(True)
    (torch_refine(p, img, **kw) * w).sum().backward()
    t = 1e-7
    with torch.no_grad():
        plus = (torch_refine(p + t * v, img, **kw) * w).sum()
        minus = (torch_refine(p - t * v, img, **kw) * w).sum()
    assert float((p.grad * v).sum()) == pytest.approx(float((plus - minus) / (2 * t)), abs=1e-6)


@ADAPTER_CASES
def test_tensorflow_refine_matches_core_and_is_differentiable(kw, atol):
    tf = pytest.importorskip("tensorflow")
    from lowrank_gcrf.adapters.tensorflow import refine as tf_refine

    probs, image = random_inputs(15, (2,), 3, 3, (4, 5))
    img = tf.constant(image)
    expected = refine(probs, image, **kw)
    np.testing.assert_allclose(
        tf_refine(tf.constant(probs), img, **kw).numpy(), expected, rtol=0, atol=atol
    )
    graph = tf.function(lambda p: tf_refine(p, img, **kw))
    np.testing.assert_allclose(graph(tf.constant(probs)).numpy(), expected, rtol=0, atol=atol)
    z = tf.constant(np.random.default_rng(16).normal(size=(2, 3, 4, 5)))
    # Central differences err by about delta² times the third derivative (0.07 at TF's
    # default delta 1e-3, with the passes' curvature) plus ε/delta: 1e-6 leaves both ~1e-10.
    theoretical, numerical = tf.test.compute_gradient(
        lambda s: tf_refine(s, img, logits=True, **kw), [z], delta=1e-6
    )
    np.testing.assert_allclose(theoretical[0], numerical[0], rtol=0, atol=1e-6)
    # The same gradient inside tf.function (as Keras' fit takes it), the image as data.
    w = tf.constant(np.random.default_rng(18).normal(size=(2, 3, 4, 5)))

    def loss_gradient(s):
        with tf.GradientTape() as tape:
            tape.watch(s)
            loss = tf.reduce_sum(w * tf_refine(s, img, logits=True, **kw))
        return tape.gradient(loss, s)

    eager = loss_gradient(z)
    graph = tf.function(loss_gradient)(z)
    np.testing.assert_allclose(graph.numpy(), eager.numpy(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", ["f8", "f4"])
def test_big_endian_probabilities(dtype):
    """Byte order changes nothing: the result equals the native one, in native byte order."""
    probs, image = random_inputs(8, (), 3, 3, (8, 8), dtype=np.dtype(dtype))
    expected = refine(probs, image, rank=8, landmarks=16)
    got = refine(probs.astype(">" + dtype), image, rank=8, landmarks=16)
    assert got.dtype == np.dtype(dtype) and got.dtype.isnative
    np.testing.assert_array_equal(got, expected)
