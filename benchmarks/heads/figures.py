"""The loss curves: one panel per network and optimizer, one line per variant."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from .config import VARIANTS, Config

#: steps of the moving average that smooths the curves (single batches are noisy)
SMOOTHING = 5


def _smoothed(losses: np.ndarray) -> np.ndarray:
    width = min(SMOOTHING, len(losses))
    return np.convolve(losses, np.ones(width) / width, mode="valid")


def loss_figure(records: list[dict[str, Any]], config: Config, path: Path) -> None:
    """Training loss against step (mean over the seeds, smoothed), log scale, to ``path``."""
    networks, optimizers = config.networks, config.optimizers
    fig, axes = plt.subplots(
        len(networks),
        len(optimizers),
        figsize=(4.2 * len(optimizers), 3.0 * len(networks)),
        squeeze=False,
        sharex="row",
    )
    colours = dict(zip(VARIANTS, plt.get_cmap("tab10").colors, strict=False))
    for i, network in enumerate(networks):
        for j, optimizer in enumerate(optimizers):
            ax = axes[i, j]
            for variant in config.variants:
                curves = [
                    r["losses"]
                    for r in records
                    if (r["network"], r["optimizer"], r["variant"]) == (network, optimizer, variant)
                    and r["status"] == "ok"
                ]
                if not curves:
                    continue
                # a run stopped by a non-finite loss is shorter: average the common steps
                steps = min(len(c) for c in curves)
                mean = np.mean([c[:steps] for c in curves], axis=0)
                ax.plot(
                    np.arange(len(_smoothed(mean))) + 1,
                    _smoothed(mean),
                    label=variant,
                    color=colours[variant],
                    linewidth=1.2,
                )
            ax.set_yscale("log")
            ax.set_title(f"{network}, {optimizer}", fontsize=9)
            ax.grid(alpha=0.3, which="both")
            if j == 0:
                ax.set_ylabel("training loss")
            if i == len(networks) - 1:
                ax.set_xlabel("step")
    axes[0, -1].legend(fontsize=7)
    fig.suptitle(
        f"Training cross-entropy (mean over seeds, {SMOOTHING}-step moving average)", fontsize=10
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
