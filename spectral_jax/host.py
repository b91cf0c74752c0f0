"""Host settings for training on CPU: glibc heap tuning and synchronous dispatch of CPU computations.

`tune_cpu_host()` is what the absl entry points and benchmarks call first; a notebook or script that trains on
CPU can call it too, before its first JAX computation (JAX reads the dispatch mode when it creates the CPU
client). Measured on the tiny training step (BUILD_NOTES.md):
- glibc's trim threshold INT_MAX and no mmapped blocks (MALLOPT_SETTINGS): freed heap memory stays mapped
  instead of being returned to the kernel and faulted back in at the next step;
- synchronous CPU dispatch: the computation runs on the calling thread, whose glibc arena is the main heap.
  Dispatched asynchronously it ran on an XLA worker thread, whose arena grows in 64 MB heaps and so mmaps the
  forward + backward's 170 MB temporary block, and unmaps it again, at every step (~43,500 page faults, ~105 ms
  of kernel time per step). Python's dispatch is ~1.5 ms of a ~200 ms step (train.TrainStep passes flat leaf
  lists), so overlapping it with the computation is worth less than the faults.
"""

from __future__ import annotations

import ctypes
import sys

import jax

# glibc mallopt parameters. mallopt takes a C int: a larger Python int was silently truncated by ctypes (until
# 2026-12-04 the trim threshold was 1 << 34, which arrived as 0, so glibc returned the heap top at every free).
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
INT_MAX = 2**31 - 1
MALLOPT_SETTINGS = (
    (M_MMAP_MAX, 0),  # large blocks from the heap, not from fresh mmaps
    (M_TRIM_THRESHOLD, INT_MAX),  # never give the heap top back
)


def tune_glibc_heap() -> bool:
    """Apply MALLOPT_SETTINGS (same effect as MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647 in the
    environment). True when glibc took every setting; False off Linux or without glibc's mallopt."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return all([mallopt(param, value) == 1 for param, value in MALLOPT_SETTINGS])


def synchronous_cpu_dispatch() -> bool:
    """Run CPU computations on the calling thread (jax_cpu_enable_async_dispatch = False). JAX reads the mode
    once, when a first computation creates the CPU client: True when the flag is set now, before that, or was
    already set; False (nothing changed) when the client exists with asynchronous dispatch."""
    from jax._src import xla_bridge  # no public API says whether the backends exist yet

    if xla_bridge.backends_are_initialized():
        return jax.config.values["jax_cpu_enable_async_dispatch"] is False
    jax.config.update("jax_cpu_enable_async_dispatch", False)
    return True


def tune_cpu_host(*, heap: bool = True, sync_dispatch: bool = True) -> dict[str, bool]:
    """Both settings above; returns which took effect, e.g. {"glibc_heap": True, "sync_dispatch": True}. Call it
    before the first JAX computation. Harmless on accelerators (CPU dispatch mode only; host heap only)."""
    return dict(glibc_heap=heap and tune_glibc_heap(), sync_dispatch=sync_dispatch and synchronous_cpu_dispatch())


__all__ = ["MALLOPT_SETTINGS", "tune_glibc_heap", "synchronous_cpu_dispatch", "tune_cpu_host"]
