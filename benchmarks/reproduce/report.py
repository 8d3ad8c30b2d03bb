"""The reproduction's report: the RESULTS.md section and the console summary.

The explanation of the results (how each model can pool evidence, what the oracles show)
lives in docs/reproduction.md; the section links to it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..results_writer import BENCHMARKS_DIR, relative_link
from .config import BASELINES, DATASET_NAMES, GCRF_KINDS
from .evaluation import TARGET_MARGIN, best_variant

#: the page that explains the results
EXPLANATION = BENCHMARKS_DIR.parent / "docs" / "reproduction.md"


def target_line(summary: dict[str, dict], kind: str, met: bool) -> str:
    """The verdict on one G-CRF kind, with its best variant's numbers."""
    dataset, name, row = best_variant(summary, kind)
    beats = "yes" if row["beats_baselines"] else "no"
    return (
        f"dense {kind} G-CRF: {'met' if met else 'NOT met'} (best: {name} on "
        f"{DATASET_NAMES[dataset]}, Δ = {row['margin']:+.1f} mIoU, beats both in every seed: "
        f"{beats})"
    )


ORACLE_NAMES = {
    "phase-1 unary": "phase-1 unary network alone",
    "potts": "Potts, one shared direction per ground-truth digit group",
    "general": "general, one direction per (group, label)",
    "general-sign-split": "general, group split by sign: unary right (+) / wrong (−)",
    "attractive-tied": "attractive, partner labels tied (centred) over all digit pixels",
}


def attractive_target_lines(targets: dict[str, dict]) -> list[str]:
    """The attractive model's targets (:func:`~benchmarks.reproduce.evaluation.
    attractive_targets`) as sentences."""
    lines = []
    if "consensus" in targets:
        t = targets["consensus"]
        lines.append(
            f"attractive beats unary and control in every seed by ≥ {TARGET_MARGIN:g} mIoU on "
            f"ConsensusScenes: {'met' if t['met'] else 'NOT met'} (best: {t['variant']}, "
            f"smallest per-seed gain over the better baseline {t['worst_seed_gain']:+.1f})"
        )
    if "tied" in targets:
        t = targets["tied"]
        lines.append(
            f"attractive beats Potts on TiedScenes: {'met' if t['met'] else 'NOT met'} "
            f"({t['variant']} vs {t['potts']}: {t['gain']:+.1f} mIoU on average, "
            f"{t['seeds_won']} of {t['seeds']} seeds won)"
        )
    return lines


def oracle_table(oracles: dict[str, dict[str, list[float]]]) -> list[str]:
    """Markdown table of the ground-truth-embedding oracles (mean ± std over seeds)."""
    kinds = list(oracles)
    lines = [
        "| embeddings | " + " | ".join(DATASET_NAMES[k] for k in kinds) + " |",
        "|---|" + "---:|" * len(kinds),
    ]
    for name, title in ORACLE_NAMES.items():
        cells = []
        for kind in kinds:
            values = oracles[kind][name]
            gain = np.mean(values) - np.mean(oracles[kind]["phase-1 unary"])
            delta = "" if name == "phase-1 unary" else f" ({gain:+.1f})"
            cells.append(f"{np.mean(values):.1f} ± {np.std(values):.1f}{delta}")
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return lines


def _row(name: str, row: dict, baseline: bool) -> str:
    seeds = ", ".join(f"{v:.1f}" for v in row["miou"])
    gain = "—" if baseline else f"{row['margin']:+.1f}"
    beats = "—" if baseline else ("yes" if row["beats_baselines"] else "no")
    return (
        f"| {name} | {row['params']:,} | {row['mean']:.1f} ± {row['std']:.1f} | {seeds} "
        f"| {gain} | {beats} |"
    )


def results_table(rows: dict[str, dict]) -> list[str]:
    """Markdown table of one dataset (cf. the paper's Tables 2–3)."""
    lines = [
        "| variant | parameters | mIoU (%) mean ± std | per seed | Δ vs best baseline "
        "| beats both in every seed |",
        "|---|---:|---:|---|---:|:---:|",
    ]
    for name, row in rows.items():
        lines.append(_row(name, row, name in BASELINES))
    return lines


def timing_table(timings: dict[str, dict[str, float]]) -> list[str]:
    """Markdown table of per-image inference times (cf. the paper's Sec. 3.4)."""
    lines = ["| variant | whole model (ms) | G-CRF solve alone (ms) |", "|---|---:|---:|"]
    for name, t in timings.items():
        crf = f"{t['crf_ms']:.2f}" if t["crf_ms"] else "—"
        lines.append(f"| {name} | {t['total_ms']:.2f} | {crf} |")
    return lines


def markdown_section(report: dict, results_dir: Path, results_md: Path) -> str:
    """The RESULTS.md section of this benchmark (without the markers).

    Parameters
    ----------
    report : dict
        What :func:`benchmarks.reproduce.cli.run` returns (and writes to reproduce.json).
    results_dir : Path
        The folder of the figures.
    results_md : Path
        The Markdown file the section goes to (links are relative to it).
    """
    config = report["config"]
    figures = {
        name: relative_link(results_dir / Path(file).name, results_md)
        for name, file in report["figures"].items()
    }
    lines = [
        "## Reproduction of the paper's claims (`python -m benchmarks.reproduce`)",
        "",
        f"{report['date']} · {report['machine']} · torch {report['torch']}, "
        f"training in {report['workers']} processes of 1 thread, timings with "
        f"{report['threads']} threads · {report['wall_s'] / 60:.1f} min"
        + (" · **--quick smoke run, not a result**" if report["quick"] else ""),
        "",
        f"Scenes: {config['train_scenes']} training and {config['test_scenes']} held-out test "
        "scenes per dataset (test digits are unseen handwriting); seeds "
        f"{', '.join(map(str, config['seeds']))}; training steps per phase (unary; pairwise; "
        f"joint) {' / '.join(map(str, config['steps']))}, batch {config['batch']}; "
        f"λ = {config['lam']:g}. Every variant shares the backbone, the phase-1 unary "
        "network of its seed and the phase-2/3 budget. mIoU over the 11 classes "
        "(background + 10 digits). Δ: mean gain over the better of the two baselines. "
        "Models: general λI + AᵀA (the paper's, D = general-D), Potts (Â of dimension D), "
        "attractive λI − ΓᵀΓ (label-dependent Γ_{:, l, p} = U_l f_p of dimension "
        "E = attractive-E, learned label vectors U centred over the labels times pixel "
        "features f, ‖Γ‖₂² < ρλ) and signed λI + AᵀA − ΓᵀΓ (D = E = signed-D, "
        f"1 + ‖A‖₂²/λ < {config['signed_kappa']:g}).",
        "",
    ]
    for kind, rows in report["summary"].items():
        lines += [f"### {DATASET_NAMES[kind]}", "", *results_table(rows), ""]
    lines += [
        "### Target: each G-CRF beats both baselines in every seed by ≥ 5 mIoU on average "
        "(on at least one dataset)",
        "",
    ]
    for kind in GCRF_KINDS:
        lines.append(f"* {target_line(report['summary'], kind, report['target'][kind])}")
    lines += [
        "",
        "### Target of the attractive model",
        "",
        *(f"* {line}" for line in attractive_target_lines(report["attractive_targets"])),
        "",
        "Why the models differ here — the Potts and attractive models amplify the evidence a "
        "group of pixels shares (their low-rank term is subtracted), the general model can "
        "only shrink it — and how each branch is trained: "
        f"[docs/reproduction.md]({relative_link(EXPLANATION, results_md)}).",
        "",
        "### Pooling oracles: ground-truth embeddings",
        "",
        "mIoU (%) of each seed's phase-1 unary network with the G-CRF fed embeddings built "
        "from the test scenes' ground truth instead of a network (no training; "
        "`benchmarks/reproduce/oracles.py`; mean ± std over seeds, gain over the unary "
        f"network in brackets). ρ = {config['potts_margin']:g}. They bound how much each "
        "model can gain by pooling the evidence of ground-truth digit groups, not "
        "everything a model can express.",
        "",
        *oracle_table(report["oracles"]),
        "",
    ]
    lines += [
        "### Per-image inference (cf. Sec. 3.4)",
        "",
        f"Batch 1, one 64×64 test scene, median of {config['timing_repeats']} runs; the "
        "G-CRF runs on 32×32 nodes (L = 11).",
        "",
        *timing_table(report["timings"]),
        "",
        "### Figures",
        "",
        "Learned pairwise terms for a reference pixel p* (cf. Figs. 3–4): general model "
        "⟨A_p^l, A_p*^l*⟩ for l = background, the reference's label l* and the next most "
        "frequent label l2; Potts model ⟨Â_p, Â_p*⟩.",
        "",
        f"![pairwise terms]({figures['pairwise']})",
        "",
        "Qualitative results on held-out scenes (cf. Fig. 5): image, unary network, general, "
        "Potts and attractive G-CRFs, ground truth.",
        "",
        f"![qualitative results]({figures['qualitative']})",
    ]
    return "\n".join(lines)


def console_summary(report: dict) -> str:
    """Plain-text summary table printed at the end of a run."""
    lines = []
    for kind, rows in report["summary"].items():
        lines.append(f"{DATASET_NAMES[kind]} — mIoU (%) on held-out scenes")
        lines.append(
            f"  {'variant':<12}{'params':>9}  {'mean ± std':>12}  {'Δ':>6}  "
            f"{'beats both':>10}  {'ms/image':>9}"
        )
        for name, row in rows.items():
            baseline = name in BASELINES
            gain = "" if baseline else f"{row['margin']:+.1f}"
            beats = "" if baseline else ("yes" if row["beats_baselines"] else "no")
            ms = report["timings"][name]["total_ms"]
            lines.append(
                f"  {name:<12}{row['params']:>9,}  {row['mean']:>5.1f} ± "
                f"{row['std']:<4.1f}  {gain:>6}  {beats:>10}  {ms:>9.2f}"
            )
    lines.append("pooling oracles, mIoU (%) on the phase-1 unary network (no training)")
    for name in ORACLE_NAMES:
        values = "  ".join(
            f"{DATASET_NAMES[kind]} {np.mean(per[name]):5.1f}"
            for kind, per in report["oracles"].items()
        )
        lines.append(f"  {name:<20}{values}")
    for kind in GCRF_KINDS:
        lines.append("target, " + target_line(report["summary"], kind, report["target"][kind]))
    for line in attractive_target_lines(report["attractive_targets"]):
        lines.append("target, " + line)
    return "\n".join(lines)
