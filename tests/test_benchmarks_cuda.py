"""The GPU suite of the speed benchmark without a GPU: its cases, the bandwidth arithmetic,
the report, and a clear failure of ``--device cuda`` where CUDA is unavailable."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from benchmarks.paper_sizes import PAPER_LABELS, PAPER_MODELS, PAPER_PIXELS
from benchmarks.speed import cli, cuda
from benchmarks.speed.problems import make_problem


def test_plan_covers_the_paper_cases_and_the_batch_sweep():
    plan = cuda.plan(quick=False)
    configs = {(c.model, c.rank) for c in plan.cases}
    assert configs == set(PAPER_MODELS)
    for model, rank in PAPER_MODELS:
        batches = sorted(c.batch for c in plan.cases if (c.model, c.rank) == (model, rank))
        assert batches == [1, 2, 4, 8, 16, 32]
    for case in plan.cases:
        assert (case.pixels, case.labels) == (PAPER_PIXELS, PAPER_LABELS) == (41 * 41, 21)
        assert case.dtype == "float32" and case.kappa == 1e3
        assert "ours-auto" in case.contenders
    quick = cuda.plan(quick=True)
    assert {c.batch for c in quick.cases} == {1, 8, 32} and len(quick.cases) < len(plan.cases)


@pytest.mark.parametrize("model", ["general", "potts"])
def test_minimum_bytes_are_the_inputs_and_outputs_once(model):
    """Counted against the arrays of an actual problem: forward reads U and b and writes x;
    forward+backward also reads gx and writes ∂U, ∂b and ∂λ."""
    p = make_problem(model, pixels=6, labels=3, rank=4, kappa=10.0, batch=2, dtype=np.float32)
    sizes = dict(rank=4, pixels=6, labels=3, batch=2, itemsize=4)
    x_bytes = p.b.nbytes
    forward = cuda.minimum_bytes(model, phase="forward", **sizes)
    assert forward == p.embeddings.nbytes + p.b.nbytes + x_bytes
    both = cuda.minimum_bytes(model, phase="forward_backward", **sizes)
    gradients = p.embeddings.nbytes + p.b.nbytes + 2 * 4  # ∂U, ∂b, ∂λ per system
    assert both == p.embeddings.nbytes + p.b.nbytes + p.gx.nbytes + x_bytes + gradients
    with pytest.raises(ValueError, match="phase"):
        cuda.minimum_bytes(model, phase="backward", **sizes)


def test_paper_general_case_moves_what_its_shapes_say():
    # D = 128, N = 41·41·21 = 35301, float32: U is 128·35301·4 bytes, b and x 35301·4 each.
    nbytes = cuda.minimum_bytes(
        "general", rank=128, pixels=1681, labels=21, batch=1, itemsize=4, phase="forward"
    )
    assert nbytes == (128 * 35301 + 2 * 35301) * 4


def test_peak_and_achieved_bandwidth():
    # An H100 SXM: HBM3 at 2619 MHz on a 5120-bit bus, 3.35 TB/s.
    assert cuda.peak_bandwidth(2_619_000, 5120) == pytest.approx(3.352e12, rel=1e-3)
    assert cuda.achieved_bandwidth(3e9, 1e-3) == pytest.approx(3e12)
    with pytest.raises(ValueError):
        cuda.achieved_bandwidth(1.0, 0.0)


def _record(model: str, rank: int, batch: int, contender: str, phase: str, seconds: float):
    nbytes = cuda.minimum_bytes(
        model,
        rank=rank,
        pixels=PAPER_PIXELS,
        labels=PAPER_LABELS,
        batch=batch,
        itemsize=4,
        phase=phase,
    )
    return {
        "model": model,
        "rank": rank,
        "batch": batch,
        "contender": contender,
        "phase": phase,
        "status": "ok",
        "rtol": 1e-5,
        "residual": 1e-6,
        "time_s": seconds,
        "per_image_s": seconds / batch,
        "min_bytes": nbytes,
        "bandwidth": nbytes / seconds,
    }


def test_goals_and_report_from_records():
    records = [
        _record("general", 128, 32, "ours-auto", "forward", 32 * 0.2e-3),
        _record("general", 128, 32, "ours-auto", "forward_backward", 32 * 0.5e-3),
        _record("potts", 128, 32, "ours-auto", "forward", 32 * 0.2e-3),
        {**_record("potts", 128, 32, "ours-cg", "forward", 1.0), "status": "failed"},
    ]
    goals = cuda.goals(records)
    assert [g["pass"] for g in goals] == [True, False]  # general 0.2 ≤ 0.3; Potts 0.2 > 0.1
    results = {
        "quick": True,
        "records": records,
        "goals": goals,
        "gpu": {
            "name": "Test GPU",
            "compute_capability": "90",
            "memory_clock_khz": 2_619_000,
            "bus_width_bits": 5120,
            "peak_bandwidth": cuda.peak_bandwidth(2_619_000, 5120),
            "cuda_runtime": 12080,
        },
        "machine": {
            "cpu": "test",
            "cores": 2,
            "python": "3",
            "versions": {},
            "date": "today",
            "commit": None,
        },
    }
    text = cuda.markdown(results)
    assert "### general D = 128" in text and "### potts D = 128" in text
    assert "Test GPU" in text and "3,352 GB/s" in text
    # general forward at batch 32: 0.2 ms per image, (128·35301 + 2·35301)·4·32 bytes / 6.4 ms
    gbps = (128 * 35301 + 2 * 35301) * 4 * 32 / (32 * 0.2e-3) / 1e9
    assert f"0.2 ms, {gbps:.3g} GB/s" in text
    assert "failed" in text and "**FAIL**" in text
    assert "goal:" in cuda.summary(results)


def test_parser_accepts_the_gpu_options():
    args = cli.parser().parse_args(["--device", "cuda", "--quick", "--out", "somewhere"])
    assert args.device == "cuda" and args.quick and str(args.out) == "somewhere"
    with pytest.raises(SystemExit):
        cli.parser().parse_args(["--device", "tpu"])


def test_device_cuda_fails_clearly_without_a_gpu(tmp_path, capsys, monkeypatch):
    if importlib.util.find_spec("cupy") is not None:
        pytest.skip("CuPy is installed: --device cuda may work here")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert cli.main(["--device", "cuda", "--quick", "--out", str(tmp_path)]) == 2
    assert "--device cuda needs CuPy" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing written


def test_suite_records_gain_time_per_image_and_bandwidth():
    """The GPU suite's measuring loop, run on the CPU on tiny systems."""
    from benchmarks.speed.cases import Case, Plan
    from benchmarks.speed.measure import Device

    cases = [
        Case(
            ("cuda",),
            model,
            pixels=9,
            labels=3,
            rank=4,
            kappa=100.0,
            dtype="float32",
            batch=batch,
            contenders=("ours-auto",),
            memory=False,
        )
        for model in ("general", "potts")
        for batch in (1, 2)
    ]
    results = cuda.run(Plan(cases=cases, repeats=1, budget_s=0.05), Device("cpu"))
    assert len(results["records"]) == len(cases) * 2
    for r in results["records"]:
        assert r["status"] == "ok", r
        assert r["per_image_s"] == pytest.approx(r["time_s"] / r["batch"])
        expected = cuda.minimum_bytes(
            r["model"],
            rank=4,
            pixels=9,
            labels=3,
            batch=r["batch"],
            itemsize=4,
            phase=r["phase"],
        )
        assert r["min_bytes"] == expected
        assert r["bandwidth"] == pytest.approx(expected / r["time_s"])


class _Runtime:
    """The parts of ``cupy.cuda.runtime`` that :func:`cuda.gpu_info` reads."""

    class CUDARuntimeError(RuntimeError):
        pass

    cudaDevAttrMemoryClockRate = 36
    cudaDevAttrGlobalMemoryBusWidth = 37

    def __init__(self, attributes: dict[int, int]):
        self.attributes = attributes

    def deviceGetAttribute(self, attribute: int, device: int) -> int:
        if attribute not in self.attributes:
            raise self.CUDARuntimeError("invalid attribute")
        return self.attributes[attribute]

    def getDeviceProperties(self, device: int) -> dict:
        return {"name": b"Fake H100", "memoryClockRate": 1_000, "memoryBusWidth": 64}

    def runtimeGetVersion(self) -> int:
        return 12080


def _fake_cupy(attributes: dict[int, int]):
    from types import SimpleNamespace

    device = SimpleNamespace(id=0, compute_capability="90")
    return SimpleNamespace(
        cuda=SimpleNamespace(Device=lambda: device, runtime=_Runtime(attributes))
    )


def test_gpu_info_reads_the_device_attributes_then_the_properties():
    info = cuda.gpu_info(_fake_cupy({36: 2_619_000, 37: 5120}))
    assert info["name"] == "Fake H100" and info["compute_capability"] == "90"
    assert (info["memory_clock_khz"], info["bus_width_bits"]) == (2_619_000, 5120)
    assert info["peak_bandwidth"] == pytest.approx(3.352e12, rel=1e-3)
    # A runtime without the attributes: the (CUDA 12) device properties.
    info = cuda.gpu_info(_fake_cupy({}))
    assert info["peak_bandwidth"] == cuda.peak_bandwidth(1_000, 64)


def test_gpu_check_script_parses_and_names_its_wheels():
    """The prepared GPU check (run on GPU machines only) is at least valid bash, and its
    header names the wheels it installs."""
    import shutil
    import subprocess
    from pathlib import Path

    script = Path(cli.__file__).resolve().parents[2] / ".ci" / "gpu_check"
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash here")
    subprocess.run([bash, "-n", str(script)], check=True)
    header = script.read_text().split("set -u", 1)[0]
    for wheel in ("array-api-compat", "hypothesis", "pytest", "--no-deps"):
        assert wheel in header
