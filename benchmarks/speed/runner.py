"""Running a plan: every contender on every case, timed, checked against float64 references.

Every measurement is the median wall time of repeats after one warm-up
(:func:`benchmarks.timing.time_call`), in one process, on the same inputs and tolerance,
with the thread pools pinned (:func:`benchmarks.speed.measure.threads`). Peak memory is
measured in a separate call (:mod:`benchmarks.memory`).
"""

from __future__ import annotations

import functools
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import numpy as np

import lowrank_gcrf as lg
from lowrank_gcrf.models import make_operator

from ..densecrf import unavailable
from ..machine import cores, cpu_model, git_commit, package_versions, utc_timestamp
from ..timing import time_call
from . import meanfield
from .cases import PHASES, Case, Plan, case_key
from .contender_interface import Contender, Outcome
from .contenders import all_contenders
from .measure import Device
from .problems import Problem, make_problem


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
    op = make_operator(p.model, p.embeddings, p.lam, num_labels=p.labels)
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
        samples, run = time_call(
            fn, repeats=plan_.repeats, budget_s=plan_.budget_s, sync=device.sync
        )
    except lg.GCRFError as exc:
        return {"status": "failed", "note": f"{type(exc).__name__}: {exc}"}, None
    outcome = run.outcome(device)
    del run
    record: dict[str, Any] = {
        "status": "ok" if outcome.converged else "unconverged",
        "time_s": statistics.median(samples),
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
            if contender.name == "scipy-cg" and phase == "forward" and measured["status"] == "ok":
                context["cg_iterations"] = int(np.max(outcome.iterations[0]))
        del inputs
    return records


#: the distributions whose versions a run records, where installed
VERSIONS = (
    "numpy",
    "scipy",
    "torch",
    "linear_operator",
    "lowrank-gcrf",
    "pydensecrf2",
    "cupy-cuda12x",
    "cupy-cuda13x",
)


def machine(device: Device, thread_config: dict[str, Any]) -> dict[str, Any]:
    """The machine, library versions, thread pools, load and date of this run."""
    return {
        "cpu": cpu_model(),
        "cores": cores(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": package_versions(VERSIONS),
        "device": device.name,
        "threads": thread_config,
        "load_average_start": os.getloadavg(),
        "date": utc_timestamp(),
        "commit": git_commit(),
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
        key = case_key(case)[:5]
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
    for case in sorted(plan_.cases, key=lambda c: (case_key(c)[:5], c.batch, c.dtype)):
        problem = build_problem(case, largest_batch[case_key(case)[:5]])
        records += run_case(
            case, problem, [contenders[n] for n in case.contenders], device, plan_, step
        )
    mean_field: dict[str, Any] = {"unavailable": unavailable(), "runs": []}
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
