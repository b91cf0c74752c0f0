"""Successive-halving LR selection: the candidate grid and a synchronized halving driver. Pure (no model, no
trainer): the caller's `advance` trains.

Candidates (docs/method.md §3.3): r = B / B0, two scaling centres {sqrt(r), r} times the multipliers
{0.5, 1/sqrt2, 1, sqrt2, 2}, one multiplier applied uniformly to every optimizer group, deduplicated at six
significant digits (the reference rounds to 6 decimals) and sorted ascending (five candidates when B = B0, at most
ten otherwise).

Halving (paper: keep the top half, eta = 2; the reference's shells use eta = 3): every active candidate is
advanced to the rung's budget, ranked, and the best max(min_survivors, n // eta) go on. Ranking (best first):
candidates that reached the target loss, by fewer tokens to it; then the rest by their observed validation loss;
a non-finite loss (diverged run) last. The driver does not train anything itself: `advance(candidate, budget)`
continues that candidate to `budget` and reports where it is, so the LM sweep resumes each survivor from its
checkpoint and the toy keeps its state in memory. (The reference retrains every promoted candidate from step 0
at each rung; continuing gives the same result, since the LR schedule does not depend on the budget, and costs
only the last rung's budget per survivor instead of the sum of all rungs.)

With `state_path`, every finished (candidate, rung) result is appended to a JSONL file and reused on a restart,
so an interrupted sweep repeats no rung it had completed.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
from collections.abc import Callable, Sequence

from spectral_jax.records import append_jsonl, read_jsonl

MULTIPLIERS = (0.5, 1 / math.sqrt(2), 1.0, math.sqrt(2), 2.0)
CENTERS = ("sqrt", "linear")


def lr_multiplier_for_batch(batch: int, reference_batch: int, rule: str = "sqrt") -> float:
    """The reference's batch-scaling centres (docs/method.md §3.3): sqrt(B/B0), B/B0, or 1 for "none"."""
    ratio = batch / reference_batch
    if rule == "sqrt":
        return math.sqrt(ratio)
    if rule == "linear":
        return ratio
    if rule == "none":
        return 1.0
    raise ValueError(f"unknown LR scaling rule {rule!r}; choose one of linear, none, sqrt")


def _sig6(x: float) -> float:
    return float(f"{x:.6g}")


def lr_candidates(
    batch: int,
    reference_batch: int,
    *,
    base: float = 1.0,
    multipliers: Sequence[float] = MULTIPLIERS,
    centers: Sequence[str] = CENTERS,
) -> tuple[float, ...]:
    """LR candidates for batch B (multipliers of the family's anchor LRs when base = 1), ascending, deduplicated."""
    if batch < 1 or reference_batch < 1:
        raise ValueError(f"batch and reference_batch must be >= 1, got {batch}, {reference_batch}")
    if not multipliers or any(not (m > 0 and math.isfinite(m)) for m in multipliers):
        raise ValueError(f"multipliers must be positive and finite, got {tuple(multipliers)}")
    if not centers:
        raise ValueError("need at least one scaling centre (sqrt, linear, none)")
    values: dict[float, float] = {}
    for c in centers:
        for m in multipliers:
            v = base * lr_multiplier_for_batch(batch, reference_batch, c) * m
            values.setdefault(_sig6(v), v)
    return tuple(sorted(values.values()))


def candidate_key(multiplier: float) -> str:
    """A stable, filesystem-safe name for a candidate multiplier (used for run directories and records)."""
    return f"{_sig6(multiplier):.6g}"


@dataclasses.dataclass(frozen=True)
class RungResult:
    """Where a candidate stands after `advance`: last observed val loss, training tokens, target reached."""

    loss: float
    tokens: int
    reached: bool = False


def rank_key(result: RungResult) -> tuple:
    """Sort key, smaller is better: reached (by tokens), then finite loss, then diverged."""
    if result.reached and math.isfinite(result.loss):
        return (0, result.tokens, result.loss)
    if math.isfinite(result.loss):
        return (1, result.loss, result.tokens)
    return (2, 0.0, result.tokens)


@dataclasses.dataclass(frozen=True)
class HalvingResult:
    best: str
    survivors: tuple[str, ...]
    results: dict[str, RungResult]  # each candidate's last result
    table: tuple[
        dict, ...
    ]  # one row per (rung, candidate): rung, budget, candidate, loss, tokens, reached, rank, promoted


def _load_state(path: pathlib.Path) -> dict[tuple[int, str], RungResult]:
    done: dict[tuple[int, str], RungResult] = {}
    for row in read_jsonl(path):  # a torn last line of an interrupted write is dropped
        loss = float("nan") if row["loss"] is None else float(row["loss"])
        done[(int(row["budget"]), str(row["candidate"]))] = RungResult(loss, int(row["tokens"]), bool(row["reached"]))
    return done


def _append_state(path: pathlib.Path, budget: int, candidate: str, r: RungResult) -> None:
    row = dict(
        budget=budget,
        candidate=candidate,
        loss=r.loss if math.isfinite(r.loss) else None,
        tokens=r.tokens,
        reached=r.reached,
    )
    append_jsonl(path, row)


def successive_halving(
    candidates: Sequence[str],
    rungs: Sequence[int],
    advance: Callable[[str, int], RungResult],
    *,
    eta: float = 2,
    min_survivors: int = 1,
    state_path: str | os.PathLike | None = None,
    log: Callable[[str], None] | None = None,
) -> HalvingResult:
    """Synchronized successive halving over increasing budgets; see the module docstring."""
    candidates = list(dict.fromkeys(candidates))
    if not candidates:
        raise ValueError("successive halving needs at least one candidate")
    rungs = [int(b) for b in rungs]
    if not rungs or any(b <= 0 for b in rungs) or any(b2 <= b1 for b1, b2 in zip(rungs, rungs[1:])):
        raise ValueError(f"rungs must be positive and strictly increasing, got {rungs}")
    if not eta > 1:
        raise ValueError(f"eta must be > 1 (2 keeps the top half), got {eta}")
    if min_survivors < 1:
        raise ValueError(f"min_survivors must be >= 1, got {min_survivors}")
    path = pathlib.Path(state_path) if state_path is not None else None
    done = _load_state(path) if path is not None else {}
    active = candidates
    results: dict[str, RungResult] = {}
    table: list[dict] = []
    for i, budget in enumerate(rungs):
        for cand in active:
            r = done.get((budget, cand))
            if r is None:
                r = advance(cand, budget)
                if path is not None:
                    _append_state(path, budget, cand, r)
            results[cand] = r
        ranked = sorted(active, key=lambda c: rank_key(results[c]))
        last = i == len(rungs) - 1
        keep = len(ranked) if last else max(min_survivors, int(len(ranked) // eta))
        promoted = set(ranked[:keep])
        rows = [
            dict(
                rung=i,
                budget=budget,
                candidate=c,
                loss=results[c].loss,
                tokens=results[c].tokens,
                reached=results[c].reached,
                rank=k + 1,
                promoted=c in promoted and not last,
            )
            for k, c in enumerate(ranked)
        ]
        table.extend(rows)
        if log is not None:
            what = "final ranking" if last else f"keep {keep} of {len(ranked)}"
            log(f"rung {i + 1}/{len(rungs)} (budget {budget:,}): {what}\n" + format_rung_table(rows))
        active = ranked[:keep]
    return HalvingResult(best=active[0], survivors=tuple(active), results=results, table=tuple(table))


def format_rung_table(rows: Sequence[dict]) -> str:
    """A fixed-width table of one or more rungs' rows (rank, candidate, loss, tokens, reached, promoted)."""
    lines = [
        f"{'rung':>4} {'budget':>12} {'rank':>4} {'candidate':>12} {'val loss':>9} {'tokens':>12} "
        f"{'reached':>7} {'promoted':>8}"
    ]
    for r in rows:
        loss = f"{r['loss']:.4f}" if math.isfinite(r["loss"]) else "diverged"
        lines.append(
            f"{r['rung'] + 1:>4} {r['budget']:>12,} {r['rank']:>4} {r['candidate']:>12} {loss:>9} "
            f"{r['tokens']:>12,} {'yes' if r['reached'] else 'no':>7} {'yes' if r['promoted'] else '':>8}"
        )
    return "\n".join(lines)


__all__ = [
    "MULTIPLIERS",
    "CENTERS",
    "lr_multiplier_for_batch",
    "lr_candidates",
    "candidate_key",
    "RungResult",
    "rank_key",
    "HalvingResult",
    "successive_halving",
    "format_rung_table",
]
