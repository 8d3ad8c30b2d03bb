"""Wall-clock timing of benchmark calls: repeats after a warm-up, and rounds that interleave
the compared methods.

Both read ``time.perf_counter``. On a shared machine foreign load comes in bursts, so every
reported time is a median (or the fastest sample beside it), never a mean.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from typing import Any


def time_call(
    fn: Callable[[], Any],
    *,
    repeats: int,
    budget_s: float = math.inf,
    min_time_s: float = 0.2,
    max_repeats: int = 25,
    sync: Callable[[], None] = lambda: None,
) -> tuple[list[float], Any]:
    """Wall times (seconds) of ``fn()`` after one warm-up call.

    The warm-up call's result is returned. It is also the only sample when it alone took
    longer than ``budget_s`` (a second run would teach nothing: nothing is compiled or
    cached across calls). Otherwise calls repeat until there are ``repeats`` samples and
    ``min_time_s`` has been spent, up to ``max_repeats`` samples, and never past
    ``budget_s``: millisecond calls get many samples, because on a shared machine a
    preempted call costs a whole scheduler time slice (a bimodal distribution whose median
    needs more than a handful of samples to settle).

    Parameters
    ----------
    fn : callable
        The timed call, without arguments.
    repeats : int
        Samples wanted at least (within the budget).
    budget_s, min_time_s : float
        Time that the samples may spend at most and should spend at least.
    max_repeats : int
        Samples at most.
    sync : callable
        Called after every call, before the clock is read: waits for queued device work.

    Returns
    -------
    samples : list of float
    result
        What the warm-up call returned.
    """
    start = time.perf_counter()
    result = fn()
    sync()
    first = time.perf_counter() - start
    if first > budget_s:
        return [first], result
    samples: list[float] = []
    spent = first
    while len(samples) < max_repeats and (
        not samples or (spent < budget_s and (len(samples) < repeats or spent < min_time_s))
    ):
        start = time.perf_counter()
        fn()
        sync()
        elapsed = time.perf_counter() - start
        samples.append(elapsed)
        spent += elapsed
    return samples, result


def median_ms(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall time (ms) of exactly ``repeats`` calls of ``fn()`` after one warm-up."""
    samples, _ = time_call(fn, repeats=repeats, min_time_s=0.0, max_repeats=repeats)
    return 1e3 * statistics.median(samples)


def interleaved_times(calls: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """Wall times (seconds) of each call over ``repeats`` rounds, after one warm-up each.

    Every round calls each method once, in an order rotated from round to round, so that
    foreign load on a shared machine hits all methods alike and their ratios stay
    comparable.
    """
    names = list(calls)
    for name in names:
        calls[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            calls[name]()
            times[name].append(time.perf_counter() - start)
    return times


def median_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float]:
    """A distribution-free confidence interval for the median of ``values``.

    The order statistics ``x_(j) ≤ x_(n+1−j)`` cover the median with probability
    ``1 − 2·P(B ≤ j − 1)``, B ~ Binomial(n, ½), whatever the distribution: j is the largest
    index that keeps that at least ``confidence``. Few values give (min, max).
    """
    from scipy.stats import binom

    ordered = sorted(values)
    n = len(ordered)
    j = max(int(binom.ppf((1.0 - confidence) / 2.0, n, 0.5)), 1)
    return ordered[j - 1], ordered[n - j]
