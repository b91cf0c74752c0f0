"""The study's tables from a seeded batch sweep (docs/method.md §3.6, "the study").

`measurements` gives one tidy row per (seed, tier, definition, grid value, series, statistic). From them:
  `rho_vs_progress`  per (definition, value, series, statistic): rho(early statistic, eps_tok) and rho(statistic,
                     B) of the seed means with 95 % bootstrap intervals over seeds (`batch_sweep.seeds.
                     seed_bootstrap`), rho per seed, the tiers and seeds it rests on, and the steps at the point;
  `matched_loss`     per (loss L, series, statistic): do tiers differ at equal loss? One-way ANOVA across tiers
                     with the seeds as replicates, and the between-tier spread over the within-tier (seed) spread.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import pathlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
from scipy import stats

from spectral_jax import records
from spectral_jax.batch_sweep.seeds import _nanmean, seed_bootstrap
from spectral_jax.efficiency import spearman
from spectral_jax.records import log_stderr
from spectral_jax.study.points import SeededSweep, points, spectrum, statistics, windows

MEASUREMENT_COLUMNS = ("seed", "batch", "definition", "value", "series", "statistic", "x", "step", "tokens", "val_loss")


def measurements(sweep: SeededSweep, *, log: Callable[[str], None] = log_stderr) -> list[dict]:
    """One row per (seed, tier, definition, value, series, statistic): the statistic's value x at the point."""
    pts = points(sweep)
    log(f"{sweep.dir}: {len(pts)} spectra at exact early points over {len(sweep.seeds)} seeds")
    rows = []
    for p in pts:
        v = spectrum(sweep, p)
        point = {k: val for k, val in dataclasses.asdict(p).items() if k != "file"}
        for name, x in statistics(v, windows(sweep, v.size)).items():
            rows.append(dict(point, statistic=name, x=x))
    return rows


def _groups(rows: Iterable[dict], keys: Sequence[str]) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        out[tuple(r[k] for k in keys)].append(r)
    return out


def rho_vs_progress(sweep: SeededSweep, rows: Sequence[dict]) -> list[dict]:
    """rho(statistic, eps_tok) and rho(statistic, B) per (definition, value, series, statistic)."""
    batches = sweep.batches
    T_SxB = sweep.tokens_to_target()
    eps_SxB = T_SxB / np.nanmin(T_SxB, axis=1, keepdims=True)
    col = {b: j for j, b in enumerate(batches)}
    out = []
    for (definition, value, series, stat), group in sorted(
        _groups(rows, ("definition", "value", "series", "statistic")).items()
    ):
        x_SxB = np.full(T_SxB.shape, np.nan)
        for r in group:
            x_SxB[r["seed"], col[r["batch"]]] = r["x"]
        boot = seed_bootstrap(T_SxB, x_SxB, batches)
        per_seed = [spearman(x_SxB[k], eps_SxB[k]) for k in range(len(sweep.seeds))]
        steps = [r["step"] for r in group]
        out.append(
            dict(
                definition=definition,
                value=value,
                series=series,
                statistic=stat,
                rho=boot["rho_of_means"],
                rho_lo=_end(boot["ci95"], 0),
                rho_hi=_end(boot["ci95"], 1),
                rho_B=boot["rho_vs_batch_of_means"],
                rho_B_lo=_end(boot["ci95_vs_batch"], 0),
                rho_B_hi=_end(boot["ci95_vs_batch"], 1),
                rho_per_seed=";".join(f"{s.rho:.3f}" for s in per_seed),
                p_per_seed=";".join(f"{s.p_value:.3f}" for s in per_seed),
                n_tiers=int(np.sum(np.isfinite(_nanmean(T_SxB)) & np.isfinite(_nanmean(x_SxB)))),
                n_seeds=int(np.sum(np.any(np.isfinite(x_SxB), axis=1))),
                min_step=min(steps),
                median_step=float(np.median(steps)),
                median_tokens=float(np.median([r["tokens"] for r in group])),
                mean_val_loss=float(np.mean([r["val_loss"] for r in group])),
            )
        )
    return out


FORECAST_RHO = 0.8  # the bar: rho >= 0.8 with its bootstrap interval above 0


def forecast_cells(rho_rows: Sequence[dict], *, threshold: float = FORECAST_RHO) -> dict:
    """How many (definition, value, series, statistic) cells pass "rho >= threshold with the interval above 0",
    per definition, against the share a cell would pass by chance: the exact probability that Spearman rho over
    n tiers is >= threshold when the tiers' order is random (all n! orders; an upper bound for the stricter
    criterion). Cells overlap (neighbouring grid values, windows), so the counts describe, they do not test."""
    out = {}
    for d in sorted({r["definition"] for r in rho_rows}):
        cells = [r for r in rho_rows if r["definition"] == d and math.isfinite(r["rho"])]
        passing = [r for r in cells if r["rho"] >= threshold and math.isfinite(r["rho_lo"]) and r["rho_lo"] > 0]
        n = max((r["n_tiers"] for r in cells), default=0)
        out[d] = dict(
            cells=len(cells),
            passing=len(passing),
            share=len(passing) / len(cells) if cells else math.nan,
            chance_share=_null_share(n, threshold),
            n_tiers=n,
            best=max(passing, key=lambda r: r["rho_lo"], default=None),
        )
    return out


def _null_share(n: int, threshold: float) -> float:
    """P(Spearman rho >= threshold) for a uniformly random order of n untied items (exact for n <= 8)."""
    if n < 3 or n > 8:
        return math.nan
    base = np.arange(n)
    rhos = [1 - 6 * np.sum((base - np.array(p)) ** 2) / (n * (n * n - 1)) for p in itertools.permutations(range(n))]
    return float(np.mean(np.array(rhos) >= threshold - 1e-12))


def _end(interval, i: int) -> float:
    return math.nan if interval is None else float(interval[i])


def matched_loss(rows: Sequence[dict]) -> list[dict]:
    """At each matched loss L: one-way ANOVA of the statistic across tiers (seeds as replicates), the spread of the
    tier means (sd) and the mean within-tier sd over seeds; their ratio > 1 means tiers differ more than seeds."""
    out = []
    loss_rows = [r for r in rows if r["definition"] == "loss" and math.isfinite(r["x"])]
    for (value, series, stat), group in sorted(_groups(loss_rows, ("value", "series", "statistic")).items()):
        by_tier = {b: [r["x"] for r in g] for (b,), g in sorted(_groups(group, ("batch",)).items())}
        means = [np.mean(v) for v in by_tier.values()]
        within = [np.var(v, ddof=1) for v in by_tier.values() if len(v) > 1]
        replicated = [v for v in by_tier.values() if len(v) > 1]
        F, p = (math.nan, math.nan)
        if len(replicated) >= 2 and any(np.ptp(v) > 0 for v in replicated):
            F, p = (float(z) for z in stats.f_oneway(*replicated))
        between_sd = float(np.std(means, ddof=1)) if len(means) > 1 else math.nan
        within_sd = float(np.sqrt(np.mean(within))) if within else math.nan
        out.append(
            dict(
                loss=value,
                series=series,
                statistic=stat,
                n_tiers=len(by_tier),
                n_values=len(group),
                tier_means=";".join(f"{b}:{m:.4g}" for b, m in zip(by_tier, means)),
                between_tier_sd=between_sd,
                within_tier_sd=within_sd,
                ratio=between_sd / within_sd if within_sd and within_sd > 0 else math.nan,
                anova_F=F,
                anova_p=p,
                median_tokens=float(np.median([r["tokens"] for r in group])),
            )
        )
    return out


def write_csv(path: str | pathlib.Path, rows: Sequence[Mapping], columns: Sequence[str] | None = None) -> None:
    """The study's tidy CSV: floats to 6 significant digits, NaN as an empty cell (`records.write_csv`)."""
    records.write_csv(path, rows, columns, digits=6)


__all__ = [
    "MEASUREMENT_COLUMNS",
    "FORECAST_RHO",
    "measurements",
    "rho_vs_progress",
    "matched_loss",
    "forecast_cells",
    "write_csv",
]
