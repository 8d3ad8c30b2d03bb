"""The summary of a run: per network, optimizer and variant over the seeds, the noise floor
measured by the null variant, and the targets.

Every difference is paired: a variant against the control of the same network, optimizer
and seed (same trunk initialisation, same batches). The null variant is the control with
another initialisation of its 1×1 convolution, so null − control is what a change that
does nothing useful moves the test mIoU by. The noise floor of a mean over n paired
differences is RMS(null − control)/√n (a standard error), the RMS pooled over the
optimizers of a network (or over every network for the mean of all runs).
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from .config import HEAD_MODELS, Config

#: the target: a head's max training loss at most this many times the control's, every run
LOSS_RATIO_TARGET = 1.5
#: the goal: the heads' mean gain over all runs (points), with a noise floor below it
GAIN_GOAL = 1.0

Key = tuple[str, str, str, int]  # network, optimizer, variant, seed


def _index(records: list[dict[str, Any]]) -> dict[Key, dict[str, Any]]:
    return {(r["network"], r["optimizer"], r["variant"], r["seed"]): r for r in records}


def _rms(values: list[float]) -> float:
    return math.sqrt(statistics.fmean(v * v for v in values)) if values else math.nan


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def _mean_strength(states: list[dict[str, float] | None]) -> dict[str, float] | None:
    if any(s is None for s in states):
        return None
    return {name: statistics.fmean(s[name] for s in states) for name in states[0]}


def variant_row(runs: list[dict[str, Any]], controls: list[dict[str, Any]]) -> dict[str, Any]:
    """A variant over the seeds, against the control of each seed."""
    lams = [r["lam"] for r in runs]
    return {
        "status": "ok",
        "miou": [r["miou"] for r in runs],
        "miou_mean": statistics.fmean(r["miou"] for r in runs),
        "miou_std": _std([r["miou"] for r in runs]),
        "minus_control": [r["miou"] - c["miou"] for r, c in zip(runs, controls, strict=True)],
        "max_loss": max(r["max_loss"] for r in runs),
        "loss_ratio": max(
            r["max_loss"] / c["max_loss"] for r, c in zip(runs, controls, strict=True)
        ),
        "max_grad_norm": max(r["max_grad_norm"] for r in runs),
        "ms_per_step": statistics.median(r["ms_per_step"] for r in runs),
        "lam": None if None in lams else statistics.fmean(lams),
        "strength": _mean_strength([r["strength"] for r in runs]),
        "warnings": sum(r["warnings"] for r in runs),
        "finite": all(r["finite"] for r in runs),
    }


def summarise(records: list[dict[str, Any]], config: Config) -> dict[str, Any]:
    """Rows per (network, optimizer, variant), noise floors and targets.

    Returns
    -------
    dict
        ``rows``: list of dicts (network, optimizer, variant and :func:`variant_row`'s
        fields, or the ``status`` "unavailable" or "failed" of a run and its ``reason``);
        ``floors``: per network and ``"all"``, the null − control differences, their RMS
        and the floor of a mean over the seeds (over every run for ``"all"``);
        ``targets``: per head model.
    """
    runs = _index(records)
    seeds = config.seeds
    rows, nulls = [], {}
    for network in config.networks:
        for optimizer in config.optimizers:
            controls = [runs[(network, optimizer, "control", s)] for s in seeds]
            for variant in config.variants:
                found = [runs.get((network, optimizer, variant, s)) for s in seeds]
                if all(r is None for r in found):
                    continue
                row = {"network": network, "optimizer": optimizer, "variant": variant}
                # without its control, no variant of the cell can be compared
                missing = [r for r in found + controls if r["status"] != "ok"]
                if missing:
                    rows.append(
                        {**row, "status": missing[0]["status"], "reason": missing[0]["reason"]}
                    )
                    continue
                rows.append({**row, **variant_row(found, controls)})
                if variant == "null":
                    nulls.setdefault(network, []).extend(rows[-1]["minus_control"])
    floors = {
        network: {"diffs": d, "rms": _rms(d), "floor": _rms(d) / math.sqrt(len(seeds))}
        for network, d in nulls.items()
    }
    every = [d for diffs in nulls.values() for d in diffs]
    floors["all"] = {
        "diffs": every,
        "rms": _rms(every),
        "floor": _rms(every) / math.sqrt(len(every)) if every else math.nan,
    }
    return {"rows": rows, "floors": floors, "targets": targets(rows, floors)}


def targets(rows: list[dict[str, Any]], floors: dict[str, Any]) -> dict[str, Any]:
    """Per head model with results: the worst loss ratio, the (network, optimizer) cells
    whose mean is below the control's minus the floor, and the mean gain over every run."""
    out = {}
    for model in HEAD_MODELS:
        mine = [r for r in rows if r["variant"] == model and r["status"] == "ok"]
        if not mine:
            continue
        gains = [d for r in mine for d in r["minus_control"]]
        below = [
            f"{r['network']} {r['optimizer']}"
            for r in mine
            if statistics.fmean(r["minus_control"])
            < -floors.get(r["network"], {}).get("floor", math.nan)
        ]
        worst = max(r["loss_ratio"] for r in mine)
        mean_gain = statistics.fmean(gains)
        out[model] = {
            "worst_loss_ratio": worst,
            "below_floor": below,
            "mean_gain": mean_gain,
            "floor_all": floors["all"]["floor"],
            "met": worst <= LOSS_RATIO_TARGET and not below and mean_gain > 0.0,
            "goal_met": mean_gain >= GAIN_GOAL and floors["all"]["floor"] < GAIN_GOAL,
        }
    return out
