"""Refine a segmentation with the image: ours (exact low-rank Potts G-CRF) vs pydensecrf2.

    python -m benchmarks.refine            # full run, about 5 minutes; publishes its results
    python -m benchmarks.refine --quick    # smoke run in seconds, to a temporary folder

Scenes with exact ground truth from real image content (:mod:`.scenes`), in a validation and
a held-out test split that share no photograph, fill or object shape; two simulated network
outputs (a stride-8 prediction upsampled, and per-pixel label noise). Sections: (1) kernel
approximations vs rank D against the exact kernel; (2) downstream mIoU vs D on validation
(the landmarks' passes, which hold the appearance kernel at rank D); (3) our defaults checked
on validation (the lattice's mean-field passes, the exact solve with the automatic strength
rule's constants and with fixed strengths, and the landmarks' passes, chosen by the mean over
the unaries of the mIoU difference to pydensecrf2 MF-5) and pydensecrf2's MF-10 tuned on a
grid of as many settings, and the lattice's weights chosen on the validation composites and
photographs (:mod:`.lattice_weights`); (4) every method on the test split,
pooled and per image, with per-image wins against MF-5; (5) real photographs with their own
objects (:mod:`.photograph`: eight for validation, scikit-image's coins for test);
(6) time per image against
MF-5 at 321×321 and 300×400 with 6 and 21 labels (one thread, interleaved); (7) peak memory.
The full default run writes ``benchmarks/results/refine.json``, ``refine_qualitative.png`` and the
``refine`` section of ``benchmarks/RESULTS.md``; other runs write to ``--out`` or a temporary
folder.
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
from lowrank_gcrf.refine_strength import STEPS_PER_ERROR_ODDS

from ..densecrf import unavailable
from ..machine import cores, cpu_model, git_commit, package_versions, utc_timestamp
from ..results_writer import destination, write_section
from ..timing import interleaved_times
from .contenders import (
    DEEPLAB,
    EXACT_SMOOTH,
    LANDMARK_PASSES,
    MF5,
    OURS,
    OURS_EXACT,
    OURS_LANDMARKS,
    OURS_SOLVE,
    SOLVE,
    TUNED_MF_ITERATIONS,
    adapter_calls,
    frameworks_at_one_thread,
    meanfield,
    ours,
    timed,
)
from .kernel_error import exact_kernels, kernel_error
from .lattice_weights import weights_section
from .photograph import PHOTOGRAPHS, photograph_section
from .quality import (
    candidate_count,
    evaluate,
    heldout_count,
    heldout_section,
    ours_with,
    validation_section,
)
from .report import markdown, qualitative_figure
from .scenes import SHAPE, UNARIES, make_scene, make_scenes


def _grid(**axes: tuple) -> list[dict[str, Any]]:
    return [dict(zip(axes, values, strict=True)) for values in itertools.product(*axes.values())]


@dataclass(frozen=True)
class Config:
    """What one run measures (the full default run and the smoke run differ only here)."""

    shape: tuple[int, int] = SHAPE
    val: int = 8
    test: int = 16
    timing_shapes: tuple[tuple[int, int], ...] = ((321, 321), (300, 400))
    timing_labels: tuple[int, ...] = (6, 21)
    repeats: int = 7
    kernel_shape: tuple[int, int] = (48, 64)
    kernel_images: int = 3
    kernel_ranks: tuple[int, ...] = (8, 16, 32, 64, 128)
    sweep_images: int = 4
    sweep_ranks: tuple[int, ...] = (16, 32, 64)
    landmarks: int = 128
    #: mean-field passes tried on validation, with the lattice and with the landmarks
    passes: tuple[int, ...] = (1, 2, 3)
    #: constants c of the exact solve's automatic strength rule tried on validation
    rule_gains: tuple[float, ...] = (5.0, 10.0, 20.0, 40.0)
    #: fixed strengths tried on validation beside the rule
    fixed_strengths: tuple[float, ...] = (0.5, 0.7, 0.9)
    mf_grid: list[dict[str, Any]] = field(
        default_factory=lambda: _grid(
            w_appearance=(3.0, 5.0, 10.0), srgb=(5.0, 13.0), sxy=(40.0, 80.0)
        )
    )
    memory: bool = True
    #: the photographs (:mod:`.photograph`): their scale, numbers of labels and seeds
    photo_scale: float = 1.0
    photo_labels: tuple[int, ...] = (2, 6)
    photo_seeds: tuple[int, ...] = (0, 1, 2)
    #: the lattice's weights (w_a, w_s) tried on validation (:mod:`.lattice_weights`): the
    #: band 25 ≤ w_a/w_s ≤ 150 around the ridge w_s ≈ w_a/70 where an earlier grid
    #: (w_a 10–60 × w_s 0.2–0.8) reached MF-5 most often
    weight_grid: list[tuple[float, float]] = field(
        default_factory=lambda: [
            (appearance, smooth)
            for appearance, smooth in itertools.product(
                (5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 40.0, 60.0),
                (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.6, 0.8),
            )
            if 25 <= appearance / smooth <= 150
        ]
    )


QUICK = Config(
    shape=(36, 48),
    val=1,
    test=2,
    timing_shapes=((36, 48),),
    timing_labels=(6,),
    repeats=1,
    kernel_shape=(9, 12),
    kernel_images=1,
    kernel_ranks=(4,),
    sweep_images=1,
    sweep_ranks=(4,),
    landmarks=8,
    passes=(2,),
    rule_gains=(STEPS_PER_ERROR_ODDS,),
    fixed_strengths=(0.7,),
    mf_grid=_grid(w_appearance=(4.0,), srgb=(13.0,), sxy=(20.0, 80.0)),
    memory=True,
    photo_scale=0.25,
    photo_labels=(2,),
    photo_seeds=(0,),
    weight_grid=[(20.0, 0.3), (40.0, 0.5)],
)


def _landmark_modes(rank: int, landmarks: int) -> list[tuple[str, int]]:
    """Each rank is measured plain (m = D) and compressed from the default m (when m > D)."""
    modes = [("m = D", rank)]
    if landmarks > rank:
        modes.append((f"m = {landmarks}", landmarks))
    return modes


def kernel_section(cfg: Config, bar: tqdm) -> list[dict[str, Any]]:
    """Kernel errors vs D on downsampled validation images, bandwidths scaled alike."""
    scale = cfg.kernel_shape[0] / cfg.shape[0]
    params = {
        **DEEPLAB,
        "sxy": DEEPLAB["sxy"] * scale,
        "sxy_smooth": DEEPLAB["sxy_smooth"] * scale,
    }
    images = [make_scene("val", cfg.kernel_shape, 100 + i).image for i in range(cfg.kernel_images)]
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
    """Downstream validation mIoU vs D for each approximation, normalisation and m, with the
    landmarks' passes (the lattice's, the default, have no rank)."""
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
                method = ours_with(
                    rank=rank,
                    landmarks=m,
                    approximation=approximation,
                    normalization=normalization,
                    **LANDMARK_PASSES,
                )
                row[unary] = evaluate(method, scenes, unary)["miou"]
            rows.append(row)
        bar.update()
    return rows


def timing_probs(scene: Any, labels: int) -> np.ndarray:
    """The scene's coarse unary (6 labels) widened to ``labels`` labels: the extra labels
    share 2 % of every pixel's probability (timing depends on L, not on the values)."""
    p = scene.unaries["coarse"]
    if labels <= p.shape[0]:
        p = p[:labels] / p[:labels].sum(axis=0, keepdims=True)
        return np.ascontiguousarray(p, dtype=np.float32)
    extra = np.full((labels - p.shape[0], *p.shape[1:]), 0.02 / (labels - p.shape[0]))
    return np.concatenate([0.98 * p, extra]).astype(np.float32)


def timing_section(cfg: Config, bar: tqdm) -> list[dict[str, Any]]:
    """Median seconds per image of MF-5 and ours (defaults, the landmarks' passes, the exact
    solve, the exact solve with the exact smoothness kernel, and the adapters' defaults),
    interleaved, per shape and L."""
    rows = []
    for shape, labels in itertools.product(cfg.timing_shapes, cfg.timing_labels):
        scene = make_scene("test", shape, 0)
        probs, image = timing_probs(scene, labels), scene.image
        calls = {
            MF5: functools.partial(meanfield, probs, image, iterations=5),
            OURS: functools.partial(ours, probs, image),
            OURS_LANDMARKS: functools.partial(ours, probs, image, **LANDMARK_PASSES),
            OURS_SOLVE: functools.partial(ours, probs, image, **SOLVE),
            OURS_EXACT: functools.partial(ours, probs, image, **EXACT_SMOOTH),
            **adapter_calls(probs, image),
        }
        times = interleaved_times(calls, cfg.repeats)
        medians = {name: float(np.median(t)) for name, t in times.items()}
        row: dict[str, Any] = {"shape": list(shape), "labels": labels, **medians}
        for name in timed(times):
            ratios = [a / b for a, b in zip(times[name], times[MF5], strict=True)]
            row[f"{name} / MF-5"] = medians[name] / medians[MF5]
            row[f"{name} / MF-5, median per round"] = float(np.median(ratios))
        rows.append(row)
        bar.update()
    return rows


def memory_section(cfg: Config, bar: tqdm) -> dict[str, Any]:
    """Peak memory of one call per method, each in a fresh process, at the first timing shape."""
    shape = cfg.timing_shapes[0]
    scene = make_scene("test", shape, 0)
    out: dict[str, Any] = {"shape": list(shape)}
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
        + len(UNARIES) * (2 + candidate_count(cfg) + len(cfg.mf_grid) + heldout_count())
        + len(PHOTOGRAPHS)
        + len(cfg.weight_grid)
        + len(cfg.timing_shapes) * len(cfg.timing_labels)
        + (3 if cfg.memory else 0)
    )
    start = time.perf_counter()
    with (
        threadpool_limits(1),
        frameworks_at_one_thread() as frameworks,
        tqdm(total=steps, desc="refine benchmark") as bar,
    ):
        info = machine() | frameworks
        info["load_start"] = os.getloadavg()
        val = make_scenes("val", cfg.shape, cfg.val)
        test = make_scenes("test", cfg.shape, cfg.test)
        bar.set_postfix_str("kernel errors")
        kernels = kernel_section(cfg, bar)
        bar.set_postfix_str("rank sweep")
        sweep = sweep_section(cfg, val, bar)
        bar.set_postfix_str("validation")
        validation = validation_section(cfg, val, bar)
        bar.set_postfix_str("lattice weights")
        weights = weights_section(cfg, val, bar)
        bar.set_postfix_str("test")
        tested = heldout_section(cfg, validation, test, bar)
        bar.set_postfix_str("photograph")
        photograph = photograph_section(cfg, bar)
        bar.set_postfix_str("timing")
        timing = timing_section(cfg, bar)
        bar.set_postfix_str("memory")
        memory = memory_section(cfg, bar) if cfg.memory else None
    info["load_end"] = os.getloadavg()
    results = {
        "config": asdict(cfg),
        "quick": quick,
        "machine": info,
        "kernels": kernels,
        "sweep": sweep,
        "validation": validation,
        "weights": weights,
        "test": tested,
        "photograph": photograph,
        "timing": timing,
        "memory": memory,
        "deeplab": DEEPLAB,
        "tuned_mf_iterations": TUNED_MF_ITERATIONS,
        "wall_s": time.perf_counter() - start,
    }
    (dest.results_dir / "refine.json").write_text(json.dumps(results, indent=1))
    figure = dest.results_dir / "refine_qualitative.png"
    qualitative_figure(test[0], validation, figure)
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
