"""``refine``'s automatic strength, the kernel's clamped exponent, and energies passed as logits.

Tolerances: the automatic strength scales embeddings normalised to ``‖Â‖₂² = λ`` by √α where
a fixed strength scales them to α directly; the two differ by a few roundings of float64
(ε ≈ 2e-16) in Â, which the solve (κ ≤ 20 here) carries into the probabilities well below
the 1e-10 used.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from lowrank_gcrf.kernel_approximation import KERNEL_EXPONENT_FLOOR, gaussian_kernel
from lowrank_gcrf.refine import refine
from lowrank_gcrf.refine_strength import (
    MAX_AUTO_STRENGTH,
    STEPS_PER_ERROR_ODDS,
    expected_error,
    strength_from_error,
)


def noisy_unary(rng, labels, shape, confidence):
    """Every pixel shows one label at ``confidence``, the rest spread evenly."""
    shown = rng.integers(0, labels, shape)
    probs = np.full((labels, *shape), (1.0 - confidence) / (labels - 1))
    np.put_along_axis(probs, shown[None], confidence, axis=0)
    return probs


def test_expected_error_and_the_rule_on_known_unaries():
    rng = np.random.default_rng(0)
    probs = noisy_unary(rng, 4, (5, 6), 0.7).reshape(1, 4, -1)
    error = expected_error(np, probs, logits=False)
    np.testing.assert_allclose(error, [0.3], rtol=1e-12)
    # n = 1 + c·0.3/0.7 steps, α = 1 − 1/n.
    n = 1.0 + STEPS_PER_ERROR_ODDS * 0.3 / 0.7
    np.testing.assert_allclose(strength_from_error(np, error), [1.0 - 1.0 / n], rtol=1e-12)
    # Logits are read through their softmax.
    np.testing.assert_allclose(expected_error(np, np.log(probs), logits=True), error, rtol=1e-12)
    # A uniform unary is capped; a one-hot one gets no propagation at all.
    assert strength_from_error(np, np.array([0.75]))[0] == MAX_AUTO_STRENGTH
    assert strength_from_error(np, np.array([0.0]))[0] == 0.0


def test_auto_strength_equals_the_rule_as_a_fixed_strength():
    rng = np.random.default_rng(1)
    probs = noisy_unary(rng, 3, (9, 8), 0.6)
    image = rng.integers(0, 256, (3, 9, 8)).astype(np.uint8)
    alpha = float(
        strength_from_error(np, expected_error(np, probs.reshape(1, 3, -1), logits=False))[0]
    )
    assert 0.5 < alpha < MAX_AUTO_STRENGTH
    np.testing.assert_allclose(
        refine(probs, image, passes=0),
        refine(probs, image, strength=alpha, passes=0),
        rtol=0,
        atol=1e-10,
    )


def test_auto_strength_is_per_image_and_leaves_a_one_hot_unary_alone():
    rng = np.random.default_rng(2)
    confident = np.eye(3)[rng.integers(0, 3, (7, 6))].transpose(2, 0, 1)
    confident = np.maximum(confident, 1e-3)
    confident /= confident.sum(axis=0)
    noisy = noisy_unary(rng, 3, (7, 6), 0.5)
    probs = np.stack([confident, noisy])
    image = rng.integers(0, 256, (2, 3, 7, 6)).astype(np.uint8)
    out = refine(probs, image, passes=0)
    # e = 0.002 for the near one-hot image: α ≈ 0.04, too little to move any label.
    assert np.array_equal(out[0].argmax(axis=0), confident.argmax(axis=0))
    for i in range(2):
        np.testing.assert_array_equal(refine(probs[i], image[i], passes=0), out[i])


def test_kernel_exponent_is_clamped_above_the_subnormal_range():
    X = np.array([[0.0, 0.0], [1.0, 0.0], [30.0, 0.0]], dtype=np.float32)
    K = gaussian_kernel(np, X, X[:1])
    # exp(−0.5) exact to float32 rounding; exp(−450) would be 0 (below even the subnormals)
    # and is raised to exp(−60), a normal float32.
    np.testing.assert_allclose(K[:2, 0], [1.0, math.exp(-0.5)], rtol=1e-6)
    assert K[2, 0] == np.float32(math.exp(KERNEL_EXPONENT_FLOOR))
    assert K[2, 0] >= np.finfo(np.float32).smallest_normal


def test_energies_passed_as_logits_warn_and_scores_do_not():
    rng = np.random.default_rng(4)
    probs = rng.dirichlet(np.ones(4), size=(6, 7)).transpose(2, 0, 1).astype(np.float32)
    image = rng.integers(0, 256, (3, 6, 7)).astype(np.uint8)
    # pydensecrf's unary_from_softmax: −log of the probabilities clipped at 1e-5.
    energies = -np.log(np.maximum(probs, 1e-5))
    with pytest.warns(UserWarning, match="look like energies"):
        refine(energies, image, logits=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        refine(-energies, image, logits=True)
        refine(np.log(probs), image, logits=True)
        refine(energies + 1.0, image, logits=True)  # ≥ 0 but exp(−s) sums to e⁻¹
