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


def interleaved_medians(fns: dict, repeats: int) -> tuple[dict, dict]:
    """({name: median seconds}, {name: first result}) of blocking callables: each is called once (warm-up /
    compile; its result is returned), then all are timed in turns, `repeats` rounds in a rotating order so that
    no callable always follows the same neighbour and load changes on a shared machine hit them alike."""
    results = {name: fn() for name, fn in fns.items()}
    times = {name: [] for name in fns}
    order = list(fns)
    for r in range(repeats):
        for name in order[r % len(order) :] + order[: r % len(order)]:
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
    return {name: float(np.median(t)) for name, t in times.items()}, results


def run_one_step_late(step_fn, graphdef, state, batches, window) -> tuple:
    """Train on `batches` (one micro-batch per step) reading each step's loss after dispatching the next, as
    `spectral_jax.train` does; returns the new (params, opt_state)."""
    pending = None
    for b in batches:
        params, opt_state, loss = step_fn(graphdef, *state, [b], window)
        state = (params, opt_state)
        if pending is not None:
            float(pending)
        pending = loss
    float(pending)
    return state
