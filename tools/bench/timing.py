"""Timing of repeated calls for the benchmarks: one warm-up call, then per-call times."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np


def best_rate(func: Callable[[], Any], n: int) -> tuple[float, float]:
    """(calls/s over n calls, median seconds per call), after one warm-up call."""
    func()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        func()
        times.append(time.perf_counter() - t0)
    return n / sum(times), float(np.median(times))


def median_s(func: Callable[[], Any], repeats: int) -> float:
    """Median seconds of `repeats` calls (at least one) after one warm-up call."""
    return best_rate(func, max(1, repeats))[1]
