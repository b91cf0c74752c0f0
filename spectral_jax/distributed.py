"""Several processes (hosts) on JAX's own distributed runtime.

`initialize` starts `jax.distributed` from arguments or the environment (JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES, JAX_PROCESS_ID; with none of them and a cluster JAX detects, such as SLURM or Open MPI,
JAX's own detection), before any JAX computation. On CPU the collectives run over gloo. Every process then sees
every device of every process in `jax.devices()`, the meshes span them, and jit runs one SPMD program across
them. A process that dies stops sending heartbeats: the others abort within `heartbeat_seconds` (no hang).

Only process 0 writes records, figures and logs (`is_primary`); every process joins orbax's checkpoints, and every
process holds the whole of each small host value (batches of token ids), of which it places only its own
devices' rows (`host_to_global`).
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.experimental import multihost_utils

from spectral_jax.errors import UserError

HEARTBEAT_SECONDS = 20
_SECONDARY = False  # set by initialize in processes other than 0 (read without touching JAX's backends)


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    heartbeat_seconds: int = HEARTBEAT_SECONDS,
) -> bool:
    """Join the processes of one run; False (nothing to do) for a single process. Call before any JAX work."""
    coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
    if num_processes is None and os.environ.get("JAX_NUM_PROCESSES"):
        num_processes = int(os.environ["JAX_NUM_PROCESSES"])
    if process_id is None and os.environ.get("JAX_PROCESS_ID"):
        process_id = int(os.environ["JAX_PROCESS_ID"])
    if num_processes in (None, 1) and coordinator_address is None:
        return False
    if coordinator_address is not None and (num_processes is None or process_id is None):
        raise UserError(
            "--coordinator_address needs --num_processes and --process_id (or JAX_NUM_PROCESSES / JAX_PROCESS_ID)"
        )
    if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
        raise UserError(f"--process_id={process_id} must lie in [0, --num_processes={num_processes})")
    if os.environ.get("JAX_PLATFORMS", "").startswith("cpu") or not _has_accelerator_plugin():
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        heartbeat_timeout_seconds=heartbeat_seconds,
        shutdown_timeout_seconds=heartbeat_seconds,
    )
    global _SECONDARY
    _SECONDARY = jax.process_index() != 0
    return True


def _has_accelerator_plugin() -> bool:
    import importlib.util  # noqa: PLC0415 (only when starting several processes)

    return any(importlib.util.find_spec(m) for m in ("jax_cuda12_plugin", "jax_cuda13_plugin", "libtpu"))


def is_primary() -> bool:
    """True in process 0, the one that writes records, figures and logs (always true in a single process)."""
    return not _SECONDARY


def barrier(name: str) -> None:
    """Every process waits here for the others (no-op in a single process)."""
    if multiprocess():
        multihost_utils.sync_global_devices(name)


def multiprocess() -> bool:
    return jax.distributed.is_initialized() and jax.process_count() > 1


def host_to_global(values: np.ndarray, sharding) -> jax.Array:
    """A host array every process holds whole, as one global array with `sharding`: each process places only the
    rows of its own devices."""
    values = np.asarray(values)
    return jax.make_array_from_callback(values.shape, sharding, lambda index: values[index])


def put(values, sharding) -> jax.Array:
    """A host value every process holds whole, placed with `sharding`: `host_to_global` across processes,
    `jax.device_put` in one."""
    if multiprocess():
        return host_to_global(values, sharding)
    return jax.device_put(values, sharding)


def to_host(array) -> np.ndarray:
    """The whole value of a (possibly multi-process) array on this host."""
    if isinstance(array, jax.Array) and not array.is_fully_addressable:
        return np.asarray(multihost_utils.process_allgather(array, tiled=True))
    return np.asarray(array)


__all__ = [
    "HEARTBEAT_SECONDS",
    "barrier",
    "host_to_global",
    "initialize",
    "is_primary",
    "multiprocess",
    "put",
    "to_host",
]
