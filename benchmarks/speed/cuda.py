"""The GPU suite of ``python -m benchmarks.speed --device cuda``: the paper's cases and a
batch sweep, as time per image and as achieved memory bandwidth against the device's peak.

Cases: general D = 128, Potts D = 128 and D = 1024 at the paper's size
(:mod:`benchmarks.paper_sizes`), float32, κ = 10³, batches 1 to 32, ours with
``method`` = auto, direct and cg, forward and forward+backward, each checked like the CPU
cases (true residual, gradients against a float64 reference).

A solve of a batch must at least read its inputs and write its outputs once
(:func:`minimum_bytes`); that many bytes over the measured time is the achieved bandwidth
(:func:`achieved_bandwidth`), a lower bound on the memory traffic, compared with the device's
peak, 2 × memory clock × bus width / 8 (:func:`peak_bandwidth`, read from CuPy's device
attributes). Times are wall times taken after synchronising the device
(:func:`benchmarks.timing.time_call`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..paper_sizes import PAPER_LABELS, PAPER_MODELS, PAPER_PIXELS, PAPER_SIDE
from ..results_writer import Destination, write_section
from .cases import PHASES, Case, Plan
from .contenders import all_contenders
from .measure import Device
from .records import Record, one, select
from .report import rounded
from .runner import build_problem, run_case
from .tables import format_ms, markdown_table

BATCHES = (1, 2, 4, 8, 16, 32)
QUICK_BATCHES = (1, 8, 32)
METHODS = ("ours-auto", "ours-direct", "ours-cg")
QUICK_METHODS = ("ours-auto", "ours-cg")
KAPPA = 1e3
DTYPE = "float32"
GB = 1e9


@dataclass(frozen=True)
class PerImageGoal:
    """ours-auto's forward time per image at ``batch`` must be at most ``seconds``."""

    model: str
    rank: int
    batch: int
    seconds: float


#: the GPU goals (H100-class device), per 41×41 image
GOALS = (PerImageGoal("general", 128, 32, 0.3e-3), PerImageGoal("potts", 128, 32, 0.1e-3))


def plan(quick: bool) -> Plan:
    """The GPU cases: every paper configuration at every batch of the sweep."""
    batches = QUICK_BATCHES if quick else BATCHES
    cases = [
        Case(
            ("cuda",),
            model,
            pixels=PAPER_PIXELS,
            labels=PAPER_LABELS,
            rank=rank,
            kappa=KAPPA,
            dtype=DTYPE,
            batch=batch,
            contenders=QUICK_METHODS if quick else METHODS,
        )
        for model, rank in PAPER_MODELS
        for batch in batches
    ]
    return Plan(cases=cases, repeats=3 if quick else 5, budget_s=0.5 if quick else 1.0)


def minimum_bytes(
    model: str,
    *,
    rank: int,
    pixels: int,
    labels: int,
    batch: int,
    itemsize: int,
    phase: str,
) -> int:
    """Bytes a batched solve must at least move: its inputs read once, its outputs written once.

    Forward reads the embeddings (B, D, n) and b (B, N) and writes x (B, N), with N = L·P
    unknowns and n = N (general) or P (Potts). Forward+backward also reads the cotangent gx
    (B, N) and writes ∂U (B, D, n), ∂b (B, N) and ∂λ (B,).
    """
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
    unknowns = pixels * labels
    embeddings = batch * rank * (unknowns if model == "general" else pixels)
    vectors = batch * unknowns
    if phase == "forward":
        elements = embeddings + 2 * vectors
    else:
        elements = 2 * embeddings + 4 * vectors + batch
    return elements * itemsize


def peak_bandwidth(memory_clock_khz: float, bus_width_bits: float) -> float:
    """Peak memory bandwidth (bytes/s) of double-data-rate memory: 2 · clock · width / 8."""
    return 2.0 * memory_clock_khz * 1e3 * bus_width_bits / 8.0


def achieved_bandwidth(nbytes: float, seconds: float) -> float:
    """Bytes per second."""
    if seconds <= 0:
        raise ValueError(f"seconds must be positive, got {seconds}")
    return nbytes / seconds


def gpu_info(cupy: Any) -> dict[str, Any]:
    """The current CUDA device: name, compute capability, memory clock, bus width, peak."""
    device = cupy.cuda.Device()
    runtime = cupy.cuda.runtime
    properties = runtime.getDeviceProperties(device.id)
    name = properties.get("name", b"")
    # The memory clock left cudaDeviceProp in CUDA 13; the device attributes still have it.
    clock = _attribute(runtime, device.id, "cudaDevAttrMemoryClockRate", 36)
    width = _attribute(runtime, device.id, "cudaDevAttrGlobalMemoryBusWidth", 37)
    clock = clock or properties.get("memoryClockRate")
    width = width or properties.get("memoryBusWidth")
    return {
        "name": name.decode() if isinstance(name, bytes) else str(name),
        "compute_capability": device.compute_capability,
        "memory_clock_khz": clock,
        "bus_width_bits": width,
        "peak_bandwidth": peak_bandwidth(clock, width) if clock and width else None,
        "cuda_runtime": runtime.runtimeGetVersion(),
    }


def _attribute(runtime: Any, device_id: int, name: str, number: int) -> int | None:
    """A device attribute by its runtime constant (``number`` where CuPy lacks the name);
    ``None`` where the driver does not know it."""
    try:
        return int(runtime.deviceGetAttribute(getattr(runtime, name, number), device_id))
    except runtime.CUDARuntimeError:
        return None


def run(
    plan_: Plan, device: Device, progress: Callable[[int], Any] | None = None
) -> dict[str, Any]:
    """Measure ``plan_`` on ``device``; the records gain ``per_image_s``, ``min_bytes`` and
    ``bandwidth`` (bytes/s)."""
    contenders = {c.name: c for c in all_contenders()}
    largest = max(case.batch for case in plan_.cases)
    bar = progress(sum(len(c.contenders) * len(PHASES) for c in plan_.cases)) if progress else None

    def step(text: str) -> None:
        if bar is not None:
            bar.set_description(text[:70])
            bar.update(1)

    records: list[Record] = []
    for case in plan_.cases:
        problem = build_problem(case, largest)
        chosen = [contenders[n] for n in case.contenders]
        for record in run_case(case, problem, chosen, device, plan_, step):
            if record.get("time_s"):
                record["per_image_s"] = record["time_s"] / case.batch
                record["min_bytes"] = minimum_bytes(
                    case.model,
                    rank=case.rank,
                    pixels=case.pixels,
                    labels=case.labels,
                    batch=case.batch,
                    itemsize=np.dtype(case.dtype).itemsize,
                    phase=record["phase"],
                )
                record["bandwidth"] = achieved_bandwidth(record["min_bytes"], record["time_s"])
            records.append(record)
    if bar is not None:
        bar.close()
    return {"config": {"repeats": plan_.repeats, "budget_s": plan_.budget_s}, "records": records}


def goals(records: list[Record]) -> list[dict[str, Any]]:
    """:data:`GOALS` evaluated: ``goal``, ``measured_s`` and ``pass`` (``None``: not measured)."""
    out = []
    for g in GOALS:
        r = one(
            records,
            model=g.model,
            rank=g.rank,
            batch=g.batch,
            contender="ours-auto",
            phase="forward",
        )
        measured = None if r is None else r["per_image_s"]
        out.append(
            {
                "goal": f"{g.model} D={g.rank}, batch {g.batch}: ours-auto forward per image "
                f"≤ {g.seconds * 1e3:g} ms",
                "measured_s": measured,
                "pass": None if measured is None else measured <= g.seconds,
            }
        )
    return out


def _cell(record: Record | None, peak: float | None) -> str:
    if record is None:
        return "—"
    if record["status"] in ("skipped", "failed"):
        return record["status"]
    text = f"{format_ms(record['per_image_s'])} ms, {record['bandwidth'] / GB:.3g} GB/s"
    if peak:
        text += f" ({100 * record['bandwidth'] / peak:.2g}%)"
    above = record["status"] == "unconverged" or record.get("residual", 0.0) > record["rtol"]
    return text + (" ⚠" if above else "")


def markdown(results: dict[str, Any]) -> str:
    """The RESULTS.md section of the GPU suite (without the markers)."""
    gpu, info, records = results["gpu"], results["machine"], results["records"]
    peak = gpu["peak_bandwidth"]
    peak_text = "unknown" if not peak else f"{peak / GB:,.0f} GB/s"
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    batches = sorted({r["batch"] for r in records})
    parts = [
        "## Speed on the GPU (`python -m benchmarks.speed --device cuda`)",
        "",
        "Quick run (`--quick`): fewer batches and methods."
        if results.get("quick")
        else "Full run. Regenerate with `python -m benchmarks.speed --device cuda`.",
        "",
        f"* GPU: {gpu['name']} (compute capability {gpu['compute_capability']}, CUDA runtime "
        f"{gpu['cuda_runtime']}); peak memory bandwidth {peak_text} = 2 × memory clock "
        f"{gpu['memory_clock_khz']} kHz × bus width {gpu['bus_width_bits']} bit / 8",
        f"* host: {info['cpu']}, {info['cores']} cores; Python {info['python']}; {versions}",
        f"* date {info['date']}, commit {info['commit']}",
        "",
        f"P = {PAPER_SIDE}×{PAPER_SIDE}, L = {PAPER_LABELS}, κ = 10³, {DTYPE}. Each cell: time "
        "per image (the batch's median wall time after synchronising the device, divided by "
        "the batch) and the achieved bandwidth, the bytes a solve must at least move (inputs "
        "read once, outputs written once) over that time, with its share of the peak. ⚠ marks "
        "a true residual above the tolerance.",
        "",
        "### Goals",
        markdown_table(
            ["goal", "measured (ms)", "result"],
            [
                [
                    g["goal"],
                    format_ms(g["measured_s"]),
                    {True: "pass", False: "**FAIL**", None: "not measured"}[g["pass"]],
                ]
                for g in results["goals"]
            ],
        ),
        "",
    ]
    for model, rank in PAPER_MODELS:
        group = select(records, model=model, rank=rank)
        if not group:
            continue
        rows = []
        for contender in dict.fromkeys(r["contender"] for r in group):
            for phase in PHASES:
                row = [contender, phase.replace("forward_backward", "fwd+bwd")]
                for batch in batches:
                    found = select(group, contender=contender, phase=phase, batch=batch)
                    row.append(_cell(found[0] if found else None, peak))
                rows.append(row)
        parts += [
            f"### {model} D = {rank}",
            markdown_table(["method", "phase"] + [f"B = {b}" for b in batches], rows),
            "",
        ]
    return "\n".join(parts)


def summary(results: dict[str, Any]) -> str:
    """A readable console table of the GPU suite."""
    peak = results["gpu"]["peak_bandwidth"]
    lines = [f"GPU: {results['gpu']['name']}, peak {peak / GB if peak else float('nan'):.0f} GB/s"]
    lines.append(
        f"  {'model':<8}{'D':>6}{'method':>13}{'phase':>18}{'B':>4}{'ms/image':>10}"
        f"{'GB/s':>9}{'% peak':>8}"
    )
    for r in results["records"]:
        if not r.get("time_s"):
            lines.append(f"  {r['model']:<8}{r['rank']:>6}{r['contender']:>13}  {r['status']}")
            continue
        share = f"{100 * r['bandwidth'] / peak:.2g}" if peak else "—"
        lines.append(
            f"  {r['model']:<8}{r['rank']:>6}{r['contender']:>13}{r['phase']:>18}{r['batch']:>4}"
            f"{r['per_image_s'] * 1e3:>10.3g}{r['bandwidth'] / GB:>9.3g}{share:>8}"
        )
    for g in results["goals"]:
        verdict = {True: "pass", False: "FAIL", None: "not measured"}[g["pass"]]
        lines.append(f"goal: {g['goal']}: {format_ms(g['measured_s'])} ms, {verdict}")
    return "\n".join(lines)


def write_results(results: dict[str, Any], device: Device, where: Destination) -> None:
    """Add the GPU's description and the goals to ``results``; write ``speed_cuda.json`` and
    the ``speed-cuda`` section to ``where``; print the summary and what was written."""
    results["gpu"] = gpu_info(device.xp)
    results["goals"] = goals(results["records"])
    where.results_dir.mkdir(parents=True, exist_ok=True)
    path = where.results_dir / "speed_cuda.json"
    path.write_text(json.dumps(rounded(results), indent=1) + "\n", encoding="utf-8")
    write_section(where.results_md, "speed-cuda", markdown(results))
    print(summary(results))
    print(f"wrote the {where.kind}: {path} and the speed-cuda section of {where.results_md}")
