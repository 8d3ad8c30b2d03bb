"""Time per CG iteration, ours against ``scipy.sparse.linalg.cg`` with the same matvec.

    python -m benchmarks.speed.iteration            # paper sizes, batch 1 and 8: publishes
    python -m benchmarks.speed.iteration --repeats 3 --batch 1 --out DIR

A focused companion of the full speed benchmark: for each paper-size model (P = 41×41,
L = 21; general D = 128, Potts D = 128 and D = 1024; float32, κ = 10³) it times, in one
process with every BLAS pool pinned to one thread (threadpoolctl),

* ``ours``: a whole ``method="cg"`` solve through :func:`lowrank_gcrf.models.make_operator`
  (validation, the Potts definiteness proof and the final true residual included), divided
  by its iterations. For Potts (D < P) and general D ≤ 128 these are iterations on the
  k×D capacitance system (:mod:`lowrank_gcrf.capacitance`), each far cheaper than a matvec
  on the k×n unknowns: as many as SciPy's for Potts, more for the general model (its sweep
  aims by a Gershgorin bound), hence the ``per solve`` column;
* ``scipy``: ``scipy.sparse.linalg.cg`` on a ``LinearOperator`` whose matvec is our
  operator's own, one system at a time, divided by its iterations;
* ``setup``: the same solve as ``ours`` with no iteration allowed (what a solve costs
  before its first iteration and after its last); "loop only" divides ``ours − setup``
  by the iterations;
* the peak memory of a forward+backward ``method="auto"`` solve (the backward reusing the
  forward's factorization) over the input bytes (embeddings, b and the cotangent), measured
  as the full benchmark does (tracemalloc).

Times are CPU times of the process (``time.process_time``; one BLAS thread, so the work
itself), not wall times: on a shared machine a preempted call would otherwise count the
other processes' time slices. The two contenders alternate call by call; times are
medians. ``ratio`` is scipy's time per iteration over ours (> 1: ours is faster); at batch
B scipy's time is B times its single-system time, so that the ratio shows what a batch
gains. ``per solve`` is the same for whole solves to the same rtol (scipy's over ours).
The default run (batch 1 and 8, 21 repeats) publishes its table as the ``speed-iteration``
section of ``benchmarks/RESULTS.md`` and its rows in ``benchmarks/results/speed_iteration.json``;
any other run writes to ``--out DIR`` or a new temporary folder
(:mod:`benchmarks.results_writer`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse.linalg

from lowrank_gcrf.models import make_operator

from ..memory import tracemalloc_peak
from ..paper_sizes import PAPER_LABELS, PAPER_MODELS, PAPER_PIXELS
from ..results_writer import destination, write_section
from .measure import Device, threads
from .problems import Problem, make_problem
from .report import machine_markdown
from .runner import machine

#: the section of RESULTS.md this job owns
JOB = "speed-iteration"
#: the configuration whose run publishes
DEFAULT_BATCHES = [1, 8]
DEFAULT_REPEATS = 21

KAPPA = 1e3
RTOL = 1e-5


def _ours(problem: Problem, method: str = "cg", **options: Any) -> tuple[Any, int]:
    op = make_operator(problem.model, problem.embeddings, problem.lam, num_labels=problem.labels)
    x, info = op.solve(problem.b, method=method, rtol=RTOL, **options)
    return x, int(np.max(info.iterations))


def _scipy(problem: Problem) -> tuple[list[Any], int]:
    """SciPy's CG on each system, its matvec our operator's; (solutions, total iterations)."""
    solutions, total = [], 0
    for i in range(problem.batch):
        op = make_operator(
            problem.model, problem.embeddings[i], problem.lam, num_labels=problem.labels
        )
        k, n = op.row_shape

        def matvec(v: Any, op: Any = op, k: int = k, n: int = n) -> Any:
            return op.matvec(v.reshape(k, n)).reshape(-1)

        linear = scipy.sparse.linalg.LinearOperator(
            (k * n, k * n), matvec=matvec, dtype=problem.dtype
        )
        count = [0]

        def callback(_: Any, count: list[int] = count) -> None:
            count[0] += 1

        x, _ = scipy.sparse.linalg.cg(
            linear, problem.b[i].reshape(-1), rtol=RTOL, atol=0.0, callback=callback
        )
        solutions.append(x)
        total += count[0]
    return solutions, total


def _clock(fn: Callable[[], Any]) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def _peak_ratio(problem: Problem) -> float:
    """Peak bytes of a forward+backward ``auto`` solve over the input bytes."""

    def forward_backward() -> None:
        op = make_operator(
            problem.model, problem.embeddings, problem.lam, num_labels=problem.labels
        )
        x, info = op.solve(problem.b, rtol=RTOL)
        op.vjp(x, problem.gx, rtol=RTOL, factorization=info.factorization)

    return tracemalloc_peak(forward_backward) / problem.input_bytes


def measure(model: str, rank: int, batch: int, repeats: int) -> dict[str, Any]:
    """One row of the table (see the module docstring)."""
    problem = make_problem(
        model,
        pixels=PAPER_PIXELS,
        labels=PAPER_LABELS,
        rank=rank,
        kappa=KAPPA,
        batch=batch,
        dtype=np.float32,
    )
    _, ours_its = _ours(problem)
    _, scipy_its = _scipy(problem)
    ours, theirs, setup = [], [], []
    for _ in range(repeats):
        ours.append(_clock(lambda: _ours(problem)))
        theirs.append(_clock(lambda: _scipy(problem)))
        setup.append(_clock(lambda: _ours(problem, maxiter=0, on_failure="ignore")))
    ours_per = statistics.median(ours) / ours_its
    loop_per = (statistics.median(ours) - statistics.median(setup)) / ours_its
    scipy_per = statistics.median(theirs) / scipy_its * batch
    return {
        "model": model,
        "D": rank,
        "batch": batch,
        "ours_iterations": ours_its,
        "scipy_iterations": scipy_its / batch,
        "ours_ms_per_iteration": 1e3 * ours_per,
        "scipy_ms_per_iteration": 1e3 * scipy_per,
        "ratio": scipy_per / ours_per,
        "solve_ratio": statistics.median(theirs) / statistics.median(ours),
        "loop_ratio": scipy_per / loop_per,
        "setup_ms": 1e3 * statistics.median(setup),
        "peak_over_inputs": _peak_ratio(problem) if batch == 1 else None,
    }


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table."""
    lines = [
        "| model | D | B | its ours/scipy | ours ms/it | scipy ms/it (×B) | scipy/ours "
        "| per solve | ours setup ms | scipy/ours, loop only | fwd+bwd peak / inputs (auto) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        peak = "—" if r["peak_over_inputs"] is None else f"{r['peak_over_inputs']:.2f}"
        lines.append(
            f"| {r['model']} | {r['D']} | {r['batch']} | {r['ours_iterations']}/"
            f"{r['scipy_iterations']:g} | {r['ours_ms_per_iteration']:.3g} | "
            f"{r['scipy_ms_per_iteration']:.3g} | {r['ratio']:.2f} | {r['solve_ratio']:.2f} | "
            f"{r['setup_ms']:.3g} | "
            f"{r['loop_ratio']:.2f} | {peak} |"
        )
    return "\n".join(lines)


def markdown_section(rows: list[dict[str, Any]], info: dict[str, Any]) -> str:
    """The RESULTS.md section: command, machine, the table and how to read it."""
    return "\n".join(
        [
            "## Time per CG iteration (`python -m benchmarks.speed.iteration`)",
            "",
            "Full run: paper size (P = 41×41, L = 21), float32, κ = 10³, rtol = 1e-5, CPU time "
            "with one thread per pool. `scipy/ours` is SciPy's time per iteration over ours "
            "(whole solves, validation and the Potts proof of definiteness included; at batch "
            "B, SciPy's is B × its single-system time); `per solve` compares whole solves to "
            "the same rtol. Where the capacitance system pays (Potts D < P, general D ≤ 128), "
            "ours iterates on k×D unknowns, SciPy on the k×n unknowns with our matvec. For "
            "Potts the counts agree; for the general model ours aims its sweeps by a "
            "Gershgorin bound on ‖A‖₂² and takes more, far cheaper, iterations, so `per solve` "
            "is the fair comparison there. `loop only` leaves out ours' setup (`maxiter=0`).",
            "",
            "### Machine",
            "",
            machine_markdown(info),
            "",
            "### Table",
            "",
            table(rows),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    """Measure, print the table and write it (published for the default run); 0 on success."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.speed.iteration",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument(
        "--repeats", type=int, default=DEFAULT_REPEATS, help="timed calls per contender"
    )
    parser.add_argument("--batch", type=int, nargs="+", default=DEFAULT_BATCHES, help="batches")
    parser.add_argument(
        "--out", type=Path, help="write DIR/RESULTS.md and DIR/results/ instead of publishing"
    )
    args = parser.parse_args(argv)
    publishable = args.batch == DEFAULT_BATCHES and args.repeats == DEFAULT_REPEATS
    where = destination(JOB, publishable=publishable, out=args.out)

    from tqdm import tqdm

    configs = [(m, d, b) for m, d in PAPER_MODELS for b in args.batch]
    rows = []
    with threads(1) as thread_config:
        info = machine(Device("cpu"), thread_config)
        for model, rank, batch in tqdm(configs, desc="cases"):
            rows.append(measure(model, rank, batch, args.repeats))
    info["load_average_end"] = os.getloadavg()
    print(table(rows))
    write_section(where.results_md, JOB, markdown_section(rows, info))
    where.results_dir.mkdir(parents=True, exist_ok=True)
    (where.results_dir / "speed_iteration.json").write_text(
        json.dumps({"machine": info, "rows": rows}, indent=1), encoding="utf-8"
    )
    print(("published to " if where.published else "written to ") + str(where.results_md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
