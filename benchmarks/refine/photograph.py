"""Real photographs with their own objects, labelled by their own thresholding
(:func:`.scenes.threshold_mask`). Validation: the photographs shipped with scikit-image that
the test split does not use and whose threshold picks out objects — ``camera``,
``immunohistochemistry``, the validation composites' backgrounds ``astronaut``, ``coffee``
and ``rocket``, ``cell``, ``hubble_deep_field`` and ``retina`` (not the textures ``brick``,
``grass`` and ``gravel``, whose thresholds are noise, nor the documents ``page`` and
``text``; the 102×102 crop ``microaneurysms`` and the stereo pair ``stereo_motorcycle`` were
not considered); with the validation composites they choose the lattice's weights
(:mod:`.lattice_weights`). Test: its ``coins``. The composites of :mod:`.scenes` paste
shapes over photographs; here the objects, their shading and their edges are the
photograph's. Both unaries of the composites, with 2 labels (objects and background, as the
issue measured the coins) and with the composites' 6 (four of them absent from the truth),
each drawn with several seeds; MF-5 against ours (defaults), the landmarks' passes beside
them."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
from skimage import data as skdata
from skimage.color import rgb2gray
from skimage.transform import resize
from skimage.util import img_as_ubyte
from tqdm import tqdm

from ..metrics import confusion, mean_iou
from .contenders import LANDMARK_PASSES, MF5, OURS, OURS_LANDMARKS, meanfield, ours
from .scenes import SPLITS, UNARIES, coarse_unary, noisy_unary, threshold_mask

#: the photographs of each split (scikit-image's names)
PHOTOGRAPHS = {
    "val": (
        "camera",
        "immunohistochemistry",
        "astronaut",
        "coffee",
        "rocket",
        "cell",
        "hubble_deep_field",
        "retina",
    ),
    "test": ("coins",),
}
#: a photograph's longer side at most, in pixels (the largest, ``retina``, is 1411² pixels)
LONGEST_SIDE = 512
#: the unaries of :mod:`.scenes` by name
UNARY_MAKERS = {"coarse": coarse_unary, "noisy": noisy_unary}


@cache
def photograph(name: str, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """The photograph (3, H, W) uint8 (a grey one in each channel) and its labels (H, W)
    int64 (1 where :func:`.scenes.threshold_mask` of its grey levels holds, at the
    photograph's own size), both resized by ``scale`` (1: the photograph's own size, or
    :data:`LONGEST_SIDE` on its longer side where it is larger)."""
    photo = getattr(skdata, name)()
    gray = photo if photo.ndim == 2 else img_as_ubyte(rgb2gray(photo))
    mask = threshold_mask(gray)
    scale *= min(1.0, LONGEST_SIDE / max(gray.shape))
    if scale != 1:
        shape = tuple(round(scale * n) for n in gray.shape)
        photo = img_as_ubyte(resize(photo, shape, anti_aliasing=True))
        mask = resize(mask, shape, order=0, anti_aliasing=False)
    image = (
        np.broadcast_to(photo, (3, *photo.shape)) if photo.ndim == 2 else photo.transpose(2, 0, 1)
    )
    return np.ascontiguousarray(image), mask.astype(np.int64)


@dataclass(frozen=True)
class PhotoCase:
    """One photograph with one unary: its name, labels L, unary kind, seed and arrays."""

    name: str
    labels: int
    unary: str
    seed: int
    image: np.ndarray
    truth: np.ndarray
    probs: np.ndarray

    def miou(self, refined: np.ndarray) -> float:
        """mIoU of the refinement's labels (L, H, W) against the photograph's."""
        return mean_iou(confusion(refined.argmax(0), self.truth, self.labels))


def photo_cases(split: str, cfg: Any) -> list[PhotoCase]:
    """Every photograph of ``split`` with each number of labels, unary and seed of ``cfg``,
    each unary drawn from its own stream (the split, photograph, L, unary and seed)."""
    cases = []
    for (index, name), labels, unary, seed in itertools.product(
        enumerate(PHOTOGRAPHS[split]), cfg.photo_labels, UNARIES, cfg.photo_seeds
    ):
        image, truth = photograph(name, cfg.photo_scale)
        stream = [seed, labels, UNARIES.index(unary), SPLITS.index(split), index]
        rng = np.random.default_rng(stream)
        probs = UNARY_MAKERS[unary](truth, rng, labels)
        cases.append(PhotoCase(name, labels, unary, seed, image, truth, probs))
    return cases


def photograph_section(cfg: Any, bar: tqdm) -> dict[str, Any]:
    """Each photograph's shape and the mIoU of the unary, MF-5, ours (defaults) and the
    landmarks' passes on it, a row per split, photograph, number of labels, unary and seed."""
    calls = {
        MF5: lambda c: meanfield(c.probs, c.image, iterations=5),
        OURS: lambda c: ours(c.probs, c.image),
        OURS_LANDMARKS: lambda c: ours(c.probs, c.image, **LANDMARK_PASSES),
    }
    rows = []
    for split in PHOTOGRAPHS:
        for case in photo_cases(split, cfg):
            row = {"split": split, "photograph": case.name, "labels": case.labels}
            row |= {"unary": case.unary, "seed": case.seed, "unary_miou": case.miou(case.probs)}
            row |= {name: case.miou(call(case)) for name, call in calls.items()}
            rows.append(row)
        bar.update()
    shapes = {
        name: list(photograph(name, cfg.photo_scale)[1].shape)
        for names in PHOTOGRAPHS.values()
        for name in names
    }
    return {"shapes": shapes, "rows": rows}


def gains_on_test(photo: dict[str, Any]) -> list[dict[str, Any]]:
    """Per test photograph, unary and number of labels: the mean gains of ours (defaults)
    and MF-5 over the unary across the seeds, their number, and ours' smallest gain."""
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for r in photo["rows"]:
        if r["split"] == "test":
            groups.setdefault((r["photograph"], r["unary"], r["labels"]), []).append(r)
    return [
        {
            "photograph": name,
            "unary": unary,
            "labels": labels,
            "seeds": len(group),
            "ours": float(np.mean([r[OURS] - r["unary_miou"] for r in group])),
            "mf5": float(np.mean([r[MF5] - r["unary_miou"] for r in group])),
            "worst": min(r[OURS] - r["unary_miou"] for r in group),
        }
        for (name, unary, labels), group in groups.items()
    ]


def photograph_lines(photo: dict[str, Any]) -> list[str]:
    """The photographs' Markdown: what they are; the test photographs a row per number of
    labels, unary and seed; the validation photographs a row per photograph, number of labels
    and unary (means over the seeds); the wins of ours against MF-5 in each split."""
    rows = photo["rows"]
    sizes = ", ".join(f"`{name}` ({h}×{w})" for name, (h, w) in photo["shapes"].items())

    def won(split: str) -> str:
        chosen = [r for r in rows if r["split"] == split]
        return f"{split} {sum(r[OURS] >= r[MF5] for r in chosen)} of {len(chosen)}"

    def cells(group: list[dict[str, Any]]) -> str:
        mean = {k: np.mean([r[k] for r in group]) for k in ("unary_miou", MF5, OURS)}
        mark = "**" if mean[OURS] >= mean[MF5] else ""
        landmarks = np.mean([r[OURS_LANDMARKS] for r in group])
        worst = min(r[OURS] - r["unary_miou"] for r in group)
        return (
            f"{mean['unary_miou']:.3f} | {mean[MF5]:.3f} | {mark}{mean[OURS]:.3f}{mark} | "
            f"{sum(r[OURS] >= r[MF5] for r in group)} of {len(group)} | "
            f"{100 * worst:+.1f} | {landmarks:.3f} |"
        )

    lines = [
        f"scikit-image's photographs {sizes} (at most {LONGEST_SIDE} pixels on the longer "
        "side), each labelled by its own grey levels' Otsu threshold, opened and with holes "
        "filled (`benchmarks/refine/photograph.py`); validation "
        f"{', '.join(PHOTOGRAPHS['val'])}; test {', '.join(PHOTOGRAPHS['test'])}. The "
        "composites' unaries with L = "
        + " and ".join(str(n) for n in dict.fromkeys(r["labels"] for r in rows))
        + " labels (2: objects and background; more: labels absent from the truth), each "
        "drawn with seeds "
        + ", ".join(str(s) for s in dict.fromkeys(r["seed"] for r in rows))
        + ". mIoU on the photograph (validation: the mean over the seeds); bold where ours "
        "reaches MF-5's. Seeds where ours reaches MF-5's mIoU: "
        + "; ".join(won(split) for split in PHOTOGRAPHS)
        + ".",
        "",
        "| split | photograph | L | unary | seed | unary mIoU | MF-5 | ours (defaults) | "
        "seeds ≥ MF-5 | ours − unary, worst seed (points) | landmarks' passes |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        seed = r["seed"] if r["split"] == "test" else "mean"
        groups.setdefault((r["split"], r["photograph"], r["labels"], r["unary"], seed), []).append(
            r
        )
    for (split, name, labels, unary, seed), group in sorted(
        groups.items(), key=lambda item: item[0][0] != "test"
    ):
        lines.append(f"| {split} | {name} | {labels} | {unary} | {seed} | {cells(group)}")
    return lines
