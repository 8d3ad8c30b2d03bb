"""The head benchmark (``python -m benchmarks.heads``): its scenes, its summary arithmetic,
and a smoke run of ``--quick`` end to end, which must write to a temporary folder and leave
the published results alone."""

from __future__ import annotations

import math
import re
import tempfile

import numpy as np
import pytest

from benchmarks import results_writer

pytest.importorskip("torch")
pytest.importorskip("tensorflow")
pytest.importorskip("keras")
pytest.importorskip("skimage")
pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")
pytest.importorskip("threadpoolctl")

# These need the bench extras.
from benchmarks.heads import cli, config, oracles, scenes, summary
from benchmarks.heads.records import miou_percent
from benchmarks.heads.torchvision_import import import_torchvision


def test_scenes_are_deterministic_and_labelled():
    first = scenes.make_split("test", 6, 32, seed=3)
    again = scenes.make_split.__wrapped__("test", 6, 32, seed=3)  # bypass the cache
    np.testing.assert_array_equal(first.images, again.images)
    np.testing.assert_array_equal(first.labels, again.labels)
    assert first.images.shape == (6, 3, 32, 32) and first.images.dtype == np.float32
    assert first.labels.shape == (6, 32, 32) and first.labels.dtype == np.int64
    assert set(np.unique(first.labels)) == set(range(scenes.NUM_LABELS))
    other = scenes.make_split("test", 6, 32, seed=4)
    assert not np.array_equal(first.images, other.images)


def test_train_and_test_content_are_disjoint():
    assert not set(scenes.BACKGROUNDS["train"]) & set(scenes.BACKGROUNDS["test"])
    assert not set(scenes.TEXTURES["train"]) & set(scenes.TEXTURES["test"])
    train_coins = {pixels.tobytes() for pixels, _ in scenes._coins("train")}
    test_coins = {pixels.tobytes() for pixels, _ in scenes._coins("test")}
    assert train_coins and test_coins and not train_coins & test_coins
    train_digits = {d.tobytes() for d in scenes._digits("train")}
    assert not train_digits & {d.tobytes() for d in scenes._digits("test")}


def _record(network, optimizer, variant, seed, miou, max_loss=1.0):
    return {
        "network": network,
        "optimizer": optimizer,
        "variant": variant,
        "seed": seed,
        "status": "ok",
        "miou": miou,
        "max_loss": max_loss,
        "max_grad_norm": 1.0,
        "finite": True,
        "ms_per_step": 10.0,
        "lam": None,
        "strength": None,
        "warnings": 0,
    }


def test_summary_pairs_by_seed_and_measures_the_floor():
    tiny = config.Config(
        networks=("lraspp",),
        variants=("control", "null", "potts"),
        optimizers=("sgd-0.05",),
        seeds=(0, 1),
    )
    records = [
        _record("lraspp", "sgd-0.05", "control", 0, 50.0),
        _record("lraspp", "sgd-0.05", "control", 1, 40.0),
        _record("lraspp", "sgd-0.05", "null", 0, 53.0),
        _record("lraspp", "sgd-0.05", "null", 1, 36.0),
        _record("lraspp", "sgd-0.05", "potts", 0, 51.0, max_loss=2.0),
        _record("lraspp", "sgd-0.05", "potts", 1, 42.0),
    ]
    result = summary.summarise(records, tiny)
    potts = next(r for r in result["rows"] if r["variant"] == "potts")
    assert potts["minus_control"] == pytest.approx([1.0, 2.0])
    assert potts["loss_ratio"] == pytest.approx(2.0)
    floor = result["floors"]["lraspp"]
    assert floor["rms"] == pytest.approx(math.sqrt((9 + 16) / 2))
    assert floor["floor"] == pytest.approx(floor["rms"] / math.sqrt(2))
    target = result["targets"]["potts"]
    assert target["mean_gain"] == pytest.approx(1.5)
    assert not target["met"]  # max loss twice the control's in seed 0


def test_majority_labels_take_each_cells_most_frequent_label():
    labels = np.array([[[3, 3, 1, 1], [1, 0, 2, 2]]])
    # the left cell: label 3 twice; the right: 1 and 2 tied, the smaller wins
    np.testing.assert_array_equal(oracles.majority_labels(labels, 2), [[[3, 1]]])


def test_potts_oracle_fixes_a_segments_few_wrong_pixels():
    """A 16-pixel segment whose unary is right on 13 pixels and wrong (digit over horse, by a
    margin of 0.5) on 3: the segment's mean favours the horse, so the Potts oracle at the
    ceiling (gain 1/(1 − 0.9) = 10) fixes the three, at the initial strength (gain 1.4) it
    does not, and the general oracle, which subtracts the segment's mean, cannot."""
    labels = np.zeros((1, 8, 8), np.int64)
    labels[0, :4, :4] = 1  # horse
    labels[0, 4:, 4:] = 2  # coin
    scores = (labels[:, None] == np.arange(scenes.NUM_LABELS)[None, :, None, None]).astype(float)
    wrong = (0, [0, 1, 2], [0, 1, 2])
    scores[wrong[0], 1, wrong[1], wrong[2]] = 0.5
    scores[wrong[0], 3, wrong[1], wrong[2]] = 1.0
    low, high = oracles.STRENGTHS
    found = oracles.oracle_mious(scores, labels, lambda x: x)
    control = miou_percent(scores.argmax(1), labels)
    assert control < 90.0
    assert found[oracles.oracle_key("potts", high)] == pytest.approx(100.0)
    assert found[oracles.oracle_key(oracles.OBJECTS, high)] == pytest.approx(100.0)
    assert found[oracles.POOLING] == pytest.approx(100.0)
    assert found[oracles.oracle_key("potts", low)] == pytest.approx(control)
    assert found[oracles.oracle_key("general", high)] == pytest.approx(control)


def test_quick_run_end_to_end(tmp_path, monkeypatch):
    try:
        import_torchvision()
    except ImportError:
        pytest.skip("torchvision is not installed")
    # Without --out, a quick run goes to a new temporary folder (here under tmp_path).
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    before = results_writer.published_fingerprint()
    report = cli.main(["--quick"])
    assert results_writer.published_fingerprint() == before
    (folder,) = tmp_path.glob("heads-*")
    runs = report["runs"]
    assert len(runs) == len(config.jobs(config.QUICK))
    for run in runs:
        if run["status"] == "unavailable":
            # a model this version of GCRFHead does not offer, said so
            assert run["variant"] in config.HEAD_MODELS and run["reason"]
            continue
        assert 0.0 <= run["miou"] <= 100.0
        assert len(run["losses"]) == config.QUICK.steps_of(run["network"])
        assert run["finite"] and run["ms_per_step"] > 0
    done = {(r["network"], r["variant"]) for r in runs if r["status"] == "ok"}
    for network in config.QUICK.networks:
        assert {(network, "control"), (network, "null"), (network, "potts")} <= done
    assert ("lraspp", "as-is") in done and ("deeplabv3", "as-is") in done
    controls = [r for r in runs if r["variant"] == "control"]
    expected = {oracles.POOLING} | {
        oracles.oracle_key(name, strength)
        for name in ("potts", oracles.OBJECTS, "general", "general-sign-split")
        for strength in oracles.STRENGTHS
    }
    for run in controls:
        assert set(run["oracles"]) == expected
        assert all(0.0 <= miou <= 100.0 for miou in run["oracles"].values())
    assert not any("oracles" in r for r in runs if r["variant"] != "control")
    heads = [r for r in runs if r["variant"] == "potts"]
    assert all(r["lam"] is not None and r["lam"] > 0 for r in heads)
    for name in (cli.RESULTS_JSON, cli.FIGURE):
        assert (folder / "results" / name).stat().st_size > 0
    text = (folder / "RESULTS.md").read_text()
    begin, end = results_writer.markers(cli.JOB)
    assert text.count(begin) == 1 and text.count(end) == 1
    assert "Smoke run" in text and "| lraspp | sgd-0.05 | potts |" in text
    assert f"](results/{cli.FIGURE})" in text
    assert "### What the G-CRF could add here" in text
    for network in (*config.QUICK.networks, "all networks"):
        runs = 3 if network == "all networks" else 1
        assert re.search(rf"\| {network}: [\d.]+ \({runs}\) \| segment pooling", text)
    assert "| | potts-objects | " in text and "Over all networks (3 control runs)" in text
    assert "potts" in report["summary"]["targets"]
    assert 0.0 < report["background_only_miou"] < 50.0
