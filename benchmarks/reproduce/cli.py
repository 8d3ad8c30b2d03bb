"""The driver of ``python -m benchmarks.reproduce``: train, evaluate, time, draw, write."""

from __future__ import annotations

import os

# Passive OpenMP waiting: on a shared 2-core machine, spinning worker threads slow a busy
# neighbour's cores and our own step down by an order of magnitude. Must precede torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import time
from dataclasses import asdict, replace

import torch
from tqdm import tqdm

from ..machine import cores, cpu_model, utc_timestamp
from ..results_writer import (
    Destination,
    add_destination_arguments,
    chosen_destination,
    write_section,
)
from .config import DEFAULT, GCRF_KINDS, QUICK, Config, variants
from .evaluation import (
    attractive_targets,
    summarise,
    target_met,
    time_variant,
)
from .figures import pairwise_figure, qualitative_figure
from .jobs import rebuild, run_jobs, worker_count
from .networks import parameter_count
from .report import console_summary, markdown_section
from .training import load_data, torch_settings

#: the section of RESULTS.md this job owns
JOB = "reproduce"
FIGURES = {"pairwise": "reproduce_pairwise.png", "qualitative": "reproduce_qualitative.png"}


def run(config: Config, where: Destination, quick: bool = False, progress: bool = True) -> dict:
    """Train and evaluate every variant, time them, draw the figures, write the results.

    Parameters
    ----------
    config : Config
    where : Destination
        Where ``reproduce.json``, the figures and the RESULTS.md section go
        (:func:`benchmarks.results_writer.destination`).
    quick : bool
        Marks the report as a smoke run.
    progress : bool
        Show tqdm progress bars.

    Returns
    -------
    dict
        The report written to ``reproduce.json``.
    """
    with torch_settings():
        return _run(config, where, quick, progress)


def _run(config: Config, where: Destination, quick: bool, progress: bool) -> dict:
    start = time.perf_counter()
    names = [v.name for v in variants(config)]
    steps = config.steps[0] + len(names) * (config.steps[1] + config.steps[2])
    total = len(config.datasets) * len(config.seeds) * steps
    workers = worker_count(config)
    results = sorted(
        run_jobs(config, total, progress, workers),
        key=lambda r: (config.datasets.index(r.kind), config.seeds.index(r.seed)),
    )
    data = {kind: load_data(kind, config) for kind in config.datasets}
    scores = {kind: {name: [] for name in names} for kind in config.datasets}
    kept, oracles = {}, {}
    for result in results:
        for name in names:
            scores[result.kind][name].append(result.scores[name])
        for name, value in result.oracles.items():
            oracles.setdefault(result.kind, {}).setdefault(name, []).append(value)
        if result.weights is not None:
            kept[result.kind] = rebuild(result.weights, config)
    first = kept[config.datasets[0]]
    params = {name: parameter_count(model) for name, model in first.items()}
    image = data[config.datasets[0]].test_images[:1]
    timings = {
        name: time_variant(model, image, config.timing_repeats)
        for name, model in tqdm(first.items(), desc="timing", disable=not progress)
    }
    where.results_dir.mkdir(parents=True, exist_ok=True)
    pairwise_figure(kept, data, where.results_dir / FIGURES["pairwise"])
    qualitative_figure(kept, data, config.figure_scenes, where.results_dir / FIGURES["qualitative"])
    summary = summarise(scores, params, names)
    report = {
        "config": asdict(config),
        "quick": quick,
        "date": utc_timestamp(),
        "machine": f"{cpu_model()}, {cores()} CPUs",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "workers": workers,
        "summary": summary,
        "target": {kind: target_met(summary, kind) for kind in GCRF_KINDS},
        "attractive_targets": attractive_targets(summary),
        "timings": timings,
        "oracles": oracles,
        "figures": FIGURES,
        "wall_s": time.perf_counter() - start,
    }
    (where.results_dir / "reproduce.json").write_text(
        json.dumps(report, indent=2), encoding="utf-8"
    )
    section = markdown_section(report, where.results_dir, where.results_md)
    write_section(where.results_md, JOB, section)
    return report


def parser() -> argparse.ArgumentParser:
    """The command line of ``python -m benchmarks.reproduce``."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.reproduce",
        description="Reproduce the paper's claims end to end on generated scenes "
        "(docs/reproduction.md).",
        epilog="Only the full default run publishes (benchmarks/RESULTS.md and "
        "benchmarks/results/). --quick and any other configuration write to --out DIR, or "
        "to a new temporary folder when --out is not given.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny smoke run of every variant (CI), under 2 minutes"
    )
    parser.add_argument("--seeds", type=int, nargs="+", help="training seeds (default 0 1 2)")
    add_destination_arguments(parser, "JSON and figures")
    return parser


def main(argv: list[str] | None = None) -> dict:
    """Run the command line ``argv``; print the summary and where the results went."""
    args = parser().parse_args(argv)
    config = QUICK if args.quick else DEFAULT
    if args.seeds:
        config = replace(config, seeds=tuple(args.seeds))
    where = chosen_destination(JOB, args, publishable=config == DEFAULT)
    report = run(config, where, quick=args.quick)
    print(console_summary(report))
    print(f"wrote the {where.kind}: {where.results_md} and {where.results_dir}")
    return report
