"""The figures: learned pairwise terms (cf. the paper's Figs. 3–4) and qualitative results on
held-out scenes (cf. Fig. 5)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from .config import DATASET_NAMES, STRIDE
from .networks import SegmentationNet
from .training import Data


def _palette() -> np.ndarray:
    import matplotlib

    colours = matplotlib.colormaps["tab20"](np.linspace(0, 1, 20))[:, :3]
    return np.vstack([[0.08, 0.08, 0.08], colours[::2][:10]])


def _show_labels(axis, labels: np.ndarray, title: str) -> None:
    axis.imshow(_palette()[labels], interpolation="nearest")
    axis.set_title(title, fontsize=8)
    axis.axis("off")


def reference_pixel(labels: np.ndarray) -> tuple[int, int, int]:
    """(row, col, label) at stride 2 of the stroke pixel with the most same-label neighbours.

    Picks a pixel well inside a digit of the scene's most frequent digit label.
    """
    low = labels[::STRIDE, ::STRIDE]
    classes, counts = np.unique(low[low > 0], return_counts=True)
    label = int(classes[np.argmax(counts)])
    mask = (low == label).astype(np.float32)
    neighbours = np.where(mask > 0, ndimage.uniform_filter(mask, size=3), -1.0)
    row, col = np.unravel_index(int(np.argmax(neighbours)), neighbours.shape)
    return int(row), int(col), label


def second_label(labels: np.ndarray, scores: Tensor, label: int) -> int:
    """The most frequent digit label besides ``label`` (the paper's l2); in scenes without
    one (ConsensusScenes), the other digit label with the most predicted mass."""
    others = labels[(labels > 0) & (labels != label)]
    if others.size:
        return int(np.bincount(others).argmax())
    mass = scores.softmax(0).sum(dim=(1, 2))
    mass[[0, label]] = -1.0
    return int(mass.argmax())


def _mark(axis, row: int, col: int) -> None:
    axis.plot(col, row, marker="o", markersize=9, markerfacecolor="none", color="white")
    axis.plot(col, row, marker="+", markersize=9, color="white")


@torch.inference_mode()
def pairwise_figure(
    models: dict[str, dict[str, SegmentationNet]], data: dict[str, Data], path: Path
) -> None:
    """Figs. 3–4: the learned pairwise terms between a reference pixel p* and every pixel.

    General model (Fig. 3): ⟨A_p^l, A_p*^l*⟩ for l = background, l* (the reference's label)
    and l2 (the most frequent other class). Potts model (Fig. 4): ⟨Â_p, Â_p*⟩.
    """
    import matplotlib.pyplot as plt

    kinds = list(models)
    fig, axes = plt.subplots(len(kinds), 6, figsize=(13, 2.4 * len(kinds)), squeeze=False)
    for row, kind in enumerate(kinds):
        image, labels = data[kind].test_images[:1], data[kind].test_labels[0].numpy()
        r, c, label = reference_pixel(labels)
        general = _largest(models[kind], "general")
        potts = _largest(models[kind], "potts")
        parts = general.low_res(image)
        second = second_label(labels, parts["scores"][0], label)
        a = parts["embeddings"][0]  # (D, L, h, w)
        terms = torch.einsum("dlhw,d->lhw", a, a[:, label, r, c]).numpy()
        ahat = potts.low_res(image)["embeddings"][0]  # (D, h, w)
        potts_term = torch.einsum("dhw,d->hw", ahat, ahat[:, r, c]).numpy()
        axes[row, 0].imshow(image[0].permute(1, 2, 0).numpy())
        _mark(axes[row, 0], r * STRIDE, c * STRIDE)
        axes[row, 0].set_title(f"{DATASET_NAMES[kind]}: p*, l*={label - 1}", fontsize=8)
        _show_labels(axes[row, 1], labels, "ground truth")
        panels = [
            (terms[0], f"{general.variant.name}: l = bkg"),
            (terms[label], f"{general.variant.name}: l = l*"),
            (terms[second], f"{general.variant.name}: l = l2 ({second - 1})"),
            (potts_term, f"{potts.variant.name}: ⟨Â_p, Â_p*⟩"),
        ]
        for axis, (term, title) in zip(axes[row, 2:], panels, strict=True):
            limit = float(np.abs(term).max()) or 1.0
            axis.imshow(term, cmap="RdBu_r", vmin=-limit, vmax=limit)
            _mark(axis, r, c)
            axis.set_title(title, fontsize=8)
        for axis in axes[row]:
            axis.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _legend(fig) -> None:
    from matplotlib.patches import Patch

    names = ["background", *(f"digit {d}" for d in range(10))]
    handles = [Patch(color=c, label=n) for c, n in zip(_palette(), names, strict=True)]
    fig.legend(handles=handles, loc="lower center", ncol=6, fontsize=7, frameon=False)


def _largest(models: dict[str, SegmentationNet], kind: str) -> SegmentationNet:
    return max((m for m in models.values() if m.variant.kind == kind), key=lambda m: m.variant.dim)


@torch.inference_mode()
def qualitative_figure(
    models: dict[str, dict[str, SegmentationNet]], data: dict[str, Data], count: int, path: Path
) -> None:
    """Fig. 5: image, unary, general, Potts and attractive G-CRFs and ground truth."""
    import matplotlib.pyplot as plt

    rows = [(kind, i) for kind in models for i in range(count)]
    fig, axes = plt.subplots(len(rows), 6, figsize=(10.8, 1.9 * len(rows)), squeeze=False)
    for axis_row, (kind, i) in zip(axes, rows, strict=True):
        image = data[kind].test_images[i : i + 1]
        shown = [
            models[kind]["unary"],
            _largest(models[kind], "general"),
            _largest(models[kind], "potts"),
            _largest(models[kind], "attractive"),
        ]
        axis_row[0].imshow(image[0].permute(1, 2, 0).numpy())
        axis_row[0].set_title(DATASET_NAMES[kind], fontsize=8)
        axis_row[0].axis("off")
        for axis, model in zip(axis_row[1:5], shown, strict=True):
            _show_labels(axis, model(image).argmax(1)[0].numpy(), model.variant.name)
        _show_labels(axis_row[5], data[kind].test_labels[i].numpy(), "ground truth")
    _legend(fig)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
