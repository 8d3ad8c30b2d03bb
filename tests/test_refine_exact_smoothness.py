"""``refine(smooth_kernel="exact")`` against the dense float64 Potts system it solves.

The dense reference builds the smoothness kernel independently (the Gaussian of the pixel
distance, cut where a coordinate differs by more than ⌈3σ⌉ pixels), normalises it with its
exact degrees, adds the low-rank appearance part and solves the whole Potts system
``(λI + (J − I) ⊗ K) x = log p`` by ``numpy.linalg.solve``. With the CG's tolerance lowered
to 1e-12 (float64, κ ≤ 20) the probabilities agree to ~κ·1e-12 ≪ the 1e-8 used; at the
library's 1e-4 they would differ by up to ~1e-5.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import warnings

import numpy as np
import pytest
from refine_cases import dense_gaussian, inputs

from lowrank_gcrf.errors import GCRFError
from lowrank_gcrf.image_embeddings import refine_embeddings
from lowrank_gcrf.refine import PROB_FLOOR, refine
from lowrank_gcrf.refine_inputs import RefineParameters, check_adapter_parameters
from lowrank_gcrf.refine_strength import expected_error, strength_from_error
from lowrank_gcrf.smooth_refine import NormalisedSmoothness

# The package exports the function ``refine`` under the module's name: fetch the module.
refine_module = importlib.import_module("lowrank_gcrf.refine")

KW = dict(sxy=5.0, srgb=30.0, sxy_smooth=1.5, w_appearance=4.0, w_smooth=3.0, rank=6, landmarks=20)


def dense_smoothness(spatial, sigma):
    G = dense_gaussian(spatial, sigma)
    d = G.sum(axis=1)
    return G / np.sqrt(np.outer(d, d))


def dense_refine(probs, image, *, strength, **kw):
    labels, spatial = probs.shape[0], probs.shape[1:]
    unit = RefineParameters(**{**kw, "w_smooth": 0.0, "strength": "auto"})
    A = refine_embeddings(image, unit, spatial_dims=len(spatial), dtype=np.float64)[0]
    share = kw["w_appearance"] / (kw["w_appearance"] + kw["w_smooth"])
    K = strength * share * A.T @ A
    K += strength * (1 - share) * dense_smoothness(spatial, kw["sxy_smooth"])
    L = labels
    M = np.eye(L * K.shape[0]) + np.kron(np.ones((L, L)) - np.eye(L), K)
    x = np.linalg.solve(M, np.log(np.maximum(probs, PROB_FLOOR)).reshape(-1)).reshape(L, -1)
    e = np.exp(x - x.max(axis=0))
    return (e / e.sum(axis=0)).reshape(probs.shape)


@pytest.fixture
def tight(monkeypatch):
    monkeypatch.setattr(refine_module, "SOLVE_RTOL", 1e-12)


@pytest.mark.parametrize("spatial", [(11,), (7, 6), (4, 3, 5)])
@pytest.mark.parametrize("strength", [0.5, 0.95])
def test_exact_smoothness_matches_the_dense_potts_solve(tight, spatial, strength):
    probs, image = inputs(0, 3, spatial)
    out, info = refine(
        probs,
        image,
        spatial_dims=len(spatial),
        smooth_kernel="exact",
        passes=0,
        strength=strength,
        return_info=True,
        **KW,
    )
    assert info.method == "cg" and info.all_converged and float(info.residual) <= 1e-12
    expected = dense_refine(probs, image, strength=strength, **KW)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-8)


def test_normalised_smoothness_is_the_dense_kernel_with_norm_one():
    spatial = (6, 7)
    N = NormalisedSmoothness(np, spatial, 1.2, np.float64, device="cpu")
    P = math.prod(spatial)
    columns = np.stack([N.apply(e.reshape(spatial)).ravel() for e in np.eye(P)], axis=1)
    expected = dense_smoothness(spatial, 1.2)
    np.testing.assert_allclose(columns, expected, rtol=0, atol=1e-14)
    assert np.linalg.norm(columns, 2) == pytest.approx(1.0, rel=1e-12)


def test_auto_strength_and_batches_with_the_exact_kernel(tight):
    probs, image = inputs(1, 4, (6, 7), batch=(2,))
    out = refine(probs, image, smooth_kernel="exact", passes=0, **KW)
    for i in range(2):
        error = expected_error(np, probs[i].reshape(1, 4, -1), logits=False)
        alpha = float(strength_from_error(np, error)[0])
        np.testing.assert_allclose(
            out[i], dense_refine(probs[i], image[i], strength=alpha, **KW), rtol=0, atol=1e-8
        )


def test_smoothness_alone_and_strength_zero(tight):
    probs, image = inputs(2, 3, (8, 5))
    kw = dict(KW, w_appearance=0.0)
    out = refine(probs, image, smooth_kernel="exact", passes=0, strength=0.8, **kw)
    K = 0.8 * dense_smoothness((8, 5), kw["sxy_smooth"])
    M = np.eye(3 * 40) + np.kron(np.ones((3, 3)) - np.eye(3), K)
    x = np.linalg.solve(M, np.log(probs).reshape(-1)).reshape(3, 8, 5)
    expected = np.exp(x - x.max(axis=0)) / np.exp(x - x.max(axis=0)).sum(axis=0)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-8)
    np.testing.assert_allclose(
        refine(probs, image, smooth_kernel="exact", passes=0, strength=0.0, **KW), probs, rtol=1e-12
    )


def test_float32_reaches_the_library_tolerance():
    probs, image = inputs(3, 5, (20, 24))
    out, info = refine(
        probs.astype(np.float32),
        image,
        smooth_kernel="exact",
        passes=0,
        strength=0.9,
        return_info=True,
    )
    assert out.dtype == np.float32 and info.all_converged and float(info.residual) <= 1e-4


def test_smooth_kernel_is_checked_and_refused_by_the_adapters():
    with pytest.raises(GCRFError, match="smooth_kernel must be one of landmarks, exact"):
        RefineParameters(smooth_kernel="filter")
    with pytest.raises(GCRFError, match=r"available in lowrank_gcrf\.refine only"):
        check_adapter_parameters(RefineParameters(smooth_kernel="exact", w_smooth=3.0, passes=0))
    with pytest.raises(GCRFError, match="option of the exact solve"):
        RefineParameters(smooth_kernel="exact", w_smooth=3.0, passes=2)
    # Without a smoothness kernel there is nothing exact to hold: the adapters accept it.
    check_adapter_parameters(dataclasses.replace(RefineParameters(), smooth_kernel="exact"))


def test_extreme_bandwidths_neither_blow_up_nor_warn():
    probs, image = inputs(4, 3, (6, 5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # Far below a pixel: N = I (each pixel coupled to itself alone).
        alone = refine(
            probs,
            image,
            smooth_kernel="exact",
            passes=0,
            sxy_smooth=1e-300,
            w_smooth=3.0,
            strength=0.6,
        )
        # Far above the image: the filter is no longer than the image needs.
        wide = refine(probs, image, smooth_kernel="exact", passes=0, sxy_smooth=1e9, w_smooth=3.0)
    assert np.isfinite(alone).all() and np.isfinite(wide).all()
    np.testing.assert_allclose(wide.sum(axis=0), 1.0, rtol=1e-12)
