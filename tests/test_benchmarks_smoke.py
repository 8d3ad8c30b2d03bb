"""Smoke test of the speed benchmark (benchmarks/speed/): a tiny configuration, in-process.

Checks the structure of the results and that every contender's answer is right (true
residual within tolerance, gradients close to the float64 reference); it times nothing.
Contenders whose libraries are missing (linear_operator, pydensecrf2) must be skipped with a
reason, not fail. A quick run of the command line must leave the published results alone.
"""

from __future__ import annotations

import importlib.util
import tempfile

import numpy as np
import pytest

from benchmarks import results_writer
from benchmarks.speed import cli, report, runner, targets
from benchmarks.speed.cases import PHASES, Case, Plan
from benchmarks.speed.contenders import CONTENDER_NAMES
from benchmarks.speed.measure import Device, DeviceUnavailableError
from benchmarks.speed.problems import make_problem

CONTENDERS = CONTENDER_NAMES


def _tiny_cases(dtypes: tuple[str, ...], contenders: tuple[str, ...]) -> list[Case]:
    return [
        Case(
            ("paper", "rank"),
            model,
            pixels=16,
            labels=3,
            rank=4,
            kappa=100.0,
            dtype=dtype,
            batch=2,
            contenders=contenders,
        )
        for model in ("general", "potts")
        for dtype in dtypes
    ]


@pytest.fixture(scope="module")
def results() -> dict:
    plan = Plan(cases=_tiny_cases(("float32", "float64"), CONTENDERS), repeats=1, budget_s=0.05)
    return runner.run(plan, Device("cpu"))


def test_problem_has_the_requested_condition_number():
    for model in ("general", "potts"):
        p = make_problem(model, pixels=12, labels=3, rank=5, kappa=1e3, dtype=np.float64)
        eigenvalues = np.linalg.eigvalsh(_dense(p))
        assert eigenvalues[0] > 0
        assert eigenvalues[-1] / eigenvalues[0] == pytest.approx(1e3, rel=1e-8)


def _dense(p) -> np.ndarray:
    n = p.b[0].size
    return np.stack([p.matvec(e.reshape(1, *p.b.shape[1:]))[0].ravel() for e in np.eye(n)])


def test_every_contender_is_measured_or_skipped_with_a_reason(results):
    records = results["records"]
    assert len(records) == 4 * len(CONTENDERS) * len(PHASES)
    for r in records:
        assert r["status"] in ("ok", "skipped"), r
        if r["status"] == "skipped":
            assert r["note"]
            continue
        assert r["time_s"] > 0 and len(r["times_s"]) >= 1
        assert r["peak_bytes"] >= 0 and r["memory_meter"]
        # Ours reports the true residual; SciPy and unrolled CG stop on the recurrence.
        slack = 1.0 if r["contender"].startswith("ours") else 10.0
        assert r["residual"] <= slack * r["rtol"] * 1.0001, r
        if r["phase"] == "forward_backward":
            assert r["grad_error"] < (1e-2 if r["dtype"] == "float32" else 1e-3), r
    measured = {r["contender"] for r in records if r["status"] == "ok"}
    assert {"ours-auto", "ours-direct", "ours-cg", "scipy-cg", "dense-cholesky"} <= measured


def test_potts_has_no_linear_operator_form(results):
    potts = [
        r
        for r in results["records"]
        if r["model"] == "potts" and r["contender"] == "linear-operator"
    ]
    assert all(r["status"] == "skipped" for r in potts)


def test_report_and_section_replacement(results, tmp_path):
    results = {
        **results,
        "quick": True,
        "machine": {
            "cpu": "test",
            "cores": 2,
            "platform": "test",
            "python": "3",
            "versions": {},
            "device": "cpu",
            "load_average_start": (0, 0, 0),
            "load_average_end": (0, 0, 0),
            "date": "today",
            "commit": None,
            "threads": {"threads": 2, "pools": [], "environment": {}},
        },
    }
    results["targets"] = targets.targets(results["records"])
    results["crossover"] = targets.crossover(results["records"])
    assert all(t["pass"] is None for t in results["targets"])  # no paper-size case here
    assert len(results["targets"]) == len(targets.TARGETS)
    assert {c["model"] for c in results["crossover"]} == {"general", "potts"}
    md = tmp_path / "RESULTS.md"
    md.write_text("# Results\n\n<!-- other:begin -->\nkept\n<!-- other:end -->\n")
    body = report.markdown(results, [], md)
    results_writer.write_section(md, report.JOB, body)
    results_writer.write_section(md, report.JOB, body)
    text = md.read_text()
    begin, end = results_writer.markers(report.JOB)
    assert text.count(begin) == 1 and text.count(end) == 1
    assert "kept" in text and "<!-- other:end -->" in text
    assert "Not measured: no GPU was available." in text
    assert "Targets" in report.summary(results)


def test_cuda_without_cupy_fails_with_a_clear_message():
    if importlib.util.find_spec("cupy") is not None:
        pytest.skip("CuPy is installed: --device cuda may work here")
    with pytest.raises(DeviceUnavailableError, match="needs CuPy"):
        Device("cuda")


def test_quick_run_leaves_the_published_results_unchanged(monkeypatch, tmp_path, capsys):
    """``python -m benchmarks.speed --quick`` (on a tiny plan) writes to a temporary folder."""
    tiny = Plan(
        cases=_tiny_cases(("float32",), ("ours-auto", "scipy-cg")), repeats=1, budget_s=0.05
    )
    monkeypatch.setattr(cli, "plan", lambda quick: tiny if quick else pytest.fail("not quick"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = results_writer.published_fingerprint()
    assert cli.main(["--quick", "--threads", "1"]) == 0
    assert results_writer.published_fingerprint() == before
    (folder,) = tmp_path.glob("speed-*")
    assert (folder / "results" / "speed.json").stat().st_size > 0
    text = (folder / "RESULTS.md").read_text()
    assert text.startswith("<!-- speed:begin -->") and "Quick run" in text
    assert "not published" in capsys.readouterr().out
    # Rebuilding the report from that run's JSON stays in its folder.
    (folder / "RESULTS.md").unlink()
    assert cli.main(["--report-only", "--out", str(folder)]) == 0
    assert (folder / "RESULTS.md").exists()
    assert results_writer.published_fingerprint() == before


def test_iteration_benchmark_short_run_writes_only_where_told(tmp_path, capsys):
    """A non-default run of ``benchmarks.speed.iteration`` writes its section and rows to
    ``--out`` and leaves the published results alone; every ratio is a positive number."""
    import json

    from benchmarks.speed import iteration

    before = results_writer.published_fingerprint()
    assert iteration.main(["--batch", "1", "--repeats", "1", "--out", str(tmp_path)]) == 0
    assert results_writer.published_fingerprint() == before
    text = (tmp_path / "RESULTS.md").read_text(encoding="utf-8")
    begin, end = results_writer.markers(iteration.JOB)
    assert begin in text and end in text and "### Machine" in text
    rows = json.loads((tmp_path / "results" / "speed_iteration.json").read_text())["rows"]
    assert [(r["model"], r["D"]) for r in rows] == [
        ("general", 128),
        ("potts", 128),
        ("potts", 1024),
    ]
    for r in rows:
        assert r["ratio"] > 0 and r["solve_ratio"] > 0 and r["ours_iterations"] > 0
        assert f"| {r['model']} | {r['D']} | 1 |" in text
    assert "written to" in capsys.readouterr().out


def test_threads_benchmark_quick_run_writes_only_where_told(tmp_path, capsys):
    """``benchmarks.speed.threads --quick`` writes its section and rows to ``--out``, leaves
    the published results alone, and leaves the process's thread settings as it found
    them."""
    import json

    import torch
    from threadpoolctl import threadpool_info

    from benchmarks.speed import threads

    pools = {p["filepath"]: p["num_threads"] for p in threadpool_info()}
    torch_threads = torch.get_num_threads()
    before = results_writer.published_fingerprint()
    assert threads.main(["--quick", "--out", str(tmp_path)]) == 0
    assert results_writer.published_fingerprint() == before
    # Every pool keeps its threads (refine's case loads scikit-image's libraries: pools
    # that were not there before are not compared).
    after = {p["filepath"]: p["num_threads"] for p in threadpool_info()}
    assert {path: after[path] for path in pools} == pools
    assert torch.get_num_threads() == torch_threads
    text = (tmp_path / "RESULTS.md").read_text(encoding="utf-8")
    begin, end = results_writer.markers(threads.JOB)
    assert begin in text and end in text
    rows = json.loads((tmp_path / "results" / "speed_threads.json").read_text())["rows"]
    # The quick solves, the torch step and refine's defaults.
    assert len(rows) == len(threads.QUICK_CASES) + 2
    for r in rows:
        assert min(r["default_ms"], r["one_thread_ms"], r["unmanaged_ms"]) > 0
        low, high = r["round_ratio_interval"]
        assert 0 < low <= r["round_ratio"] <= high
        assert f"| {r['case']} |" in text
    assert "written to" in capsys.readouterr().out


def test_median_interval_covers_the_median_as_often_as_it_claims():
    """The order-statistics interval of 15 draws from a skewed distribution (exponential,
    median ln 2) holds the true median in at least 95 % of 4000 trials (its exact coverage
    at n = 15 is 96.5 %; the binomial spread of 4000 trials is 0.3 %)."""
    from benchmarks.timing import median_interval

    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(4000):
        low, high = median_interval(list(rng.exponential(size=15)))
        hits += low <= np.log(2.0) <= high
    assert 0.95 <= hits / 4000 <= 0.98
    assert median_interval([2.0, 1.0, 3.0]) == (1.0, 3.0)
