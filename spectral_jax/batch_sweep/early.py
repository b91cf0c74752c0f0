"""Exact early points: after a tier trains, replay it to each early point's exact step and probe there.

A probe is taken every few evals during training, so the nearest probe to "20 % of T(B)" can sit anywhere between
probes. Here every early point (`efficiency.exact_early_steps`: fraction of T(B), fixed tokens, first eval at or
below an early loss) is measured at its exact step: `train.replay` restarts from the newest checkpoint at or before
it (else from the initial model) and trains deterministically, so the model is bitwise the uninterrupted run's.
Records go to early_probes.jsonl (ProbeRecord rows plus "early_kinds", the kinds that share the step) and
spectra/exact_*.npz; finished points are not measured again.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable

from spectral_jax.batch_sweep.records import load_tier
from spectral_jax.data.shards import TokenDataset
from spectral_jax.models.config import ModelConfig
from spectral_jax.records import log_stderr, read_jsonl
from spectral_jax.train import RunState, replay
from spectral_jax.train_config import TrainConfig

EARLY_RECORDS = "early_probes.jsonl"


def probe_exact_early_points(
    config: ModelConfig,
    tc: TrainConfig,
    dataset: TokenDataset,
    tier_dir: pathlib.Path,
    probe: Callable[..., None],
    *,
    fraction: float,
    tokens: float,
    loss: float,
    log: Callable[[str], None] = log_stderr,
) -> dict[str, int | None]:
    """Replay the tier to every early step not yet measured and call `probe(state, early_kinds=[kinds])` there,
    once per step; returns {kind: step}. `probe` writes the records (a ProbeCallback writing EARLY_RECORDS)."""
    steps = load_tier(tier_dir).early_steps(fraction=fraction, tokens=tokens, loss=loss)
    done = {(k, r["step"]) for r in read_jsonl(tier_dir / EARLY_RECORDS) for k in r.get("early_kinds", ())}
    todo: dict[int, list[str]] = {}
    for kind, step in steps.items():
        if step is not None and (kind, step) not in done:
            todo.setdefault(step, []).append(kind)
    if todo:
        where = ", ".join(f"{k}: {s}" for k, s in steps.items())
        log(f"[{tier_dir.name}] exact early points at steps {sorted(todo)} ({where})")

        def at_step(state: RunState) -> None:
            probe(state, early_kinds=todo[state.step])

        replay(config, tc, dataset, tier_dir, sorted(todo), at_step, log=log)
    return steps


__all__ = ["EARLY_RECORDS", "probe_exact_early_points"]
