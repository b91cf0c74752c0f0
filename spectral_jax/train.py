"""Training one batch tier to a target loss: evals, probe callbacks, checkpoints, resume (docs/method.md §3.1-3.2).

One run = one family at one batch tier B (sequences per optimizer step):
- the family's optimizer groups and schedules, every step count token-normalised to B (`train_step.Schedules`);
- at the top of step s (before its update), when s is a multiple of the eval cadence, evaluate on the fixed
  validation set, run the probe callbacks, and stop at the first eval (s > 0) with val loss <= target:
  T(B) = training tokens at that eval = s * B * T;
- a step = B / micro_batch forward/backward passes whose mean gradient feeds one optimizer update
  (`train_step.TrainStep`); batch k of the data stream is a pure function of (data seed, k);
- the training loss is read one step late: step s+1 is dispatched before the loss of step s is fetched, so the host
  never waits for the device between steps (on an accelerator the next step's dispatch and batch overlap the
  current step); evals, checkpoints and the stop read it first, so records are those of a synchronous loop;
- throughput Q = timed training tokens / timed step seconds, excluding eval, probe and checkpoint time and the
  first `skip_throughput_steps` steps of every (re)start (compilation);
- orbax checkpoints at a token cadence and at the stop; a restarted run resumes from the last one and reproduces
  the uninterrupted run's records (metrics beyond the checkpoint are dropped and recomputed);
- a NaN/inf loss stops the run with TrainingDiverged: result.json says "diverged", no probe runs on it.

Run directory: run.json (resolved configs, git SHA, versions, devices, data), metrics.jsonl (one row per eval),
whatever callbacks write (probes.jsonl, spectra/*.npz), result.json (written last, atomically), checkpoints/.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from spectral_jax import checkpoints
from spectral_jax.data.shards import TokenDataset
from spectral_jax.errors import CorruptRecordError
from spectral_jax.lock import results_lock
from spectral_jax.mesh import make_mesh
from spectral_jax.models.config import ModelConfig
from spectral_jax.models.gpt import GPT
from spectral_jax.optim import group_learning_rates
from spectral_jax.records import append_jsonl, environment, log_stderr, read_json, truncate_jsonl, write_json
from spectral_jax.schemas import EvalRow, TierResult
from spectral_jax.train_config import TrainConfig
from spectral_jax.train_step import Schedules, TrainStep, _leaf_programs, interleaved_throughput


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf; nothing downstream of that point is measured."""


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


def _fmt_time(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


@dataclasses.dataclass
class _Pending:
    """A dispatched step whose loss has not been read yet."""

    loss_sum: Any
    step: int  # optimizer steps done once it finishes
    dispatched: float


class _TierRun:
    """The mutable state of one train() call: parameters, counters, timers; one method per phase."""

    def __init__(
        self,
        config: ModelConfig,
        tc: TrainConfig,
        dataset: TokenDataset,
        out: pathlib.Path,
        callbacks: Sequence[Callback],
        log: Callable[[str], None],
        fingerprint: str,
        lrs: Mapping[str, float],
    ):
        self.config, self.tc, self.out, self.callbacks, self.log = config, tc, out, tuple(callbacks), log
        self.fingerprint = fingerprint
        self.sched = Schedules.build(config, tc)
        self.accum = tc.batch_size // tc.resolved_micro_batch
        self.tag = f"[B={tc.batch_size}]"
        self.stop_when: Callable[[EvalRow], bool] | None = None
        self.model = GPT(config, rngs=nnx.Rngs(tc.seed))
        self.graphdef, params = nnx.split(self.model, nnx.Param)
        self.step_fn = TrainStep(config, lrs, self.sched.step_scale, self.accum, mesh=make_mesh(tc.mesh))
        self.params, self.opt_state = self.step_fn.init(params)
        self.step, self.timed_tokens, self.timed_seconds = 0, 0, 0.0
        self.train_loss = float("nan")
        self.pending: _Pending | None = None
        self.last_done = 0.0  # when the last step was seen finished
        self.steps_this_call = 0
        self.manager = checkpoints.manager(out / "checkpoints", tc.keep_checkpoints)
        mb = tc.resolved_micro_batch
        rows = self.step_fn.local_rows(mb)  # several processes: each reads only its own rows of every batch
        self.train_ds = dataset.train_dataset(config.seq_len, mb, seed=tc.data_seed, rows=rows)
        val = dataset.validation_set(config.seq_len, tc.val_tokens)
        bs = min(tc.eval_batch, len(val))
        self.val_batches = [val[i : i + bs] for i in range(0, len(val) - bs + 1, bs)]

    # ---- resume --------------------------------------------------------------------------------------------
    def load_latest(self, at_most: int) -> bool:
        """Load the newest readable checkpoint at or before step `at_most` (`checkpoints.restore_newest`)."""
        found = checkpoints.restore_newest(
            self.manager, at_most, self.fingerprint, self.params, self.opt_state, lambda m: self.log(f"{self.tag} {m}")
        )
        if found is None:
            return False
        meta, self.params, self.opt_state = found
        self.step, self.timed_tokens, self.timed_seconds = meta["step"], meta["timed_tokens"], meta["timed_seconds"]
        self.train_loss = float("nan") if meta.get("train_loss") is None else meta["train_loss"]
        self.start_step = self.step
        return True

    def restore(self, resume: bool) -> None:
        """Continue from the newest checkpoint within this budget (dropping later ones), else start clean; then
        drop the records an interrupted run wrote at or after the step it restarts from."""
        mgr, sched = self.manager, self.sched
        if resume and self.load_latest(sched.max_steps):
            for later in [s for s in mgr.all_steps() if s > self.step]:
                mgr.delete(later)
            self.log(
                f"{self.tag} resumed from checkpoint at step {self.step} ({self.step * sched.tokens_per_step:,} tokens)"
            )
        else:
            for old in mgr.all_steps():
                mgr.delete(old)
        for name in ("metrics.jsonl", "probes.jsonl", "early_probes.jsonl"):
            if self.step == 0:
                (self.out / name).unlink(missing_ok=True)
            else:
                truncate_jsonl(self.out / name, lambda r: r.get("step", 0) < self.step)
        self.start_step = self.step

    def replay_to(self, steps: Sequence[int], at_step: Callable[[RunState], None]) -> None:
        """Train forward through the increasing `steps`, and at each one (before its update, as an eval would)
        evaluate and call `at_step`; nothing is written to the run directory's own records."""
        for target in sorted(set(steps)):
            if target < self.step:
                raise ValueError(f"replay cannot go back from step {self.step} to {target}")
            while self.step < target:
                self.dispatch()
            self.flush()
            window = self.sched.window(self.config, target)
            nnx.update(self.model, self.params)
            tokens = target * self.sched.tokens_per_step
            at_step(RunState(target, tokens, self.evaluate(window), window, self.model, self.config, self.tc, self.out))

    # ---- steps ---------------------------------------------------------------------------------------------
    def dispatch(self) -> None:
        """Start one optimizer step; read the previous step's loss only after this one is on its way."""
        window = self.sched.window(self.config, self.step)
        batches = [self.train_ds[self.step * self.accum + k] for k in range(self.accum)]
        t0 = time.perf_counter()
        self.params, self.opt_state, loss_sum = self.step_fn(
            self.graphdef, self.params, self.opt_state, batches, window
        )
        self.step += 1
        self.steps_this_call += 1
        previous, self.pending = self.pending, _Pending(loss_sum, self.step, t0)
        if previous is not None:
            self._read(previous)

    def flush(self) -> None:
        """Read the loss of the step in flight (before an eval, a checkpoint or a stop)."""
        if self.pending is not None:
            pending, self.pending = self.pending, None
            self._read(pending)

    def _read(self, p: _Pending) -> None:
        loss = float(p.loss_sum) / self.accum  # waits for that step
        done = time.perf_counter()
        dt, self.last_done = done - max(p.dispatched, self.last_done), done
        self.train_loss = loss
        if not math.isfinite(loss):
            msg = (
                f"training loss is {loss} at step {p.step}: training diverged; lower the learning "
                "rate (--lr) and rerun; no spectra were measured from this point"
            )
            self.finish("diverged", p.step, None, msg)
            raise TrainingDiverged(msg)
        if p.step - self.start_step > self.tc.skip_throughput_steps:
            self.timed_tokens += self.sched.tokens_per_step
            self.timed_seconds += dt

    def throughput(self) -> float | None:
        return self.timed_tokens / self.timed_seconds if self.timed_seconds > 0 else None

    # ---- evals, checkpoints, the end -----------------------------------------------------------------------
    def evaluate(self, window: int) -> float:
        leaves, params_def = jax.tree.flatten(self.params)
        eval_loss = _leaf_programs(self.graphdef, params_def)[1]
        losses = [
            eval_loss(leaves, self.step_fn.place(b[:, :-1]), self.step_fn.place(b[:, 1:]), jnp.int32(window))
            for b in self.val_batches
        ]
        return float(np.mean([float(v) for v in losses]))

    def save_checkpoint(self) -> None:
        meta = dict(
            step=self.step,
            timed_tokens=self.timed_tokens,
            timed_seconds=self.timed_seconds,
            train_loss=self.train_loss if math.isfinite(self.train_loss) else None,
            fingerprint=self.fingerprint,
            data_position=self.step * self.accum,
        )
        checkpoints.save(self.manager, self.step, self.params, self.opt_state, meta)

    def finish(self, status: str, at_step: int, val_loss: float | None, message: str = "") -> dict:
        sched, tokens = self.sched, at_step * self.sched.tokens_per_step
        result = TierResult(
            status=status,
            batch=self.tc.batch_size,
            seq_len=self.config.seq_len,
            steps=at_step,
            tokens=tokens,
            tokens_to_target=tokens if status == "reached" else None,
            target_loss=self.tc.target_loss,
            final_val_loss=val_loss,
            max_tokens=self.tc.max_tokens,
            max_steps=sched.max_steps,
            budget_eval=at_step == sched.max_steps and at_step % sched.eval_every_steps != 0,
            throughput_tokens_per_s=self.throughput(),
            timed_tokens=self.timed_tokens,
            timed_seconds=self.timed_seconds,
            message=message,
            fingerprint=self.fingerprint,
        )
        write_json(self.out / "result.json", result)
        return result.to_dict()

    def eval_point(self) -> dict | None:
        """Evaluate, probe and log at the top of the current step; the result dict when the run stops here."""
        t_eval, step, sched = time.perf_counter(), self.step, self.sched
        window = sched.window(self.config, step)
        val_loss = self.evaluate(window)
        tokens = step * sched.tokens_per_step
        row = EvalRow(
            step=step,
            tokens=tokens,
            val_loss=val_loss,
            train_loss=self.train_loss,
            window=window,
            throughput_tokens_per_s=self.throughput(),
            elapsed_train_s=self.timed_seconds,
        )
        if not math.isfinite(val_loss):
            append_jsonl(self.out / "metrics.jsonl", row.to_dict())
            msg = (
                f"validation loss is {val_loss} at step {step} ({tokens:,} tokens): training diverged; "
                "lower the learning rate (--lr) and rerun; no spectra were measured at this point"
            )
            self.finish("diverged", step, None, msg)
            raise TrainingDiverged(msg)
        reached = step > 0 and val_loss <= self.tc.target_loss
        stopped = not reached and step > 0 and self.stop_when is not None and bool(self.stop_when(row))
        final = reached or stopped or step >= sched.max_steps
        if self.callbacks and (final or (step // sched.eval_every_steps) % self.tc.probe_every_evals == 0):
            nnx.update(self.model, self.params)
            state = RunState(step, tokens, val_loss, window, self.model, self.config, self.tc, self.out, is_final=final)
            for cb in self.callbacks:
                cb(state)
        append_jsonl(self.out / "metrics.jsonl", row.to_dict())
        self.log(
            f"{self.tag} eval step {step} | {tokens:,} tokens | val {val_loss:.4f} (target "
            f"{self.tc.target_loss}) | window {window} | {time.perf_counter() - t_eval:.1f}s"
        )
        if not final:
            return None
        self.save_checkpoint()
        status = "reached" if reached else "stopped" if stopped else "budget"
        result = self.finish(status, step, val_loss)
        q = result["throughput_tokens_per_s"]
        what = "T(B) = " if reached else ""
        self.log(
            f"{self.tag} {status} at step {step}: {what}{tokens:,} tokens, val {val_loss:.4f}, Q = {q:,.0f} tokens/s"
            if q
            else f"{self.tag} {status} at step {step}"
        )
        return result

    def progress(self) -> None:
        q, sched = self.throughput(), self.sched
        left = (sched.max_steps - self.step) * sched.tokens_per_step
        speed = f"{q:,.0f} tok/s | ETA <= {_fmt_time(left / q)}" if q else "tok/s and ETA after the compile steps"
        # the loss is read one step late: before the first read there is none yet (a NaN read stops the run)
        loss = "-" if math.isnan(self.train_loss) else f"{self.train_loss:.4f}"
        self.log(
            f"{self.tag} step {self.step}/{sched.max_steps} | {self.step * sched.tokens_per_step:,} tokens | "
            f"loss {loss} | {speed}"
        )

    def run(self, stop_after_steps: int | None) -> dict:
        sched, last_log = self.sched, time.perf_counter()
        while True:
            at_eval = self.step % sched.eval_every_steps == 0 or self.step >= sched.max_steps
            at_checkpoint = self.step > self.start_step and self.step % sched.checkpoint_every_steps == 0
            stopping = stop_after_steps is not None and self.steps_this_call >= stop_after_steps
            if at_eval or at_checkpoint or stopping:
                self.flush()
                self.last_done = 0.0  # the next step's time starts at its dispatch
            if at_eval and (result := self.eval_point()) is not None:
                return result
            if at_checkpoint:
                self.save_checkpoint()
            if stopping:
                return dict(status="interrupted", steps=self.step)
            self.dispatch()
            now = time.perf_counter()
            if now - last_log >= self.tc.log_every_seconds:
                last_log = now
                self.progress()


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
    identity: Mapping[str, Any] | None = None,
    stop_after_steps: int | None = None,
    stop_when: Callable[[EvalRow], bool] | None = None,
) -> dict:
    """Train one tier; returns (and writes, last) result.json's dict.

    identity: everything besides model, training config and LRs that determines the records (data identity,
    vocabulary map, probe settings); part of the run's fingerprint. A run directory that holds a run with another
    fingerprint is refused with the differing fields named, unless resume=False (start it over).

    resume: continue from the newest checkpoint in out_dir/checkpoints at or before this budget's last step
    (else start fresh). A finished run of the same config is returned as is when it answers this budget
    (`checkpoints.result_answers`); a run that stopped at a smaller budget continues from its last checkpoint,
    which gives the same records as a straight run to the larger budget (the fingerprint leaves the budget out).
    stop_after_steps: simulate an interruption after that many optimizer steps of this call (tests).
    stop_when: called with every eval's row (after step 0); True ends the run there as "stopped", probed and
    checkpointed like a budget stop, so a later call with the same config continues it exactly (the batch sweep's
    early decision stops at its early loss this way).
    """
    log = log or log_stderr
    with results_lock(out_dir, log):
        return _train(
            config,
            tc,
            dataset,
            pathlib.Path(out_dir),
            callbacks,
            resume,
            log,
            run_info,
            identity,
            stop_after_steps,
            stop_when,
        )


def _train(config, tc, dataset, out, callbacks, resume, log, run_info, identity, stop_after_steps, stop_when) -> dict:
    """train() under the run directory's lock."""
    sched = Schedules.build(config, tc)
    lrs = group_learning_rates(config, tc.lr)
    fingerprint = checkpoints.config_fingerprint(config, tc, lrs, identity)
    readable = checkpoints.refuse_other_settings(out, fingerprint, log) if resume else True
    result_path = out / "result.json"
    if resume and readable and result_path.is_file():
        try:
            done = read_json(result_path)
        except CorruptRecordError as err:
            log(f"warning: {err}; resuming from the checkpoints instead")
            done = {}
        if checkpoints.same_config(done.get("fingerprint"), fingerprint) and checkpoints.result_answers(
            done, sched.max_steps
        ):
            log(
                f"[B={tc.batch_size}] already finished ({done['status']} at {done['tokens']:,} tokens); "
                f"reusing {result_path}"
            )
            return done
    result_path.unlink(missing_ok=True)
    mb = tc.resolved_micro_batch
    info = dict(
        model=config,
        train=tc,
        learning_rates=lrs,
        step_scale=sched.step_scale,
        tokens_per_step=sched.tokens_per_step,
        eval_every_steps=sched.eval_every_steps,
        window_warmup_steps=sched.window_warmup_steps,
        micro_batch=mb,
        grad_accum=tc.batch_size // mb,
        data=dict(dataset.metadata),
        **(run_info or {}),
    )
    write_json(out / "run.json", dict(info, environment=environment(), identity=identity, fingerprint=fingerprint))
    run = _TierRun(config, tc, dataset, out, callbacks, log, fingerprint, lrs)
    run.stop_when = stop_when
    run.restore(resume)
    return run.run(stop_after_steps)


def replay(
    config: ModelConfig,
    tc: TrainConfig,
    dataset: TokenDataset,
    run_dir: str | os.PathLike,
    steps: Sequence[int],
    at_step: Callable[[RunState], None],
    *,
    log: Callable[[str], None] | None = None,
) -> None:
    """Exact points of a run: from the newest checkpoint in `run_dir` at or before the first of `steps` (else from
    the initial model) train deterministically through `steps`, and at each call `at_step` with the model as an
    uninterrupted run has it at the top of that step (bitwise: same programs, same batches). The run's records and
    checkpoints are left as they are."""
    out = pathlib.Path(run_dir)
    lrs = group_learning_rates(config, tc.lr)
    identity = read_json(out / "run.json").get("identity") if (out / "run.json").is_file() else None
    fingerprint = checkpoints.config_fingerprint(config, tc, lrs, identity)
    run = _TierRun(config, tc, dataset, out, (), log or log_stderr, fingerprint, lrs)
    if min(steps) < 1:
        raise ValueError(f"replay steps must be >= 1 (step 0 is the initial model), got {sorted(steps)}")
    run.load_latest(min(steps))
    run.start_step = run.step
    run.replay_to(steps, at_step)


__all__ = [
    "TrainConfig",
    "TrainingDiverged",
    "RunState",
    "Callback",
    "Schedules",
    "TrainStep",
    "train",
    "replay",
    "interleaved_throughput",
]
