"""The reproduction benchmark: scene generator properties and an in-process smoke run of
``python -m benchmarks.reproduce --quick``, which must write to a temporary folder and leave
the published results alone."""

from __future__ import annotations

import math
import tempfile
from dataclasses import replace

import numpy as np
import pytest

from benchmarks import results_writer
from benchmarks.reproduce import scenes
from benchmarks.reproduce.scenes import NUM_CLASSES, make_scenes, sprite_split

torch = pytest.importorskip("torch")
pytest.importorskip("skimage")
pytest.importorskip("sklearn")
pytest.importorskip("tqdm")
pytest.importorskip("matplotlib")

from tqdm import tqdm  # noqa: E402

# These need torch and the bench extras.
from benchmarks.reproduce import cli, config, evaluation, report, training  # noqa: E402


@pytest.mark.parametrize("kind", scenes.KINDS)
def test_scenes_are_deterministic_given_the_seed(kind):
    first = make_scenes(kind, 6, "train", seed=3)
    again = make_scenes(kind, 6, "train", seed=3)
    other = make_scenes(kind, 6, "train", seed=4)
    np.testing.assert_array_equal(first.images, again.images)
    np.testing.assert_array_equal(first.labels, again.labels)
    assert not np.array_equal(first.images, other.images)


def test_train_and_test_sprites_are_disjoint():
    split = sprite_split()
    assert not set(split["train"]) & set(split["test"])
    _, targets = scenes._digits()
    for ids in split.values():
        assert set(targets[ids]) == set(range(10))
    for kind in scenes.KINDS:
        for name, ids in split.items():
            used = make_scenes(kind, 20, name, seed=0).sprite_ids
            assert set(used[used >= 0]) <= set(ids)


@pytest.mark.parametrize("kind", scenes.KINDS)
def test_scene_shapes_and_label_ranges(kind):
    batch = make_scenes(kind, 20, "test", seed=1)
    assert batch.images.shape == (20, 3, 64, 64) and batch.images.dtype == np.float32
    assert batch.labels.shape == (20, 64, 64) and batch.labels.dtype == np.int64
    assert 0.0 <= batch.images.min() and batch.images.max() <= 1.0
    assert 0 <= batch.labels.min() and batch.labels.max() < NUM_CLASSES
    for labels in batch.labels:
        digits = set(np.unique(labels)) - {0}
        if kind == "digits":
            assert 1 <= len(digits) <= 4  # distinct classes, one per digit
        elif kind == "consensus":
            assert len(digits) == 1  # every digit of a consensus scene shares its class
        else:
            classes = {int(d) - 1 for d in digits}  # partner classes come in pairs
            assert len(classes) in (2, 4) and {scenes.partner(c) for c in classes} == classes
    assert 0.0 < (batch.labels > 0).mean() < 0.2  # thin strokes on a large background


def test_bad_scene_arguments():
    with pytest.raises(ValueError, match="kind"):
        make_scenes("letters", 1, "train", 0)
    with pytest.raises(ValueError, match="split"):
        make_scenes("digits", 1, "validation", 0)


def test_training_is_deterministic_given_the_seed():
    tiny = replace(
        config.QUICK, datasets=("digits",), train_scenes=16, test_scenes=4, steps=(2, 1, 1)
    )
    data = training.load_data("digits", tiny)

    def scores():
        with training.torch_settings():
            _, models = training.train_seed("digits", 0, data, tiny, tqdm(disable=True))
            return {name: evaluation.predict(m, data.test_images) for name, m in models.items()}

    first, again = scores(), scores()
    for name in first:
        np.testing.assert_array_equal(first[name], again[name])


def test_variants_do_not_depend_on_their_order():
    """Variants trained one by one, in reverse order, are the models train_seed gives."""
    tiny = replace(
        config.QUICK, datasets=("tied",), train_scenes=16, test_scenes=4, steps=(2, 1, 1)
    )
    data = training.load_data("tied", tiny)
    with training.torch_settings(threads=1):
        _, models = training.train_seed("tied", 1, data, tiny, tqdm(disable=True))
        base = training.train_unary("tied", 1, data, tiny, tqdm(disable=True))
        for variant in reversed(config.variants(tiny)):
            alone = training.train_variant(
                "tied", 1, variant, base.unary.state_dict(), data, tiny, tqdm(disable=True)
            )
            np.testing.assert_array_equal(
                evaluation.predict(alone, data.test_images),
                evaluation.predict(models[variant.name], data.test_images),
            )


def test_quick_run_end_to_end(tmp_path, monkeypatch):
    # Without --out, a quick run goes to a new temporary folder (here under tmp_path).
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    before = results_writer.published_fingerprint()
    threads = torch.get_num_threads()
    run = cli.main(["--quick"])
    assert torch.get_num_threads() == threads  # the run restores the caller's settings
    assert results_writer.published_fingerprint() == before  # the published results are kept
    (folder,) = tmp_path.glob("reproduce-*")
    results_md = folder / "RESULTS.md"
    names = [v.name for v in config.variants(config.QUICK)]
    assert {"unary", "control"} < set(names)
    assert any(n.startswith("general-") for n in names)
    assert any(n.startswith("potts-") for n in names)
    assert any(n.startswith("attractive-") for n in names)
    assert any(n.startswith("signed-") for n in names)
    for kind in config.QUICK.datasets:
        rows = run["summary"][kind]
        assert list(rows) == names
        for row in rows.values():
            assert len(row["miou"]) == len(config.QUICK.seeds)
            assert all(0.0 <= v <= 100.0 and math.isfinite(v) for v in row["miou"])
            assert row["params"] > 0
    assert rows["control"]["params"] >= max(
        rows[n]["params"] for n in names if n.startswith(config.GCRF_KINDS)
    )
    targets = run["attractive_targets"]
    assert set(targets) == {"consensus", "tied"}
    assert targets["consensus"]["met"] == (targets["consensus"]["worst_seed_gain"] >= 5.0)
    for kind in config.QUICK.datasets:
        oracles = run["oracles"][kind]
        assert list(oracles) == list(report.ORACLE_NAMES)
        assert all(len(v) == len(config.QUICK.seeds) for v in oracles.values())
    for timing in run["timings"].values():
        assert math.isfinite(timing["total_ms"]) and timing["total_ms"] > 0
    for name in ("reproduce.json", "reproduce_pairwise.png", "reproduce_qualitative.png"):
        assert (folder / "results" / name).stat().st_size > 0
    text = results_md.read_text()
    begin, _ = results_writer.markers(cli.JOB)
    assert text.count(begin) == 1
    assert "### DigitScenes" in text and "### ConsensusScenes" in text
    assert "### TiedScenes" in text and "attractive beats Potts on TiedScenes" in text
    assert "| unary |" in text and "smoke run" in text
    assert "](results/reproduce_pairwise.png)" in text  # figures linked beside the section
    assert "ground-truth embeddings" in text and "target, dense general" in report.console_summary(
        run
    )
    # The section of another benchmark in the same file survives a second run's section.
    results_md.write_text(text + "\n<!-- speed:begin -->\nspeed table\n<!-- speed:end -->\n")
    results_writer.write_section(results_md, cli.JOB, "replaced")
    text = results_md.read_text()
    assert text.count(begin) == 1 and "replaced" in text and "speed table" in text
