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
