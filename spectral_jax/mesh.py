"""Device meshes for training and the sharding rules of parameters, optimizer state and batches.

A mesh spec names sizes of the two axes, `data` (batch split, parameters replicated) and `fsdp` (batch split AND
each weight split over its largest divisible axis): "data:4", "data:2,fsdp:4", "fsdp:8". The empty spec puts
every device on `data`. JAX's SPMD partitioner does the rest: the jitted step runs on arrays placed with these
shardings and inserts the collectives (all-reduce of gradients over `data`, all-gather of weights and
reduce-scatter of gradients over `fsdp`); no collective is written by hand. A 1-device mesh is no mesh: the
training step then takes exactly its single-device path.
"""

from __future__ import annotations

import math
import re

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from spectral_jax.errors import UserError

AXES = ("data", "fsdp")
BATCH_AXES = AXES  # the batch's leading axis is split over both


def parse_mesh(spec: str) -> dict[str, int]:
    """{"data": n, "fsdp": m} from "data:n,fsdp:m" (either part optional); {} for "" (every device on data)."""
    spec = (spec or "").strip()
    if not spec:
        return {}
    sizes: dict[str, int] = {}
    for part in spec.split(","):
        m = re.fullmatch(r"\s*(\w+)\s*:\s*(\d+)\s*", part)
        if not m or m.group(1) not in AXES or int(m.group(2)) < 1 or m.group(1) in sizes:
            raise UserError(
                f"--mesh={spec!r}: expected comma-separated axis:size with axes {' and '.join(AXES)} once each and "
                "sizes >= 1, e.g. data:4 or data:2,fsdp:4"
            )
        sizes[m.group(1)] = int(m.group(2))
    return sizes


def make_mesh(spec: str = "", devices=None) -> Mesh:
    """The ("data", "fsdp") mesh of `spec` over the first prod(sizes) of `devices` (default: every device of
    every process; the empty spec takes them all on `data`)."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = parse_mesh(spec) or {"data": len(devices)}
    shape = tuple(sizes.get(a, 1) for a in AXES)
    if math.prod(shape) > len(devices):
        raise UserError(
            f"--mesh={spec!r} needs {math.prod(shape)} devices, but {len(devices)} are visible "
            f"({devices[0].platform}); give sizes whose product is at most {len(devices)}"
        )
    return Mesh(np.asarray(devices[: math.prod(shape)]).reshape(shape), AXES)


def probe_mesh(spec: str = "", devices=None) -> Mesh | None:
    """The training mesh's devices as one 1-D "data" axis, over which the probes spread their sequences (the
    covariance accumulator and the per-sample gradient chunks); None for one device."""
    mesh = make_mesh(spec, devices)
    return None if is_trivial(mesh) else Mesh(mesh.devices.reshape(-1), ("data",))


def is_trivial(mesh: Mesh | None) -> bool:
    return mesh is None or mesh.devices.size == 1


def fsdp_axis(shape, fsdp: int) -> int | None:
    """The axis of a weight split over fsdp: the largest one divisible by `fsdp` (the first on ties); None for
    scalars, vectors smaller than fsdp, or no divisible axis (then the leaf is replicated)."""
    if fsdp <= 1 or not shape:
        return None
    best = None
    for i, n in enumerate(shape):
        if n % fsdp == 0 and n >= fsdp and (best is None or n > shape[best]):
            best = i
    return best


def leaf_sharding(mesh: Mesh, shape) -> NamedSharding:
    """Parameters and optimizer state: fsdp on `fsdp_axis`, replicated over data (and everywhere else)."""
    axis = fsdp_axis(tuple(shape), mesh.shape["fsdp"])
    spec = [None] * len(shape)
    if axis is not None:
        spec[axis] = "fsdp"
    return NamedSharding(mesh, P(*spec))


def batch_sharding(mesh: Mesh, rows: int) -> NamedSharding:
    """A batch's leading axis split over data x fsdp; replicated when `rows` does not divide (a small tier)."""
    if rows % (mesh.shape["data"] * mesh.shape["fsdp"]):
        return NamedSharding(mesh, P())
    return NamedSharding(mesh, P(BATCH_AXES))


def shard_tree(mesh: Mesh, tree):
    """Every array leaf placed with `leaf_sharding` (by shape, so optimizer moments follow their parameter)."""
    return jax.tree.map(lambda x: jax.device_put(x, leaf_sharding(mesh, np.shape(x))), tree)


def describe(mesh: Mesh | None) -> str:
    if mesh is None:
        return "1 device"
    return ", ".join(f"{a}:{mesh.shape[a]}" for a in AXES) + f" ({mesh.devices.size} x {mesh.devices.flat[0].platform})"


__all__ = [
    "AXES",
    "batch_sharding",
    "describe",
    "fsdp_axis",
    "is_trivial",
    "leaf_sharding",
    "make_mesh",
    "parse_mesh",
    "probe_mesh",
]
