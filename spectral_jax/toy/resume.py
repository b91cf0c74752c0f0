"""Mid-run checkpoints of one toy run, so a run of hours survives an interruption.

A `ToyRun` lives in memory (successive halving continues its candidates there). A run at a fixed LR can instead
be saved at an eval boundary with `save_run` and continued with `load_run`: the parameters, optimizer state,
batch-sampler state, evals and probe snapshots are restored, so the continued run is bitwise the uninterrupted one
(same jitted step, same batches). One file per run, `<path>.npz` (arrays) written atomically with its metadata
inside; a file made under another training config is ignored.
"""

from __future__ import annotations

import json
import pathlib
import time
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from spectral_jax.records import json_text, save_npz, to_jsonable
from spectral_jax.toy.task import Split
from spectral_jax.toy.train import Snapshot, ToyRun, ToyTrainConfig

_META = "__meta__"


def _leaves(tree) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def save_run(run: ToyRun, path: str | pathlib.Path) -> None:
    """Write `run` (at an eval boundary: its last eval is at run.step) to `path` atomically."""
    arrays = {f"state/{i}": x for i, x in enumerate(_leaves((run.params, run.opt_state)))}
    for k, snap in enumerate(run.snapshots):
        arrays.update({f"snap{k}/{i}": x for i, x in enumerate(_leaves(snap.params))})
    meta = dict(
        config=json.loads(json_text(run.tc)),
        step=run.step,
        status=run.status,
        evals=run.evals,
        train_loss=run.train_loss,
        train_seconds=run.train_seconds,
        n_evals=run._n_evals,
        rng=run._rng.bit_generator.state,
        snapshots=[
            dict(step=s.step, tokens=s.tokens, val_loss=s.val_loss, train_loss=s.train_loss) for s in run.snapshots
        ],
    )
    arrays[_META] = np.frombuffer(json.dumps(to_jsonable(meta)).encode(), np.uint8)
    save_npz(pathlib.Path(path), arrays)


def load_run(
    tc: ToyTrainConfig,
    splits: Mapping[str, Split],
    path: str | pathlib.Path,
    *,
    log: Callable[[str], None] | None = None,
) -> ToyRun | None:
    """The run saved at `path` under the same training config, continued-ready; None if there is none."""
    path = pathlib.Path(path)
    if not path.is_file():
        return None
    with np.load(path) as z:
        meta = json.loads(bytes(z[_META]).decode())
        if meta["config"] != json.loads(json_text(tc)):
            if log:
                log(f"ignoring {path}: saved under another training config")
            return None
        run = ToyRun(tc, splits, log=log)  # fresh: the tree structure to fill
        treedef = jax.tree.structure((run.params, run.opt_state))
        n = treedef.num_leaves
        run.params, run.opt_state = jax.tree.unflatten(treedef, [jnp.asarray(z[f"state/{i}"]) for i in range(n)])
        pdef = jax.tree.structure(run.params)
        run.snapshots = [
            Snapshot(
                **s, params=jax.tree.unflatten(pdef, [jnp.asarray(z[f"snap{k}/{i}"]) for i in range(pdef.num_leaves)])
            )
            for k, s in enumerate(meta["snapshots"])
        ]
    run.step, run.status, run.evals = meta["step"], meta["status"], meta["evals"]
    run.train_loss = float("nan") if meta["train_loss"] is None else meta["train_loss"]
    run.train_seconds, run._n_evals = meta["train_seconds"], meta["n_evals"]
    run._rng.bit_generator.state = meta["rng"]
    if log:
        log(f"[{tc.stage} B={tc.batch_size} seed={tc.seed}] resumed from {path} at step {run.step}")
    return run


def advance_saving(
    run: ToyRun, max_steps: int, path: str | pathlib.Path, *, every_seconds: float = 300.0, evals_per_segment: int = 10
) -> ToyRun:
    """run.advance(max_steps), saving to `path` whenever `every_seconds` have passed at the end of a segment of
    `evals_per_segment` evals, and at the end."""
    top = min(int(max_steps), run.tc.max_steps)
    segment = run.tc.eval_every * evals_per_segment
    last = time.perf_counter()
    while not run.done and run.step < top:
        run.advance(min(top, (run.step // segment + 1) * segment))
        if run.done or run.step >= top or time.perf_counter() - last >= every_seconds:
            save_run(run, path)
            last = time.perf_counter()
            if run.log:
                tc = run.tc
                run.log(
                    f"[{tc.stage} B={tc.batch_size} seed={tc.seed}] step {run.step}/{top}, val {run.val_loss:.4f}, "
                    f"{run.tokens_per_second:,.0f} tok/s; saved {path}"
                )
    return run
