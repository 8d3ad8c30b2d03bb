"""The benchmark's tables: the RESULTS.md section and the console summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..results_writer import relative_link
from .config import NETWORK_NAMES, OPTIMIZERS
from .oracles import STRENGTHS, oracle_section
from .summary import GAIN_GOAL, LOSS_RATIO_TARGET


def _signed(value: float) -> str:
    return f"{value:+.1f}".replace("-", "−")


def _state(row: dict[str, Any]) -> str:
    parts = [] if row["lam"] is None else [f"λ {row['lam']:.3g}"]
    parts += [f"{k} {v:.3g}" for k, v in (row["strength"] or {}).items()]
    return ", ".join(parts) or "–"


def results_table(summary: dict[str, Any]) -> str:
    """One row per network, optimizer and variant."""
    lines = [
        "| network | optimizer | variant | test mIoU | − control, per seed | max loss | "
        "÷ control | max ‖grad‖ | ms/step | λ, strength |",
        "|---|---|---|---:|---|---:|---:|---:|---:|---|",
    ]
    for row in summary["rows"]:
        cells = [row["network"], row["optimizer"], row["variant"]]
        if row["status"] != "ok":
            cells += [f"{row['status']}: {row['reason']}"] + [""] * 6
            lines.append("| " + " | ".join(cells) + " |")
            continue
        baseline = row["variant"] == "control"
        diffs = "–" if baseline else ", ".join(_signed(d) for d in row["minus_control"])
        flags = "" if row["finite"] else " (non-finite)"
        flags += f" ({row['warnings']} warnings)" if row["warnings"] else ""
        cells += [
            f"{row['miou_mean']:.1f} ± {row['miou_std']:.1f}",
            diffs,
            f"{row['max_loss']:.2f}{flags}",
            "–" if baseline else f"{row['loss_ratio']:.2f}",
            f"{row['max_grad_norm']:.3g}",
            f"{row['ms_per_step']:.0f}",
            _state(row),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def floors_table(summary: dict[str, Any], seeds: int) -> str:
    """The null − control differences and the noise floor of each network."""
    lines = [
        "| network | null − control, every optimizer and seed | RMS | floor of a mean |",
        "|---|---|---:|---:|",
    ]
    for network, floor in summary["floors"].items():
        count, unit = (len(floor["diffs"]), "run") if network == "all" else (seeds, "seed")
        over = f"{count} {unit}{'s' if count != 1 else ''}"
        diffs = "(above)" if network == "all" else ", ".join(_signed(d) for d in floor["diffs"])
        lines.append(
            f"| {network} | {diffs} | {floor['rms']:.1f} | {floor['floor']:.2f} (over {over}) |"
        )
    return "\n".join(lines)


def targets_table(summary: dict[str, Any]) -> str:
    """Per head model: the targets of the benchmark and whether they are met."""
    lines = [
        f"| head | worst max loss ÷ control (≤ {LOSS_RATIO_TARGET}) | "
        "cells below control − floor | mean gain, every run | floor | target | "
        f"goal (≥ +{GAIN_GOAL:g}, floor < {GAIN_GOAL:g}) |",
        "|---|---:|---|---:|---:|---|---|",
    ]
    for model, t in summary["targets"].items():
        below = ", ".join(t["below_floor"]) or "none"
        lines.append(
            f"| {model} | {t['worst_loss_ratio']:.2f} | {below} | {_signed(t['mean_gain'])} | "
            f"{t['floor_all']:.2f} | {'met' if t['met'] else '**not met**'} | "
            f"{'met' if t['goal_met'] else 'not met'} |"
        )
    return "\n".join(lines)


def markdown_section(report: dict[str, Any], figure: Path, results_md: Path) -> str:
    """The ``heads`` section of RESULTS.md."""
    config, summary, machine = report["config"], report["summary"], report["machine"]
    optimizers = ", ".join(
        f"{name} ({'SGD momentum 0.9' if kind == 'sgd' else 'Adam'}, lr {lr:g})"
        for name, (kind, lr) in OPTIMIZERS.items()
        if name in config["optimizers"]
    )
    networks = "; ".join(NETWORK_NAMES[n] for n in config["networks"])
    steps = ", ".join(f"{n} {k}" for n, k in config["steps"] if n in config["networks"])
    quick = " **Smoke run (`--quick`): not a result.**" if report["quick"] else ""
    return "\n".join(
        [
            "## The G-CRF head in segmentation networks (`python -m benchmarks.heads`)",
            "",
            f"Does `GCRFHead(C, L, model=...)`, every other argument default, make a real "
            f"segmentation network better?{quick} Networks ({networks}), `weights=None`, "
            f"trained from scratch ({steps} steps) on batches of {config['batch']} "
            f"{config['side']}×{config['side']} composites of real photographs with exact "
            f"masks (horse, coins, handwritten digits over scikit-image and scikit-learn "
            f"photographs; 4 labels; {config['train_images']} training scenes, "
            f"{config['test_images']} test scenes whose backgrounds, textures and objects "
            f"training never saw). Variants: `as-is` (the network's own head), `control` "
            f"(the CRF's features through the head's unary 1×1 convolution, no CRF), `null` "
            f"(the control with another initialisation of that convolution: the noise "
            f"floor), and the head with each model; the CRF runs on stride-8 features. "
            f"Optimizers: {optimizers}; seeds {', '.join(map(str, config['seeds']))} (a seed "
            f"fixes the trunk, the unary convolution shared by the control and the heads, "
            f"and the batches). Evaluation: BatchNorm statistics re-estimated on "
            f"{config['bn_images']} training scenes (one pass in training mode), then test "
            f"mIoU (points). Unweighted cross-entropy; `max ‖grad‖`: the norm of all "
            f"gradients before the update; `÷ control`: the worst seed's max loss over the "
            f"control's; `ms/step`: median training step, one thread per run, "
            f"{config['workers']} runs side by side. Predicting background everywhere "
            f"scores {report['background_only_miou']:.1f}.",
            "",
            f"Oracles (no training): each control run's unary scores at stride 8, fed to the "
            f"G-CRF (λ = 1) with embeddings built from the ground truth, every pixel grouped "
            f"with the pixels of its label in its scene (labels by majority over each 8×8 "
            f"cell), at the heads' initial strength and ceiling ρ = "
            f"{' and '.join(f'{s:g}' for s in STRENGTHS)}: `potts` amplifies each segment's "
            f"mean label deviation by 1/(1 − ρ), `potts-objects` the same with the objects "
            f"alone grouped (the background in no group, as in the reproduction); `general` "
            f"is the general model on the same segments (it can only subtract their mean); "
            f"`general-sign-split` the general model told which pixels the unary gets wrong "
            f"(‖A‖₂² ≤ ρλ, as in the heads); "
            f"`segment pooling` gives every pixel its segment's mean scores (the Potts "
            f"oracle's ρ → 1 limit). Their scores are upsampled as the network's and scored "
            f"like the runs (`benchmarks/heads/oracles.py`).",
            "",
            "### Targets",
            "",
            targets_table(summary),
            "",
            "### Noise floor (null − control)",
            "",
            floors_table(summary, len(config["seeds"])),
            "",
            "### What the G-CRF could add here: ground-truth embeddings on the control's unaries",
            "",
            oracle_section(report),
            "",
            "### Every variant",
            "",
            results_table(summary),
            "",
            f"![training loss curves]({relative_link(figure, results_md)})",
            "",
            f"* CPU: {machine['cpu']}, {machine['cores']} cores; versions: "
            + ", ".join(f"{k} {v}" for k, v in machine["versions"].items()),
            f"* {machine['date']}, commit {machine['commit']}; wall time "
            f"{report['wall_s'] / 60:.1f} min",
        ]
    )


def console_summary(report: dict[str, Any]) -> str:
    """The targets, the noise floors, the oracles and every variant, as plain Markdown
    tables."""
    summary = report["summary"]
    return "\n\n".join(
        [
            targets_table(summary),
            floors_table(summary, len(report["config"]["seeds"])),
            oracle_section(report),
            results_table(summary),
            f"wall time {report['wall_s'] / 60:.1f} min",
        ]
    )
