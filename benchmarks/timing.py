"""Timing helper shared by the benchmark scripts (run as ``python benchmarks/<name>.py``,
so this directory is on ``sys.path``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np


def median_time(fn: Callable[[], Any], repeats: int = 15) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def interleaved_medians(fns: dict[str, Callable[[], Any]], repeats: int = 15) -> dict[str, float]:
    """Median wall time of each function, timed in turns (one call of each per round,
    after one warm-up round), so that load changes on a shared machine hit every
    function alike; ``nan`` for a ``None`` entry."""
    live = {k: f for k, f in fns.items() if f is not None}
    for f in live.values():
        f()
    times: dict[str, list[float]] = {k: [] for k in live}
    for _ in range(repeats):
        for k, f in live.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    return {k: float(np.median(times[k])) if k in times else float("nan") for k in fns}
