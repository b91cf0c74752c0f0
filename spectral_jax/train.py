"""Training to a target loss with gradient accumulation, evals, probes, orbax checkpoints and resume.

One run = one family at one batch tier B (sequences per optimizer step). The loop (docs/method.md §3.1, §3.2):
- the family's optimizer groups and schedules (spectral_jax.optim.make_optimizer); every step count of the
  family (window warmup, momentum warmup, num_iterations) is token-normalised to B, step_B =
  round(step_ref * reference_batch / B * schedule_scale) (`schedule_scale` compresses the reference's
  schedules for short CPU runs; 1 on GPU presets);
- at the top of step s (before its update), when s is a multiple of the eval cadence, evaluate on the fixed
  validation set, run the probe callbacks, and stop at the first eval (s > 0) with val loss <= target:
  T(B) = training tokens at that eval = s * B * T;
- a step = B / micro_batch forward/backward passes whose mean gradient feeds one optimizer update; batch k
  of the data stream is a pure function of (data seed, k), so the data position is the step;
- throughput Q = timed training tokens / timed step seconds, excluding eval, probe and checkpoint time and
  the first `skip_throughput_steps` steps of every (re)start (compilation);
- orbax checkpoints (params + optimizer state + step + RNG-free data position + timer totals) at a token
  cadence and at the stop; a restarted run resumes from the last one and reproduces the uninterrupted run's
  records (metrics beyond the checkpoint are dropped and recomputed);
- a NaN/inf loss stops the run with TrainingDiverged: result.json says "diverged", no probe runs on it.

Run directory (self-describing): run.json (resolved model/optimizer/train config, git SHA, versions,
devices, data description), metrics.jsonl (one row per eval), whatever callbacks write (probes.jsonl,
spectra/*.npz), result.json (written last, atomically), checkpoints/.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import pathlib
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from spectral_jax.data.shards import TokenDataset, atomic_write_bytes
from spectral_jax.models import attention
from spectral_jax.models.config import ModelConfig
from spectral_jax.models.gpt import GPT
from spectral_jax.optim import group_learning_rates, make_optimizer, scaled_steps, schedule_steps


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf; nothing downstream of that point is measured."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How one batch tier trains. Token quantities are training tokens (B * T per optimizer step)."""

    batch_size: int = 8  # B, sequences per optimizer step
    micro_batch: int | None = None  # sequences per forward/backward (None: min(B, max_micro_batch))
    max_micro_batch: int = 8
    lr: float | Mapping[str, float] | None = None  # None: family anchors; float: multiplier; mapping: per group
    target_loss: float = 3.2
    max_tokens: int = 10_000_000_000  # budget: stop without reaching the target
    eval_every_tokens: int = 52_428_800  # reference: 100 steps at 8 x 65,536
    val_tokens: int = 10_485_760
    eval_batch: int = 8  # sequences per eval forward
    probe_every_evals: int = 1  # probe callbacks at every k-th eval (and at the stop eval)
    checkpoint_every_tokens: int = 209_715_200  # reference: 400 steps at 8 x 65,536
    keep_checkpoints: int = 1
    schedule_scale: float = 1.0  # extra factor on every family step count (see module docstring)
    seed: int = 42  # model init
    data_seed: int | None = 0  # train-stream shuffle (None: contiguous reference order)
    skip_throughput_steps: int = 2
    log_every_seconds: float = 10.0

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        mb = self.resolved_micro_batch
        if self.batch_size % mb:
            raise ValueError(f"batch_size {self.batch_size} is not a multiple of micro_batch {mb}; "
                             "pick a micro_batch that divides it")
        for name in ("eval_every_tokens", "val_tokens", "checkpoint_every_tokens", "max_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    @property
    def resolved_micro_batch(self) -> int:
        if self.micro_batch is not None:
            if self.micro_batch < 1:
                raise ValueError(f"micro_batch must be >= 1, got {self.micro_batch}")
            return self.micro_batch
        return math.gcd(self.batch_size, self.max_micro_batch) if self.batch_size > self.max_micro_batch \
            else self.batch_size


# Per-preset training defaults. The tiny target is calibrated on the embedded corpus so every tier 1..32
# reaches it within the CPU budget (BUILD_NOTES.md "Tiny preset calibration").
TRAIN_PRESETS: Mapping[str, dict] = {
    "tiny": dict(target_loss=3.6, max_tokens=600_000, eval_every_tokens=4_096, val_tokens=8_192,
                 eval_batch=16, checkpoint_every_tokens=65_536, schedule_scale=0.05, micro_batch=None,
                 max_micro_batch=4, probe_every_evals=3, log_every_seconds=15.0),
    "d12": dict(target_loss=3.2, eval_every_tokens=52_428_800, val_tokens=10_485_760, eval_batch=1,
                max_micro_batch=1, checkpoint_every_tokens=209_715_200),
    "d36": dict(target_loss=3.2, eval_every_tokens=52_428_800, val_tokens=10_485_760, eval_batch=1,
                max_micro_batch=1, checkpoint_every_tokens=209_715_200),
    "d48": dict(target_loss=3.2, eval_every_tokens=52_428_800, val_tokens=10_485_760, eval_batch=1,
                max_micro_batch=1, checkpoint_every_tokens=209_715_200),
}


def train_config(preset: str, **override) -> TrainConfig:
    if preset not in TRAIN_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(TRAIN_PRESETS)}")
    return TrainConfig(**{**TRAIN_PRESETS[preset], **override})


def lr_multiplier_for_batch(batch: int, reference_batch: int, rule: str = "sqrt") -> float:
    """The reference's batch-scaling centres (docs/method.md §3.3): sqrt(B/B0) or B/B0 (or 1 for "none")."""
    r = batch / reference_batch
    rules = {"sqrt": math.sqrt(r), "linear": r, "none": 1.0}
    if rule not in rules:
        raise ValueError(f"unknown LR scaling rule {rule!r}; choose one of {sorted(rules)}")
    return rules[rule]


# ---- run-directory records ---------------------------------------------------------------------------
def _jsonable(x: Any) -> Any:
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return {f.name: _jsonable(getattr(x, f.name)) for f in dataclasses.fields(x)}
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(_jsonable(obj), indent=2, sort_keys=True) + "\n").encode())


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Rows of a JSONL file; a torn last line (crash mid-append) is dropped."""
    path = pathlib.Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


def append_jsonl(path: str | os.PathLike, row: Mapping) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(_jsonable(row), sort_keys=True) + "\n")
        f.flush()


def truncate_jsonl(path: str | os.PathLike, keep: Callable[[dict], bool]) -> None:
    """Atomically rewrite a JSONL file with only the rows `keep` accepts (used on resume)."""
    path = pathlib.Path(path)
    if path.exists():
        rows = [r for r in read_jsonl(path) if keep(r)]
        atomic_write_bytes(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode())


def log_stderr(msg: str) -> None:
    """Default progress sink: one line to stderr, flushed (so it interleaves correctly with absl logs)."""
    print(msg, file=sys.stderr, flush=True)


def git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=pathlib.Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
        sha = out.stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=pathlib.Path(__file__).parent, capture_output=True, text=True, timeout=5)
        return sha + ("-dirty" if dirty.stdout.strip() else "") if sha else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment() -> dict:
    """Versions and devices for run.json."""
    import flax
    import orbax.checkpoint

    return dict(
        git_sha=git_sha(), python=platform.python_version(), platform=platform.platform(),
        jax=jax.__version__, flax=flax.__version__, optax=optax.__version__,
        orbax=getattr(orbax.checkpoint, "__version__", "unknown"), numpy=np.__version__,
        devices=[str(d) for d in jax.devices()], backend=jax.default_backend(),
    )


# ---- jitted pieces (cached at module level so every tier of a sweep shares the compiled programs) ----------
# They take the parameters and the optimizer state as flat lists of arrays, not as nnx.State / optax pytrees:
# jit's dispatch of those (Variable pytree nodes, the graphdef hashed as a static argument) cost ~5-6 ms of
# Python per call, on the same two cores as XLA's threads; lists of arrays dispatch in < 1 ms (train step
# 1.04x at B = 4, 1.036x at B = 1 in a same-process A/B, bitwise the same parameters; BUILD_NOTES.md).
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
def _make_apply(optim: Any, accum: int, params_def, opt_def):
    """The jitted optimizer update for one recipe, with the peak LRs and the schedules' step counts as ARGUMENTS
    (not trace-time constants): every LR candidate of a sweep, every batch tier with the same accumulation count
    (the tiers' token-normalised step counts differ) and every continued run in the process share one compiled
    program (tracing and compiling it took 20-30 s per candidate on 2 CPU cores, ~3.3 s per tier at tiny). The
    update is built inside the trace from the config with traced peaks and counts, so peak * schedule(step) is
    the same float32 arithmetic as with constants (tested bitwise). `accum` stays a constant: XLA folds the
    division by it into the optimizer's constant factors, which a traced divisor would round differently.

    apply(params_leaves, opt_leaves, grad_leaves, peaks, steps) -> (params_leaves, opt_leaves), the leaves in
    params_def's / opt_def's order (flat, for a cheap dispatch: see _leaf_programs); params and state donated."""

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def apply(params_leaves, opt_leaves, grad_leaves, peaks, steps):
        tx = make_optimizer(dataclasses.replace(optim, **{_lr_field(g): v for g, v in peaks.items()}),
                            steps=steps)
        params, grads = (jax.tree.unflatten(params_def, leaves) for leaves in (params_leaves, grad_leaves))
        if accum > 1:
            grads = jax.tree.map(lambda g: g / accum, grads)
        updates, opt_state = tx.update(grads, jax.tree.unflatten(opt_def, opt_leaves), params)
        new_opt_leaves, new_opt_def = jax.tree.flatten(opt_state)
        if new_opt_def != opt_def:
            raise ValueError(f"the optimizer changed its state's structure: {opt_def} -> {new_opt_def}")
        return jax.tree.leaves(optax.apply_updates(params, updates)), new_opt_leaves

    return apply


# ---- the run ------------------------------------------------------------------------------------------
@dataclasses.dataclass
class RunState:
    """What a callback sees at an eval point (host values only, plus the live model)."""

    step: int
    tokens: int
    val_loss: float
    window: int
    model: GPT
    config: ModelConfig
    train: TrainConfig
    out_dir: pathlib.Path
    is_final: bool = False


Callback = Callable[[RunState], None]


@dataclasses.dataclass
class Schedules:
    step_scale: float
    window_warmup_steps: int
    tokens_per_step: int
    eval_every_steps: int
    checkpoint_every_steps: int
    max_steps: int

    @classmethod
    def build(cls, config: ModelConfig, tc: TrainConfig) -> "Schedules":
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


def _fmt_time(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s"


def restore_state(manager, step: int, params, opt_state):
    """(params, optimizer state) of checkpoint `step`, restored into the shapes and dtypes of the templates."""
    import orbax.checkpoint as ocp

    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, dict(params=params, opt_state=opt_state))
    state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))["state"]
    return state["params"], state["opt_state"]


def _checkpoint_manager(directory: pathlib.Path, keep: int):
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False)
    return ocp.CheckpointManager(directory.resolve(), options=options)


class TrainStep:
    """One optimizer step: `accum` jitted forward/backward passes over micro-batches, gradients summed, one
    update. train() runs it; `interleaved_throughput` times it side by side for several configurations."""

    def __init__(self, config: ModelConfig, lrs: Mapping[str, float], step_scale: float, accum: int):
        self.accum = accum
        self.tx = make_optimizer(config, lrs, step_scale=step_scale)
        # cache key without the LRs and step counts (arguments of the compiled update)
        self._optim = dataclasses.replace(config.optim, **{_lr_field(g): 0.0 for g in lrs})
        self._peaks = {g: jnp.float32(v) for g, v in lrs.items()}
        self._steps = {k: jnp.int32(v) for k, v in schedule_steps(config, step_scale=step_scale).items()}
        self._programs = None  # (graphdef, params_def, opt_def, loss_and_grad, apply) of the last call

    def _programs_for(self, graphdef, params_def, opt_def):
        """(loss_and_grad, apply) for these structures; the module-level caches hash a graphdef (~0.4 ms), so
        the last pair is reused while the same graphdef object comes back."""
        cached = self._programs
        if cached is None or cached[0] is not graphdef or cached[1:3] != (params_def, opt_def):
            apply = functools.partial(_make_apply(self._optim, self.accum, params_def, opt_def),
                                      peaks=self._peaks, steps=self._steps)
            cached = self._programs = (graphdef, params_def, opt_def, _leaf_programs(graphdef, params_def)[0],
                                       apply)
        return cached[3:]

    def init(self, params):
        """(params, optimizer state), committed to the device like orbax's restored arrays: the jitted step then
        keeps one compiled program for fresh and resumed runs (committedness is part of jit's cache key; a
        mismatch recompiled ~27 s)."""
        return jax.device_put((params, self.tx.init(params)), jax.devices()[0])

    def __call__(self, graphdef, params, opt_state, batches_Bx_T1: Sequence[np.ndarray], window: int):
        """-> (params, opt_state, summed micro-batch loss); batches are (micro_batch, T+1) token windows."""
        if len(batches_Bx_T1) != self.accum:
            raise ValueError(f"a step takes {self.accum} micro-batches, got {len(batches_Bx_T1)}")
        params_leaves, params_def = jax.tree.flatten(params)
        opt_leaves, opt_def = jax.tree.flatten(opt_state)
        loss_and_grad, apply = self._programs_for(graphdef, params_def, opt_def)
        w = jnp.int32(window)
        grads = loss_sum = None
        for batch in batches_Bx_T1:
            loss, g = loss_and_grad(params_leaves, jnp.asarray(batch[:, :-1]), jnp.asarray(batch[:, 1:]), w)
            if grads is None:
                grads, loss_sum = g, loss
            else:
                grads, loss_sum = _accumulate(grads, g, loss_sum, loss)
        params_leaves, opt_leaves = apply(params_leaves, opt_leaves, grads)
        return jax.tree.unflatten(params_def, params_leaves), jax.tree.unflatten(opt_def, opt_leaves), loss_sum


def interleaved_throughput(runs: Mapping[str, tuple[ModelConfig, TrainConfig]], dataset: TokenDataset, *,
                           rounds: int = 5, steps_per_round: int = 2, warmup_steps: int = 2,
                           log: Callable[[str], None] | None = None) -> dict[str, dict]:
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
        for name, st in state.items():
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
        out[name] = dict(tokens_per_s=tc.batch_size * config.seq_len / dt, step_seconds=dt, window=int(window),
                         timed_steps=len(times))
    return out


def config_fingerprint(config: ModelConfig, tc: TrainConfig, lrs: Mapping[str, float]) -> str:
    """What makes two runs the same trajectory: model, train config and LRs, WITHOUT the token budget.

    Nothing in a step depends on max_tokens (the LR schedule runs over the family's num_iterations, data
    batch k is a pure function of (seed, k)), so a run to a larger budget continues from the checkpoint of a
    smaller one and matches a straight run (LR successive halving relies on it).
    """
    train_fields = {k: v for k, v in _jsonable(tc).items() if k not in BUDGET_FIELDS}
    return json.dumps(_jsonable(dict(model=config, train=train_fields, learning_rates=lrs)), sort_keys=True)


BUDGET_FIELDS = ("max_tokens",)


def _same_config(stored: str | None, fingerprint: str) -> bool:
    """Compare fingerprints; one written before budgets left the fingerprint still matches (field dropped)."""
    if stored is None:
        return False
    try:
        obj = json.loads(stored)
        for key in BUDGET_FIELDS:
            obj.get("train", {}).pop(key, None)
    except (json.JSONDecodeError, AttributeError):
        return False
    return json.dumps(obj, sort_keys=True) == fingerprint


def result_answers(done: Mapping[str, Any], sched: Schedules) -> bool:
    """Whether a finished run's result.json is what training to this budget would give.

    It does when the run stopped (target reached, diverged, budget) at a step this budget also reaches AND that
    stop would happen here too: a "budget" stop only at the same last step, and a stop at an eval that was made
    only because it was the old budget's last step (off the eval cadence) only when it is this budget's last
    step as well. Otherwise training continues from the checkpoint.
    """
    steps = done.get("steps")
    if steps is None or steps > sched.max_steps:
        return False
    if done.get("status") == "budget" or done.get("budget_eval", True):
        return steps == sched.max_steps
    return done.get("status") in ("reached", "diverged")


def train(
    config: ModelConfig,
    tc: TrainConfig,
    dataset: TokenDataset,
    out_dir: str | os.PathLike,
    *,
    callbacks: Sequence[Callback] = (),
    resume: bool = True,
    log: Callable[[str], None] | None = None,
    run_info: Mapping[str, Any] | None = None,
    stop_after_steps: int | None = None,
) -> dict:
    """Train one tier; returns (and writes, last) result.json's dict.

    resume: continue from the newest checkpoint in out_dir/checkpoints at or before this budget's last step
    (else start fresh). A finished run of the same config is returned as is when it answers this budget
    (`result_answers`); a run that stopped at a smaller budget continues from its last checkpoint, which gives
    the same records as a straight run to the larger budget (`config_fingerprint` leaves the budget out).
    stop_after_steps: simulate an interruption after that many optimizer steps of this call (tests).
    """
    log = log or log_stderr
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sched = Schedules.build(config, tc)
    mb = tc.resolved_micro_batch
    accum = tc.batch_size // mb
    T = config.seq_len
    tag = f"[B={tc.batch_size}]"
    lrs = group_learning_rates(config, tc.lr)
    info = dict(model=config, train=tc, learning_rates=lrs, step_scale=sched.step_scale,
                tokens_per_step=sched.tokens_per_step, eval_every_steps=sched.eval_every_steps,
                window_warmup_steps=sched.window_warmup_steps, micro_batch=mb, grad_accum=accum,
                data=dict(dataset.metadata), **(run_info or {}))
    fingerprint = config_fingerprint(config, tc, lrs)
    result_path = out / "result.json"
    if resume and result_path.is_file():
        done = json.loads(result_path.read_text())
        if _same_config(done.get("fingerprint"), fingerprint) and result_answers(done, sched):
            log(f"{tag} already finished ({done['status']} at {done['tokens']:,} tokens); reusing {result_path}")
            return done
    if result_path.exists():
        result_path.unlink()
    write_json(out / "run.json", dict(info, environment=environment(), fingerprint=fingerprint))

    model = GPT(config, rngs=nnx.Rngs(tc.seed))
    graphdef, params = nnx.split(model, nnx.Param)
    step_fn = TrainStep(config, lrs, sched.step_scale, accum)
    params, opt_state = step_fn.init(params)

    ckpt_dir = out / "checkpoints"
    manager = _checkpoint_manager(ckpt_dir, tc.keep_checkpoints)
    step, timed_tokens, timed_seconds = 0, 0, 0.0
    train_loss = float("nan")
    metrics_path = out / "metrics.jsonl"
    # newest checkpoint within this budget (a larger earlier budget may have left later ones: drop those)
    usable = [s for s in manager.all_steps() if s <= sched.max_steps] if resume else []
    latest = max(usable) if usable else None
    if latest is not None:
        import orbax.checkpoint as ocp

        # the config check reads only the JSON meta, before any array of another shape is restored
        meta = manager.restore(latest, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        if not _same_config(meta.get("fingerprint"), fingerprint):
            raise ValueError(f"checkpoint in {ckpt_dir} was written by a different configuration; "
                             "use another --out directory or delete it to start over")
        params, opt_state = restore_state(manager, latest, params, opt_state)
        step, timed_tokens, timed_seconds = meta["step"], meta["timed_tokens"], meta["timed_seconds"]
        train_loss = float("nan") if meta.get("train_loss") is None else meta["train_loss"]
        for later in [s for s in manager.all_steps() if s > latest]:
            manager.delete(later)
        log(f"{tag} resumed from checkpoint at step {step} ({step * sched.tokens_per_step:,} tokens)")
    else:
        if ckpt_dir.exists():
            for old in manager.all_steps():
                manager.delete(old)
    # drop records written at or after the step we (re)start from: an interrupted run recomputes them
    for name in ("metrics.jsonl", "probes.jsonl"):
        if step == 0:
            (out / name).unlink(missing_ok=True)
        else:
            truncate_jsonl(out / name, lambda r: r.get("step", 0) < step)

    def save_checkpoint(at_step: int) -> None:
        import orbax.checkpoint as ocp

        if at_step in manager.all_steps():
            return
        meta = dict(step=at_step, timed_tokens=timed_tokens, timed_seconds=timed_seconds,
                    train_loss=train_loss if math.isfinite(train_loss) else None, fingerprint=fingerprint, data_position=at_step * accum)
        manager.save(at_step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(dict(params=params, opt_state=opt_state)), meta=ocp.args.JsonSave(meta)))
        manager.wait_until_finished()

    train_ds = dataset.train_dataset(T, mb, seed=tc.data_seed)
    val = dataset.validation_set(T, tc.val_tokens)
    eval_bs = min(tc.eval_batch, len(val))
    val_batches = [val[i:i + eval_bs] for i in range(0, len(val) - eval_bs + 1, eval_bs)]

    def evaluate(window: int) -> float:
        leaves, params_def = jax.tree.flatten(params)
        eval_loss = _leaf_programs(graphdef, params_def)[1]
        losses = [eval_loss(leaves, jnp.asarray(b[:, :-1]), jnp.asarray(b[:, 1:]), jnp.int32(window))
                  for b in val_batches]
        return float(np.mean([float(v) for v in losses]))

    def throughput() -> float | None:
        return timed_tokens / timed_seconds if timed_seconds > 0 else None

    def finish(status: str, at_step: int, val_loss: float | None, message: str = "") -> dict:
        tokens = at_step * sched.tokens_per_step
        result = dict(
            status=status, batch=tc.batch_size, seq_len=T, steps=at_step, tokens=tokens,
            tokens_to_target=tokens if status == "reached" else None, target_loss=tc.target_loss,
            final_val_loss=val_loss, max_tokens=tc.max_tokens, max_steps=sched.max_steps,
            budget_eval=at_step == sched.max_steps and at_step % sched.eval_every_steps != 0,
            throughput_tokens_per_s=throughput(), timed_tokens=timed_tokens, timed_seconds=timed_seconds, message=message, fingerprint=fingerprint,
        )
        write_json(result_path, result)
        return result

    start_step = step
    last_log = time.perf_counter()
    steps_this_call = 0
    while True:
        window = sched.window(config, step)
        if step % sched.eval_every_steps == 0 or step >= sched.max_steps:
            t_eval = time.perf_counter()
            val_loss = evaluate(window)
            tokens = step * sched.tokens_per_step
            row = dict(step=step, tokens=tokens, val_loss=val_loss, train_loss=train_loss, window=window,
                       throughput_tokens_per_s=throughput(), elapsed_train_s=timed_seconds)
            if not math.isfinite(val_loss):
                append_jsonl(metrics_path, row)
                msg = (f"validation loss is {val_loss} at step {step} ({tokens:,} tokens): training diverged; "
                       "lower the learning rate (--lr) and rerun; no spectra were measured at this point")
                finish("diverged", step, None, msg)
                raise TrainingDiverged(msg)
            reached = step > 0 and val_loss <= tc.target_loss
            final = reached or step >= sched.max_steps
            eval_index = step // sched.eval_every_steps
            if callbacks and (final or eval_index % tc.probe_every_evals == 0):
                nnx.update(model, params)
                state = RunState(step, tokens, val_loss, window, model, config, tc, out, is_final=final)
                for cb in callbacks:
                    cb(state)
            append_jsonl(metrics_path, row)
            log(f"{tag} eval step {step} | {tokens:,} tokens | val {val_loss:.4f} (target {tc.target_loss}) | "
                f"window {window} | {time.perf_counter() - t_eval:.1f}s")
            if final:
                save_checkpoint(step)
                status = "reached" if reached else "budget"
                result = finish(status, step, val_loss)
                q = result["throughput_tokens_per_s"]
                what = "T(B) = " if reached else ""
                log(f"{tag} {status} at step {step}: {what}{tokens:,} tokens, val {val_loss:.4f}, "
                    f"Q = {q:,.0f} tokens/s" if q else f"{tag} {status} at step {step}")
                return result
        if step > start_step and step % sched.checkpoint_every_steps == 0:
            save_checkpoint(step)
        if stop_after_steps is not None and steps_this_call >= stop_after_steps:
            return dict(status="interrupted", steps=step)

        t0 = time.perf_counter()
        params, opt_state, loss_sum = step_fn(graphdef, params, opt_state,
                                              [train_ds[step * accum + k] for k in range(accum)], window)
        train_loss = float(loss_sum) / accum  # blocks until the step is done
        dt = time.perf_counter() - t0
        step += 1
        steps_this_call += 1
        if not math.isfinite(train_loss):
            msg = (f"training loss is {train_loss} at step {step}: training diverged; lower the learning "
                   "rate (--lr) and rerun; no spectra were measured from this point")
            finish("diverged", step, None, msg)
            raise TrainingDiverged(msg)
        if step - start_step > tc.skip_throughput_steps:
            timed_tokens += sched.tokens_per_step
            timed_seconds += dt
        now = time.perf_counter()
        if now - last_log >= tc.log_every_seconds:
            last_log = now
            q = throughput()
            left = (sched.max_steps - step) * sched.tokens_per_step
            speed = f"{q:,.0f} tok/s | ETA <= {_fmt_time(left / q)}" if q else "tok/s and ETA after the compile steps"
            log(f"{tag} step {step}/{sched.max_steps} | {step * sched.tokens_per_step:,} tokens | "
                f"loss {train_loss:.4f} | {speed}")


__all__ = ["TrainConfig", "TRAIN_PRESETS", "TrainingDiverged", "RunState", "Schedules", "train", "train_config",
           "TrainStep", "interleaved_throughput",
           "config_fingerprint", "result_answers",
           "lr_multiplier_for_batch", "read_jsonl", "append_jsonl", "write_json", "environment", "git_sha",
           "log_stderr"]
