"""A real photograph with its own objects: scikit-image's ``coins``, whose mask is the
photograph's own thresholding (:func:`.scenes.coin_mask`). The composites of
:mod:`.scenes` paste shapes over photographs; here the objects, their shading and their
edges are the photograph's. Neither the defaults nor pydensecrf2's parameters were chosen on
it (the validation split holds no coin). Both unaries of the composites, with 2 labels (coins
and background, as the issue measured it) and with the composites' 6 (four of them absent
from the truth), each drawn with several seeds; MF-5 against ours (defaults), the landmarks'
passes beside them."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
from skimage import data as skdata
from skimage.transform import resize
from tqdm import tqdm

from ..metrics import confusion, mean_iou
from .contenders import LANDMARK_PASSES, MF5, OURS, OURS_LANDMARKS, meanfield, ours
from .scenes import UNARIES, coarse_unary, coin_mask, noisy_unary

#: the unaries of :mod:`.scenes` by name
UNARY_MAKERS = {"coarse": coarse_unary, "noisy": noisy_unary}
#: the methods compared on the photograph, in the table's order
METHODS = (MF5, OURS, OURS_LANDMARKS)


def coins(scale: float) -> tuple[np.ndarray, np.ndarray]:
    """The photograph (3, H, W) uint8, its grey level in each channel, and its labels (H, W)
    int64 (1 on the coins), both resized by ``scale`` (1: the photograph's 303×384)."""
    photo, mask = skdata.coins(), coin_mask()
    if scale != 1:
        shape = tuple(round(scale * n) for n in photo.shape)
        photo = (255 * resize(photo, shape, anti_aliasing=True)).round().astype(np.uint8)
        mask = resize(mask, shape, order=0, anti_aliasing=False)
    image = np.ascontiguousarray(np.broadcast_to(photo, (3, *photo.shape)))
    return image, mask.astype(np.int64)


def photograph_section(cfg: Any, bar: tqdm) -> dict[str, Any]:
    """The photograph's shape and the mIoU of the unary, MF-5, ours (defaults) and the
    landmarks' passes on it, a row per number of labels, unary and seed."""
    image, truth = coins(cfg.photo_scale)
    calls = {
        MF5: lambda p: meanfield(p, image, iterations=5),
        OURS: lambda p: ours(p, image),
        OURS_LANDMARKS: lambda p: ours(p, image, **LANDMARK_PASSES),
    }
    rows = []
    for labels, unary in itertools.product(cfg.photo_labels, UNARIES):
        for seed in cfg.photo_seeds:
            rng = np.random.default_rng([seed, labels, UNARIES.index(unary)])
            probs = UNARY_MAKERS[unary](truth, rng, labels)

            def miou(p: np.ndarray, labels: int = labels) -> float:
                return mean_iou(confusion(p.argmax(0), truth, labels))

            row = {"labels": labels, "unary": unary, "seed": seed, "unary_miou": miou(probs)}
            row |= {name: miou(call(probs)) for name, call in calls.items()}
            rows.append(row)
        bar.update()
    return {"shape": list(truth.shape), "rows": rows}


def photograph_steps(cfg: Any) -> int:
    """The progress bar's steps of :func:`photograph_section`."""
    return len(cfg.photo_labels) * len(UNARIES)


def _groups(rows: list[dict[str, Any]]) -> dict[tuple[str, int], list[dict[str, Any]]]:
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["unary"], r["labels"]), []).append(r)
    return groups


def photograph_targets(photo: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    """The issue's targets on the photograph: per unary and number of labels, ours' mean
    gain over the seeds at least MF-5's; and no seed's gain of ours below 0."""
    rows = photo["rows"]
    out = []
    for (unary, labels), group in _groups(rows).items():
        ours_gain = float(np.mean([r[OURS] - r["unary_miou"] for r in group]))
        mf_gain = float(np.mean([r[MF5] - r["unary_miou"] for r in group]))
        out.append(
            (
                f"coins photograph, {unary}, L = {labels}: mIoU gain (mean of {len(group)} "
                "seeds), ours (defaults) vs MF-5",
                f"{100 * ours_gain:+.1f} vs {100 * mf_gain:+.1f} points",
                "ours ≥ MF-5",
                ours_gain >= mf_gain,
            )
        )
    if rows:
        worst = min(r[OURS] - r["unary_miou"] for r in rows)
        out.append(
            (
                "coins photograph: smallest gain of ours over the unary (every unary, L, seed)",
                f"{100 * worst:+.1f} points",
                "≥ 0",
                worst >= 0,
            )
        )
    return out


def photograph_lines(photo: dict[str, Any]) -> list[str]:
    """The photograph's Markdown: what it is, a row per labels, unary and seed, and the
    per-seed wins of ours against MF-5."""
    rows = photo["rows"]
    h, w = photo["shape"]
    won = sum(r[OURS] >= r[MF5] for r in rows)
    lines = [
        f"scikit-image's `coins` ({h}×{w}, grey), its labels the photograph's own Otsu "
        "threshold, opened and with holes filled (`benchmarks/refine/photograph.py`); the "
        "composites' unaries with L = "
        + " and ".join(str(n) for n in dict.fromkeys(r["labels"] for r in rows))
        + " labels (2: coins and background; more: labels absent from the truth), each drawn "
        "with seeds "
        + ", ".join(str(s) for s in dict.fromkeys(r["seed"] for r in rows))
        + f". mIoU on the photograph; bold where ours reaches MF-5's: {won} of {len(rows)}.",
        "",
        "| L | unary | seed | unary | MF-5 | ours (defaults) | landmarks' passes |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        mark = "**" if r[OURS] >= r[MF5] else ""
        lines.append(
            f"| {r['labels']} | {r['unary']} | {r['seed']} | {r['unary_miou']:.3f} | "
            f"{r[MF5]:.3f} | {mark}{r[OURS]:.3f}{mark} | {r[OURS_LANDMARKS]:.3f} |"
        )
    return lines
