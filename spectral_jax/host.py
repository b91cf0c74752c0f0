"""Host settings for training on CPU: glibc heap tuning and synchronous dispatch of CPU computations.

`tune_cpu_host()` is what the absl entry points and benchmarks call first; a notebook or script that trains on
CPU can call it too, before its first JAX computation (JAX reads the dispatch mode when it creates the CPU
client). Measured on the tiny training step (docs/benchmarks.md):
- glibc's trim threshold INT_MAX and no mmapped blocks (MALLOPT_SETTINGS): freed heap memory stays mapped
  instead of being returned to the kernel and faulted back in at the next step;
- synchronous CPU dispatch: the computation runs on the calling thread, whose glibc arena is the main heap.
  Dispatched asynchronously it ran on an XLA worker thread, whose arena grows in 64 MB heaps and so mmaps the
  forward + backward's 170 MB temporary block, and unmaps it again, at every step (~43,500 page faults, ~105 ms
  of kernel time per step). Python's dispatch is a small part of a CPU step (train_step.TrainStep passes flat
  leaf lists), so overlapping it with the computation is worth less than the faults.
"""

from __future__ import annotations

import ctypes
import sys

import jax
import jax.numpy as jnp

# glibc mallopt parameters. mallopt takes a C int: ctypes silently truncates a larger Python int (1 << 34 arrives
# as 0, which makes glibc return the heap top at every free), so the values are bounded by INT_MAX.
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


@jax.jit
def _busy(x_NxN):
    """~20 ms of matmuls on one CPU core: long enough that an asynchronous dispatch returns before it is done."""
    return jax.lax.fori_loop(0, 16, lambda _, y: jnp.tanh(y @ x_NxN), x_NxN)


def _dispatch_is_synchronous() -> bool:
    y = _busy(jnp.full((256, 256), 1e-3, jnp.float32))
    done = y.is_ready()
    y.block_until_ready()
    return done


def synchronous_cpu_dispatch() -> bool:
    """Run CPU computations on the calling thread (jax_cpu_enable_async_dispatch = False). JAX reads the mode
    once, when a first computation creates the CPU client, and has no public way to say whether that happened,
    so the effect is observed: True when a dispatched computation is finished by the time the call returns
    (the setting took effect now, or was already on); False, with the setting left as it was, when the client
    already dispatches asynchronously. Off CPU it sets the flag and returns True (it concerns the CPU only)."""
    before = jax.config.values["jax_cpu_enable_async_dispatch"]
    jax.config.update("jax_cpu_enable_async_dispatch", False)
    if jax.default_backend() != "cpu" or _dispatch_is_synchronous():
        return True
    jax.config.update("jax_cpu_enable_async_dispatch", before)
    return False


def tune_cpu_host(*, heap: bool = True, sync_dispatch: bool = True) -> dict[str, bool]:
    """Both settings above; returns which took effect, e.g. {"glibc_heap": True, "sync_dispatch": True}. Call it
    before the first JAX computation. Harmless on accelerators (CPU dispatch mode only; host heap only)."""
    return dict(glibc_heap=heap and tune_glibc_heap(), sync_dispatch=sync_dispatch and synchronous_cpu_dispatch())


__all__ = ["MALLOPT_SETTINGS", "tune_glibc_heap", "synchronous_cpu_dispatch", "tune_cpu_host"]
