"""Refine a segmentation with the image: ours (exact low-rank Potts G-CRF) vs pydensecrf2.

    python -m benchmarks.refine            # full run, about 10 minutes; publishes its results
    python -m benchmarks.refine --quick    # smoke run in seconds, to a temporary folder

Scenes with exact ground truth from real image content (:mod:`.scenes`); two simulated
network outputs (a stride-8 prediction upsampled, and per-pixel noisy probabilities).
Sections: (1) kernel approximations vs rank D against the exact kernel; (2) downstream mIoU
vs D on the validation split; (3) a parameter grid of equal size for both methods, chosen on
the validation split, and every method on the test split; (4) time per image at 321×321 and
513×513 (one thread); (5) peak memory. The full default run writes
``benchmarks/results/refine.json``, ``refine_qualitative.png`` and the ``refine`` section of
``benchmarks/RESULTS.md``; other runs write to ``--out`` or a temporary folder.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits
from tqdm import tqdm

from lowrank_gcrf.image_kernels import APPROXIMATIONS, NORMALIZATIONS

from ..densecrf import unavailable
from ..machine import cores, cpu_model, git_commit, package_versions, utc_timestamp
from ..metrics import boundary_f, confusion, mean_iou
from ..results_writer import destination, write_section
from ..timing import interleaved_times
from .contenders import (
    DEEPLAB,
    MF5,
    MF10,
    MF_TUNED,
    OURS,
    OURS_TUNED,
    TUNED_MF_ITERATIONS,
    meanfield,
    ours,
)
from .kernel_error import exact_kernels, kernel_error
from .report import markdown, qualitative_figure
from .scenes import NUM_CLASSES, UNARIES, make_scene, make_scenes


def _grid(**axes: tuple) -> list[dict[str, Any]]:
    return [dict(zip(axes, values, strict=True)) for values in itertools.product(*axes.values())]


@dataclass(frozen=True)
class Config:
    """What one run measures (the full default run and the smoke run differ only here)."""

    side: int = 321
    val: int = 6
    test: int = 16
    timing_sides: tuple[int, ...] = (321, 513)
    repeats: int = 9
    kernel_side: int = 64
    kernel_images: int = 3
    kernel_ranks: tuple[int, ...] = (8, 16, 32, 64, 128)
    sweep_images: int = 4
    sweep_ranks: tuple[int, ...] = (16, 32, 64)
    landmarks: int = 128
    mf_grid: list[dict[str, Any]] = field(
        default_factory=lambda: _grid(
            w_appearance=(3.0, 5.0, 10.0), srgb=(5.0, 13.0), sxy=(40.0, 80.0, 160.0)
        )
    )
    ours_grid: list[dict[str, Any]] = field(
        default_factory=lambda: _grid(
            strength=(0.5, 0.7, 0.9), srgb=(8.0, 13.0), sxy=(40.0, 80.0, 160.0)
        )
    )
    memory: bool = True


QUICK = Config(
    side=48,
    val=1,
    test=2,
    timing_sides=(48,),
    repeats=1,
    kernel_side=12,
    kernel_images=1,
    kernel_ranks=(4,),
    sweep_images=1,
    sweep_ranks=(4,),
    landmarks=8,
    mf_grid=_grid(w_appearance=(4.0,), srgb=(13.0,), sxy=(20.0, 80.0)),
    ours_grid=_grid(strength=(0.7,), srgb=(13.0,), sxy=(20.0, 80.0)),
    memory=True,
)


def evaluate(method: Any, scenes: list, unary: str) -> dict[str, float]:
    """mIoU over the scenes, mean boundary F-score and mean seconds per image."""
    counts = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
    bf, seconds = [], 0.0
    for s in scenes:
        start = time.perf_counter()
        refined = method(s.unaries[unary], s.image)
        seconds += time.perf_counter() - start
        pred = refined.argmax(axis=0)
        counts += confusion(pred, s.labels, NUM_CLASSES)
        bf.append(boundary_f(pred, s.labels))
    return {
        "miou": mean_iou(counts),
        "boundary_f": float(np.mean(bf)),
        "seconds": seconds / len(scenes),
    }


def _unary(p: np.ndarray, _: np.ndarray) -> np.ndarray:
    return p


def _mf(iterations: int, **params: Any) -> Any:
    return lambda p, i: meanfield(p, i, iterations=iterations, **params)


def _ours(**params: Any) -> Any:
    return lambda p, i: ours(p, i, **params)


def _landmark_modes(rank: int, landmarks: int) -> list[tuple[str, int]]:
    """Each rank is measured plain (m = D) and compressed from the default m (when m > D)."""
    modes = [("m = D", rank)]
    if landmarks > rank:
        modes.append((f"m = {landmarks}", landmarks))
    return modes


def kernel_section(cfg: Config, bar: tqdm) -> list[dict[str, Any]]:
    """Kernel errors vs D on downsampled validation images, bandwidths scaled alike."""
    scale = cfg.kernel_side / cfg.side
    params = {
        **DEEPLAB,
        "sxy": DEEPLAB["sxy"] * scale,
        "sxy_smooth": DEEPLAB["sxy_smooth"] * scale,
    }
    images = [make_scene("val", cfg.kernel_side, 100 + i).image for i in range(cfg.kernel_images)]
    exact = [exact_kernels(im, params) for im in images]
    rows = []
    for rank, approximation, normalization in itertools.product(
        cfg.kernel_ranks, APPROXIMATIONS, NORMALIZATIONS
    ):
        for mode, m in _landmark_modes(rank, cfg.landmarks):
            errors = [
                kernel_error(
                    im,
                    ex,
                    params,
                    rank=rank,
                    landmarks=m,
                    approximation=approximation,
                    normalization=normalization,
                )
                for im, ex in zip(images, exact, strict=True)
            ]
            rows.append(
                {
                    "rank": rank,
                    "approximation": approximation,
                    "landmarks": mode,
                    "normalization": normalization,
                    "error": float(np.mean(errors)),
                }
            )
        bar.update()
    return rows


def sweep_section(cfg: Config, val: list, bar: tqdm) -> list[dict[str, Any]]:
    """Downstream validation mIoU vs D for each approximation, normalisation and m."""
    scenes = val[: cfg.sweep_images]
    rows = []
    for rank, approximation, normalization in itertools.product(
        cfg.sweep_ranks, APPROXIMATIONS, NORMALIZATIONS
    ):
        for mode, m in _landmark_modes(rank, cfg.landmarks):
            row = {
                "rank": rank,
                "approximation": approximation,
                "landmarks": mode,
                "normalization": normalization,
            }
            for unary in UNARIES:
                method = _ours(
                    rank=rank, landmarks=m, approximation=approximation, normalization=normalization
                )
                row[unary] = evaluate(method, scenes, unary)["miou"]
            rows.append(row)
        bar.update()
    return rows


def tuning_section(cfg: Config, val: list, test: list, bar: tqdm) -> dict[str, Any]:
    """Grid search on val per unary, then every method on test."""
    out: dict[str, Any] = {}
    for unary in UNARIES:
        scores_mf = []
        for p in cfg.mf_grid:
            scores_mf.append(evaluate(_mf(TUNED_MF_ITERATIONS, **p), val, unary)["miou"])
            bar.update()
        scores_ours = []
        for p in cfg.ours_grid:
            scores_ours.append(evaluate(_ours(**p), val, unary)["miou"])
            bar.update()
        best_mf = cfg.mf_grid[int(np.argmax(scores_mf))]
        best_ours = cfg.ours_grid[int(np.argmax(scores_ours))]
        methods = {
            "unary": _unary,
            MF5: _mf(5),
            MF10: _mf(10),
            MF_TUNED: _mf(TUNED_MF_ITERATIONS, **best_mf),
            OURS: _ours(),
            OURS_TUNED: _ours(**best_ours),
        }
        results = {}
        for name, method in methods.items():
            results[name] = evaluate(method, test, unary)
            bar.update()
        out[unary] = {
            "best_mf": best_mf,
            "best_ours": best_ours,
            "val_mf": scores_mf,
            "val_ours": scores_ours,
            "test": results,
        }
    return out


def _interleaved_times(
    methods: dict[str, Any], scene: Any, repeats: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Median and fastest seconds per call of each method on the scene's coarse unary, the
    methods taking turns in every round (:func:`benchmarks.timing.interleaved_times`)."""
    probs, image = scene.unaries["coarse"], scene.image
    calls = {name: functools.partial(method, probs, image) for name, method in methods.items()}
    times = interleaved_times(calls, repeats)
    medians = {name: float(np.median(t)) for name, t in times.items()}
    return medians, {name: float(np.min(t)) for name, t in times.items()}


def timing_section(cfg: Config, tuned: dict[str, Any], bar: tqdm) -> list[dict[str, Any]]:
    """Median seconds per image (coarse unary, 13 labels) at each side."""
    best_mf, best_ours = tuned["coarse"]["best_mf"], tuned["coarse"]["best_ours"]
    methods = {
        MF5: _mf(5),
        MF10: _mf(10),
        MF_TUNED: _mf(TUNED_MF_ITERATIONS, **best_mf),
        OURS: _ours(),
        OURS_TUNED: _ours(**best_ours),
    }
    rows = []
    for side in cfg.timing_sides:
        medians, fastest = _interleaved_times(methods, make_scene("test", side, 0), cfg.repeats)
        rows.append({"side": side, **medians, "fastest": fastest})
        bar.update(len(methods))
    return rows


def memory_section(cfg: Config, bar: tqdm) -> dict[str, Any]:
    """Peak memory of one call per method, each in a fresh process, at the first timing side."""
    side = cfg.timing_sides[0]
    scene = make_scene("test", side, 0)
    out: dict[str, Any] = {"side": side}
    with tempfile.TemporaryDirectory() as tmp:
        inputs = Path(tmp) / "inputs.npz"
        np.savez(inputs, probs=scene.unaries["coarse"], image=scene.image)
        for method in ("mf5", "mf10", "ours"):
            run = subprocess.run(
                [sys.executable, "-m", "benchmarks.refine.peak_memory", method, str(inputs)],
                capture_output=True,
                text=True,
                check=True,
                cwd=Path(__file__).parents[2],
            )
            out[method] = json.loads(run.stdout.strip().splitlines()[-1])
            bar.update()
    return out


#: the distributions whose versions a run records
VERSIONS = ("numpy", "scipy", "scikit-image", "scikit-learn", "pydensecrf2", "lowrank-gcrf")


def machine() -> dict[str, Any]:
    """The machine, versions, BLAS pools (inside the one-thread limit), date and commit."""
    versions = package_versions(VERSIONS)
    return {
        "platform": platform.platform(),
        "processor": cpu_model(),
        "cpus": cores(),
        "python": platform.python_version(),
        **{name: versions.get(name, "?") for name in VERSIONS},
        "blas": [
            f"{p.get('internal_api')} {p.get('version')} ({p.get('num_threads')} thread)"
            for p in threadpool_info()
        ],
        "date": utc_timestamp(),
        "commit": git_commit(),
    }


def run(cfg: Config, quick: bool, out: Path | None) -> Path:
    """Run every section; write JSON, figure and the Markdown section. Returns the .md."""
    reason = unavailable()
    if reason:
        raise SystemExit(reason)
    dest = destination("refine", publishable=not quick, out=out)
    dest.results_dir.mkdir(parents=True, exist_ok=True)
    steps = (
        len(cfg.kernel_ranks) * len(APPROXIMATIONS) * len(NORMALIZATIONS)
        + len(cfg.sweep_ranks) * len(APPROXIMATIONS) * len(NORMALIZATIONS)
        + len(UNARIES) * (len(cfg.mf_grid) + len(cfg.ours_grid) + 6)
        + len(cfg.timing_sides) * 5
        + (3 if cfg.memory else 0)
    )
    start = time.perf_counter()
    with threadpool_limits(1), tqdm(total=steps, desc="refine benchmark") as bar:
        info = machine()
        info["load_start"] = os.getloadavg()
        val = make_scenes("val", cfg.side, cfg.val)
        test = make_scenes("test", cfg.side, cfg.test)
        bar.set_postfix_str("kernel errors")
        kernels = kernel_section(cfg, bar)
        bar.set_postfix_str("rank sweep")
        sweep = sweep_section(cfg, val, bar)
        bar.set_postfix_str("tuning and test")
        tuned = tuning_section(cfg, val, test, bar)
        bar.set_postfix_str("timing")
        timing = timing_section(cfg, tuned, bar)
        bar.set_postfix_str("memory")
        memory = memory_section(cfg, bar) if cfg.memory else None
    info["load_end"] = os.getloadavg()
    results = {
        "config": asdict(cfg),
        "quick": quick,
        "machine": info,
        "kernels": kernels,
        "sweep": sweep,
        "tuning": tuned,
        "timing": timing,
        "memory": memory,
        "deeplab": DEEPLAB,
        "tuned_mf_iterations": TUNED_MF_ITERATIONS,
        "wall_s": time.perf_counter() - start,
    }
    (dest.results_dir / "refine.json").write_text(json.dumps(results, indent=1))
    figure = dest.results_dir / "refine_qualitative.png"
    qualitative_figure(test[0], tuned, figure)
    body = markdown(results, figure, dest.results_md)
    write_section(dest.results_md, "refine", body)
    print(body[body.index("### Target") : body.index("### Peak memory")])
    print(f"written: {dest.results_md} and {dest.results_dir}")
    return dest.results_md


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.refine",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="smoke run (seconds)")
    parser.add_argument("--out", type=Path, help="write RESULTS.md and results/ here")
    args = parser.parse_args(argv)
    run(QUICK if args.quick else Config(), args.quick, args.out)


if __name__ == "__main__":
    main()
