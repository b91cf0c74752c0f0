"""The chain's configuration: which families, at which batch, judged by which thresholds, and its transitions."""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

from spectral_jax.errors import UserError
from spectral_jax.fields import option
from spectral_jax.models import FAMILIES
from spectral_jax.presets import ProbeOverrides, UsesPreset
from spectral_jax.taxonomy import TaxonomyThresholds
from spectral_jax.train_config import TrainOverrides

DEFAULT_BATCH = 8
GRAD_MATRIX = "final_attn_out"


@dataclasses.dataclass(frozen=True)
class ChainConfig(UsesPreset):
    """Every family (or a sub-chain) at one batch on a preset; `train` and `probe` change the preset's values."""

    families: tuple[str, ...] | None = option(
        None, "comma-separated families (default: the whole chain, in chain order)"
    )
    preset: str = option("tiny", "model/training preset: tiny (CPU), d12, d36, d48 (spectral_jax.presets)")
    batch: int = option(
        DEFAULT_BATCH,
        "trunk sequences per step (families with shorter T run more sequences, so "
        "every family sees the same tokens per step)",
    )
    data: str = option("embedded", "'embedded' (default corpus), a directory of .bin shards, or text files")
    lr: str = option(
        "sqrt",
        "LR per family as batch_sweep --lr (sqrt | linear | none | float | table.json); at "
        "the chain batch every family's multiplier is 1 under sqrt",
    )
    out: str | None = option(None, "results directory (default results/chain/<preset>)")
    resume: bool = option(True, "reuse finished families and resume interrupted ones from their checkpoints")
    thresholds: TaxonomyThresholds = option(TaxonomyThresholds(), "taxonomy thresholds", name="{}_threshold")
    gain_target: str = option(
        "train",
        "loss at which T is read for the gains: train (the training target, the "
        "paper's), common (the lowest loss every family reached), or a number",
    )
    throughput: str = option(
        "interleaved",
        "Q for the throughput gains: interleaved (every family's training step "
        "timed side by side after the runs, fair on a shared machine) or train (the Q each run "
        "logged)",
    )
    throughput_rounds: int = option(3, "rounds of the side-by-side timing (2 steps per family per round)")
    train: TrainOverrides = option(TrainOverrides(), "changes to the preset's training config")
    probe: ProbeOverrides = option(ProbeOverrides(), "changes to the preset's probe sizes")
    model_overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict, metadata={"flag": False})

    def __post_init__(self):
        super().__post_init__()
        if self.throughput not in ("interleaved", "train"):
            raise UserError(f"--throughput must be interleaved or train, got {self.throughput!r}")

    def resolved_families(self) -> tuple[str, ...]:
        names = tuple(FAMILIES) if self.families is None else tuple(self.families)
        unknown = [f for f in names if f not in FAMILIES]
        if unknown:
            raise UserError(f"unknown family {unknown[0]!r}; choose from {list(FAMILIES)}")
        if not names:
            raise UserError("--families is empty; name at least two families of the chain")
        return tuple(f for f in FAMILIES if f in names)  # chain order, duplicates dropped

    def out_dir(self) -> pathlib.Path:
        return pathlib.Path(self.out or f"results/chain/{self.preset}")


def transitions_of(families: Sequence[str]) -> list[tuple[str, str]]:
    """(parent, family) pairs along FAMILIES for every family whose parent is among `families`."""
    present = set(families)
    return [(FAMILIES[f].parent, f) for f in families if FAMILIES[f].parent in present]


def family_batch(model_cfg, trunk_seq_len: int, batch: int) -> int:
    """Sequences per step giving the chain's tokens per step (batch x trunk T) at this family's T."""
    tokens = batch * trunk_seq_len
    if tokens % model_cfg.seq_len:
        raise UserError(f"batch {batch} x trunk T {trunk_seq_len} is not a multiple of T = {model_cfg.seq_len}")
    return tokens // model_cfg.seq_len
