"""The speed targets as data, their evaluation, and the ``cg``/``direct`` crossover.

Each :class:`Target` compares two measured values at the paper's size, κ = 10³, float32,
forward+backward, batch 1 (:data:`TARGET_CASE`), e.g. SciPy's CG time over ours. The table
:data:`TARGETS` is the single statement of what the benchmark promises.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..paper_sizes import PAPER_LABELS, PAPER_MODELS, PAPER_PIXELS
from .records import Record, one, ratio, select, value

#: the case every target is measured on (with phase forward+backward in the paper suite)
TARGET_CASE = {
    "pixels": PAPER_PIXELS,
    "labels": PAPER_LABELS,
    "kappa": 1e3,
    "dtype": "float32",
    "batch": 1,
}


@dataclass(frozen=True)
class Quantity:
    """One measured value: ``key`` of the record of ``contender`` on (``model``, D=``rank``)."""

    model: str
    rank: int
    contender: str
    key: str


@dataclass(frozen=True)
class Target:
    """``numerator / denominator`` must be ≥ (``at_least``) or ≤ ``threshold``."""

    text: str
    numerator: Quantity
    denominator: Quantity
    threshold: float
    at_least: bool


def _time(model: str, rank: int, contender: str) -> Quantity:
    return Quantity(model, rank, contender, "time_s")


def _memory(model: str, rank: int, contender: str) -> Quantity:
    return Quantity(model, rank, contender, "peak_bytes")


#: the targets, in report order
TARGETS = (
    *(
        Target(
            f"{model} D={rank}: time scipy-cg / ours-auto",
            _time(model, rank, "scipy-cg"),
            _time(model, rank, "ours-auto"),
            5.0,
            True,
        )
        for model, rank in PAPER_MODELS
    ),
    Target(
        "general D=128: time linear-operator / ours-auto",
        _time("general", 128, "linear-operator"),
        _time("general", 128, "ours-auto"),
        1.0,
        True,
    ),
    Target(
        "general D=128: peak memory linear-operator / ours-auto",
        _memory("general", 128, "linear-operator"),
        _memory("general", 128, "ours-auto"),
        1.0,
        True,
    ),
    Target(
        "D=128: time general / Potts (ours-auto)",
        _time("general", 128, "ours-auto"),
        _time("potts", 128, "ours-auto"),
        5.0,
        True,
    ),
    *(
        Target(
            f"{model} D={rank}: peak memory ours-auto / input bytes",
            _memory(model, rank, "ours-auto"),
            Quantity(model, rank, "ours-auto", "input_bytes"),
            3.0,
            False,
        )
        for model, rank in PAPER_MODELS
    ),
)


def targets(records: list[Record]) -> list[dict[str, Any]]:
    """Evaluate :data:`TARGETS` on ``records``.

    Returns
    -------
    list of dicts: ``target``, ``measured`` (a ratio, ``None`` when not measured),
    ``needed`` (e.g. "≥ 5"), ``pass`` (``None`` when not measured), and for time ratios
    ``measured_min``, the same ratio of the fastest samples (robust to foreign load).
    """
    fb = select(records, suite="paper", phase="forward_backward", **TARGET_CASE)

    def record(q: Quantity) -> Record | None:
        return one(fb, model=q.model, rank=q.rank, contender=q.contender)

    out = []
    for t in TARGETS:
        top, bottom = record(t.numerator), record(t.denominator)
        measured = ratio(value(top, t.numerator.key), value(bottom, t.denominator.key))
        passed = None
        if measured is not None:
            passed = measured >= t.threshold if t.at_least else measured <= t.threshold
        result = {
            "target": t.text,
            "measured": measured,
            "needed": f"{'≥' if t.at_least else '≤'} {t.threshold:g}",
            "pass": passed,
        }
        if t.numerator.key == t.denominator.key == "time_s":
            result["measured_min"] = ratio(value(top, "min_s"), value(bottom, "min_s"))
        out.append(result)
    return out


def crossover(records: list[Record]) -> list[dict[str, Any]]:
    """Where ``cg`` beats ``direct``: per (model, dtype, κ, phase) of the ``rank`` suite.

    Returns
    -------
    list of dicts: ``model``, ``dtype``, ``kappa``, ``phase``, ``points`` (a list of
    ``{"rank", "cg_s", "direct_s", "cg_over_direct"}``) and ``cg_faster_ranks``.
    """
    rank_records = select(records, suite="rank")
    groups = sorted({(r["model"], r["dtype"], r["kappa"], r["phase"]) for r in rank_records})
    out = []
    for model, dtype, kappa, phase in groups:
        group = select(rank_records, model=model, dtype=dtype, kappa=kappa, phase=phase)
        points = []
        for rank in sorted({r["rank"] for r in group}):
            cg = value(one(group, rank=rank, contender="ours-cg"), "time_s")
            direct = value(one(group, rank=rank, contender="ours-direct"), "time_s")
            points.append(
                {"rank": rank, "cg_s": cg, "direct_s": direct, "cg_over_direct": ratio(cg, direct)}
            )
        faster = [
            p["rank"] for p in points if p["cg_over_direct"] is not None and p["cg_over_direct"] < 1
        ]
        out.append(
            {
                "model": model,
                "dtype": dtype,
                "kappa": kappa,
                "phase": phase,
                "points": points,
                "cg_faster_ranks": faster,
            }
        )
    return out
