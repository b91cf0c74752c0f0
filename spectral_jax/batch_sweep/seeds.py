"""A seeded batch sweep's summary: T(B), eps_tok and the early alpha of every early-point kind as mean and spread
over seeds, Spearman per seed, Spearman of the seed means with a bootstrap interval over seeds, and rho(alpha, B)
beside rho(alpha, eps_tok) (docs/method.md §3.6).

    <out>/sweep.json            the seeded sweep's config and its seed directories
    <out>/seed{k}/              one complete single-seed sweep each (summary.json and figures of its own)
    <out>/summary.json          this module's summary (SEEDS_KIND marks it)
    <out>/seeds_*.png           its figures, with error bars (one standard deviation over seeds)

Seeds are paired across tiers (seed k is the same initial model and data-order seed at every tier), so the
bootstrap resamples seed indices, the same draw for every tier.
"""

from __future__ import annotations

import json
import math
import pathlib
import warnings
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from scipy import stats

from spectral_jax import plots
from spectral_jax.batch_sweep.summary import summarize_sweep
from spectral_jax.efficiency import EARLY_KINDS
from spectral_jax.records import json_text, log_stderr, read_json, write_json

SEEDS_KIND = "seeded_batch_sweep"
BOOTSTRAP_DRAWS = 2000
BOOTSTRAP_SEED = 0


def _stat(values: Sequence[float | None]) -> dict:
    """Mean, sample standard deviation and the values (None where a seed has none)."""
    v = np.array([x for x in values if x is not None and math.isfinite(x)], float)
    return dict(
        mean=float(v.mean()) if v.size else None,
        sd=float(v.std(ddof=1)) if v.size > 1 else None,
        n=int(v.size),
        values=list(values),
    )


def _rank_rho(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rho without a p-value (for the bootstrap draws); NaN when either side is constant."""
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    return float(np.corrcoef(stats.rankdata(x), stats.rankdata(y))[0, 1])


def _nanmean(x_SxB: np.ndarray) -> np.ndarray:
    """Mean over seeds of each tier, NaN (without a warning) where no seed has a value."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(x_SxB, axis=0)


def _eps(T_SxB: np.ndarray) -> np.ndarray:
    """eps_tok per row: T(B) / min over tiers of T (rows are seeds or bootstrap means)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return T_SxB / np.nanmin(T_SxB, axis=-1, keepdims=True)


def seed_bootstrap(
    T_SxB: np.ndarray, alpha_SxB: np.ndarray, batches: Sequence[int], *, draws: int = BOOTSTRAP_DRAWS
) -> dict:
    """rho of the seed means (alpha mean vs eps_tok of the mean T(B), and alpha mean vs B) with 95 % percentile
    intervals over `draws` resamplings of the seeds (the same seeds for every tier). Draws whose rho is undefined
    (a constant side) are left out and counted."""
    S = T_SxB.shape[0]
    B = np.asarray(batches, float)

    def rhos(idx):
        T, a = _nanmean(T_SxB[idx]), _nanmean(alpha_SxB[idx])
        ok = np.isfinite(T) & np.isfinite(a)
        if ok.sum() < 3:
            return math.nan, math.nan
        return _rank_rho(a[ok], _eps(T[ok][None])[0]), _rank_rho(a[ok], B[ok])

    rho, rho_b = rhos(np.arange(S))
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    if S > 1:
        idx_DxS = np.stack([rng.integers(0, S, S) for _ in range(draws)])
        boot = _draw_rhos(T_SxB, alpha_SxB, B, idx_DxS, rhos)
    else:
        boot = np.empty((0, 2))

    def interval(col):
        v = boot[:, col][np.isfinite(boot[:, col])] if boot.size else np.empty(0)
        return [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] if v.size else None

    return dict(
        rho_of_means=rho,
        ci95=interval(0),
        rho_vs_batch_of_means=rho_b,
        ci95_vs_batch=interval(1),
        draws=draws,
        undefined_draws=int(np.sum(~np.isfinite(boot[:, 0]))) if boot.size else 0,
    )


def _draw_rhos(T_SxB, alpha_SxB, B, idx_DxS, rhos) -> np.ndarray:
    """(rho vs eps_tok, rho vs B) of every draw's seed means, vectorised over the draws whose means are all finite
    (the rest go through `rhos`, which drops the undefined tiers); the same values as `rhos` row by row."""
    T, a = _nanmean_draws(T_SxB, idx_DxS), _nanmean_draws(alpha_SxB, idx_DxS)
    full = np.all(np.isfinite(T) & np.isfinite(a), axis=1)
    out = np.full((idx_DxS.shape[0], 2), np.nan)
    if full.any():
        ra = stats.rankdata(a[full], axis=1)
        re = stats.rankdata(T[full] / T[full].min(axis=1, keepdims=True), axis=1)
        rb = np.broadcast_to(stats.rankdata(B), ra.shape)
        out[full, 0] = _row_corr(ra, re, np.ptp(a[full], axis=1) > 0)
        out[full, 1] = _row_corr(ra, rb, (np.ptp(a[full], axis=1) > 0) & (np.ptp(B) > 0))
    for d in np.flatnonzero(~full):
        out[d] = rhos(idx_DxS[d])
    return out


def _nanmean_draws(x_SxB: np.ndarray, idx_DxS: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(x_SxB[idx_DxS], axis=1)


def _row_corr(x: np.ndarray, y: np.ndarray, defined: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row pair (of ranks); NaN where a side is constant."""
    xc, yc = x - x.mean(1, keepdims=True), y - y.mean(1, keepdims=True)
    den = np.sqrt(np.sum(xc**2, 1) * np.sum(yc**2, 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.sum(xc * yc, 1) / den
    return np.where(defined & (den > 0), r, np.nan)


def summarize_seeds(out: str | pathlib.Path, *, log: Callable[[str], None] = log_stderr) -> dict:
    """Summarise every seed directory (from its records), then the seeds together; writes summary.json + figures."""
    out = pathlib.Path(out)
    sweep = read_json(out / "sweep.json")
    dirs = [out / d for d in sweep["seed_dirs"] if (out / d / "sweep.json").is_file()]
    if not dirs:
        raise FileNotFoundError(f"{out} holds no started seed directory ({', '.join(sweep['seed_dirs'])})")
    per_seed = [summarize_sweep(d, log=log) for d in dirs]
    batches = sorted({t["batch"] for s in per_seed for t in s["tiers"]})
    rows = {(i, t["batch"]): t for i, s in enumerate(per_seed) for t in s["tiers"]}

    def matrix(get) -> np.ndarray:
        return np.array(
            [[_num(get(rows[(i, b)])) if (i, b) in rows else math.nan for b in batches] for i in range(len(per_seed))]
        )

    T = matrix(lambda r: r.get("tokens_to_target_interpolated") if r["status"] == "reached" else None)
    alphas = {
        kind: matrix(lambda r, k=kind: (r["early_points"].get(k) or {}).get("alpha_tail")) for kind in EARLY_KINDS
    }
    early = {
        kind: dict(
            rho_per_seed=[s["early_points"][kind]["rho"] for s in per_seed],
            rho_vs_batch_per_seed=[s["early_points"][kind]["rho_vs_batch"] for s in per_seed],
            **seed_bootstrap(T, alphas[kind], batches),
        )
        for kind in EARLY_KINDS
    }
    columns = dict(
        T=T,
        T_first=matrix(lambda r: r["tokens_to_target"] if r["status"] == "reached" else None),
        eps=_eps(T),
        eps_of_means=_eps(_nanmean(T)[None])[0],
        alphas=alphas,
    )
    tiers = [_tier_row(j, b, [rows.get((i, b)) for i in range(len(per_seed))], columns) for j, b in enumerate(batches)]
    first = per_seed[0]
    summary = dict(
        kind=SEEDS_KIND,
        family=first["family"],
        preset=first["preset"],
        target_loss=first["target_loss"],
        tail_window=first["tail_window"],
        probe_layer=first["probe_layer"],
        early_fraction=first["early_fraction"],
        early_tokens=first["early_tokens"],
        early_loss=first["early_loss"],
        seeds=[d.name for d in dirs],
        seed_values=[read_json(d / "sweep.json")["config"]["train_overrides"].get("seed") for d in dirs],
        tiers=tiers,
        early_points=early,
        warnings=[f"{d.name}: {w}" for d, s in zip(dirs, per_seed) for w in s["warnings"]]
        + (
            [f"only {len(dirs)} of {len(sweep['seed_dirs'])} seeds started"]
            if len(dirs) < len(sweep["seed_dirs"])
            else []
        ),
    )
    summary = json.loads(json_text(summary))  # as summary.json holds it (NaN -> None)
    write_json(out / "summary.json", summary)
    _figures(out, summary)
    return summary


def _tier_row(j: int, batch: int, seeds_rows: Sequence[Mapping | None], c: Mapping) -> dict:
    """One tier of the seeds summary (column j of the seeds x tiers matrices in `c`)."""

    def early(kind, key):
        return [((r or {}).get("early_points", {}).get(kind) or {}).get(key) for r in seeds_rows]

    return dict(
        batch=batch,
        reached=sum(r is not None and r["status"] == "reached" for r in seeds_rows),
        tokens_to_target_interpolated=_stat(c["T"][:, j].tolist()),
        tokens_to_target=_stat(c["T_first"][:, j].tolist()),
        eps_tok=_stat(c["eps"][:, j].tolist()),
        eps_tok_of_means=_num(c["eps_of_means"][j]),
        lr=next((r.get("lr") for r in seeds_rows if r), None),
        lr_rule=next((r.get("lr_rule") for r in seeds_rows if r), None),
        early={
            kind: dict(
                alpha_tail=_stat(c["alphas"][kind][:, j].tolist()),
                step=early(kind, "step"),
                tokens=early(kind, "tokens"),
                val_loss=_stat(early(kind, "val_loss")),
            )
            for kind in EARLY_KINDS
        },
    )


def _num(v) -> float:
    return math.nan if v is None else float(v)


def _figures(out: pathlib.Path, summary: Mapping) -> None:
    title = f"{summary['family']} ({summary['preset']}), {len(summary['seeds'])} seeds"
    plots.save_figure(
        plots.plot_seeded_tokens(summary["tiers"], target=summary["target_loss"], title=title),
        out / "seeds_tokens_to_target.png",
    )
    plots.save_figure(
        plots.plot_seeded_early(summary["tiers"], summary["early_points"], where=where_labels(summary), title=title),
        out / "seeds_early_alpha_vs_eps_tok.png",
    )


def where_labels(summary: Mapping) -> dict[str, str]:
    """Each early-point kind in words, with this sweep's values."""
    return dict(
        fraction=f"{summary['early_fraction']:.0%} of T(B)",
        tokens=f"{summary['early_tokens']:,} tokens",
        loss=f"first val loss <= {summary['early_loss']}",
    )


def format_seeds_table(summary: Mapping) -> str:
    """The printed seeds summary: per tier T(B) and eps_tok as mean +- sd, early alpha per kind; per kind rho of
    the seed means with its interval, rho per seed, and rho vs B beside them; the warnings."""

    def ms(s, fmt):
        if s["mean"] is None:
            return "-"
        return format(s["mean"], fmt) + ("" if s["sd"] is None else " +- " + format(s["sd"], fmt))

    def f(v, fmt):
        return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, fmt)

    kinds = list(summary["early_points"])
    lines = [
        f"{summary['family']} ({summary['preset']}), target val loss {summary['target_loss']}, seeds "
        f"{', '.join(summary['seeds'])} (mean +- sd over seeds)",
        f"{'B':>4} {'reached':>7} {'T(B) interp':>22} {'eps_tok':>16} "
        + " ".join(f"{'a_tail @' + k:>18}" for k in kinds),
    ]
    for t in summary["tiers"]:
        lines.append(
            f"{t['batch']:>4} {t['reached']:>7} {ms(t['tokens_to_target_interpolated'], ',.0f'):>22} "
            f"{ms(t['eps_tok'], '.3f'):>16} " + " ".join(f"{ms(t['early'][k]['alpha_tail'], '.3f'):>18}" for k in kinds)
        )
    where = where_labels(summary)
    for kind, e in summary["early_points"].items():
        ci = e["ci95"] and f"[{e['ci95'][0]:+.2f}, {e['ci95'][1]:+.2f}]"
        ci_b = e["ci95_vs_batch"] and f"[{e['ci95_vs_batch'][0]:+.2f}, {e['ci95_vs_batch'][1]:+.2f}]"
        per = ", ".join(f(r, "+.2f") for r in e["rho_per_seed"])
        lines.append(
            f"  early point at {where[kind]}: rho(mean alpha, eps_tok) {f(e['rho_of_means'], '+.3f')} "
            f"95% CI {ci or '-'} (per seed {per}); rho vs B {f(e['rho_vs_batch_of_means'], '+.3f')} {ci_b or ''}"
        )
    lines += [f"warning: {w}" for w in summary.get("warnings", ())]
    return "\n".join(lines)


__all__ = ["summarize_seeds", "format_seeds_table", "seed_bootstrap", "SEEDS_KIND", "where_labels"]
