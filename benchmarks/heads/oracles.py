"""What the G-CRF could add on this content: ground-truth embeddings on the control's unaries.

Every control run, once tested, feeds its unary scores at the CRF's resolution (stride 8,
before the bilinear upsampling) to the reproduction's ground-truth oracles
(:func:`benchmarks.reproduce.oracles.group_oracle_outputs`): no training, the trained
network fixed, only the embeddings built from the answer. Each scene's pixels are grouped by
their ground-truth label at that resolution, background included (it is a segmented class
here like the objects, and a head's embeddings can group it as well); the labels are
downsampled by majority over each 8×8 cell (the reproduction's max pooling suits one class
of thin strokes; here it would hand every mixed cell to the highest label). λ = 1 as in the
heads (``GCRFHead`` does not learn λ), and two strengths ρ: the heads' initial strength and
their ceiling. The oracles:

* ``potts``: one direction per segment, ‖·‖² = ρλ: the segment's mean label deviation is
  amplified by 1/(1 − ρ).
* ``potts-objects``: the same with the reproduction's grouping, the objects alone (the
  background pixels in no group): what pooling within the objects adds, the background's
  false positives left as they are.
* ``general``: the same grouping in the general model, which can only subtract a segment's
  mean (:mod:`benchmarks.reproduce.oracles`).
* ``general-sign-split``: the general model told which pixels the unary gets right; each
  sign's part gets ρλ/2, so that ‖A‖₂² ≤ ρλ, the heads' bound.
* ``segment pooling``: every pixel gets its segment's mean scores, the ρ → 1 limit of the
  Potts oracle.

Each oracle's scores are upsampled as the network upsamples its own and scored with the
runs' test mIoU. The trained heads are read against the oracle their model can hold: Potts
and signed heads against the Potts oracle (the signed model is the Potts model at
A = 1ᵀ⊗Â, Γ = I⊗Â, and its attractive Γ is what pools a segment's evidence), general heads
against the general oracles.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

import numpy as np

from lowrank_gcrf import solve_potts
from lowrank_gcrf.adapters.layer_plan import DEFAULT_MAX_STRENGTH, DEFAULT_STRENGTH

from ..reproduce.oracles import digit_groups, group_oracle_outputs, scaled_groups
from .records import miou_percent
from .scenes import NUM_LABELS
from .summary import GAIN_GOAL

#: λ of every head (``GCRFHead``'s default, not learnt)
LAM = 1.0
#: the strengths ρ of the oracles: the heads' initial strength and their ceiling
STRENGTHS = (DEFAULT_STRENGTH, DEFAULT_MAX_STRENGTH)
POOLING = "segment pooling"
OBJECTS = "potts-objects"
#: the table's oracles at every strength, each with the trained head models read against
#: it (module docstring), shown once per family
READINGS = (
    ("potts", ("potts", "signed")),
    (OBJECTS, ()),
    ("general", ("general",)),
    ("general-sign-split", ()),
)


def oracle_key(name: str, strength: float) -> str:
    """The key of an oracle at strength ρ in a run's ``oracles`` record."""
    return f"{name} at {strength:g}"


def majority_labels(labels: np.ndarray, cell: int) -> np.ndarray:
    """Labels (n, H, W) at ``cell`` times coarser: the most frequent label of each cell,
    the smaller label on a tie.

    Returns
    -------
    ndarray (n, H / cell, W / cell), int64
    """
    n, height, width = labels.shape
    cells = labels.reshape(n, height // cell, cell, width // cell, cell)
    counts = np.stack([(cells == label).sum(axis=(2, 4)) for label in range(NUM_LABELS)])
    return counts.argmax(axis=0)


def label_groups(labels: np.ndarray) -> np.ndarray:
    """One-hot group membership (n, L, P) of pixels by their label, background included
    (a label absent from a scene gives an empty group)."""
    return (labels[:, None, :] == np.arange(NUM_LABELS)[None, :, None]).astype(np.float64)


def segment_pooling(scores: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Scores (n, L, P) replaced by the mean scores of each pixel's group; every pixel is in
    exactly one group (:func:`label_groups`)."""
    sizes = np.maximum(groups.sum(axis=-1), 1.0)
    means = np.einsum("nlp,nkp->nlk", scores, groups) / sizes[:, None, :]
    return np.einsum("nlk,nkp->nlp", means, groups)


def oracle_mious(
    scores: np.ndarray, labels: np.ndarray, upsample: Callable[[np.ndarray], np.ndarray]
) -> dict[str, float]:
    """Test mIoU (points) of every oracle on a network's unary scores.

    Parameters
    ----------
    scores : ndarray (n, L, h, w)
        The network's unary scores of the test scenes at the CRF's resolution.
    labels : ndarray (n, H, W) of int
        The test scenes' ground truth; H and W multiples of h and w.
    upsample : callable
        The network's own upsampling: float64 scores (n, L, h, w) → (n, L, H, W).

    Returns
    -------
    dict
        :data:`POOLING`, and :func:`oracle_key` of :data:`OBJECTS` and of each of
        :data:`benchmarks.reproduce.oracles.GROUP_ORACLES` at each of :data:`STRENGTHS`
        → mIoU.
    """
    n, num_labels, _, width = scores.shape
    low = majority_labels(labels, labels.shape[-1] // width).reshape(n, -1)
    flat = scores.astype(np.float64).reshape(n, num_labels, -1)
    groups, objects = label_groups(low), digit_groups(low)
    outputs = {POOLING: segment_pooling(flat, groups)}
    for strength in STRENGTHS:
        found = group_oracle_outputs(flat, low, groups, LAM, strength, split_margin=strength / 2)
        outputs.update({oracle_key(name, strength): x for name, x in found.items()})
        embeddings = scaled_groups(objects, strength * LAM)
        outputs[oracle_key(OBJECTS, strength)] = solve_potts(embeddings, flat, LAM, method="direct")
    return {
        name: miou_percent(upsample(x.reshape(scores.shape)).argmax(axis=1), labels)
        for name, x in outputs.items()
    }


def _head_gain(rows: list[dict[str, Any]], model: str, networks: tuple[str, ...]) -> float:
    """Mean test mIoU gain over the control of the trained ``model`` heads of ``networks``."""
    gains = [
        gain
        for row in rows
        if row["variant"] == model and row["network"] in networks and row["status"] == "ok"
        for gain in row["minus_control"]
    ]
    return statistics.fmean(gains) if gains else float("nan")


def oracle_summary(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Per network with oracle records, then over every network (``"all networks"``): the
    control runs' mean mIoU, each oracle's mean mIoU and mean gain over the control, and the
    trained heads' mean gain."""
    controls = [r for r in report["runs"] if r.get("oracles")]
    networks = [n for n in report["config"]["networks"] if any(r["network"] == n for r in controls)]
    groups = [(n, (n,)) for n in networks]
    if len(networks) > 1:
        groups.append(("all networks", tuple(networks)))
    rows = report["summary"]["rows"]
    out = []
    for name, members in groups:
        runs = [r for r in controls if r["network"] in members]
        out.append(
            {
                "network": name,
                "runs": len(runs),
                "control": statistics.fmean(r["miou"] for r in runs),
                "oracles": {
                    key: {
                        "miou": statistics.fmean(r["oracles"][key] for r in runs),
                        "gain": statistics.fmean(r["oracles"][key] - r["miou"] for r in runs),
                    }
                    for key in runs[0]["oracles"]
                },
                "heads": {
                    model: _head_gain(rows, model, members)
                    for _, heads in READINGS
                    for model in heads
                },
            }
        )
    return out


def _signed(value: float) -> str:
    return f"{value:+.1f}".replace("-", "−")


def oracles_table(summary: list[dict[str, Any]]) -> str:
    """Per network, one row per oracle: test mIoU (gain over the control) at each strength,
    mean over the control runs, next to the mean gain of the trained heads read against
    it; segment pooling, the ρ → 1 limit, in the last strength's column."""
    lines = [
        "| network: control mIoU (runs) | oracle | "
        + " | ".join(f"ρ = {s:g}" for s in STRENGTHS)
        + " | trained heads' mean gain |",
        "|---|---|" + "---:|" * len(STRENGTHS) + "---|",
    ]

    def cell(found: dict[str, float]) -> str:
        return f"{found['miou']:.1f} ({_signed(found['gain'])})"

    for row in summary:
        oracles = row["oracles"]
        pooled = ["–"] * (len(STRENGTHS) - 1) + [cell(oracles[POOLING])]
        network = f"{row['network']}: {row['control']:.1f} ({row['runs']})"
        lines.append(f"| {network} | {POOLING} (ρ → 1) | " + " | ".join(pooled) + " | – |")
        for name, heads in READINGS:
            cells = [cell(oracles[oracle_key(name, s)]) for s in STRENGTHS]
            gains = ", ".join(f"{m} {_signed(row['heads'][m])}" for m in heads) or "–"
            lines.append(f"| | {name} | " + " | ".join(cells) + f" | {gains} |")
    return "\n".join(lines)


def oracle_findings(summary: list[dict[str, Any]]) -> str:
    """Plain sentences on the last row of :func:`oracle_summary` (every network)."""
    row = summary[-1]
    low, high = STRENGTHS

    def gain(name: str, strength: float = high) -> float:
        return row["oracles"][oracle_key(name, strength)]["gain"]

    heads = row["heads"]
    pooling = row["oracles"][POOLING]["gain"]
    potts, objects = gain("potts"), gain(OBJECTS)
    if potts <= 0.0:
        where = ""
    elif objects < potts / 2:
        where = (
            ": most of that room is in the background segment, whose mean overrules the "
            "unaries' false positives"
        )
    else:
        where = ": most of that room is within the objects"
    runs = f"{row['runs']} control run{'s' if row['runs'] != 1 else ''}"
    sentences = [
        f"Over {row['network']} ({runs}), ground-truth segments would let the Potts G-CRF "
        f"add {_signed(gain('potts', low))} mIoU points to the control at the heads' initial "
        f"strength ρ = {low:g} and {_signed(potts)} at their ceiling ρ = {high:g} (segment "
        f"pooling, the ρ → 1 limit: {_signed(pooling)}); the trained heads add "
        f"{_signed(heads['potts'])} (Potts) and {_signed(heads['signed'])} (signed).",
        f"Grouping the objects alone, the background in no group, gives {_signed(objects)} "
        f"at ρ = {high:g}{where}.",
        f"The general model, which cannot pool, gets {_signed(gain('general'))} from the "
        f"segments at ρ = {high:g} and {_signed(gain('general-sign-split'))} when also told "
        f"which pixels the unary gets wrong; its trained heads add "
        f"{_signed(heads['general'])}.",
    ]
    if potts >= GAIN_GOAL:
        sentences.append(
            f"The content leaves room for the +{GAIN_GOAL:g} goal: the trained Potts heads "
            f"realise {100 * heads['potts'] / potts:.0f}% of the Potts oracle's gain at the "
            f"ceiling, the signed heads {100 * heads['signed'] / potts:.0f}%."
        )
    else:
        sentences.append(
            f"The content leaves no room for the +{GAIN_GOAL:g} goal: even ground-truth "
            f"segments at the heads' ceiling add less than that to these unaries."
        )
    if pooling <= 0.0:
        sentences.append(
            "Giving every pixel its segment's mean scores does not help either: the "
            "control's errors lie in segments its unaries get mostly wrong, where a segment's "
            "evidence points to the wrong label."
        )
    return " ".join(sentences)


#: how to read the oracle table
READING = (
    "Oracle cells: mean test mIoU over the control runs (mean gain over the control); head "
    "cells: the trained heads' mean gain, every optimizer and seed. The Potts and signed "
    "heads read against the Potts oracles (the signed model is the Potts model at "
    "A = 1ᵀ⊗Â, Γ = I⊗Â, and its attractive Γ is what pools a segment's evidence), the "
    "general heads against the general ones."
)


def oracle_section(report: dict[str, Any]) -> str:
    """The oracle table and its findings, or a line saying that no control run has them."""
    summary = oracle_summary(report)
    if not summary:
        return "No control run finished: no oracle measurements."
    return "\n\n".join([oracles_table(summary), READING, oracle_findings(summary)])
