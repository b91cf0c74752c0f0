"""A memory plan: per-device bytes of training and probing a preset on a mesh, and the smallest mesh that fits.

Parameters, optimizer state and gradients come from `jax.eval_shape` (no allocation), each leaf divided by the
fsdp size when `mesh.fsdp_axis` splits it. Activations of one micro-batch per device come from XLA's memory
analysis of the compiled forward + backward (`Compiled.memory_analysis().temp_size_in_bytes`) on the backend at
hand, compiled from abstract shapes: exact for that backend's compiler, a proxy for another (run the plan on the
GPU to get the GPU compiler's number). Probes add the covariance accumulators (float32 hi/lo D x D per probed
layer and device), the per-sample gradient rows (M x P float32, split over the devices) and their M x M float64
Gram, next to one probe chunk's forward + backward.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from spectral_jax.mesh import fsdp_axis, parse_mesh
from spectral_jax.models import GPT, make_config
from spectral_jax.optim import group_learning_rates, make_optimizer
from spectral_jax.presets import get_preset

GIB = 2**30
HEADROOM = 0.9  # a plan fits when its largest phase needs at most this share of a device (XLA buffers, fragmentation)


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """Bytes per device of one preset on one mesh; `activations` is None when not compiled."""

    preset: str
    family: str
    mesh: str
    devices: int
    seq_len: int
    sequences_per_device: int
    params: int
    optimizer: int
    gradients: int
    activations: int | None
    probe_state: int  # covariance accumulators + per-sample gradient rows + Gram

    @property
    def train(self) -> int | None:
        if self.activations is None:
            return None
        return self.params + self.optimizer + self.gradients + self.activations

    @property
    def probe(self) -> int | None:
        if self.activations is None:
            return None
        return self.params + self.activations + self.probe_state  # one probe chunk of the same size

    def fits(self, device_bytes: float) -> bool | None:
        if self.train is None:
            return None
        return max(self.train, self.probe) <= HEADROOM * device_bytes


def sharded_bytes(tree, fsdp: int) -> int:
    """Per-device bytes of every array leaf, divided by `fsdp` where `fsdp_axis` splits the leaf."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        n = math.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize
        total += n // fsdp if fsdp_axis(tuple(leaf.shape), fsdp) is not None else n
    return total


@functools.lru_cache(maxsize=8)
def _abstract(preset: str, family: str):
    config = make_config(family, preset)
    graphdef, params = nnx.split(nnx.eval_shape(lambda: GPT(config, rngs=nnx.Rngs(0))), nnx.Param)
    tx = make_optimizer(config, group_learning_rates(config))
    opt_state = jax.eval_shape(tx.init, params)
    return config, graphdef, params, opt_state


@functools.lru_cache(maxsize=16)
def activation_bytes(preset: str, family: str, sequences: int) -> int:
    """Temporaries of the compiled forward + backward of `sequences` sequences (XLA memory analysis)."""
    config, graphdef, params, _ = _abstract(preset, family)

    def loss(p, x, y, window):
        return nnx.merge(graphdef, p).loss(x, y, window=window)

    tokens = jax.ShapeDtypeStruct((sequences, config.seq_len), jnp.int32)
    window = jax.ShapeDtypeStruct((), jnp.int32)
    compiled = jax.jit(jax.value_and_grad(loss)).lower(params, tokens, tokens, window).compile()
    return int(compiled.memory_analysis().temp_size_in_bytes)


def plan_memory(preset: str, family: str = "betterwin", mesh: str = "fsdp:8", *, activations: bool = True):
    """The MemoryPlan of `preset` trained on `mesh` (a spec as --mesh takes it; sizes multiply to the devices)."""
    sizes = parse_mesh(mesh) or {"data": 1}
    data, fsdp = sizes.get("data", 1), sizes.get("fsdp", 1)
    config, _, params, opt_state = _abstract(preset, family)
    p = get_preset(preset)
    per_device = max(1, math.ceil(p.train.resolved_micro_batch / (data * fsdp)))
    devices = data * fsdp
    d, m = config.d_model, p.probe.grad_samples
    covariance = 2 * d * d * 4 + 2 * d * 4  # hi + lo (D, D) and the mean, float32, per probed layer and device
    rows = math.ceil(m / devices) * d * d * 4  # W_O's per-sample gradient rows, split over the devices
    gram = m * m * 8
    return MemoryPlan(
        preset=preset,
        family=family,
        mesh=mesh,
        devices=devices,
        seq_len=config.seq_len,
        sequences_per_device=per_device,
        params=sharded_bytes(params, fsdp),
        optimizer=sharded_bytes(opt_state, fsdp),
        gradients=sharded_bytes(params, fsdp),
        activations=activation_bytes(preset, family, per_device) if activations else None,
        probe_state=covariance + rows + gram,
    )


def smallest_mesh(
    preset: str,
    family: str = "betterwin",
    device_gib: float = 80.0,
    *,
    max_devices: int = 1024,
    log: Callable[[str], None] | None = None,
) -> MemoryPlan | None:
    """The plan of the smallest fsdp:N (N = 1, 2, 4, ...) whose training and probes fit devices of
    `device_gib` GiB (with HEADROOM); None when none up to `max_devices` does (one sequence's activations alone
    exceed a device: shorten the sequences)."""
    n = 1
    while n <= max_devices:
        plan = plan_memory(preset, family, f"fsdp:{n}")
        if log:
            log(f"{preset} fsdp:{n}: train {plan.train / GIB:.1f} GiB, probes {plan.probe / GIB:.1f} GiB per device")
        if plan.fits(device_gib * GIB):
            return plan
        if plan.activations + plan.probe_state > HEADROOM * device_gib * GIB:
            return None  # what more devices cannot shrink already overflows
        n *= 2
    return None


def format_plan(plan: MemoryPlan, device_gib: float | None = None) -> str:
    """A small table of one plan, GiB per device."""
    g = lambda b: "n/a" if b is None else f"{b / GIB:8.2f}"  # noqa: E731
    lines = [
        f"{plan.family} {plan.preset} on {plan.mesh} ({plan.devices} devices): T = {plan.seq_len}, "
        f"{plan.sequences_per_device} sequence(s) per device per micro-batch",
        f"  parameters      {g(plan.params)} GiB",
        f"  optimizer state {g(plan.optimizer)} GiB",
        f"  gradients       {g(plan.gradients)} GiB",
        f"  activations     {g(plan.activations)} GiB  (XLA memory analysis on {jax.default_backend()})",
        f"  training        {g(plan.train)} GiB",
        f"  probes          {g(plan.probe)} GiB  (covariance, per-sample gradient rows and Gram: "
        f"{plan.probe_state / GIB:.2f} GiB)",
    ]
    if device_gib is not None and plan.train is not None:
        lines.append(
            f"  fits a {device_gib:g} GiB device (<= {HEADROOM:.0%}): {'yes' if plan.fits(device_gib * GIB) else 'no'}"
        )
    return "\n".join(lines)


__all__ = ["HEADROOM", "MemoryPlan", "activation_bytes", "format_plan", "plan_memory", "sharded_bytes", "smallest_mesh"]
