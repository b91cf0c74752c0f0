"""The early decision's outcomes (`batch_sweep --decide_at`), one row per run: the tier it picked and the tokens it
spent against its reference sweep, beside the rule it has to beat, "finish the `keep` largest tiers" (where ε_tok
falls with B, a statistic that only orders the tiers by B does that well and no better)."""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import numpy as np

from spectral_jax import efficiency
from spectral_jax.batch_sweep.decide import DECISION_FILE, best_tier
from spectral_jax.batch_sweep.records import load_sweep
from spectral_jax.errors import UserError
from spectral_jax.records import read_json

DECISION_COLUMNS = (
    "run",
    "definition",
    "value",
    "series",
    "statistic",
    "sign",
    "kept",
    "picked",
    "picked_eps_tok",
    "picked_is_best",
    "reference_best",
    "tokens_spent",
    "full_sweep_tokens",
    "tokens_saved_fraction",
    "largest_pick",
    "largest_eps_tok",
    "largest_is_best",
    "largest_tokens_spent",
)


def decision_row(directory: str | pathlib.Path) -> dict:
    """One finished decision (its decision.json and the reference sweep it names) as a DECISION_COLUMNS row."""
    directory = pathlib.Path(directory)
    path = directory / DECISION_FILE
    if not path.is_file():
        raise UserError(f"{directory} holds no {DECISION_FILE}; run batch_sweep --decide_at=... --out={directory}")
    rec = read_json(path)
    if "picked" not in rec or not rec.get("reference"):
        raise UserError(
            f"{path} is unfinished or has no reference sweep; rerun its batch_sweep command with --decide_reference"
        )
    try:
        _, tiers = load_sweep(rec["reference"])
    except FileNotFoundError as err:
        raise UserError(f"{path}: its reference: {err}") from None
    T = {b: t.tokens_to_target() for b, t in tiers.items()}
    eps = efficiency.token_efficiency(T)
    early = {int(b): e for b, e in rec["early"].items()}
    largest = sorted(early)[-rec["decision"]["keep"] :]
    pick = best_tier({b: T.get(b) for b in largest})
    spent = sum(tiers[b].result.tokens for b in largest) + sum(
        e["tokens"] for b, e in early.items() if b not in largest
    )
    return dict(
        run=str(directory),
        **{k: rec["decision"][k] for k in ("definition", "value", "series", "statistic", "sign")},
        kept=" ".join(map(str, rec["kept"])),
        picked=rec["picked"],
        picked_eps_tok=rec["picked_eps_tok"],
        picked_is_best=rec["picked_is_best"],
        reference_best=rec["reference_best"],
        tokens_spent=rec["tokens_spent"],
        full_sweep_tokens=rec["full_sweep_tokens"],
        tokens_saved_fraction=rec["tokens_saved_fraction"],
        largest_pick=pick,
        largest_eps_tok=eps.get(pick) if pick is not None else None,
        largest_is_best=pick is not None and pick == rec["reference_best"],
        largest_tokens_spent=spent,
    )


def summarize_decisions(rows: Sequence[dict]) -> dict:
    """How often each rule picked the reference's best tier, the mean ε_tok of its picks and tokens saved."""

    def mean(key):
        v = [r[key] for r in rows if r[key] is not None]
        return float(np.mean(v)) if v else None

    return dict(
        n=len(rows),
        picked_best=sum(bool(r["picked_is_best"]) for r in rows),
        largest_best=sum(bool(r["largest_is_best"]) for r in rows),
        picked_eps_tok_mean=mean("picked_eps_tok"),
        largest_eps_tok_mean=mean("largest_eps_tok"),
        tokens_saved_fraction_mean=mean("tokens_saved_fraction"),
    )


__all__ = ["DECISION_COLUMNS", "decision_row", "summarize_decisions"]
