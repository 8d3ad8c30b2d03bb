"""The speed benchmark's plots: time vs pixels, CG iterations vs κ, cg vs direct over D."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..paper_sizes import PAPER_LABELS, PAPER_MODELS, PAPER_PIXELS
from .contenders import CONTENDER_NAMES
from .records import select
from .tables import format_kappa


def plots(results: dict[str, Any], directory: Path) -> list[Path]:
    """Time vs pixels (log-log), CG iterations vs κ, cg/direct time vs D; the PNG paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [r for r in results["records"] if r["status"] in ("ok", "unconverged")]
    written = []

    def save(fig: Any, name: str) -> None:
        path = directory / name
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    pixel_records = select(records, suite="pixels", phase="forward_backward")
    if pixel_records:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
        for ax, model in zip(axes, ("general", "potts"), strict=True):
            for c in CONTENDER_NAMES:
                pts = sorted(
                    (r["pixels"], r["time_s"])
                    for r in select(pixel_records, model=model, contender=c)
                )
                if pts:
                    ax.loglog(*zip(*pts, strict=True), marker="o", label=c)
            ax.set(
                title=f"{model} (D = 128, L = {PAPER_LABELS}, κ = 1e3, float32)",
                xlabel="pixels P",
                ylabel="forward+backward time (s)",
            )
            ax.grid(True, which="both", alpha=0.3)
        axes[0].legend(fontsize=8)
        save(fig, "speed_pixels.png")

    paper_fwd = select(records, suite="paper", phase="forward", batch=1)
    if {r["kappa"] for r in paper_fwd} - {1e3}:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        colors = ("tab:blue", "tab:orange", "tab:green")
        for (model, rank), color in zip(PAPER_MODELS, colors, strict=True):
            for c, style in (("ours-cg", "-"), ("scipy-cg", "--")):
                for dtype, marker in (("float32", "o"), ("float64", "s")):
                    pts = sorted(
                        (r["kappa"], r["iterations"][0])
                        for r in select(paper_fwd, model=model, rank=rank, contender=c, dtype=dtype)
                        if r.get("iterations")
                    )
                    if pts:
                        ax.semilogx(
                            *zip(*pts, strict=True),
                            style,
                            marker=marker,
                            color=color,
                            label=f"{model} D={rank} {c} {dtype}",
                        )
        ax.set(
            xlabel="κ",
            ylabel="CG iterations (forward)",
            title=f"CG iterations vs conditioning (P = {PAPER_PIXELS}, L = {PAPER_LABELS})",
        )
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
        save(fig, "speed_iterations.png")

    rank_records = select(records, suite="rank", dtype="float32")
    if rank_records:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
        for ax, model in zip(axes, ("general", "potts"), strict=True):
            for c in ("ours-cg", "ours-direct"):
                for kappa, style in ((10.0, ":"), (1e3, "-")):
                    for phase, marker in (("forward", "o"), ("forward_backward", "s")):
                        pts = sorted(
                            (r["rank"], r["time_s"])
                            for r in select(
                                rank_records, model=model, contender=c, kappa=kappa, phase=phase
                            )
                        )
                        if pts:
                            ax.loglog(
                                *zip(*pts, strict=True),
                                style,
                                marker=marker,
                                label=f"{c} κ={format_kappa(kappa)} {phase}",
                            )
            ax.set(
                title=f"{model}: cg vs direct (P = {PAPER_PIXELS}, L = {PAPER_LABELS}, float32)",
                xlabel="embedding dimension D",
                ylabel="time (s)",
            )
            ax.grid(True, which="both", alpha=0.3)
        axes[0].legend(fontsize=7)
        save(fig, "speed_rank.png")
    return written
