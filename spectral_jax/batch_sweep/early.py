"""Exact early points: after a tier trains, replay it to each early point's exact step and probe there.

A probe is taken every few evals during training, so the nearest probe to "20 % of T(B)" can sit anywhere between
probes. Here every early point (`efficiency.exact_steps`: fraction of T(B), fixed tokens, first eval at or
below an early loss) is measured at its exact step: `train.replay` restarts from the newest checkpoint at or before
it (else from the initial model) and trains deterministically, so the model is bitwise the uninterrupted run's.
Records go to early_probes.jsonl (ProbeRecord rows plus "early_kinds", the kinds that share the step) and
spectra/exact_*.npz; finished points are not measured again.

The study's progress grid (`progress_steps`) adds points named "fraction@f" (f of T(B)) and "loss@L" (the first
eval at or below L); a grid point whose step already has a training probe is not replayed. Steps are replayed in
groups, each from the newest checkpoint at or before it, so a point costs at most one checkpoint interval.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable

from spectral_jax import checkpoints
from spectral_jax.batch_sweep.records import TierRecords, load_tier
from spectral_jax.data.shards import TokenDataset
from spectral_jax.models.config import ModelConfig
from spectral_jax.records import log_stderr, read_jsonl
from spectral_jax.train import RunState, replay
from spectral_jax.train_config import TrainConfig

EARLY_RECORDS = "early_probes.jsonl"


def progress_steps(tier: TierRecords, *, fractions=(), losses=()) -> dict[str, int | None]:
    """The study's grid points of one tier (`TierRecords.exact_steps`), named "fraction@f" and "loss@L"; None where
    the point lies past the run's end."""
    steps = tier.exact_steps(fractions=fractions, losses=losses)
    return {f"{kind}@{value:g}": step for (kind, value), step in steps.items()}


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
    grid_fractions=(),
    grid_losses=(),
    log: Callable[[str], None] = log_stderr,
) -> dict[str, int | None]:
    """Replay the tier to every early (and grid) step not yet measured and call `probe(state, early_kinds=[kinds])`
    there, once per step; returns {kind: step}. `probe` writes the records (a ProbeCallback writing
    EARLY_RECORDS)."""
    tier = load_tier(tier_dir)
    steps = tier.early_steps(fraction=fraction, tokens=tokens, loss=loss)
    grid = progress_steps(tier, fractions=grid_fractions, losses=grid_losses)
    probed = {r["step"] for r in tier.probes}
    done = {(k, r["step"]) for r in read_jsonl(tier_dir / EARLY_RECORDS) for k in r.get("early_kinds", ())}
    todo: dict[int, list[str]] = {}
    for kind, step in {**steps, **grid}.items():
        if step is not None and (kind, step) not in done and not (kind in grid and step in probed):
            todo.setdefault(step, []).append(kind)
    if todo:
        where = ", ".join(f"{k}: {s}" for k, s in steps.items())
        log(f"[{tier_dir.name}] exact points at {len(todo)} steps {sorted(todo)} ({where})")

        def at_step(state: RunState) -> None:
            probe(state, early_kinds=todo[state.step])

        for group in _by_checkpoint(tier_dir, sorted(todo)):
            replay(config, tc, dataset, tier_dir, group, at_step, log=log)
    return {**steps, **grid}


def _by_checkpoint(tier_dir: pathlib.Path, steps: list[int]) -> list[list[int]]:
    """`steps` grouped by the newest saved checkpoint at or before each (0: the initial model)."""
    saved = checkpoints.saved_steps(tier_dir)
    groups: dict[int, list[int]] = {}
    for s in steps:
        groups.setdefault(max((c for c in saved if c <= s), default=0), []).append(s)
    return [groups[k] for k in sorted(groups)]


__all__ = ["EARLY_RECORDS", "probe_exact_early_points", "progress_steps"]
