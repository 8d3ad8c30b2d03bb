"""The command line of ``python -m benchmarks.speed``: choose the plan, pin the threads, run,
write the results where :func:`benchmarks.results_writer.destination` says."""

from __future__ import annotations

import argparse
import json
import os
import sys

from ..results_writer import PUBLISHED_DIR, add_destination_arguments, chosen_destination
from . import __doc__ as package_doc
from . import cuda
from .cases import plan
from .measure import Device, DeviceUnavailableError, threads
from .report import write_results
from .runner import machine, run

#: the RESULTS.md sections of the CPU and the GPU runs
JOBS = {"cpu": "speed", "cuda": "speed-cuda"}


def parser() -> argparse.ArgumentParser:
    """The command line of ``python -m benchmarks.speed``."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.speed",
        description=package_doc.split("\n\nModules:")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="a subset in under 2 minutes")
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="cpu: every contender and suite; cuda: the GPU suite (needs CuPy and a GPU)",
    )
    parser.add_argument(
        "--threads", type=int, default=2, help="BLAS/OpenMP/torch threads (default 2)"
    )
    add_destination_arguments(parser, "JSON and plots")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="rebuild the plots and the section from speed.json (the published one, or the "
        "one under --out) without measuring; never publishes",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv``; 0 on success, 2 when the device is unavailable."""
    args = parser().parse_args(argv)
    where = chosen_destination(
        JOBS[args.device], args, publishable=not (args.quick or args.report_only)
    )
    if args.report_only:
        source = (args.out / "results" if args.out else PUBLISHED_DIR) / "speed.json"
        write_results(json.loads(source.read_text(encoding="utf-8")), where)
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
        if args.device == "cuda":
            results = cuda.run(cuda.plan(args.quick), device, lambda total: tqdm(total=total))
        else:
            results = run(plan(args.quick), device, lambda total: tqdm(total=total))
    info["load_average_end"] = os.getloadavg()
    results = {"machine": info, "quick": args.quick, **results}
    if args.device == "cuda":
        cuda.write_results(results, device, where)
    else:
        write_results(results, where)
    return 0
