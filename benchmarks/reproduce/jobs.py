"""Training jobs run side by side in worker processes.

A run has two kinds of job: the phase-1 unary network of one (dataset, seed), which also
scores the pooling oracles on it, then — once it is trained — one job per variant of that
seed (phases 2 and 3, then the held-out mIoU). Small jobs keep every worker busy until the
end: with one job per (dataset, seed), the 9 jobs of the default run on 2 workers took
5 rounds, the last one on a single core. Each job uses one torch thread: small
convolutions use two threads poorly, and on the 2-core reference machine two one-thread
processes side by side ran about 1.3× more training steps per second than one process with
two threads (per-step times of the unary, Potts and attractive variants). Every variant is
seeded on its own, so any split and order trains the same models up to floating-point
rounding, which differs between processes and which training amplifies (docs/reproduction.md).
"""

from __future__ import annotations

import multiprocessing
import os
import queue as queues
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from functools import cache
from typing import Any

from tqdm import tqdm

from .config import Config, Variant, variants
from .evaluation import miou_percent, oracle_miou, predict
from .networks import SegmentationNet, control_width
from .training import Data, load_data, torch_settings, train_unary, train_variant

#: training steps a worker reports at once (fewer messages, a smooth enough bar)
REPORT_EVERY = 10

_steps: Any = None  # the worker's queue to the parent's progress bar


@dataclass(frozen=True)
class JobResult:
    """What the jobs of one (dataset, seed) send back, gathered: mIoU (%) per variant, the
    oracles' mIoU, and the trained weights where the parent asked for them (figures and
    timings)."""

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


@cache
def _data(kind: str, config: Config) -> Data:
    # Each worker generates a dataset once and keeps it for the jobs that follow.
    return load_data(kind, config)


def _unary_job(kind: str, seed: int, config: Config) -> tuple[dict, dict[str, float]]:
    """Phase 1 of one seed: the unary network's weights and the oracles' mIoU on it."""
    counter = _StepCounter()
    with torch_settings(threads=1):
        data = _data(kind, config)
        base = train_unary(kind, seed, data, config, counter)
        counter.flush()
        return base.unary.state_dict(), oracle_miou(base, data)


def _variant_job(
    kind: str, seed: int, variant: Variant, unary: dict, config: Config, keep: bool
) -> tuple[float, dict | None]:
    """Phases 2 and 3 of one variant: its held-out mIoU, and its weights if ``keep``."""
    counter = _StepCounter()
    with torch_settings(threads=1):
        data = _data(kind, config)
        model = train_variant(kind, seed, variant, unary, data, config, counter)
        counter.flush()
        score = miou_percent(predict(model, data.test_images), data.test_labels.numpy())
    return score, model.state_dict() if keep else None


def rebuild(weights: dict[str, dict], config: Config) -> dict[str, SegmentationNet]:
    """The trained variants of one (dataset, seed) from their weights, in evaluation mode."""
    width = control_width(config)
    models = {}
    for variant in variants(config):
        model = SegmentationNet(variant, config, width)
        model.load_state_dict(weights[variant.name])
        models[variant.name] = model.eval()
    return models


def worker_count(config: Config) -> int:
    """One worker per CPU, at most one per variant job."""
    jobs = len(config.datasets) * len(config.seeds) * len(variants(config))
    return max(1, min(jobs, os.cpu_count() or 1))


def run_jobs(config: Config, total_steps: int, progress: bool, workers: int) -> Iterator[JobResult]:
    """Train and score every variant of every (dataset, seed) of ``config`` in ``workers``
    processes, yielding each (dataset, seed) as soon as all its variants are done; the
    weights come back for the first seed of each dataset."""
    context = multiprocessing.get_context("spawn")  # fork is unsafe once torch has threads
    steps = context.Queue()
    names = [variant.name for variant in variants(config)]
    scores: dict[tuple[str, int], dict[str, float]] = {}
    weights: dict[tuple[str, int], dict[str, dict]] = {}
    oracles: dict[tuple[str, int], dict[str, float]] = {}
    with (
        tqdm(total=total_steps, desc="training", unit="step", disable=not progress) as bar,
        ProcessPoolExecutor(
            workers, mp_context=context, initializer=_start_worker, initargs=(steps,)
        ) as pool,
    ):
        tasks: dict[Future, tuple] = {
            pool.submit(_unary_job, kind, seed, config): (kind, seed, None)
            for kind in config.datasets
            for seed in config.seeds
        }
        while tasks:
            done, _ = wait(tasks, timeout=0.5, return_when=FIRST_COMPLETED)
            _drain(steps, bar)
            for future in done:
                kind, seed, variant = tasks.pop(future)
                key = (kind, seed)
                keep = seed == config.seeds[0]
                if variant is None:
                    unary, oracles[key] = future.result()
                    scores[key] = {}
                    for v in variants(config):
                        job = pool.submit(_variant_job, kind, seed, v, unary, config, keep)
                        tasks[job] = (kind, seed, v)
                    continue
                scores[key][variant.name], state = future.result()
                if keep:
                    weights.setdefault(key, {})[variant.name] = state
                if len(scores[key]) == len(names):
                    bar.set_postfix_str(f"done: {kind}, seed {seed}")
                    yield JobResult(kind, seed, scores[key], oracles[key], weights.get(key))
        _drain(steps, bar)


def _drain(steps: Any, bar: tqdm) -> None:
    while True:
        try:
            bar.update(steps.get_nowait())
        except queues.Empty:
            return
