"""Orbax checkpoints of a run (parameters + optimizer state + a JSON meta), the config fingerprint that guards
resume, and loading a finished tier's model back.

A checkpoint at step s holds `state = {params, opt_state}` and `meta = {step, timed_tokens, timed_seconds,
train_loss, fingerprint, data_position}`; batch k of the data stream is a pure function of (data seed, k), so the
step is the whole data state. The fingerprint is the run's model config, train config (without the token budget)
and LRs: nothing in a step depends on the budget, so a run to a larger budget continues from the checkpoint of a
smaller one and matches a straight run (successive halving relies on it).
"""

from __future__ import annotations

import contextlib
import errno
import gc
import json
import logging
import os
import pathlib
import re
import shutil
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging as absl_logging
from flax import nnx

from spectral_jax.errors import CorruptRecordError, UserError
from spectral_jax.models import GPT, make_config
from spectral_jax.models.config import ModelConfig
from spectral_jax.optim import group_learning_rates, make_optimizer
from spectral_jax.records import json_text, read_json, to_jsonable
from spectral_jax.train_config import TrainConfig
from spectral_jax.train_step import Schedules

# TrainConfig fields that do not change a run's records: the budget (a longer run continues a shorter one), how
# many checkpoints are kept and how often progress is logged; they stay out of the fingerprint
BUDGET_FIELDS = ("max_tokens", "keep_checkpoints", "log_every_seconds")


def config_fingerprint(
    config: ModelConfig, tc: TrainConfig, lrs: Mapping[str, float], identity: Mapping[str, Any] | None = None
) -> str:
    """What makes two runs' records the same: model, train config and LRs, WITHOUT the token budget, and the
    caller's `identity` (data, vocabulary map, probe settings) when given."""
    train_fields = {k: v for k, v in to_jsonable(tc).items() if k not in BUDGET_FIELDS}
    record = dict(model=config, train=train_fields, learning_rates=lrs)
    if identity:
        record["identity"] = identity
    return json_text(record)


def fingerprint_diff(stored: str, fingerprint: str, depth: int = 3) -> list[str]:
    """The dotted names of the fields in which two fingerprints differ (e.g. "train.target_loss",
    "identity.data.metadata"), down to `depth` levels."""

    def walk(a, b, prefix, level):
        if a == b:
            return []
        if level >= depth or not (isinstance(a, dict) and isinstance(b, dict)):
            return [prefix or "(all)"]
        out = []
        for k in sorted(set(a) | set(b)):
            out += walk(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else k, level + 1)
        return out

    try:
        before = json.loads(stored)
    except (TypeError, json.JSONDecodeError):
        return ["(unreadable fingerprint)"]
    for key in BUDGET_FIELDS:
        before.get("train", {}).pop(key, None)
    return walk(before, json.loads(fingerprint), "", 0)


def same_config(stored: str | None, fingerprint: str) -> bool:
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


def check_resumable(
    config: ModelConfig, tc: TrainConfig, out_dir: str | os.PathLike, identity: Mapping[str, Any] | None = None
) -> None:
    """UserError naming the differing fields when `out_dir` holds a run made with other settings (what train()
    with resume=True would refuse), so a caller can check every run before writing anything."""
    lrs = group_learning_rates(config, tc.lr)
    refuse_other_settings(pathlib.Path(out_dir), config_fingerprint(config, tc, lrs, identity))


def refuse_other_settings(out: pathlib.Path, fingerprint: str, log=None) -> bool:
    """A directory holding a run with another fingerprint is not silently overwritten or mixed into. Returns False
    when run.json is unreadable (reported through `log`): the caller then resumes from the checkpoints, whose own
    fingerprints still guard the resume, and rewrites it."""
    run_json = out / "run.json"
    if not run_json.is_file():
        return True
    try:
        stored = read_json(run_json).get("fingerprint")
    except CorruptRecordError as err:
        if log is not None:
            log(f"warning: {err}; resuming from the checkpoints, which rewrites it")
        return False
    if stored is not None and not same_config(stored, fingerprint):
        changed = ", ".join(fingerprint_diff(stored, fingerprint))
        raise UserError(
            f"{out} holds a run made with other settings ({changed} differ); pass another --out, or --noresume to "
            "start it over"
        )
    return True


def result_answers(done: Mapping[str, Any], max_steps: int) -> bool:
    """Whether a finished run's result.json is what training to a budget of `max_steps` would give.

    It does when the run stopped (target reached, diverged, budget) at a step this budget also reaches AND that
    stop would happen here too: a "budget" stop only at the same last step, and a stop at an eval that was made
    only because it was the old budget's last step (off the eval cadence) only when it is this budget's last
    step as well. Otherwise training continues from the checkpoint.
    """
    steps = done.get("steps")
    if steps is None or steps > max_steps:
        return False
    if done.get("status") == "budget" or done.get("budget_eval", True):
        return steps == max_steps
    return done.get("status") in ("reached", "diverged")


def manager(directory: pathlib.Path, keep: int = 1) -> ocp.CheckpointManager:
    remove_partial_saves(directory)  # a killed or failed save's temporary directory is never resumed from
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False)
    return ocp.CheckpointManager(pathlib.Path(directory).resolve(), options=options)


def prune(run_dir: str | pathlib.Path, keep: int = 1) -> list[int]:
    """Delete all but the newest `keep` checkpoints of a run directory; returns the deleted steps. The batch sweep
    keeps a checkpoint every few evals while a tier trains, so that its exact early points replay only from the
    checkpoint before them, and prunes after measuring them."""
    directory = pathlib.Path(run_dir).resolve() / "checkpoints"
    if not directory.is_dir():
        return []
    mgr = ocp.CheckpointManager(directory)
    steps = sorted(mgr.all_steps())
    drop = steps[: max(len(steps) - keep, 0)]
    for step in drop:
        mgr.delete(step)
    mgr.close()
    return drop


def saved_steps(run_dir: str | pathlib.Path) -> list[int]:
    """The steps of a run directory's saved checkpoints, ascending ([] when it has none)."""
    directory = pathlib.Path(run_dir).resolve() / "checkpoints"
    if not directory.is_dir():
        return []
    mgr = ocp.CheckpointManager(directory)
    try:
        return sorted(mgr.all_steps())
    finally:
        mgr.close()


def restore_newest(mgr: ocp.CheckpointManager, at_most: int, fingerprint: str, params, opt_state, log):
    """(meta, params, optimizer state) of the newest readable checkpoint at or before step `at_most`, its config
    checked before any array is restored; a damaged checkpoint is reported through `log`, deleted, and the one
    before it tried. None when none is left."""
    for step in sorted((s for s in mgr.all_steps() if s <= at_most), reverse=True):
        try:
            meta = restore_meta(mgr, step)
        except Exception as err:  # noqa: BLE001 -- orbax raises many types for a damaged checkpoint
            _drop_corrupt(mgr, step, err, log)
            continue
        if not same_config(meta.get("fingerprint"), fingerprint):
            raise UserError(
                f"checkpoint in {mgr.directory} was written by a different configuration; use another --out "
                "directory or --noresume to start over"
            )
        try:
            return (meta, *restore_state(mgr, step, params, opt_state))
        except Exception as err:  # noqa: BLE001
            _drop_corrupt(mgr, step, err, log)
    return None


def _drop_corrupt(mgr: ocp.CheckpointManager, step: int, err: Exception, log) -> None:
    what = (str(err).strip().splitlines() or [""])[0][:200]
    log(
        f"warning: the checkpoint at step {step} in {mgr.directory} is unreadable ({type(err).__name__}: {what}); "
        "deleting it and falling back to the one before"
    )
    delete_step(mgr, step)


def delete_step(mgr: ocp.CheckpointManager, step: int) -> None:
    """Remove checkpoint `step`, also when it is too damaged for orbax to delete."""
    try:
        mgr.delete(step)
    except Exception:  # noqa: BLE001 -- a damaged checkpoint; remove its directory directly
        shutil.rmtree(pathlib.Path(mgr.directory) / str(step), ignore_errors=True)
    mgr.reload()


def save(mgr: ocp.CheckpointManager, step: int, params, opt_state, meta: Mapping[str, Any]) -> None:
    """Checkpoint `step` (synchronously; a step that already has one is left as it is). A failed save leaves no
    temporary directory behind, and a full disk surfaces as the OSError(ENOSPC) it is, however orbax wrapped it."""
    if step in mgr.all_steps():
        return
    try:
        with _quiet_orbax():
            mgr.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(dict(params=params, opt_state=opt_state)),
                    meta=ocp.args.JsonSave(dict(meta)),
                ),
            )
            mgr.wait_until_finished()
    except Exception as err:
        remove_partial_saves(mgr.directory)
        full = _disk_full(err)
        if full is not None and full is not err:
            raise full from err
        raise


@contextlib.contextmanager
def _quiet_orbax():
    """orbax logs a failed write (e.g. a full disk) with its whole traceback from its worker threads, and its
    abandoned writer tasks report themselves when collected; the error is raised here, so only that is shown."""
    verbosity, hook = absl_logging.get_verbosity(), sys.unraisablehook
    asyncio_log = logging.getLogger("asyncio")
    level = asyncio_log.level
    absl_logging.set_verbosity(absl_logging.FATAL)
    sys.unraisablehook = lambda unraisable: None
    asyncio_log.setLevel(logging.CRITICAL)
    try:
        yield
    except BaseException:
        _join_orbax_threads(timeout=10.0)  # writers still failing log their tracebacks now, while quiet
        gc.collect()  # abandoned writer tasks report now, while quiet
        raise
    finally:
        absl_logging.set_verbosity(verbosity)
        sys.unraisablehook = hook
        asyncio_log.setLevel(level)


def _join_orbax_threads(timeout: float) -> None:
    """Wait (at most `timeout` seconds in all) for orbax's worker threads: after one write fails, the others may
    still be failing, and each logs its traceback when it ends."""
    deadline = time.monotonic() + timeout
    for t in threading.enumerate():
        if t is not threading.current_thread() and type(t).__module__.startswith("orbax"):
            t.join(max(0.0, deadline - time.monotonic()))


def remove_partial_saves(directory: str | os.PathLike) -> list[pathlib.Path]:
    """Delete orbax's temporary directories (`<step>.orbax-checkpoint-tmp-*`) left by an interrupted save."""
    directory = pathlib.Path(directory)
    debris = sorted(directory.glob(f"*{_TMP_SUFFIX}*")) if directory.is_dir() else []
    for path in debris:
        shutil.rmtree(path, ignore_errors=True)
    return debris


_TMP_SUFFIX = ".orbax-checkpoint-tmp"


def _disk_full(err: BaseException) -> OSError | None:
    """The OSError(ENOSPC) behind `err` (its causes and contexts), if any; tensorstore reports a full disk as a
    ValueError "RESOURCE_EXHAUSTED: ... No space left on device [os_error_code='28']", made an OSError here."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            return err
        text = str(err)
        if "No space left on device" in text or f"os_error_code='{errno.ENOSPC}'" in text:
            path = re.search(r'local file "([^"]*?/checkpoints)/', text)
            return OSError(errno.ENOSPC, "No space left on device", path.group(1) if path else None)
        err = err.__cause__ or err.__context__
    return None


def restore_meta(mgr: ocp.CheckpointManager, step: int) -> dict:
    """The JSON meta of checkpoint `step`, read without touching its arrays (so a config check comes first)."""
    return mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]


def restore_state(mgr: ocp.CheckpointManager, step: int, params, opt_state):
    """(params, optimizer state) of checkpoint `step`, restored into the shapes and dtypes of the templates."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, dict(params=params, opt_state=opt_state))
    state = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))["state"]
    return state["params"], state["opt_state"]


def load_model(run_dir: str | pathlib.Path, step: int | None = None) -> tuple[GPT, int, dict]:
    """(model, attention window, description) of a run directory's checkpoint at `step` (default: the newest), e.g.
    a batch-sweep tier such as results/batch_sweep/betterwin_tiny/tier_B8. The model config is rebuilt with
    make_config from the run's records and must reproduce the run's config fingerprint."""
    run_dir = pathlib.Path(run_dir)
    if not (run_dir / "run.json").is_file() or not (run_dir / "checkpoints").is_dir():
        raise FileNotFoundError(
            f"{run_dir} is not a trained run directory (needs run.json and checkpoints/); pass a batch-sweep tier "
            "such as results/batch_sweep/betterwin_tiny/tier_B8"
        )
    run = read_json(run_dir / "run.json")
    sweep_json = run_dir.parent / "sweep.json"
    overrides = (read_json(sweep_json)["config"].get("model_overrides") or {}) if sweep_json.is_file() else {}
    config = make_config(run["family"], run["preset"], **overrides)
    tc = TrainConfig(**run["train"])
    if config_fingerprint(config, tc, run["learning_rates"], run.get("identity")) != run["fingerprint"]:
        raise UserError(
            f"{run_dir}: the model config rebuilt from run.json does not match the run's fingerprint "
            "(written by another code version?); retrain the tier or pass another run directory"
        )
    mgr = ocp.CheckpointManager(run_dir.resolve() / "checkpoints")
    steps = sorted(mgr.all_steps())
    if not steps or (step is not None and step not in steps):
        raise FileNotFoundError(
            f"{run_dir}/checkpoints holds no checkpoint at step {step}: it has {steps or 'none'}; "
            "pass one of those, or rerun the run (more are kept with --keep_checkpoints)"
        )
    step = steps[-1] if step is None else step
    model = GPT(config, rngs=nnx.Rngs(tc.seed))
    _, params = nnx.split(model, nnx.Param)
    sched = Schedules.build(config, tc)
    opt_state = make_optimizer(config, run["learning_rates"], step_scale=sched.step_scale).init(params)
    nnx.update(model, restore_state(mgr, step, params, opt_state)[0])
    info = dict(
        kind="checkpoint", dir=str(run_dir), step=step, tokens=step * sched.tokens_per_step, family=run["family"]
    )
    return model, sched.window(config, step), info


__all__ = [
    "BUDGET_FIELDS",
    "prune",
    "config_fingerprint",
    "refuse_other_settings",
    "check_resumable",
    "delete_step",
    "remove_partial_saves",
    "restore_newest",
    "saved_steps",
    "fingerprint_diff",
    "same_config",
    "result_answers",
    "manager",
    "save",
    "restore_meta",
    "restore_state",
    "load_model",
]
