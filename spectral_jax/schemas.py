"""Typed records of a run directory and a sweep summary: each key is spelled once, here.

Files hold the `to_dict()` of these records (JSON / JSONL rows); readers rebuild them with `from_dict`, which
ignores keys it does not know (records written by a newer version) and fills fields an older version did not write
with their defaults. Probe records carry their spectral summaries (alpha over the tail, head and bank windows,
RankMe, ...) as extra flat keys, whose names come from `spectra.summarize`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

R = TypeVar("R", bound="Record")


@dataclasses.dataclass(frozen=True)
class Record:
    """Base of every record: flat dict round trip."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls: type[R], row: Mapping[str, Any]) -> R:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in row.items() if k in names})


@dataclasses.dataclass(frozen=True)
class TierResult(Record):
    """result.json of one tier: how and where it stopped, T(B) if it reached the target, its throughput."""

    status: str  # "reached" | "budget" | "diverged" | "stopped" (train's stop_when)
    batch: int
    seq_len: int
    steps: int
    tokens: int
    tokens_to_target: int | None
    target_loss: float
    final_val_loss: float | None
    max_tokens: int
    max_steps: int
    budget_eval: bool = False  # the stop eval was made only because it was the budget's last step
    throughput_tokens_per_s: float | None = None
    timed_tokens: int = 0
    timed_seconds: float = 0.0
    message: str = ""
    fingerprint: str | None = None


@dataclasses.dataclass(frozen=True)
class EvalRow(Record):
    """One row of metrics.jsonl: an eval at the top of `step`."""

    step: int
    tokens: int
    val_loss: float
    train_loss: float | None
    window: int
    throughput_tokens_per_s: float | None = None
    elapsed_train_s: float = 0.0


@dataclasses.dataclass(frozen=True)
class ProbeRecord(Record):
    """One row of probes.jsonl: one spectrum at one probe point, with its summaries as extra flat keys."""

    kind: str  # "activation" | "gradient" | "weight"
    layer: int | None
    matrix: str | None
    n: int
    step: int
    tokens: int
    val_loss: float
    window: int
    file: str  # the npz (relative to the tier directory) that holds the raw spectrum
    summaries: Mapping[str, float | None] = dataclasses.field(default_factory=dict)

    @property
    def spectrum_key(self) -> str:
        """The spectrum's key inside `file`."""
        return spectrum_key(self.kind, self.layer, self.matrix)

    def to_dict(self) -> dict[str, Any]:
        row = super().to_dict()
        return {**row.pop("summaries"), **row}

    @classmethod
    def from_dict(cls, row: Mapping[str, Any]) -> ProbeRecord:
        names = {f.name for f in dataclasses.fields(cls)} - {"summaries"}
        return cls(**{k: row.get(k) for k in names}, summaries={k: v for k, v in row.items() if k not in names})


def spectrum_key(kind: str, layer: int | None, matrix: str | None) -> str:
    """npz key of a spectrum: activation/L{layer}, gradient/L{layer}.{matrix}, weight/L{layer}.{matrix}."""
    return f"activation/L{layer}" if kind == "activation" else f"{kind}/L{layer}.{matrix}"


@dataclasses.dataclass(frozen=True)
class TierRow(Record):
    """One tier of a batch-sweep summary: T(B), eps_tok and the early spectral read-out."""

    batch: int
    status: str
    tokens_to_target: int | None
    throughput_tokens_per_s: float | None
    final_val_loss: float | None
    steps: int
    eps_tok: float | None = None
    early_alpha_tail: float | None = None
    early_alpha_tail_normalized: float | None = None
    early_tokens: int | None = None
    early_step: int | None = None
    early_val_loss: float | None = None
    tokens_to_target_interpolated: float | None = None  # the target crossing between the evals around it
    early_points: Mapping[str, Mapping[str, Any] | None] = dataclasses.field(default_factory=dict)
    lr: float | Mapping[str, float] | None = None  # TrainConfig.lr: multiplier of the family anchors (or LRs)
    lr_rule: str | None = None  # how the tier's LR was chosen (run.json)
    learning_rates: Mapping[str, float] | None = None  # the tier's peak LR per optimizer group


@dataclasses.dataclass(frozen=True)
class MatchedLossRow(Record):
    """A tier's probe point nearest one common loss target (matched-loss spectra, docs/method.md §1.6)."""

    target_loss: float
    batch: int
    step: int
    tokens: int
    val_loss: float
    alpha_tail: float | None
    rankme: float | None
    grad_alpha_tail: float | None
    grad_rankme: float | None
    file: str


@dataclasses.dataclass(frozen=True)
class SweepSummary(Record):
    """summary.json of a batch sweep."""

    family: str
    preset: str
    tail_window: tuple[int, int]
    early_fraction: float
    tiers: tuple[TierRow, ...]
    spearman_within: float | None
    p_value: float | None
    n_reached: int
    target_loss: float
    matched_loss: tuple[MatchedLossRow, ...]
    matched_loss_targets: tuple[float, ...]
    spearman_vs_progress: tuple[Mapping[str, Any], ...]
    git_sha: str
    probe_layer: int | None = None  # the block whose activation spectra the summary reads
    probe_matrix: str | None = None  # the matrix whose gradient spectra it reads
    eps_tok_basis: str = "interpolated"  # eps_tok from the interpolated T(B); tokens_to_target is the first eval
    early_tokens: int | None = None
    early_loss: float | None = None
    early_points: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        row = super().to_dict()
        row["tiers"] = [t.to_dict() for t in self.tiers]
        row["matched_loss"] = [m.to_dict() for m in self.matched_loss]
        return row

    @classmethod
    def from_dict(cls, row: Mapping[str, Any]) -> SweepSummary:
        s = super().from_dict(row)
        return dataclasses.replace(
            s,
            tiers=tuple(TierRow.from_dict(t) for t in row["tiers"]),
            matched_loss=tuple(MatchedLossRow.from_dict(m) for m in row["matched_loss"]),
        )


__all__ = [
    "Record",
    "TierResult",
    "EvalRow",
    "ProbeRecord",
    "spectrum_key",
    "TierRow",
    "MatchedLossRow",
    "SweepSummary",
]
