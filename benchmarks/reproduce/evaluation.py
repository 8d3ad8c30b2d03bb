"""Evaluation: mIoU on held-out scenes, the ground-truth oracles, per-image timings and the
summary of the seeds against the baselines."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..metrics import confusion, mean_iou
from ..timing import median_ms
from .networks import SegmentationNet, upsample
from .oracles import oracle_outputs
from .scenes import NUM_CLASSES
from .training import Data, low_res_labels

#: the target margin over the better baseline, mIoU points
TARGET_MARGIN = 5.0


@torch.inference_mode()
def oracle_miou(base: SegmentationNet, data: Data) -> dict[str, float]:
    """mIoU (%) of the phase-1 network ``base`` alone and under each ground-truth oracle
    of :mod:`benchmarks.reproduce.oracles` (no training)."""
    base.eval()
    scores = torch.cat(
        [
            base.unary(data.test_images[i : i + 50] - 0.5)
            for i in range(0, len(data.test_images), 50)
        ]
    )
    batch, labels, height, width = scores.shape
    low = low_res_labels(data.test_labels).reshape(batch, -1).numpy()
    outputs = oracle_outputs(
        scores.double().reshape(batch, labels, -1).numpy(),
        low,
        base.config.lam,
        base.config.potts_margin,
    )
    outputs = {"phase-1 unary": scores.numpy(), **outputs}
    truth = data.test_labels.numpy()
    return {
        name: miou_percent(
            upsample(torch.from_numpy(x).reshape(batch, labels, height, width)).argmax(1).numpy(),
            truth,
        )
        for name, x in outputs.items()
    }


@torch.inference_mode()
def predict(model: SegmentationNet, images: Tensor, chunk: int = 50) -> np.ndarray:
    """Predicted labels (n, H, W)."""
    model.eval()
    return np.concatenate(
        [model(images[i : i + chunk]).argmax(1).numpy() for i in range(0, len(images), chunk)]
    )


def miou_percent(predicted: np.ndarray, labels: np.ndarray) -> float:
    """Mean IoU in percent (:func:`benchmarks.metrics.mean_iou`) of label maps, every pixel
    of the split accumulated."""
    return 100.0 * mean_iou(confusion(predicted, labels, NUM_CLASSES))


@torch.inference_mode()
def time_variant(model: SegmentationNet, image: Tensor, repeats: int) -> dict[str, float]:
    """Per-image inference (batch 1): the whole model, and the G-CRF solve alone."""
    model.eval()
    total = median_ms(lambda: model(image), repeats)
    crf = 0.0
    if model.crf is not None:
        parts = model.low_res(image)
        crf = median_ms(lambda: model.crf(parts["unary"], parts["embeddings"]), repeats)
    return {"total_ms": total, "crf_ms": crf}


def summarise(
    scores: dict[str, dict[str, list[float]]], params: dict[str, int], names: list[str]
) -> dict[str, dict]:
    """Per dataset and variant: mean, std, per-seed mIoU, parameters, margins over baselines.

    ``beats_baselines``: the variant beats both ``unary`` and ``control`` in every seed;
    ``margin``: its smallest mean gain over the two (mIoU points).
    """
    summary: dict[str, dict] = {}
    for kind, per_variant in scores.items():
        rows = {}
        for name in names:
            values = per_variant[name]
            baseline = [
                min(u, c) for u, c in zip(per_variant["unary"], per_variant["control"], strict=True)
            ]
            rows[name] = {
                "miou": values,
                "mean": float(np.mean(values)),
                "std": float(np.std(values)),
                "params": params[name],
                "beats_baselines": all(
                    v > max(u, c)
                    for v, u, c in zip(
                        values, per_variant["unary"], per_variant["control"], strict=True
                    )
                ),
                "margin": float(
                    np.mean(values)
                    - max(np.mean(per_variant["unary"]), np.mean(per_variant["control"]))
                ),
                "worst_seed_gain": float(min(v - b for v, b in zip(values, baseline, strict=True))),
            }
        summary[kind] = rows
    return summary


def target_met(summary: dict[str, dict], kind: str) -> bool:
    """The reproduction's target for one G-CRF kind: some embedding dimension beats both baselines
    in every seed, by ≥ :data:`TARGET_MARGIN` mIoU points on average, on at least one dataset."""
    return any(
        row["beats_baselines"] and row["margin"] >= TARGET_MARGIN
        for rows in summary.values()
        for name, row in rows.items()
        if name.startswith(kind)
    )


def best_variant(summary: dict[str, dict], kind: str) -> tuple[str, str, dict]:
    """(dataset, variant, row) of the ``kind`` G-CRF variant with the largest mean gain."""
    return max(
        (
            (dataset, name, row)
            for dataset, rows in summary.items()
            for name, row in rows.items()
            if name.startswith(kind)
        ),
        key=lambda item: item[2]["margin"],
    )


def attractive_targets(summary: dict[str, dict]) -> dict[str, dict]:
    """The attractive model's two targets, with the numbers that decide them.

    ``consensus``: some attractive variant beats the unary network and the control in every
    seed by ≥ :data:`TARGET_MARGIN` mIoU on ConsensusScenes (per seed, over the better
    baseline). ``tied``: the best attractive variant beats the best Potts variant on
    TiedScenes on average (and the seeds it wins are counted). Absent datasets are skipped.
    """
    targets: dict[str, dict] = {}
    if "consensus" in summary:
        rows = summary["consensus"]
        pairs = zip(rows["unary"]["miou"], rows["control"]["miou"], strict=True)
        baseline = [max(u, c) for u, c in pairs]
        gains = {
            name: min(v - b for v, b in zip(row["miou"], baseline, strict=True))
            for name, row in rows.items()
            if name.startswith("attractive")
        }
        name = max(gains, key=gains.get)
        targets["consensus"] = {
            "variant": name,
            "worst_seed_gain": gains[name],
            "met": gains[name] >= TARGET_MARGIN,
        }
    if "tied" in summary:
        rows = summary["tied"]

        def best(kind: str) -> str:
            return max((n for n in rows if n.startswith(kind)), key=lambda n: rows[n]["mean"])

        attractive, potts = best("attractive"), best("potts")
        wins = sum(
            a > p for a, p in zip(rows[attractive]["miou"], rows[potts]["miou"], strict=True)
        )
        gain = rows[attractive]["mean"] - rows[potts]["mean"]
        targets["tied"] = {
            "variant": attractive,
            "potts": potts,
            "gain": gain,
            "seeds_won": wins,
            "seeds": len(rows[potts]["miou"]),
            "met": gain > 0,
        }
    return targets
