"""Early decision (`batch_sweep --decide_at=...`): train every tier only to an online early point, rank the tiers
by an early spectral statistic, stop those predicted least token-efficient and finish the rest.

The early point is "tokens:N" (N training tokens: the tier's budget stop at that step) or "loss:L" (the first eval
at or below L: `train(stop_when=...)`); the fraction of T(B) cannot be used, since T(B) is known only at the end.
Both stops probe and checkpoint the tier there, so finishing it later continues exactly (the records equal an
uninterrupted run's). The statistic is one of the study's (`study.points.statistics`: "rankme", "past_head",
"alpha[lo,hi]") of one series ("activation" at the deepest probed layer, or "gradient"), and `sign` says which way
it points: +1 when a larger value went with a larger eps_tok (less efficient) in the study, -1 the other way.

<out>/decision.json holds the early point, every tier's statistic, predicted rank and fate, the tokens spent and,
given a completed full sweep of the same settings (`reference`), the tokens saved against it and whether the tier
picked (the finished tier with the smallest T(B)) is the reference's best.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np

from spectral_jax import efficiency
from spectral_jax.batch_sweep.records import load_sweep, load_tier
from spectral_jax.errors import UserError
from spectral_jax.records import read_json, read_jsonl, write_json
from spectral_jax.schemas import spectrum_key
from spectral_jax.study.statistics import PAST_HEAD, RANKME, statistics, windows_for

DECISION_FILE = "decision.json"
SERIES = ("activation", "gradient")


@dataclasses.dataclass(frozen=True)
class Decision:
    """What --decide_at / --decide_by / --decide_sign / --decide_keep ask for, parsed and checked."""

    definition: str  # tokens | loss
    value: float
    series: str  # activation | gradient
    statistic: str
    sign: int
    keep: int

    @classmethod
    def parse(cls, at: str, by: str, sign: int, keep: int, n_tiers: int) -> Decision:
        definition, _, value = at.partition(":")
        if definition == "fraction":
            raise UserError("--decide_at=fraction:... needs T(B), known only at the end; use tokens:N or loss:L")
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if definition not in ("tokens", "loss") or not number > 0:
            raise UserError(f"--decide_at must be tokens:N or loss:L with a positive number, got {at!r}")
        series, _, stat = by.partition(":")
        if series not in SERIES or not (stat in (RANKME, PAST_HEAD) or stat.startswith("alpha[")):
            raise UserError(f"--decide_by must be <activation|gradient>:<rankme|past_head|alpha[lo,hi]>, got {by!r}")
        if sign not in (1, -1):
            raise UserError(f"--decide_sign must be +1 or -1, got {sign}")
        if not 1 <= keep < n_tiers:
            raise UserError(f"--decide_keep must lie in [1, number of tiers - 1 = {n_tiers - 1}], got {keep}")
        return cls(definition, number, series, stat, sign, keep)

    def stop_when(self):
        """train()'s stop_when for the loss definition (None for tokens: the budget stops there)."""
        if self.definition != "loss":
            return None
        return lambda row: row.val_loss <= self.value

    def budget(self, max_tokens: int) -> int:
        return min(max_tokens, int(self.value)) if self.definition == "tokens" else max_tokens


def early_statistic(tier_dir: pathlib.Path, decision: Decision, *, tail, bank) -> dict:
    """The statistic at the tier's stop (phase one's last step), read from its probe there: the deepest probed
    layer's activations, or the first probed gradient matrix there. A tier that diverged before the point has no
    probe there; its value is NaN, which ranks it last (stopped)."""
    result = read_json(tier_dir / "result.json")
    step = result["steps"]
    if result.get("status") == "diverged":
        return dict(step=step, tokens=result["tokens"], val_loss=None, value=math.nan, status="diverged")
    kind = decision.series
    rows = [r for r in read_jsonl(tier_dir / "probes.jsonl") if r["step"] == step and r["kind"] == kind]
    if not rows:
        raise UserError(f"{tier_dir} has no {kind} probe at its early stop (step {step}); rerun with --noresume")
    rec = max(rows, key=lambda r: r["layer"])
    with np.load(tier_dir / rec["file"]) as f:
        values = np.asarray(f[spectrum_key(kind, rec["layer"], rec.get("matrix"))])
    stats = statistics(values, windows_for(values.size, tail, bank))
    if decision.statistic not in stats:
        raise UserError(
            f"--decide_by statistic {decision.statistic!r} does not fit a length-{values.size} spectrum; "
            f"choose one of {', '.join(stats)}"
        )
    return dict(
        step=step,
        tokens=result["tokens"],
        val_loss=result["final_val_loss"],
        value=stats[decision.statistic],
        status=result["status"],
    )


def rank_tiers(values: Mapping[int, float], decision: Decision) -> tuple[list[int], list[int]]:
    """(kept, stopped): the `keep` tiers predicted most token-efficient (smallest sign x statistic; NaN last)."""
    order = sorted(values, key=lambda b: (not math.isfinite(values[b]), decision.sign * values[b], b))
    return sorted(order[: decision.keep]), sorted(order[decision.keep :])


def decision_record(
    decision: Decision, early: Mapping[int, dict], kept: Sequence[int], out: pathlib.Path, reference: str | None
) -> dict:
    """decision.json's dict once the kept tiers finished: tokens spent, the pick, and the comparison."""
    finished = {b: load_tier(out / f"tier_B{b}") for b in kept}
    T = {b: t.tokens_to_target() for b, t in finished.items()}
    spent = sum(finished[b].result.tokens for b in kept) + sum(e["tokens"] for b, e in early.items() if b not in kept)
    picked = best_tier(T)
    rec = dict(
        decision=dataclasses.asdict(decision),
        tiers=[dict(batch=b, **early[b], kept=b in kept, tokens_to_target=T.get(b)) for b in sorted(early)],
        kept=list(kept),
        picked=picked,
        tokens_spent=spent,
    )
    if reference:
        rec.update(compare_with_reference(reference, picked, spent))
    return rec


def best_tier(T: Mapping[int, float | None]) -> int | None:
    """The tier with the smallest T(B) among those that reached the target."""
    reached = {b: v for b, v in T.items() if v}
    return min(reached, key=reached.get) if reached else None


def compare_with_reference(reference: str, picked: int | None, spent: int) -> dict:
    """Tokens of the full sweep (every tier trained to its stop) and whether `picked` is its best tier."""
    try:
        _, tiers = load_sweep(reference)
    except FileNotFoundError as err:
        raise UserError(f"--decide_reference: {err}") from None
    T = {b: t.tokens_to_target() for b, t in tiers.items()}
    full = sum(t.result.tokens for t in tiers.values())
    best = best_tier(T)
    eps = efficiency.token_efficiency(T)
    return dict(
        reference=str(reference),
        full_sweep_tokens=full,
        tokens_saved=full - spent,
        tokens_saved_fraction=(full - spent) / full if full else None,
        reference_best=best,
        picked_is_best=picked is not None and picked == best,
        picked_eps_tok=eps.get(picked) if picked is not None else None,
    )


def run_phase_one(
    decision: Decision, tiers: Sequence[int], out: pathlib.Path, train_tier, probe_args, log
) -> list[int]:
    """Train every tier to the early point (`train_tier(batch, budget, stop_when)`, budget(max_tokens) giving the
    phase's token budget), read the statistic there, rank, and write decision.json's first half; returns the tiers
    to finish. Tiers measured by an earlier run of the same decision are not trained again."""
    path = out / DECISION_FILE
    spec = dataclasses.asdict(decision)
    early = {}
    if path.is_file() and (before := read_json(path)).get("decision") == spec:
        early = {int(b): e for b, e in before.get("early", {}).items()}
    for b in tiers:
        if b in early:
            continue
        train_tier(b, decision.budget, decision.stop_when())
        early[b] = early_statistic(out / f"tier_B{b}", decision, tail=probe_args["tail"], bank=probe_args["bank"])
        write_json(path, dict(decision=spec, early={str(k): v for k, v in early.items()}))
    kept, stopped = rank_tiers({b: e["value"] for b, e in early.items()}, decision)
    log(
        f"early decision at {decision.definition} {decision.value:g} by {decision.series} {decision.statistic}: "
        + ", ".join(f"B={b} {early[b]['value']:.4g}" for b in sorted(early))
        + f"; finishing {kept}, stopping {stopped}"
    )
    return kept


def finish_decision(decision: Decision, out: pathlib.Path, kept: Sequence[int], reference: str | None) -> dict:
    """decision.json complete (after the kept tiers finished)."""
    early = {int(b): e for b, e in read_json(out / DECISION_FILE)["early"].items()}
    rec = decision_record(decision, early, kept, out, reference)
    write_json(out / DECISION_FILE, dict(rec, early={str(k): v for k, v in early.items()}))
    return rec


__all__ = [
    "DECISION_FILE",
    "Decision",
    "early_statistic",
    "rank_tiers",
    "best_tier",
    "decision_record",
    "compare_with_reference",
    "run_phase_one",
    "finish_decision",
]
