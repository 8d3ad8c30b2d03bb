"""Smoke run of ``python -m benchmarks.refine --quick``: every section runs, the section and
figure are written to the chosen folder, and the published results are untouched."""

from __future__ import annotations

import json

# pydensecrf2, scikit-image and scikit-learn are in the test extra: a missing one fails here.
import pydensecrf.densecrf  # noqa: F401
import skimage  # noqa: F401
import sklearn  # noqa: F401

from benchmarks.refine.job import QUICK, run
from benchmarks.results_writer import published_fingerprint


def test_quick_run_writes_only_its_own_folder(tmp_path):
    before = published_fingerprint()
    md = run(QUICK, quick=True, out=tmp_path)
    assert published_fingerprint() == before
    text = md.read_text(encoding="utf-8")
    assert "<!-- refine:begin -->" in text and "<!-- refine:end -->" in text
    for heading in (
        "### Target",
        "### Test split",
        "### Time per image",
        "### Peak memory",
        "### Kernel approximations",
        "### Downstream",
    ):
        assert heading in text
    results = json.loads((tmp_path / "results" / "refine.json").read_text())
    assert results["quick"] and set(results["tuning"]) == {"coarse", "noisy"}
    for block in results["tuning"].values():
        for r in block["test"].values():
            assert 0.0 <= r["miou"] <= 1.0 and 0.0 <= r["boundary_f"] <= 1.0
    assert (tmp_path / "results" / "refine_qualitative.png").stat().st_size > 0
