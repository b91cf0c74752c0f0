"""A batch sweep's records read back: one TierRecords per finished tier, the sweep record, raw spectra."""

from __future__ import annotations

import dataclasses
import os
import pathlib

import numpy as np

from spectral_jax import efficiency
from spectral_jax.records import read_json, read_jsonl
from spectral_jax.schemas import EvalRow, TierResult, spectrum_key


@dataclasses.dataclass(frozen=True)
class TierRecords:
    """Everything one finished tier wrote (probe rows stay the dicts `efficiency` selects from)."""

    dir: pathlib.Path
    result: TierResult
    run: dict
    evals: tuple[EvalRow, ...]
    probes: tuple[dict, ...]
    early: tuple[dict, ...] = ()  # probe rows at the exact early points (early_probes.jsonl)

    def tokens_to_target(self) -> float | None:
        """T(B) interpolated below one eval (`efficiency.tokens_to_target_interpolated`); None if not reached."""
        return efficiency.tokens_to_target_interpolated([e.to_dict() for e in self.evals], self.result.target_loss)

    def exact_steps(self, *, fractions=(), tokens=(), losses=()) -> dict[tuple[str, float], int | None]:
        """The exact step of early points of this tier (`efficiency.exact_steps`)."""
        return efficiency.exact_steps(
            [e.to_dict() for e in self.evals],
            target=self.result.target_loss,
            tokens_per_step=self.result.tokens // max(self.result.steps, 1),
            last_step=self.result.steps,
            fractions=fractions,
            tokens=tokens,
            losses=losses,
        )

    def early_steps(self, *, fraction: float, tokens: float, loss: float) -> dict[str, int | None]:
        """The exact step of each early point of this tier, keyed by kind (`efficiency.exact_steps`)."""
        steps = self.exact_steps(fractions=(fraction,), tokens=(tokens,), losses=(loss,))
        return {kind: step for (kind, _), step in steps.items()}

    def records(self, kind: str, layer: int | None, matrix: str | None = None, *, early: bool = False) -> list[dict]:
        """Probe rows of one spectrum kind at one layer (and matrix), in step order; `early`: the exact early
        points' rows instead of the training probes'."""
        return [
            r
            for r in (self.early if early else self.probes)
            if r["kind"] == kind and r["layer"] == layer and (matrix is None or r["matrix"] == matrix)
        ]


def load_tier(directory: pathlib.Path) -> TierRecords:
    directory = pathlib.Path(directory)
    if not (directory / "result.json").is_file():
        raise FileNotFoundError(
            f"{directory} has no result.json: the tier did not finish; rerun the sweep (it resumes) or drop the tier"
        )
    return TierRecords(
        dir=directory,
        result=TierResult.from_dict(read_json(directory / "result.json")),
        run=read_json(directory / "run.json"),
        evals=tuple(EvalRow.from_dict(r) for r in read_jsonl(directory / "metrics.jsonl")),
        probes=tuple(read_jsonl(directory / "probes.jsonl")),
        early=tuple(read_jsonl(directory / "early_probes.jsonl")),
    )


def load_sweep(out: str | os.PathLike) -> tuple[dict, dict[int, TierRecords]]:
    out = pathlib.Path(out)
    if not (out / "sweep.json").is_file():
        raise FileNotFoundError(f"{out} is not a batch-sweep results directory (no sweep.json)")
    sweep = read_json(out / "sweep.json")
    tiers = {}
    for d in sorted(out.glob("tier_B*")):
        if (d / "result.json").is_file():
            tiers[int(d.name[len("tier_B") :])] = load_tier(d)
    if not tiers:
        raise FileNotFoundError(f"{out} holds no finished tier (tier_B*/result.json)")
    return sweep, dict(sorted(tiers.items()))


def load_spectrum(tier: TierRecords, record: dict) -> np.ndarray:
    """The raw spectrum behind a probe record, from the tier directory's npz."""
    with np.load(tier.dir / record["file"]) as f:
        return np.asarray(f[spectrum_key(record["kind"], record["layer"], record.get("matrix"))])


__all__ = ["TierRecords", "load_tier", "load_sweep", "load_spectrum"]
