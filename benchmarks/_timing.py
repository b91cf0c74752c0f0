"""Timing shared by the benchmark scripts (run as `python benchmarks/<name>.py`, so this imports as `_timing`)."""

from __future__ import annotations

import time

import numpy as np


def median_time(fn, repeats: int) -> float:
    """Median wall time of `fn()` over `repeats` calls after one warm-up / compile call. `fn` must block until
    its device work is done (e.g. end in `block_until_ready`)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))
