"""Training runs side by side in worker processes, one thread each.

Small convolutions use two threads poorly: on the 2-core reference machine one LR-ASPP
training step took 0.13 s at one thread and 0.18 s at two (DeepLabV3: 0.30 s at both), so
two one-thread workers train about twice as fast as one process. The workers are spawned,
not forked (TensorFlow and torch's thread pools do not survive a fork), and each pins
torch, TensorFlow and the BLAS pools to one thread and makes torch deterministic, so that
a run's result does not depend on which worker trains it. Every run is seeded on its own.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

from tqdm import tqdm

from .config import Config, Job, jobs
from .records import failed_record

#: relative cost of a run (measured one-thread step times, tracing included), so that the
#: longest runs start first and the last ones to finish are short
COST = {"deeplabv3": 3.0, "lraspp": 1.0, "keras": 1.0}

_limits: Any = None  # the worker's BLAS limit, kept alive for the worker's lifetime


def _start_worker() -> None:
    global _limits
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    _limits = threadpool_limits(limits=1, user_api="blas")


def run_job(job: Job, config: Config) -> dict[str, Any]:
    """Train and test one run in this process (:func:`.torch_job.run` or
    :func:`.keras_job.run`); TensorFlow is imported only by workers that get a Keras run.
    A run that raises is recorded as failed, so that one error does not lose the others."""
    if job.network == "keras":
        from .keras_job import run
    else:
        from .torch_job import run
    try:
        return run(job, config)
    except Exception as error:  # reported in the record and the tables
        return failed_record(job, error)


def run_all(config: Config, progress: bool = True) -> list[dict[str, Any]]:
    """Every run of ``config`` on ``config.workers`` workers; the records in the order of
    :func:`~benchmarks.heads.config.jobs`."""
    todo = jobs(config)
    order = {job: index for index, job in enumerate(todo)}
    context = multiprocessing.get_context("spawn")
    records: list[dict[str, Any]] = []
    with (
        ProcessPoolExecutor(config.workers, mp_context=context, initializer=_start_worker) as pool,
        tqdm(total=len(todo), desc="heads", unit="run", disable=not progress) as bar,
    ):
        started = sorted(todo, key=lambda job: -COST[job.network])
        futures = {pool.submit(run_job, job, config): job for job in started}
        for future in as_completed(futures):
            records.append(future.result())
            job = futures[future]
            bar.set_postfix_str(f"{job.network} {job.variant} {job.optimizer} seed {job.seed}")
            bar.update()
    return sorted(
        records, key=lambda r: order[Job(r["network"], r["variant"], r["optimizer"], r["seed"])]
    )
