"""What one training run reports, the same for both frameworks."""

from __future__ import annotations

import math
import statistics
import warnings
from dataclasses import asdict
from typing import Any

import numpy as np

from ..metrics import confusion, mean_iou
from .config import Job
from .scenes import NUM_LABELS

#: messages of the library's warnings kept per run (their count is kept in full)
KEPT_WARNINGS = 3


def miou_percent(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Mean IoU (points) over a split, from label maps of equal shape."""
    return 100.0 * mean_iou(confusion(predicted, truth, NUM_LABELS))


def run_record(
    job: Job,
    *,
    losses: list[float],
    grad_norms: list[float],
    step_seconds: list[float],
    miou: float,
    state: dict[str, Any],
    warnings: list[str],
    oracles: dict[str, float] | None = None,
) -> dict[str, Any]:
    """The JSON record of a finished run.

    Parameters
    ----------
    job : Job
    losses, grad_norms : list of float
        Training loss and gradient norm (all parameters, before the update) of every step
        taken; a run stops at its first non-finite loss.
    step_seconds : list of float
        Wall time of every step; the first (warm-up: allocations, graph tracing) is left
        out of the median.
    miou : float
        Test mean IoU, points.
    state : dict
        :func:`~benchmarks.heads.head_state.head_state` of the trained head.
    warnings : list of str
        Messages of the warnings the library raised during training.
    oracles : dict, optional
        Test mIoU of each ground-truth oracle on the run's unaries
        (:func:`~benchmarks.heads.oracles.oracle_mious`): the control runs only.
    """
    timed = step_seconds[1:] or step_seconds
    measured = {} if oracles is None else {"oracles": oracles}
    return {
        **asdict(job),
        "status": "ok",
        "miou": miou,
        "losses": losses,
        "max_loss": max(losses),
        "max_grad_norm": max(grad_norms),
        "finite": all(math.isfinite(v) for v in losses + grad_norms),
        "ms_per_step": 1e3 * statistics.median(timed),
        "lam": state["lam"],
        "strength": state["strength"],
        "warnings": len(warnings),
        "warning_messages": sorted(set(warnings))[:KEPT_WARNINGS],
        **measured,
    }


def library_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    """Messages of the warnings that came from the library (its own categories, or raised
    from its code)."""
    return [
        str(w.message)
        for w in caught
        if w.category.__module__.startswith("lowrank_gcrf") or "lowrank_gcrf" in w.filename
    ]


def unavailable_record(job: Job, reason: str) -> dict[str, Any]:
    """The record of a variant that this version of the library cannot build."""
    return {**asdict(job), "status": "unavailable", "reason": reason}


def failed_record(job: Job, error: Exception) -> dict[str, Any]:
    """The record of a run that raised: the other runs go on, the tables say it failed."""
    return {**asdict(job), "status": "failed", "reason": f"{type(error).__name__}: {error}"}
