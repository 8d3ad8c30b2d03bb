"""Speed benchmark (GitHub issue 6): ours vs SciPy CG, dense Cholesky, linear_operator,
unrolled torch CG and dense-CRF mean field, at the paper's sizes and in scaling sweeps.

Run ``python -m benchmarks.speed`` (about 15 minutes on 2 cores) or ``--quick`` (under 2).
Writes ``benchmarks/results/speed.json``, the plots ``benchmarks/results/speed_*.png`` and
the ``speed`` section of ``benchmarks/RESULTS.md`` (the rest of that file is kept).

Suites (DESIGN §5), all with controlled conditioning (:mod:`benchmarks.problems`):

* ``paper``: 41×41 = 1681 pixels, L = 21; general D = 128, Potts D = 128 and 1024;
  float32/float64, batch 1/8, κ ∈ {10, 10³, 10⁵}; every contender.
* ``pixels``: P ∈ {21², 41², 65², 129²} at D = 128, L = 21 (κ = 10³, float32, batch 1).
* ``rank``: D from 16 to 1024 at the paper's P and L, κ ∈ {10, 10³}, both dtypes — the
  ``cg``/``direct`` crossover that sets ``method="auto"``; competitors at κ = 10³ float32.
* ``labels``: L from 2 to 64 at the paper's P, D = 128.
* ``meanfield``: pydensecrf2 at 41×41 and 321×321, 21 labels, 5 and 10 iterations.

Every measurement is the median wall time (``time.perf_counter``) of repeats after one
warm-up, in one process, on the same inputs and tolerance, with the thread pools pinned
(:func:`benchmarks.measure.threads`). Peak memory is measured in a separate call.
"""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

import lowrank_gcrf as lg

from . import meanfield
from .contenders import Contender, Outcome, all_contenders
from .measure import Device, DeviceUnavailableError, median, threads, time_call
from .problems import Problem, make_problem

PAPER_PIXELS = 41 * 41
PAPER_LABELS = 21
KAPPAS = (10.0, 1e3, 1e5)
PHASES = ("forward", "forward_backward")
OURS = ("ours-auto", "ours-direct", "ours-cg")
RESULTS_DIR = Path(__file__).parent / "results"
RESULTS_MD = Path(__file__).parent / "RESULTS.md"


def tolerance(dtype: Any, kappa: float) -> float:
    """The rtol every contender gets: 1e-5, or 1e-3 where ε·κ > 1e-3.

    A float32 system at κ = 10⁵ cannot reach 1e-5: the residual of the correctly rounded
    solution is already about 3e-5 and float32 arithmetic cannot evaluate it better than
    ε·κ ≈ 1e-2 (measured: ours direct and cg stall near 3e-4).
    """
    return 1e-3 if np.finfo(dtype).eps * kappa > 1e-3 else 1e-5


@dataclass(frozen=True)
class Case:
    """One benchmark configuration, the suites it belongs to and the contenders that run it."""

    suites: tuple[str, ...]
    model: str
    pixels: int
    labels: int
    rank: int
    kappa: float
    dtype: str
    batch: int
    contenders: tuple[str, ...]
    memory: bool = True

    @property
    def rtol(self) -> float:
        """The tolerance of this case (:func:`tolerance`)."""
        return tolerance(np.dtype(self.dtype), self.kappa)


@dataclass
class Plan:
    """What a run measures and how hard it tries."""

    cases: list[Case]
    repeats: int
    budget_s: float
    meanfield: list[tuple[int, int]] = field(default_factory=list)
    meanfield_labels: int = PAPER_LABELS


def _merged(cases: list[Case]) -> list[Case]:
    """One case per configuration: the union of its suites and contenders (in the order of
    :func:`~benchmarks.contenders.all_contenders`), memory if any asks for it."""
    order = [c.name for c in all_contenders()]
    merged: dict[tuple, Case] = {}
    for case in cases:
        seen = merged.get(_key(case))
        if seen is not None:
            wanted = set(seen.contenders) | set(case.contenders)
            case = replace(
                seen,
                suites=seen.suites + tuple(s for s in case.suites if s not in seen.suites),
                contenders=tuple(n for n in order if n in wanted),
                memory=seen.memory or case.memory,
            )
        merged[_key(case)] = case
    return list(merged.values())


def plan(quick: bool) -> Plan:
    """The full benchmark, or the ``--quick`` subset: the targets' cases (paper size,
    κ = 10³, float32, batch 1) with every contender, small sweeps, fewer repeats."""
    everyone = tuple(c.name for c in all_contenders())
    # Unrolled CG is there for the memory of an autograd backward: paper size, batch 1,
    # float32, κ ≤ 10³ only (at 10⁵ it costs more than the rest of the case). Batched CG at
    # κ = 10⁵ (tens of seconds, 10× slower than direct already at batch 1) is skipped too.
    # Memory is measured at batch 1 (batch 8 scales it by 8) and where the sweeps'
    # competitors run.
    sweepers = tuple(n for n in everyone if n != "torch-unrolled-cg")
    paper = dict(pixels=PAPER_PIXELS, labels=PAPER_LABELS)
    cases: list[Case] = []
    dtypes = ("float32",) if quick else ("float32", "float64")
    for model, rank in (("general", 128), ("potts", 128), ("potts", 1024)):
        for dtype in dtypes:
            for batch in (1,) if quick else (1, 8):
                for kappa in (1e3,) if quick else KAPPAS:
                    # Per-system loops gain nothing from a batch: batch 8 is 8× batch 1.
                    who = everyone if batch == 1 else (*OURS, "linear-operator")
                    if kappa > 1e3 or dtype == "float64":
                        who = tuple(n for n in who if n != "torch-unrolled-cg")
                    if kappa > 1e3 and batch > 1:
                        who = tuple(n for n in who if n != "ours-cg")
                    cases.append(
                        Case(
                            ("paper",),
                            model,
                            rank=rank,
                            kappa=kappa,
                            dtype=dtype,
                            batch=batch,
                            contenders=who,
                            memory=batch == 1,
                            **paper,
                        )
                    )
    for model in ("general", "potts"):
        for side in (21, 41) if quick else (21, 41, 65, 129):
            cases.append(
                Case(
                    ("pixels",),
                    model,
                    pixels=side * side,
                    labels=PAPER_LABELS,
                    rank=128,
                    kappa=1e3,
                    dtype="float32",
                    batch=1,
                    contenders=sweepers,
                )
            )
        for rank in (32, 128) if quick else (16, 32, 64, 128, 256, 512, 1024):
            for dtype in dtypes:
                for kappa in (10.0, 1e3):
                    full = kappa == 1e3 and dtype == "float32"
                    who = sweepers if full else ("ours-direct", "ours-cg")
                    cases.append(
                        Case(
                            ("rank",),
                            model,
                            rank=rank,
                            kappa=kappa,
                            dtype=dtype,
                            batch=1,
                            contenders=who,
                            memory=full,
                            **paper,
                        )
                    )
        for labels in (2, 21) if quick else (2, 4, 8, 16, 21, 32, 64):
            cases.append(
                Case(
                    ("labels",),
                    model,
                    pixels=PAPER_PIXELS,
                    labels=labels,
                    rank=128,
                    kappa=1e3,
                    dtype="float32",
                    batch=1,
                    contenders=sweepers,
                )
            )
    return Plan(
        cases=_merged(cases),
        repeats=3 if quick else 5,
        budget_s=0.5 if quick else 1.0,
        meanfield=[(41, 5), (41, 10)] if quick else [(41, 5), (41, 10), (321, 5), (321, 10)],
    )


def _key(case: Case) -> tuple:
    return (case.model, case.pixels, case.labels, case.rank, case.kappa, case.dtype, case.batch)


@functools.lru_cache(maxsize=2)
def _float64_problem(
    model: str, pixels: int, labels: int, rank: int, kappa: float, batch: int
) -> Problem:
    return make_problem(
        model, pixels=pixels, labels=labels, rank=rank, kappa=kappa, batch=batch, dtype=np.float64
    )


def build_problem(case: Case, largest_batch: int) -> Problem:
    """The case's systems: the first ``case.batch`` of a float64 batch of ``largest_batch``
    (so batch 1 solves the first system of batch 8, and float32 the same systems)."""
    source = _float64_problem(
        case.model, case.pixels, case.labels, case.rank, case.kappa, max(largest_batch, case.batch)
    )
    return source.head(case.batch).astype(np.dtype(case.dtype))


def reference_gradients(problem: Problem) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(∂L/∂U, ∂L/∂b, ∂L/∂λ) from our direct solver in float64 at rtol 1e-10."""
    p = problem.astype(np.float64)
    op = (
        lg.GeneralOperator(p.embeddings, p.lam)
        if p.model == "general"
        else lg.PottsOperator(p.embeddings, p.lam, p.labels)
    )
    x, _ = op.solve(p.b, method="direct", rtol=1e-10)
    gU, gb, glam, _ = op.vjp(x, p.gx, method="direct", rtol=1e-10)
    return gU, gb, glam


def gradient_error(grads: tuple[np.ndarray, ...], reference: tuple[np.ndarray, ...]) -> float:
    """The largest relative 2-norm error of (∂L/∂U, ∂L/∂b, ∂L/∂λ) against the reference."""
    errors = []
    for got, want in zip(grads, reference, strict=True):
        got = np.asarray(got, dtype=np.float64).reshape(want.shape)
        scale = np.linalg.norm(want)
        errors.append(float(np.linalg.norm(got - want) / (scale if scale > 0 else 1.0)))
    return max(errors)


def _measured(
    contender: Contender,
    phase: str,
    inputs: Any,
    problem: Problem,
    device: Device,
    plan_: Plan,
    memory: bool,
    reference: tuple[np.ndarray, ...],
) -> tuple[dict[str, Any], Outcome | None]:
    fn = functools.partial(getattr(contender, phase), inputs)
    started = time.perf_counter()
    try:
        samples, run = time_call(fn, device, repeats=plan_.repeats, budget_s=plan_.budget_s)
    except lg.GCRFError as exc:
        return {"status": "failed", "note": f"{type(exc).__name__}: {exc}"}, None
    outcome = run.outcome(device)
    del run
    record: dict[str, Any] = {
        "status": "ok" if outcome.converged else "unconverged",
        "time_s": median(samples),
        "min_s": min(samples),
        "times_s": samples,
        "iterations": outcome.iterations or None,
        "method": outcome.method,
        "residual": problem.relative_residual(outcome.x),
    }
    if outcome.grads is not None:
        record["grad_error"] = gradient_error(outcome.grads, reference)
    if memory:
        meter, peak = device.memory_meter(contender.library)
        record["peak_bytes"] = peak(fn)
        record["memory_meter"] = meter
    record["wall_s"] = time.perf_counter() - started
    return record, outcome


def run_case(
    case: Case,
    problem: Problem,
    contenders: list[Contender],
    device: Device,
    plan_: Plan,
    step: Callable[[str], None] = lambda _: None,
) -> list[dict[str, Any]]:
    """Measure every contender of ``case`` on ``problem``, forward and forward+backward.

    Returns one record per (contender, phase): the case's fields, ``contender``, ``phase``,
    ``status`` ("ok", "unconverged", "failed" or "skipped"), and for measured ones
    ``time_s`` (median), ``times_s``, ``iterations`` (per solve, largest over the batch),
    ``method``, ``residual`` (largest true relative residual, float64), ``grad_error``
    (forward+backward, against :func:`reference_gradients`) and ``peak_bytes``.
    """
    reference = reference_gradients(problem)
    base = {
        **asdict(case),
        "rtol": case.rtol,
        "lam": problem.lam,
        "unknowns": problem.unknowns,
        "input_bytes": problem.input_bytes,
    }
    del base["contenders"], base["memory"]
    context: dict[str, Any] = {"rtol": case.rtol}
    records = []
    for contender in contenders:
        reason = contender.skip_reason(problem, device, context)
        inputs = None if reason else contender.prepare(problem, device, context)
        for phase in PHASES:
            step(
                f"{case.suites[0]} {case.model} D={case.rank} P={case.pixels} L={case.labels} "
                f"κ={case.kappa:g} {case.dtype} B={case.batch} {contender.name} {phase}"
            )
            record = {**base, "contender": contender.name, "phase": phase}
            if reason:
                records.append({**record, "status": "skipped", "note": reason})
                continue
            measured, outcome = _measured(
                contender, phase, inputs, problem, device, plan_, case.memory, reference
            )
            records.append({**record, **measured})
            if contender.name == "ours-cg" and phase == "forward" and measured["status"] == "ok":
                context["cg_iterations"] = outcome.iterations[0]
        del inputs
    return records


def machine(device: Device, thread_config: dict[str, Any]) -> dict[str, Any]:
    """The machine, library versions, thread pools, load and date of this run."""
    cpu = "unknown"
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {}
    for package in (
        "numpy",
        "scipy",
        "torch",
        "linear_operator",
        "lowrank-gcrf",
        "pydensecrf2",
        "cupy-cuda12x",
        "cupy-cuda13x",
    ):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "device": device.name,
        "threads": thread_config,
        "load_average_start": os.getloadavg(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit,
    }


def run(
    plan_: Plan,
    device: Device,
    progress: Callable[[int], Any] | None = None,
) -> dict[str, Any]:
    """Run ``plan_`` on ``device`` in this process; return the JSON-ready results.

    Parameters
    ----------
    progress : callable, optional
        ``total ↦ bar`` with tqdm's ``update``, ``set_description`` and ``close``.
    """
    contenders = {c.name: c for c in all_contenders()}
    largest_batch = {}
    for case in plan_.cases:
        key = _key(case)[:5]
        largest_batch[key] = max(largest_batch.get(key, 1), case.batch)
    steps = sum(len(c.contenders) * len(PHASES) for c in plan_.cases) + len(plan_.meanfield)
    bar = progress(steps) if progress else None

    def step(text: str) -> None:
        if bar is not None:
            bar.set_description(text[:70])
            bar.update(1)

    records: list[dict[str, Any]] = []
    started = time.perf_counter()
    # Same-configuration cases are adjacent, so the float64 source is built once.
    for case in sorted(plan_.cases, key=lambda c: (_key(c)[:5], c.batch, c.dtype)):
        problem = build_problem(case, largest_batch[_key(case)[:5]])
        records += run_case(
            case, problem, [contenders[n] for n in case.contenders], device, plan_, step
        )
    mean_field: dict[str, Any] = {"unavailable": meanfield.unavailable(), "runs": []}
    for side, iterations in plan_.meanfield:
        step(f"meanfield {side}×{side} {iterations} iterations")
        if mean_field["unavailable"] is None:
            mean_field["runs"].append(
                meanfield.measure(
                    side,
                    plan_.meanfield_labels,
                    iterations,
                    repeats=plan_.repeats,
                    budget_s=plan_.budget_s,
                )
            )
    if bar is not None:
        bar.close()
    return {
        "config": {
            "repeats": plan_.repeats,
            "budget_s": plan_.budget_s,
            "wall_s": time.perf_counter() - started,
            "rtol": "1e-5; 1e-3 where float eps·κ > 1e-3 (float32 at κ = 1e5)",
        },
        "records": records,
        "meanfield": mean_field,
    }


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m benchmarks.speed [--quick] [--device cuda] [--threads N]``."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.speed",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="a subset in under 2 minutes")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--threads", type=int, default=2, help="BLAS/OpenMP/torch threads (default 2)"
    )
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--results-md", type=Path, default=RESULTS_MD)
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="rebuild the plots and RESULTS.md section from speed.json",
    )
    args = parser.parse_args(argv)

    if args.report_only:
        results = json.loads((args.results_dir / "speed.json").read_text())
        _report(results, args.results_dir, args.results_md)
        return 0

    from tqdm import tqdm

    # For any child process; this process's pools are pinned by threadpoolctl below.
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    try:
        device = Device(args.device)
    except DeviceUnavailableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # Load every contender's libraries first: threadpoolctl pins only pools already loaded.
    import torch  # noqa: F401

    load = os.getloadavg()[0]
    if args.threads > 1 and load > 0.5:
        print(
            f"warning: load average {load:.1f} — other processes are using the CPU. "
            f"With {args.threads} BLAS threads, OpenBLAS's busy-waiting workers then stall on "
            "every small product (measured here: 100× slower); the timings will mostly "
            "measure the other processes. Prefer --threads 1 or an idle machine.",
            file=sys.stderr,
        )
    with threads(args.threads) as thread_config:
        print(
            f"threads: {args.threads} (BLAS/OpenMP pools via threadpoolctl, torch "
            f"{thread_config['torch_threads']}); environment {thread_config['environment']}"
        )
        for pool in thread_config["pools"]:
            print(
                f"  {pool['internal_api']} {pool['version']} ({pool['prefix']}): "
                f"{pool['num_threads']} threads, {pool['architecture']}"
            )
        info = machine(device, thread_config)
        results = run(plan(args.quick), device, progress=lambda total: tqdm(total=total))
    info["load_average_end"] = os.getloadavg()
    results = {"machine": info, "quick": args.quick, **results}
    _report(results, args.results_dir, args.results_md)
    return 0


def _rounded(value: Any) -> Any:
    """``value`` with every float cut to 4 significant digits (timings do not carry more),
    so that the JSON stays small and its diffs readable."""
    if isinstance(value, float):
        return float(f"{value:.4g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(v) for v in value]
    return value


def _report(results: dict[str, Any], results_dir: Path, results_md: Path) -> None:
    """Targets and crossover into the JSON, the plots, the RESULTS.md section, the summary."""
    from . import speed_report

    results["targets"] = speed_report.targets(results["records"])
    results["crossover"] = speed_report.crossover(results["records"])
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "speed.json").write_text(json.dumps(_rounded(results), indent=1) + "\n")
    plots = speed_report.plots(results, results_dir)
    speed_report.write_section(results_md, speed_report.markdown(results, plots, results_md))
    print(speed_report.summary(results))
    print(
        f"wrote {results_dir / 'speed.json'}, {len(plots)} plots and the speed section of "
        f"{results_md}"
    )


if __name__ == "__main__":
    sys.exit(main())
