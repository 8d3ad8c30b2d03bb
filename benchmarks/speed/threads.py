"""Default BLAS threading against one thread, the library's thread management on and off.

    python -m benchmarks.speed.threads              # full run: publishes
    python -m benchmarks.speed.threads --quick      # two cases, a few repeats

Every other speed figure pins every pool to one thread; a user does not. This job measures
what a user with no thread settings gets, in one process, call by call in rotation
(:func:`benchmarks.timing.interleaved_times`; wall times, medians):

* ``default``: the pools as the process starts them (one thread per core), the library
  managing its own calls (:mod:`lowrank_gcrf.threads`: one BLAS thread for its small
  products, the pool for its large ones);
* ``one thread``: every BLAS pool limited to one thread around the call (threadpoolctl)
  and, for the PyTorch step, torch's intra-op pool too;
* ``unmanaged``: the default pools with the library's management switched off, as
  version 0.1 ran (its ``_POOLS.limited`` replaced by a no-op): the before of this change,
  timed in a block after the others (its spinning threads would otherwise slow the calls
  that follow theirs).

Cases: forward+backward ``method="auto"`` and ``"cg"`` solves at the paper's size
(P = 41×41, L = 21, float32, κ = 10³) for its three models, the rank, pixel and label
sweeps, the Gram-bound cases D ≥ 512 (where the second core should pay), a batch of 8 and
float64; a PyTorch training step of a Potts ``GCRFHead`` (batch 4, 41×41, L = 21, C = 32,
D = 16) and of its unary branch alone (torch's own share), and the Keras head's step
(TensorFlow's pools cannot change while it runs: its ``one thread`` limits BLAS only);
``refine`` of a 300×400 photograph with its defaults (the lattice's passes; L = 6 and 21)
and with the landmarks' passes (the refine benchmark's timing inputs), and the PyTorch
adapter's ``refine`` of it with its defaults, forward and backward (L = 6). The
``busy`` rows repeat cases with one core kept busy by another process, as on a shared
machine. ``default / one`` ≤ 1 is the target.
The full default run publishes the ``speed-threads`` section of ``benchmarks/RESULTS.md``
and ``benchmarks/results/speed_threads.json``; ``--quick`` and ``--out`` never publish.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import multiprocessing
import os
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..paper_sizes import PAPER_LABELS, PAPER_SIDE
from ..results_writer import destination, write_section
from ..timing import interleaved_times, median_interval
from .measure import Device
from .runner import machine
from .thread_workloads import (
    keras_step_call,
    refine_call,
    solve_call,
    torch_refine_call,
    torch_step_call,
)

#: the section of RESULTS.md this job owns
JOB = "speed-threads"
DEFAULT_REPEATS = 15
#: seconds for spinning pool threads to go back to sleep after the unmanaged calls
UNMANAGED_PAUSE_S = 1.0

#: (model, D, batch, method[, pixels side, labels, dtype]): the paper's models, a rank sweep
#: with the Gram-bound D ≥ 512, CG where it iterates, a batch, the pixel and label sweeps
#: and float64.
SOLVE_CASES = [
    ("general", 128, 1, "auto"),
    ("potts", 128, 1, "auto"),
    ("potts", 1024, 1, "auto"),
    ("general", 128, 1, "cg"),
    ("potts", 128, 1, "cg"),
    ("potts", 1024, 1, "cg"),
    ("general", 16, 1, "auto"),
    ("general", 512, 1, "auto"),
    ("general", 1024, 1, "auto"),
    ("potts", 16, 1, "auto"),
    ("potts", 512, 1, "auto"),
    ("general", 128, 8, "auto"),
    ("potts", 128, 8, "auto"),
    ("general", 128, 1, "auto", 21, PAPER_LABELS, "float32"),
    ("general", 128, 1, "auto", 129, PAPER_LABELS, "float32"),
    ("potts", 128, 1, "auto", 21, PAPER_LABELS, "float32"),
    ("potts", 128, 1, "auto", 129, PAPER_LABELS, "float32"),
    ("general", 128, 1, "auto", PAPER_SIDE, 2, "float32"),
    ("general", 128, 1, "auto", PAPER_SIDE, 64, "float32"),
    ("potts", 128, 1, "auto", PAPER_SIDE, 2, "float32"),
    ("potts", 128, 1, "auto", PAPER_SIDE, 64, "float32"),
    ("general", 128, 1, "auto", PAPER_SIDE, PAPER_LABELS, "float64"),
    ("potts", 1024, 1, "auto", PAPER_SIDE, PAPER_LABELS, "float64"),
]
QUICK_CASES = [("general", 128, 1, "auto"), ("potts", 128, 1, "cg")]
#: the cases repeated with one core busy
BUSY_CASES = [("potts", 1024, 1, "cg")]


@functools.cache
def _controller() -> Any:
    """threadpoolctl's view of the loaded pools, scanned once: a scan per call (what
    ``threadpool_limits`` does) costs about a millisecond, which would count against one
    thread."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Every BLAS pool and torch's intra-op pool at one thread."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with _controller().limit(limits=1, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def unmanaged() -> Iterator[None]:
    """The library's thread management off: its calls run in the pools as they are."""
    from lowrank_gcrf import threads

    limited = threads._POOLS.limited
    threads._POOLS.limited = lambda count: contextlib.nullcontext()
    try:
        yield
    finally:
        threads._POOLS.limited = limited


def _within(context: Callable[[], Any], call: Callable[[], Any]) -> Callable[[], Any]:
    def run() -> None:
        with context():
            call()

    return run


def measure(name: str, call: Callable[[], Any], repeats: int) -> dict[str, Any]:
    """Median wall times (ms) of ``call`` in the three settings.

    Default and one thread alternate call by call; the unmanaged calls come after, in a
    block, and a pause follows them: their pools' threads spin on after each call, which
    would slow whatever ran next (the others would pay for them).
    """
    managed = interleaved_times({"default": call, "one": _within(one_thread, call)}, repeats)
    before = interleaved_times({"unmanaged": _within(unmanaged, call)}, repeats)
    time.sleep(UNMANAGED_PAUSE_S)
    ms = {k: 1e3 * statistics.median(v) for k, v in {**managed, **before}.items()}
    # Default and one thread run side by side in each round: their per-round ratios share
    # the round's foreign load, and their spread is the run's noise on this ratio.
    rounds = [d / o for d, o in zip(managed["default"], managed["one"], strict=True)]
    low, high = median_interval(rounds)
    return {
        "case": name,
        "default_ms": ms["default"],
        "one_thread_ms": ms["one"],
        "unmanaged_ms": ms["unmanaged"],
        "default_over_one": ms["default"] / ms["one"],
        "round_ratio": statistics.median(rounds),
        "round_ratio_interval": [low, high],
        "unmanaged_over_one": ms["unmanaged"] / ms["one"],
    }


def above_one(row: dict[str, Any]) -> bool:
    """Whether the row's default threading is measurably slower than one thread: the 95 %
    interval of its per-round ratio lies above 1."""
    return row["round_ratio_interval"][0] > 1.0


def _spin(stop: Any) -> None:
    while not stop.is_set():
        pass


@contextlib.contextmanager
def one_core_busy() -> Iterator[None]:
    """Another process spinning on a core while the block runs."""
    stop = multiprocessing.Event()
    worker = multiprocessing.Process(target=_spin, args=(stop,), daemon=True)
    worker.start()
    try:
        yield
    finally:
        stop.set()
        worker.join()


def cases(quick: bool) -> list[tuple[str, Callable[[], Callable[[], Any]], bool]]:
    """(name, factory of the call, with one core busy) of the run."""
    solves = QUICK_CASES if quick else SOLVE_CASES
    chosen = [(_name(spec), spec, False) for spec in solves]
    if not quick:
        chosen += [(f"{_name(spec)}, one core busy", spec, True) for spec in BUSY_CASES]
    rows = [(name, _factory(spec), busy) for name, spec, busy in chosen]
    rows.append(("torch Potts GCRFHead training step", torch_step_call, False))
    rows.append(("refine 300×400, L = 6 (defaults: the lattice)", _refine(6), False))
    if not quick:
        rows += [
            ("refine 300×400, L = 21 (defaults: the lattice)", _refine(21), False),
            ("refine 300×400, L = 6, landmarks' passes", _refine(6, landmarks=True), False),
            ("refine 300×400, L = 6, one core busy", _refine(6), True),
            ("torch refine 300×400, L = 6, fwd+bwd (defaults: the lattice)", _torch_refine, False),
            ("torch step of the head's unary branch alone (no CRF)", _no_crf, False),
            ("torch Potts GCRFHead training step, one core busy", torch_step_call, True),
            ("torch step of the unary branch alone, one core busy", _no_crf, True),
            ("Keras Potts GCRFHead training step (eager)", keras_step_call, False),
        ]
    return rows


def _name(spec: tuple[Any, ...]) -> str:
    model, rank, batch, method, *rest = spec
    side, labels, dtype = (*rest, PAPER_SIDE, PAPER_LABELS, "float32")[:3]
    where = [] if side == PAPER_SIDE else [f"{side}×{side}"]
    where += [] if labels == PAPER_LABELS else [f"L={labels}"]
    where += [] if dtype == "float32" else [dtype]
    where += [] if batch == 1 else [f"B={batch}"]
    return " ".join([f"{model} D={rank}", *where, f"{method} fwd+bwd"])


def _no_crf() -> Callable[[], Any]:
    return torch_step_call(crf=False)


def _refine(labels: int, *, landmarks: bool = False) -> Callable[[], Callable[[], Any]]:
    params = {"appearance_kernel": "landmarks"} if landmarks else {}
    return lambda: refine_call(labels, **params)


def _torch_refine() -> Callable[[], Any]:
    return torch_refine_call(6)


def _factory(spec: tuple[Any, ...]) -> Callable[[], Callable[[], Any]]:
    return lambda: solve_call(*spec)


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table."""
    lines = [
        "| case | default ms | one thread ms | unmanaged (0.1) ms | default / one | "
        "per round: median [95 % interval] | unmanaged / one |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        low, high = r["round_ratio_interval"]
        lines.append(
            f"| {r['case']} | {r['default_ms']:.3g} | {r['one_thread_ms']:.3g} | "
            f"{r['unmanaged_ms']:.3g} | **{r['default_over_one']:.2f}** | "
            f"{r['round_ratio']:.2f} [{low:.2f}, {high:.2f}] | "
            f"{r['unmanaged_over_one']:.2f} |"
        )
    return "\n".join(lines)


def markdown_section(rows: list[dict[str, Any]], info: dict[str, Any]) -> str:
    """The RESULTS.md section."""
    idle = [r for r in rows if "busy" not in r["case"]]
    solves = [r for r in idle if "fwd+bwd" in r["case"]]
    worst = max(r["default_over_one"] for r in solves)
    slower = ", ".join(r["case"] for r in idle if above_one(r)) or "none"
    steps = ", ".join(
        f"{r['case']} {r['default_over_one']:.2f}" for r in rows if "step" in r["case"]
    )
    pools = "; ".join(
        f"{p['internal_api']} {p['version'] or ''} ({p['num_threads']} threads)"
        for p in info["threads"]["pools"]
        if p["user_api"] == "blas"
    )
    return "\n".join(
        [
            "## Default threads against one thread (`python -m benchmarks.speed.threads`)",
            "",
            "The one section measured with the threads a user has: wall times, medians of "
            "calls in rotation in one process. `default`: the BLAS pools as the process "
            "starts them, the library managing its own calls (one thread for its small "
            "products, the pool for its Grams); `one thread`: every BLAS pool (and torch's) "
            "limited to one around the call; `unmanaged`: the default pools with that "
            "management off, as version 0.1 ran. Paper size (P = 41×41, L = 21, float32, "
            "κ = 10³) unless the case says otherwise, forward+backward; `one core busy`: "
            "another process spins on one core; the unary-branch rows are torch's own share "
            "of the step, without the library.",
            "",
            f"Largest `default / one` of the library's solves (idle machine): **{worst:.2f}** "
            "(target ≤ 1; rows whose default and one-thread calls run the same single-threaded "
            "code show the run's noise). The run's noise on each ratio: the per-round ratios "
            "of default to one thread (the two run side by side in every round), their median "
            "and its distribution-free 95 % interval (order statistics). Idle rows whose "
            f"interval lies above 1, default threading measurably slower: **{slower}**. "
            "Training steps: "
            f"{steps}: a gap that the step of the head's unary branch alone shows too is "
            "torch's own intra-op pool, which the library leaves as the user set it.",
            "",
            f"* CPU: {info['cpu']}, {info['cores']} cores; Python {info['python']}; "
            f"versions: {', '.join(f'{k} {v}' for k, v in info['versions'].items())}",
            f"* BLAS pools at start: {pools}; torch intra-op threads: "
            f"{info['torch_threads']}; environment: "
            f"{', '.join(f'{k}={v}' for k, v in info['threads']['environment'].items() if v)}",
            f"* {info['date']}, commit {info['commit']}",
            "",
            table(rows),
        ]
    )


def thread_config() -> dict[str, Any]:
    """The pools as the process has them (no limit), and the thread environment."""
    from threadpoolctl import threadpool_info

    keys = ("user_api", "internal_api", "prefix", "version", "num_threads")
    env_keys = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_CORETYPE")
    return {
        "threads": None,
        "pools": [{k: p.get(k) for k in keys} for p in threadpool_info()],
        "environment": {k: os.environ.get(k) for k in env_keys},
    }


def main(argv: list[str] | None = None) -> int:
    """Measure, print the table and write it (published for the full run); 0 on success."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.speed.threads", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="two cases, a few repeats")
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS, help="calls per setting")
    parser.add_argument(
        "--out", type=Path, help="write DIR/RESULTS.md and DIR/results/ instead of publishing"
    )
    args = parser.parse_args(argv)
    repeats = 3 if args.quick else args.repeats
    publishable = not args.quick and args.repeats == DEFAULT_REPEATS
    where = destination(JOB, publishable=publishable, out=args.out)

    import torch
    from tqdm import tqdm

    info = machine(Device("cpu"), thread_config())
    info["torch_threads"] = torch.get_num_threads()
    rows = []
    for name, factory, busy in tqdm(cases(args.quick), desc="cases"):
        call = factory()
        with one_core_busy() if busy else contextlib.nullcontext():
            rows.append(measure(name, call, repeats))
    info["load_average_end"] = os.getloadavg()
    print(table(rows))
    write_section(where.results_md, JOB, markdown_section(rows, info))
    where.results_dir.mkdir(parents=True, exist_ok=True)
    (where.results_dir / "speed_threads.json").write_text(
        json.dumps({"machine": info, "rows": rows}, indent=1, default=float), encoding="utf-8"
    )
    print(("published to " if where.published else "written to ") + str(where.results_md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
