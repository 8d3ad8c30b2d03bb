"""Training jobs — one dataset and seed each — run side by side in worker processes.

Each job trains every variant of one seed (:func:`~benchmarks.reproduce.training.train_seed`)
with one torch thread and scores it on the held-out scenes. Small convolutions use two
threads poorly: on the 2-core reference machine, two one-thread processes side by side ran
about 1.3× more training steps per second than one process with two threads (per-step
times of the unary, Potts and attractive variants). A job's
results depend on its seed only, never on how many workers run or in which order.
"""

from __future__ import annotations

import multiprocessing
import os
import queue as queues
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm

from .config import Config, variants
from .evaluation import mean_iou, oracle_miou, predict
from .networks import SegmentationNet, control_width
from .training import load_data, torch_settings, train_seed

#: training steps a worker reports at once (fewer messages, a smooth enough bar)
REPORT_EVERY = 10

_steps: Any = None  # the worker's queue to the parent's progress bar


@dataclass(frozen=True)
class JobResult:
    """What one job sends back: mIoU (%) per variant, the oracles' mIoU, and the trained
    weights where the parent asked for them (figures and timings)."""

    kind: str
    seed: int
    scores: dict[str, float]
    oracles: dict[str, float]
    weights: dict[str, dict] | None


class _StepCounter:
    """The part of tqdm's interface that training uses, forwarded to the parent's bar."""

    def __init__(self) -> None:
        self.pending = 0

    def update(self, n: int = 1) -> None:
        self.pending += n
        if self.pending >= REPORT_EVERY:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            _steps.put(self.pending)
            self.pending = 0


def _start_worker(steps: Any) -> None:
    global _steps
    _steps = steps


def _job(kind: str, seed: int, config: Config, keep: bool) -> JobResult:
    counter = _StepCounter()
    with torch_settings(threads=1):
        data = load_data(kind, config)
        base, models = train_seed(kind, seed, data, config, counter)
        counter.flush()
        labels = data.test_labels.numpy()
        scores = {
            name: mean_iou(predict(model, data.test_images), labels)
            for name, model in models.items()
        }
        oracles = oracle_miou(base, data)
    weights = {name: model.state_dict() for name, model in models.items()} if keep else None
    return JobResult(kind, seed, scores, oracles, weights)


def rebuild(weights: dict[str, dict], config: Config) -> dict[str, SegmentationNet]:
    """The trained variants of one job from their weights, in evaluation mode."""
    width = control_width(config)
    models = {}
    for variant in variants(config):
        model = SegmentationNet(variant, config, width)
        model.load_state_dict(weights[variant.name])
        models[variant.name] = model.eval()
    return models


def worker_count(config: Config) -> int:
    """One worker per CPU, at most one per job."""
    return max(1, min(len(config.datasets) * len(config.seeds), os.cpu_count() or 1))


def run_jobs(config: Config, total_steps: int, progress: bool, workers: int) -> Iterator[JobResult]:
    """Train and score every (dataset, seed) of ``config`` in ``workers`` processes,
    yielding the results as they come; the weights come back for the first seed of each
    dataset."""
    jobs = [(kind, seed) for kind in config.datasets for seed in config.seeds]
    context = multiprocessing.get_context("spawn")  # fork is unsafe once torch has threads
    steps = context.Queue()
    with (
        tqdm(total=total_steps, desc="training", unit="step", disable=not progress) as bar,
        ProcessPoolExecutor(
            workers, mp_context=context, initializer=_start_worker, initargs=(steps,)
        ) as pool,
    ):
        pending: set[Future] = {
            pool.submit(_job, kind, seed, config, seed == config.seeds[0]) for kind, seed in jobs
        }
        while pending:
            done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            _drain(steps, bar)
            for future in done:
                result = future.result()
                bar.set_postfix_str(f"done: {result.kind}, seed {result.seed}")
                yield result
        _drain(steps, bar)


def _drain(steps: Any, bar: tqdm) -> None:
    while True:
        try:
            bar.update(steps.get_nowait())
        except queues.Empty:
            return
