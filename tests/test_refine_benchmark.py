"""Smoke run of ``python -m benchmarks.refine --quick``: every section runs, the section and
figure are written to the chosen folder, and the published results are untouched; and the
scenes' held-out split and simulated unaries are what the benchmark says they are."""

from __future__ import annotations

import json

import numpy as np

# pydensecrf2, scikit-image and scikit-learn are in the test extra: a missing one fails here.
import pydensecrf.densecrf  # noqa: F401
import skimage  # noqa: F401
import sklearn  # noqa: F401

import benchmarks.refine.contenders as contenders
from benchmarks.refine.contenders import MF5, OURS
from benchmarks.refine.job import QUICK, run, timing_probs
from benchmarks.refine.lattice_weights import chosen_weights, lattice_weights, reaches_mf5
from benchmarks.refine.photograph import LONGEST_SIDE, PHOTOGRAPHS, photograph
from benchmarks.refine.scenes import (
    FILLS,
    NOISY_CONFIDENCE,
    NUM_CLASSES,
    PHOTOS,
    SHAPES,
    make_scene,
    noisy_unary,
)
from benchmarks.refine.summary import photograph_targets, versus, wins
from benchmarks.results_writer import published_fingerprint
from lowrank_gcrf import refine_passes
from lowrank_gcrf.refine_passes import LATTICE_APPEARANCE_WEIGHT, LATTICE_SMOOTH_WEIGHT


def test_quick_run_writes_only_its_own_folder(tmp_path):
    before = published_fingerprint()
    md = run(QUICK, quick=True, out=tmp_path)
    assert published_fingerprint() == before
    text = md.read_text(encoding="utf-8")
    assert "<!-- refine:begin -->" in text and "<!-- refine:end -->" in text
    for heading in (
        "### Target",
        "### Test split (held out)",
        "### Real photographs",
        "### Validation: the lattice's weights",
        "### Validation: choosing the defaults",
        "### Time per image",
        "### Peak memory",
        "### Kernel approximations",
        "### Downstream",
    ):
        assert heading in text
    results = json.loads((tmp_path / "results" / "refine.json").read_text())
    assert results["quick"] and set(results["test"]) == {"coarse", "noisy"}
    for block in results["test"].values():
        for r in block.values():
            assert 0.0 <= r["miou"] <= 1.0 and 0.0 <= r["boundary_f"] <= 1.0
            assert len(r["per_image"]) == len(r["wrong_per_image"]) == QUICK.test
            assert r["wrong"] == sum(r["wrong_per_image"])
    assert results["validation"]["chosen"] in results["validation"]["ours"]
    assert [r["labels"] for r in results["timing"]] == list(QUICK.timing_labels)
    rows = results["photograph"]["rows"]
    photographs = sum(len(names) for names in PHOTOGRAPHS.values())
    assert len(rows) == photographs * len(QUICK.photo_labels) * 2 * len(QUICK.photo_seeds)
    for r in rows:
        assert all(0.0 <= r[k] <= 1.0 for k in ("unary_miou", MF5, OURS))
    weights = results["weights"]
    assert len(weights["rows"]) == len(QUICK.weight_grid)
    assert weights["chosen"] in [list(w) for w in QUICK.weight_grid]
    assert weights["default"] == [LATTICE_APPEARANCE_WEIGHT, LATTICE_SMOOTH_WEIGHT]
    for r in weights["rows"]:
        assert r["wins"] == r["composite_wins"] + r["photograph_wins"] <= r["miou_wins"]
        assert r["wrong_vs_mf5"] >= 0
    assert (tmp_path / "results" / "refine_qualitative.png").stat().st_size > 0


def test_an_adapter_not_installed_has_no_timing_row_and_torch_threads_come_back(monkeypatch):
    import torch

    threads = torch.get_num_threads()
    with contenders.frameworks_at_one_thread() as info:
        assert torch.get_num_threads() == 1 and "intra-op" in info["torch"]
    assert torch.get_num_threads() == threads
    monkeypatch.setattr(contenders, "installed", lambda module: module != "tensorflow")
    with contenders.frameworks_at_one_thread() as info:
        assert info["tensorflow"] == contenders.NOT_INSTALLED
    probs, image = np.full((2, 4, 5), 0.5, np.float32), np.zeros((3, 4, 5), np.uint8)
    calls = contenders.adapter_calls(probs, image)
    assert set(calls) == {contenders.TORCH_REFINE}
    row = {name: 1.0 for name in (*contenders.OURS_TIMED, *calls)}
    assert contenders.timed(row) == [*contenders.OURS_TIMED, contenders.TORCH_REFINE]


def test_splits_share_no_photograph_fill_or_shape():
    for sources in (PHOTOS, FILLS, SHAPES):
        assert not set(sources["val"]) & set(sources["test"])


def test_unaries_are_what_the_benchmark_describes():
    scene = make_scene("test", (40, 56), 3)
    noisy = scene.unaries["noisy"]
    np.testing.assert_allclose(noisy.sum(axis=0), 1.0, rtol=1e-6)
    np.testing.assert_allclose(noisy.max(axis=0), NOISY_CONFIDENCE, rtol=1e-6)
    wrong = np.mean(noisy.argmax(axis=0) != scene.labels)
    # 2240 pixels, 30 % wrong: the binomial's standard deviation is about 1 %.
    assert 0.25 < wrong < 0.35
    coarse = scene.unaries["coarse"]
    assert coarse.shape == (NUM_CLASSES, 40, 56)
    np.testing.assert_allclose(coarse.sum(axis=0), 1.0, rtol=1e-5)
    widened = timing_probs(scene, 21)
    assert widened.shape == (21, 40, 56)
    np.testing.assert_allclose(widened.sum(axis=0), 1.0, rtol=1e-5)


def test_wins_count_images_where_ours_reaches_mean_field():
    test = {
        "coarse": {
            "unary": {"per_image": [0.5, 0.6, 0.7]},
            MF5: {"per_image": [0.8, 0.6, 0.9]},
            OURS: {"per_image": [0.7, 0.6, 0.95]},
        }
    }
    won, count, worst = wins(test, "coarse")
    assert (won, count) == (2, 3)
    assert worst == 0.0


def test_the_photographs_and_their_labels():
    assert not set(PHOTOGRAPHS["val"]) & set(PHOTOGRAPHS["test"])
    # No validation photograph is a source of the test composites.
    assert not set(PHOTOGRAPHS["val"]) & {*PHOTOS["test"], *FILLS["test"]}
    image, labels = photograph("coins", 1.0)
    assert image.shape == (3, 303, 384) and image.dtype == np.uint8
    np.testing.assert_array_equal(image[0], image[2])
    # The coins cover about 38 % of the photograph; its top-left corner is background.
    assert 0.3 < labels.mean() < 0.45 and labels[0, 0] == 0
    small, small_labels = photograph("coins", 0.25)
    assert small.shape == (3, 76, 96) and small_labels.shape == (76, 96)
    colour, colour_labels = photograph("immunohistochemistry", 0.25)
    assert colour.shape == (3, 128, 128) and not np.array_equal(colour[0], colour[2])
    assert 0.2 < colour_labels.mean() < 0.8
    # Larger photographs are held at LONGEST_SIDE pixels on the longer side.
    retina, retina_labels = photograph("retina", 1.0)
    assert retina.shape == (3, LONGEST_SIDE, LONGEST_SIDE)
    assert retina_labels.shape == (LONGEST_SIDE, LONGEST_SIDE)
    probs = noisy_unary(labels, np.random.default_rng(0), 2)
    assert probs.shape == (2, 303, 384)
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, rtol=1e-6)


def test_lattice_weights_are_set_for_the_benchmark_and_restored():
    probs, image = np.full((2, 6, 7), 0.5, np.float32), np.zeros((3, 6, 7), np.uint8)
    probs[0, :, :3] = 0.9
    probs[1, :, :3] = 0.1
    image[:, :, :3] = 200
    before = contenders.ours(probs, image)
    with lattice_weights(0.0, 0.0):
        # No message: the refinement is the unary.
        np.testing.assert_allclose(contenders.ours(probs, image), probs, atol=1e-6)
    assert (LATTICE_APPEARANCE_WEIGHT, LATTICE_SMOOTH_WEIGHT) == (
        refine_passes.LATTICE_APPEARANCE_WEIGHT,
        refine_passes.LATTICE_SMOOTH_WEIGHT,
    )
    np.testing.assert_array_equal(contenders.ours(probs, image), before)


def test_photograph_targets_compare_mean_gains_and_the_worst_seed():
    def row(seed, unary_miou, mf, ours):
        return {"split": "test", "photograph": "coins", "labels": 2, "unary": "noisy",
                "seed": seed, "unary_miou": unary_miou, MF5: mf, OURS: ours}  # fmt: skip

    met = photograph_targets({"rows": [row(0, 0.5, 0.9, 0.92), row(1, 0.5, 0.9, 0.89)]})
    assert [m for *_, m in met] == [True, True]  # mean gain +40.5 ≥ +40; none below 0.5
    missed = photograph_targets({"rows": [row(0, 0.5, 0.9, 0.88), row(1, 0.95, 0.96, 0.94)]})
    assert [m for *_, m in missed] == [False, False]


def test_the_weights_rule_prefers_safe_settings_then_wins_then_the_mean():
    def row(w_a, wins, vs_mf5, worst_gain):
        return {"w_a": w_a, "wins": wins, "vs_mf5": vs_mf5, "worst_gain": worst_gain}

    unsafe_best = row(10, 40, 0.5, -0.001)
    tied = [row(20, 39, 0.11, 0.0), row(30, 39, 0.12, 0.002), row(40, 30, 0.9, 0.1)]
    assert chosen_weights([unsafe_best, *tied])["w_a"] == 30
    # Where every setting leaves a case below its unary, the rule ranks them all.
    assert chosen_weights([unsafe_best, row(50, 39, 0.9, -0.1)])["w_a"] == 10


def test_a_case_reaches_mf5_only_with_its_miou_and_no_more_wrong_pixels():
    # Fails on pixels (120 > 100), ties pass, fails on mIoU (0.79 < 0.8), passes.
    got = reaches_mf5([0.9, 0.8, 0.79, 0.95], [120, 100, 90, 50], 0.8, 100)
    np.testing.assert_array_equal(got, [False, True, False, True])
    # Case by case against MF-5's own figures.
    got = reaches_mf5([0.5, 0.5], [10, 10], [0.4, 0.6], [10, 9])
    np.testing.assert_array_equal(got, [True, False])


def test_versus_shows_differences_under_a_tenth_of_a_point():
    # 0.008 points apart: one decimal alone shows neither the size nor the sign.
    assert versus(0.05008, 0.05) == "+5.0 vs +5.0 points (difference +0.0080)"
    assert "difference -0.0500" in versus(0.0490, 0.0495)
    assert versus(0.30, 0.25) == "+30.0 vs +25.0 points"
