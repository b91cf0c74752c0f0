"""Toy training (docs/method.md §6.3): constant LR, no clipping, batches drawn with replacement, stop at a target loss.

One `ToyRun` is one (stage, batch, base LR, seed) training run held in memory. `advance(max_steps)` continues
it until the target validation loss is reached or `max_steps` optimizer steps are done, so successive halving
(spectral_jax.halving) promotes survivors by continuing them, never by retraining.

Optimizers (reference `runner.train_toy_run`):
  baseline, rope  AdamW(lr, betas (0.9, 0.999), eps 1e-8, weight decay 0) on every parameter;
  muon, untied    Muon(50 lr, momentum 0.95, nesterov, NS5 in bf16) on the block matrices, AdamW(lr, weight decay
                  0.01) on the embedding / head / scalar groups (spectral_jax.optim.param_labels; a tied head is
                  the embedding).
The LR is a hyperparameter injected into the optimizer state (optax.inject_hyperparams), so every candidate LR of a
stage and batch shares one compiled step.

Cadence. The validation loss is evaluated at step 0, every `eval_every` steps and at the last step; the run stops
at the first eval with step > 0 and val <= target ("<=", as the toy reference). Parameter snapshots for the probes
are kept at step 0, at every `measure_every`-th eval and at the stop (`ToyRun.measure` probes them later).
Batches: sequence indices drawn with replacement from the train split by numpy's default_rng(seed + 11)
(reference), B per step, in step order, so a run is a pure function of its config. Large batches are split into
micro-batches of `micro_batch` sequences whose gradients are averaged inside one jitted step (identical update;
faster on CPU, where a (512, 64, 1024) logit tensor leaves the cache).
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

from spectral_jax.errors import UserError
from spectral_jax.optim import muon, param_labels
from spectral_jax.toy.model import STAGE_OPTIMIZER, ToyDims, check_stage, init_toy_model, toy_config
from spectral_jax.toy.task import Split


@dataclasses.dataclass(frozen=True)
class ToyTrainConfig:
    """One toy training run. Steps are optimizer steps of `batch_size` sequences."""

    stage: str
    batch_size: int
    lr: float  # base LR: AdamW groups use it, Muon matrices use muon_lr_mult * lr
    seed: int = 0
    target: float = 2.0
    max_steps: int = 5000
    eval_every: int = 10
    val_sequences: int | None = None  # None: the whole validation split
    measure_every: int = 5  # snapshot for probes at every measure_every-th eval (and at step 0 and at the stop)
    micro_batch: int = 128
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0  # AdamW stages
    muon_adam_weight_decay: float = 0.01  # AdamW groups of the Muon stages
    muon_lr_mult: float = 50.0
    momentum: float = 0.95
    nesterov: bool = True
    dims: ToyDims = ToyDims()

    def __post_init__(self):
        check_stage(self.stage)
        if self.batch_size < 1:
            raise UserError(f"batch_size must be >= 1, got {self.batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UserError(f"lr must be positive and finite, got {self.lr}")
        for name in ("max_steps", "eval_every", "measure_every", "micro_batch"):
            if getattr(self, name) < 1:
                raise UserError(f"ToyTrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.val_sequences is not None and self.val_sequences < 1:
            raise UserError(f"val_sequences must be >= 1 or None, got {self.val_sequences}")

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.dims.seq_len

    @property
    def accum(self) -> int:
        """Micro-batches per step: the smallest count whose micro-batch fits `micro_batch` and divides B."""
        for a in range(1, self.batch_size + 1):
            if self.batch_size % a == 0 and self.batch_size // a <= self.micro_batch:
                return a
        return self.batch_size


# ---- optimizer -----------------------------------------------------------------------------------------------
def _muon_split(learning_rate, *, b1, b2, eps, weight_decay, lr_mult, momentum, nesterov):
    adamw = optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
    return optax.partition(
        {
            "embed": adamw,
            "head": adamw,
            "scalar": adamw,
            "matrix": muon(learning_rate * lr_mult, momentum=momentum, nesterov=nesterov),
        },
        param_labels,
    )


@functools.cache
def _transform(kind: str, betas, eps, weight_decay, lr_mult, momentum, nesterov) -> optax.GradientTransformation:
    """One (cached) transformation per recipe with the LR injected into its state: candidates share compiles."""
    if kind == "adamw":
        return optax.inject_hyperparams(optax.adamw, static_args=("b1", "b2", "eps", "weight_decay"))(
            learning_rate=1.0, b1=betas[0], b2=betas[1], eps=eps, weight_decay=weight_decay
        )
    factory = functools.partial(
        _muon_split,
        b1=betas[0],
        b2=betas[1],
        eps=eps,
        weight_decay=weight_decay,
        lr_mult=lr_mult,
        momentum=momentum,
        nesterov=nesterov,
    )
    return optax.inject_hyperparams(factory)(learning_rate=1.0)


def toy_optimizer(tc: ToyTrainConfig) -> optax.GradientTransformation:
    """The stage's optimizer (module docstring); its LR lives in the state (`set_learning_rate`)."""
    kind = STAGE_OPTIMIZER[tc.stage]
    wd = tc.weight_decay if kind == "adamw" else tc.muon_adam_weight_decay
    return _transform(kind, tuple(tc.betas), tc.eps, wd, tc.muon_lr_mult, tc.momentum, tc.nesterov)


def set_learning_rate(opt_state, lr: float):
    """The injected-hyperparameter state with its learning rate replaced."""
    opt_state.hyperparams["learning_rate"] = jnp.asarray(lr, jnp.float32)
    return opt_state


# ---- jitted steps --------------------------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnums=(0, 1), donate_argnums=(2, 3))
def _train_step(graphdef, tx, params, opt_state, x_AxMxL, y_AxMxL):
    """One optimizer step on A micro-batches of M sequences (mean of their mean losses and gradients)."""

    def loss_fn(p, x, y):
        return nnx.merge(graphdef, p).loss(x, y)

    grad_fn = jax.value_and_grad(loss_fn)
    if x_AxMxL.shape[0] == 1:
        loss, grads = grad_fn(params, x_AxMxL[0], y_AxMxL[0])
    else:

        def body(carry, xy):
            l, g = grad_fn(params, *xy)
            return jax.tree.map(jnp.add, carry, (l, g)), None

        zero = (jnp.zeros([], jnp.float32), jax.tree.map(jnp.zeros_like, params))
        (loss, grads), _ = jax.lax.scan(body, zero, (x_AxMxL, y_AxMxL))
        a = x_AxMxL.shape[0]
        loss, grads = loss / a, jax.tree.map(lambda g: g / a, grads)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


@functools.partial(jax.jit, static_argnums=0)
def _eval_chunk(graphdef, params, x_BxL, y_BxL):
    return nnx.merge(graphdef, params).loss(x_BxL, y_BxL)


def eval_loss(graphdef, params, x_NxL, y_NxL, chunk: int = 512) -> float:
    """Mean token cross-entropy over (N, L) tokens, chunked (every sequence has L valid targets)."""
    n = x_NxL.shape[0]
    total = 0.0
    for i in range(0, n, chunk):
        xb, yb = x_NxL[i : i + chunk], y_NxL[i : i + chunk]
        total += float(_eval_chunk(graphdef, params, jnp.asarray(xb), jnp.asarray(yb))) * xb.shape[0]
    return total / n


# ---- the run -------------------------------------------------------------------------------------------------
def _fmt_time(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(seconds)
    return f"{s // 60}m{s % 60:02d}s"


@dataclasses.dataclass(frozen=True, eq=False)
class Snapshot:
    """Parameters at one measurement point (a copy: the train step donates its buffers)."""

    step: int
    tokens: int
    val_loss: float
    train_loss: float
    params: Any


class ToyRun:
    """One training run in memory: parameters, optimizer state, data position, evals and measurement snapshots.

    Probes do not run during training: the run keeps parameter snapshots at step 0, every `measure_every`-th eval
    and at its stop, and `measure(fn)` probes them afterwards. Successive halving thereby spends probe time only on
    the winning candidate (a snapshot of the toy is 2 MB).
    """

    def __init__(
        self,
        tc: ToyTrainConfig,
        splits: Mapping[str, Split],
        *,
        log: Callable[[str], None] | None = None,
        log_every_s: float = 15.0,
    ):
        self.tc = tc
        self.config = toy_config(tc.stage, tc.dims)
        self.log = log
        self.log_every_s = log_every_s
        model = init_toy_model(self.config, tc.seed)
        self.graphdef, self.params = nnx.split(model, nnx.Param)
        self.tx = toy_optimizer(tc)
        self.opt_state = set_learning_rate(self.tx.init(self.params), tc.lr)
        self._rng = np.random.default_rng(tc.seed + 11)
        train = splits["train"]
        self._x_train, self._y_train = train.x_NxL, train.y_NxL
        val = splits["val"]
        n_val = val.x_NxL.shape[0] if tc.val_sequences is None else min(tc.val_sequences, val.x_NxL.shape[0])
        self._x_val, self._y_val = val.x_NxL[:n_val], val.y_NxL[:n_val]
        self.step = 0
        self.status = "running"  # running | reached | budget | diverged
        self.evals: list[dict] = []
        self.snapshots: list[Snapshot] = []
        self.records: list[dict] = []
        self.train_loss = float("nan")
        self.train_seconds = 0.0
        self._n_evals = 0
        self._evaluate()

    # -- views -----------------------------------------------------------------------------------------------
    @property
    def tokens(self) -> int:
        return self.step * self.tc.tokens_per_step

    @property
    def model(self):
        """A live model with the current parameters."""
        return nnx.merge(self.graphdef, self.params)

    @property
    def done(self) -> bool:
        return self.status != "running"

    @property
    def val_loss(self) -> float:
        return self.evals[-1]["val_loss"]

    @property
    def tokens_to_target(self) -> int | None:
        return self.tokens if self.status == "reached" else None

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.train_seconds if self.train_seconds > 0 else float("nan")

    # -- internals -------------------------------------------------------------------------------------------
    def _evaluate(self) -> None:
        loss = eval_loss(self.graphdef, self.params, self._x_val, self._y_val)
        self.evals.append(dict(step=self.step, tokens=self.tokens, val_loss=loss, train_loss=self.train_loss))
        if not math.isfinite(loss):
            self.status = "diverged"
        elif self.step > 0 and loss <= self.tc.target:
            self.status = "reached"
        elif self.step >= self.tc.max_steps:
            self.status = "budget"
        if self.status != "diverged" and (self._n_evals % self.tc.measure_every == 0 or self.done):
            self.snapshots.append(
                Snapshot(self.step, self.tokens, loss, self.train_loss, jax.tree.map(jnp.copy, self.params))
            )
        self._n_evals += 1

    def _batch(self) -> tuple[np.ndarray, np.ndarray]:
        tc = self.tc
        idx = self._rng.integers(0, self._x_train.shape[0], size=tc.batch_size)
        a = tc.accum
        shape = (a, tc.batch_size // a, tc.dims.seq_len)
        return self._x_train[idx].reshape(shape), self._y_train[idx].reshape(shape)

    # -- driving ---------------------------------------------------------------------------------------------
    def advance(self, max_steps: int) -> ToyRun:
        """Train until the target is reached, the run diverges, or min(max_steps, tc.max_steps) steps are done.

        The last step of a call is always evaluated (a successive-halving rung ends on an eval)."""
        tc = self.tc
        max_steps = min(int(max_steps), tc.max_steps)
        start_step = self.step
        t_start = t_log = t_seg = time.perf_counter()
        while not self.done and self.step < max_steps:
            x, y = self._batch()
            self.params, self.opt_state, loss = _train_step(
                self.graphdef, self.tx, self.params, self.opt_state, jnp.asarray(x), jnp.asarray(y)
            )
            self.step += 1
            if self.step % tc.eval_every == 0 or self.step == max_steps:
                self.train_loss = float(loss)  # waits for the step: the segment's time is training time
                self.train_seconds += time.perf_counter() - t_seg
                self._evaluate()
                t_seg = time.perf_counter()
            now = time.perf_counter()
            if self.log is not None and now - t_log >= self.log_every_s:
                t_log = now
                rate = (self.step - start_step) * tc.tokens_per_step / (now - t_start)
                eta = (max_steps - self.step) * tc.tokens_per_step / max(rate, 1e-9)
                self.log(
                    f"[{tc.stage} B={tc.batch_size} lr={tc.lr:.3g} seed={tc.seed}] step {self.step}/{max_steps}"
                    f" tokens {self.tokens:,} val {self.val_loss:.4f} | {rate:,.0f} tok/s, ETA {_fmt_time(eta)}"
                )
        return self

    def measure(
        self,
        fn: Callable[[Any, Snapshot], Mapping[str, Any]],
        *,
        steps: Sequence[int] | None = None,
        keep_snapshots: bool = False,
    ) -> list[dict]:
        """Probe the snapshots (those at `steps`, default all): records = {step, tokens, val_loss, train_loss} |
        fn(model, snapshot)."""
        self.records = []
        wanted = None if steps is None else set(steps)
        for snap in self.snapshots:
            if wanted is not None and snap.step not in wanted:
                continue
            rec = dict(step=snap.step, tokens=snap.tokens, val_loss=snap.val_loss, train_loss=snap.train_loss)
            rec.update(fn(nnx.merge(self.graphdef, snap.params), snap))
            self.records.append(rec)
        if not keep_snapshots:
            self.snapshots = []
        return self.records

    def summary(self) -> dict:
        """Scalar result of the run (no records)."""
        tc = self.tc
        return dict(
            stage=tc.stage,
            batch=tc.batch_size,
            lr=tc.lr,
            seed=tc.seed,
            status=self.status,
            steps=self.step,
            tokens=self.tokens,
            tokens_to_target=self.tokens_to_target,
            final_val_loss=self.val_loss,
            target=tc.target,
            train_seconds=self.train_seconds,
            tokens_per_second=self.tokens_per_second,
        )


def train_toy(tc: ToyTrainConfig, splits: Mapping[str, Split], *, log: Callable[[str], None] | None = None) -> ToyRun:
    """Train one run to the target, divergence or tc.max_steps."""
    return ToyRun(tc, splits, log=log).advance(tc.max_steps)
