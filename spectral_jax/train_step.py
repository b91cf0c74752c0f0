"""One optimizer step and its schedules: the jitted programs, gradient accumulation, the throughput timer.

`Schedules` turns a family's reference step counts into this tier's (token-normalised to B, docs/method.md §3.1);
`TrainStep` is `accum` jitted forward/backward passes over micro-batches and one optimizer update, with the
parameters and optimizer state passed as flat leaf lists (jit dispatches those in < 1 ms; nnx.State and optax
pytrees with a hashed graphdef cost ~5 ms of Python per call). The compiled programs are cached at module level
so every tier of a sweep, every LR candidate and every resumed run in a process share them.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from spectral_jax import distributed
from spectral_jax.data.shards import TokenDataset
from spectral_jax.mesh import batch_sharding, is_trivial, leaf_sharding, shard_tree
from spectral_jax.models import attention
from spectral_jax.models.config import ModelConfig
from spectral_jax.models.gpt import GPT
from spectral_jax.optim import group_learning_rates, make_optimizer, scaled_steps, schedule_steps
from spectral_jax.train_config import TrainConfig


@dataclasses.dataclass(frozen=True)
class Schedules:
    """This tier's step counts: the family's reference counts times step_scale = B0 / B * schedule_scale, and
    the token cadences of TrainConfig in optimizer steps."""

    step_scale: float
    window_warmup_steps: int
    tokens_per_step: int
    eval_every_steps: int
    checkpoint_every_steps: int
    max_steps: int

    @classmethod
    def build(cls, config: ModelConfig, tc: TrainConfig) -> Schedules:
        ref = config.optim.reference_batch
        step_scale = ref / tc.batch_size * tc.schedule_scale
        tps = tc.batch_size * config.seq_len
        return cls(
            step_scale=step_scale,
            window_warmup_steps=scaled_steps(config.window_warmup_steps, step_scale),
            tokens_per_step=tps,
            eval_every_steps=max(1, round(tc.eval_every_tokens / tps)),
            checkpoint_every_steps=max(1, round(tc.checkpoint_every_tokens / tps)),
            max_steps=max(1, math.ceil(tc.max_tokens / tps)),
        )

    def window(self, config: ModelConfig, step: int) -> int:
        progress = 1.0 if self.window_warmup_steps <= 0 else min(step / self.window_warmup_steps, 1.0)
        return attention.scheduled_window(config, progress)


# ---- jitted pieces (cached at module level so every tier of a sweep shares the compiled programs) ----------
@functools.lru_cache(maxsize=32)
def _leaf_programs(graphdef, params_def):
    """(loss_and_grad, eval_loss) of one model structure, jitted over its parameters' leaves (params_def's
    order): loss_and_grad(leaves, x, y, window) -> (mean loss, gradient leaves); eval_loss -> mean loss."""

    def loss(leaves, x_BxT, y_BxT, window):
        return nnx.merge(graphdef, jax.tree.unflatten(params_def, leaves)).loss(x_BxT, y_BxT, window=window)

    return jax.jit(jax.value_and_grad(loss)), jax.jit(loss)


@jax.jit
def _accumulate(acc, grads, loss_acc, loss):
    return jax.tree.map(jnp.add, acc, grads), loss_acc + loss


def _lr_field(group: str) -> str:
    """OptimConfig field of a group's peak LR ("lr" for the single AdamW group, else lr_<group>)."""
    return "lr" if group == "lr" else f"lr_{group}"


@functools.lru_cache(maxsize=16)
def _make_apply(optim: Any, accum: int, params_def, opt_def, shardings=None):
    """The jitted optimizer update for one recipe, with the peak LRs and the schedules' step counts as ARGUMENTS
    (not trace-time constants): every LR candidate of a sweep, every batch tier with the same accumulation count
    (the tiers' token-normalised step counts differ) and every continued run in the process share one compiled
    program. The update is built inside the trace from the config with traced peaks and counts, so
    peak * schedule(step) is the same float32 arithmetic as with constants (tested bitwise). `accum` stays a
    constant: XLA folds the division by it into the optimizer's constant factors, which a traced divisor would
    round differently.

    apply(params_leaves, opt_leaves, grad_leaves, peaks, steps) -> (params_leaves, opt_leaves), the leaves in
    params_def's / opt_def's order (flat, for a cheap dispatch: see _leaf_programs); params and state donated.
    On a mesh, `shardings` = (params leaves', opt leaves' shardings) pins the outputs to the inputs' layout."""

    outs = None if shardings is None else tuple(list(s) for s in shardings)  # the outputs' (list, list) layout

    @functools.partial(jax.jit, donate_argnums=(0, 1), out_shardings=outs)
    def apply(params_leaves, opt_leaves, grad_leaves, peaks, steps):
        tx = make_optimizer(dataclasses.replace(optim, **{_lr_field(g): v for g, v in peaks.items()}), steps=steps)
        params, grads = (jax.tree.unflatten(params_def, leaves) for leaves in (params_leaves, grad_leaves))
        if accum > 1:
            grads = jax.tree.map(lambda g: g / accum, grads)
        updates, opt_state = tx.update(grads, jax.tree.unflatten(opt_def, opt_leaves), params)
        new_opt_leaves, new_opt_def = jax.tree.flatten(opt_state)
        if new_opt_def != opt_def:
            raise ValueError(f"the optimizer changed its state's structure: {opt_def} -> {new_opt_def}")
        return jax.tree.leaves(optax.apply_updates(params, updates)), new_opt_leaves

    return apply


class TrainStep:
    """One optimizer step: `accum` jitted forward/backward passes over micro-batches, gradients summed, one
    update. train() runs it; `interleaved_throughput` times it side by side for several configurations."""

    def __init__(
        self, config: ModelConfig, lrs: Mapping[str, float], step_scale: float, accum: int, mesh: Mesh | None = None
    ):
        self.accum = accum
        self.mesh = None if is_trivial(mesh) else mesh
        self.global_rows = None  # set by local_rows when each process feeds only its rows of a micro-batch
        self.tx = make_optimizer(config, lrs, step_scale=step_scale)
        # cache key without the LRs and step counts (arguments of the compiled update)
        self._optim = dataclasses.replace(config.optim, **{_lr_field(g): 0.0 for g in lrs})
        self._peaks = {g: jnp.float32(v) for g, v in lrs.items()}
        self._steps = {k: jnp.int32(v) for k, v in schedule_steps(config, step_scale=step_scale).items()}
        self._programs = None  # (graphdef, params_def, opt_def, loss_and_grad, apply) of the last call

    def _programs_for(self, graphdef, params_def, opt_def, leaves=()):
        """(loss_and_grad, apply) for these structures; the module-level caches hash a graphdef (~0.4 ms), so
        the last pair is reused while the same graphdef object comes back."""
        cached = self._programs
        if cached is None or cached[0] is not graphdef or cached[1:3] != (params_def, opt_def):
            shardings = None
            if self.mesh is not None:
                shardings = tuple(tuple(leaf_sharding(self.mesh, np.shape(x)) for x in ls) for ls in leaves)
            apply = functools.partial(
                _make_apply(self._optim, self.accum, params_def, opt_def, shardings),
                peaks=self._peaks,
                steps=self._steps,
            )
            cached = self._programs = (graphdef, params_def, opt_def, _leaf_programs(graphdef, params_def)[0], apply)
        return cached[3:]

    def init(self, params):
        """(params, optimizer state), committed to the device like orbax's restored arrays: the jitted step then
        keeps one compiled program for fresh and resumed runs (committedness is part of jit's cache key). On a
        mesh, every leaf is placed by `mesh.leaf_sharding` (fsdp on its largest divisible axis)."""
        if self.mesh is not None:
            return shard_tree(self.mesh, (params, self.tx.init(params)))  # every process holds the same init
        return jax.device_put((params, self.tx.init(params)), jax.devices()[0])

    def local_rows(self, batch_rows: int) -> tuple[int, int] | None:
        """(lo, hi): this process's rows of a micro-batch of `batch_rows` sequences when several processes split it
        (it then reads only those: `TokenDataset.train_dataset(rows=...)`); None when it needs the whole batch."""
        if self.mesh is None or not distributed.multiprocess():
            return None
        sharding = batch_sharding(self.mesh, batch_rows)
        spans = {
            (i[0].start or 0, i[0].stop or batch_rows)
            for i in sharding.addressable_devices_indices_map((batch_rows,)).values()
        }
        lo, hi = min(a for a, _ in spans), max(b for _, b in spans)
        if (lo, hi) == (0, batch_rows) or sum(b - a for a, b in spans) != hi - lo:
            return None  # replicated, or not one contiguous block: read the whole batch
        self.global_rows = batch_rows
        return lo, hi

    def place(self, tokens, *, local: bool = False):
        """A batch of token ids on the device(s): split over data x fsdp on a mesh (replicated when its rows do
        not divide), else as jnp.asarray always did. Several processes: `local` tokens are this process's rows
        of the global batch (`local_rows`); otherwise every process holds the whole batch."""
        if self.mesh is None:
            return jnp.asarray(tokens)
        if local and self.global_rows is not None:  # set only with several processes
            sharding = batch_sharding(self.mesh, self.global_rows)
            shape = (self.global_rows, *np.shape(tokens)[1:])
            return jax.make_array_from_process_local_data(sharding, np.asarray(tokens), shape)
        return distributed.put(tokens, batch_sharding(self.mesh, np.shape(tokens)[0]))

    def __call__(self, graphdef, params, opt_state, batches_Bx_T1: Sequence[np.ndarray], window: int):
        """-> (params, opt_state, summed micro-batch loss); batches are (micro_batch, T+1) token windows."""
        if len(batches_Bx_T1) != self.accum:
            raise ValueError(f"a step takes {self.accum} micro-batches, got {len(batches_Bx_T1)}")
        params_leaves, params_def = jax.tree.flatten(params)
        opt_leaves, opt_def = jax.tree.flatten(opt_state)
        loss_and_grad, apply = self._programs_for(graphdef, params_def, opt_def, (params_leaves, opt_leaves))
        w = jnp.int32(window)
        grads = loss_sum = None
        for batch in batches_Bx_T1:
            x, y = self.place(batch[:, :-1], local=True), self.place(batch[:, 1:], local=True)
            loss, g = loss_and_grad(params_leaves, x, y, w)
            if grads is None:
                grads, loss_sum = g, loss
            else:
                grads, loss_sum = _accumulate(grads, g, loss_sum, loss)
        params_leaves, opt_leaves = apply(params_leaves, opt_leaves, grads)
        return jax.tree.unflatten(params_def, params_leaves), jax.tree.unflatten(opt_def, opt_leaves), loss_sum


def interleaved_throughput(
    runs: Mapping[str, tuple[ModelConfig, TrainConfig]],
    dataset: TokenDataset,
    *,
    rounds: int = 5,
    steps_per_round: int = 2,
    warmup_steps: int = 2,
    log: Callable[[str], None] | None = None,
) -> dict[str, dict]:
    """Training throughput of several configurations measured side by side in one process.

    Each run's real optimizer step (its model, optimizer, micro-batching, LRs and the attention window it
    trains with once warmed up) is compiled and warmed, then the runs take turns: `rounds` rounds of
    `steps_per_round` steps each, so a change of machine load hits every run alike. Q = B * T / median step
    time. On a shared machine this is the fair comparison; the Q a training run logs depends on whatever
    else ran during its own wall time. Returns {name: {"tokens_per_s", "step_seconds", "window"}}.
    """
    if rounds < 1 or steps_per_round < 1:
        raise ValueError(f"rounds and steps_per_round must be >= 1, got {rounds}, {steps_per_round}")
    state = {}
    for name, (config, tc) in runs.items():
        sched = Schedules.build(config, tc)
        mb = tc.resolved_micro_batch
        accum = tc.batch_size // mb
        lrs = group_learning_rates(config, tc.lr)
        graphdef, params = nnx.split(GPT(config, rngs=nnx.Rngs(tc.seed)), nnx.Param)
        step_fn = TrainStep(config, lrs, sched.step_scale, accum)
        params, opt_state = step_fn.init(params)
        data = dataset.train_dataset(config.seq_len, mb, seed=tc.data_seed)
        window = sched.window(config, sched.window_warmup_steps)
        batches = [data[k] for k in range(accum)]
        for _ in range(warmup_steps):
            params, opt_state, loss = step_fn(graphdef, params, opt_state, batches, window)
            float(loss)
        state[name] = [step_fn, graphdef, params, opt_state, batches, window, []]
        if log:
            log(f"throughput: {name} compiled and warmed (B = {tc.batch_size} x {config.seq_len}, window {window})")
    for _ in range(rounds):
        for st in state.values():
            step_fn, graphdef, params, opt_state, batches, window, times = st
            for _ in range(steps_per_round):
                t0 = time.perf_counter()
                params, opt_state, loss = step_fn(graphdef, params, opt_state, batches, window)
                float(loss)
                times.append(time.perf_counter() - t0)
            st[2], st[3] = params, opt_state
    out = {}
    for name, (config, tc) in runs.items():
        times, window = state[name][6], state[name][5]
        dt = float(np.median(times))
        out[name] = dict(
            tokens_per_s=tc.batch_size * config.seq_len / dt,
            step_seconds=dt,
            window=int(window),
            timed_steps=len(times),
        )
    return out


__all__ = ["Schedules", "TrainStep", "interleaved_throughput"]
