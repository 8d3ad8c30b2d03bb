"""The driver of ``python -m benchmarks.heads``: train every run, summarise, draw, write."""

from __future__ import annotations

import os

# Passive OpenMP waiting: on a shared 2-core machine, spinning worker threads slow a busy
# neighbour's cores and our own steps. Must precede torch, here and in the spawned workers
# (which inherit the environment).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict, replace
from typing import Any

import numpy as np

from ..machine import cores, cpu_model, git_commit, package_versions, utc_timestamp
from ..results_writer import (
    Destination,
    add_destination_arguments,
    chosen_destination,
    destination,
    write_section,
)
from .config import DEFAULT, NETWORKS, QUICK, Config
from .figures import loss_figure
from .jobs import run_all
from .records import miou_percent
from .report import console_summary, markdown_section
from .scenes import make_split
from .summary import summarise

#: the section of RESULTS.md this job owns
JOB = "heads"
RESULTS_JSON = "heads.json"
FIGURE = "heads_losses.png"
#: the distributions whose versions a run records
VERSIONS = (
    "lowrank-gcrf",
    "torch",
    "torchvision",
    "tensorflow",
    "tensorflow-cpu",
    "keras",
    "numpy",
    "scikit-image",
    "scikit-learn",
)


def machine() -> dict[str, Any]:
    """Where the run ran: CPU, cores, Python and package versions, date and commit."""
    return {
        "cpu": cpu_model(),
        "cores": cores(),
        "python": platform.python_version(),
        "versions": package_versions(VERSIONS),
        "date": utc_timestamp(),
        "commit": git_commit(),
        "load_average_start": os.getloadavg(),
    }


def run(config: Config, where: Destination, quick: bool = False, progress: bool = True) -> dict:
    """Train and test every run, summarise, draw the loss curves and write the results.

    Parameters
    ----------
    config : Config
    where : Destination
        Where ``heads.json``, the figure and the RESULTS.md section go
        (:func:`benchmarks.results_writer.destination`).
    quick : bool
        Marks the report as a smoke run.
    progress : bool
        Show a tqdm progress bar.

    Returns
    -------
    dict
        The report written to ``heads.json``.
    """
    start = time.perf_counter()
    info = machine()
    records = run_all(config, progress)
    info["load_average_end"] = os.getloadavg()
    test = make_split("test", config.test_images, config.side, config.scene_seed)
    report = {
        "config": asdict(config),
        "quick": quick,
        "machine": info,
        # the trivial prediction, for scale: the mIoU of a network that learnt nothing
        "background_only_miou": miou_percent(np.zeros_like(test.labels), test.labels),
        "summary": summarise(records, config),
        "runs": records,
        "figure": FIGURE,
        "wall_s": time.perf_counter() - start,
    }
    failed = [record for record in records if record.get("status") == "failed"]
    if failed and where.published:
        # A published table with holes is no full run: the results go to a temporary folder.
        where = destination(JOB, publishable=False)
        print(f"{len(failed)} runs failed: nothing is published", file=sys.stderr)
    where.results_dir.mkdir(parents=True, exist_ok=True)
    figure = where.results_dir / FIGURE
    loss_figure(records, config, figure)
    (where.results_dir / RESULTS_JSON).write_text(json.dumps(report, indent=1), encoding="utf-8")
    write_section(where.results_md, JOB, markdown_section(report, figure, where.results_md))
    return report


def parser() -> argparse.ArgumentParser:
    """The command line of ``python -m benchmarks.heads``."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.heads",
        description="GCRFHead with its defaults in real segmentation networks, against the "
        "same networks without the CRF.",
        epilog="Only the full default run publishes (benchmarks/RESULTS.md and "
        "benchmarks/results/). --quick and any other configuration write to --out DIR, or "
        "to a new temporary folder when --out is not given.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run of every network and variant, under a minute",
    )
    parser.add_argument("--seeds", type=int, nargs="+", help="training seeds (default 0 1 2)")
    parser.add_argument(
        "--steps",
        type=int,
        help="training steps of every network (default: "
        + ", ".join(f"{network} {steps}" for network, steps in DEFAULT.steps)
        + ")",
    )
    parser.add_argument("--networks", nargs="+", choices=NETWORKS, help="default: all")
    parser.add_argument("--workers", type=int, help=f"worker processes (default {DEFAULT.workers})")
    add_destination_arguments(parser, "heads.json and the loss figure")
    return parser


def main(argv: list[str] | None = None) -> dict:
    """Run the command line ``argv``; print the tables and where the results went."""
    args = parser().parse_args(argv)
    config = QUICK if args.quick else DEFAULT
    chosen = {
        "seeds": tuple(args.seeds) if args.seeds else None,
        "steps": tuple((n, args.steps) for n in NETWORKS) if args.steps else None,
        "networks": tuple(args.networks) if args.networks else None,
        "workers": args.workers,
    }
    config = replace(config, **{k: v for k, v in chosen.items() if v is not None})
    # the worker count changes timings, not results: a default run on other workers publishes
    where = chosen_destination(
        JOB, args, publishable=replace(config, workers=DEFAULT.workers) == DEFAULT
    )
    report = run(config, where, quick=args.quick)
    print(console_summary(report))
    print(f"wrote the {where.kind}: {where.results_md} and {where.results_dir}")
    return report
