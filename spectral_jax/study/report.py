"""Write the study's tables and figures (docs/results/study/): per LM scale its measurements, rho vs progress for
every early definition, series and statistic, the matched-loss separation and T(B); one headline table across
scales; the toy's Fig. 4a and ΔH_peak tables; the early decisions' outcomes."""

from __future__ import annotations

import math
import pathlib
import shutil
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from spectral_jax.errors import UserError
from spectral_jax.plots.base import save_figure
from spectral_jax.records import log_stderr, write_json
from spectral_jax.study import analysis, decisions, figures
from spectral_jax.study.points import DEFINITIONS, SeededSweep, load_seeded_sweep
from spectral_jax.study.statistics import alpha_key
from spectral_jax.study.toy import write_toy_tables

HEADLINE_COLUMNS = (
    "scale",
    "role",
    "definition",
    "value",
    "series",
    "statistic",
    "rho",
    "rho_lo",
    "rho_hi",
    "rho_B",
    "rho_B_lo",
    "rho_B_hi",
    "rho_per_seed",
    "n_tiers",
    "n_seeds",
    "min_step",
    "median_tokens",
)


def write_scale(name: str, sweep: SeededSweep, out: pathlib.Path, log: Callable[[str], None] = log_stderr) -> dict:
    """One LM scale's CSVs and figures under out/<name>/; returns its headline rows and T(B) table."""
    here = out / name
    here.mkdir(parents=True, exist_ok=True)
    rows = analysis.measurements(sweep, log=log)
    analysis.write_csv(here / "measurements.csv", rows, analysis.MEASUREMENT_COLUMNS)
    rho = analysis.rho_vs_progress(sweep, rows)
    analysis.write_csv(here / "rho_vs_progress.csv", rho)
    matched = analysis.matched_loss(rows)
    analysis.write_csv(here / "matched_loss.csv", matched)
    T = sweep.tokens_to_target()
    t_rows = [
        dict(seed=k, batch=b, tokens_to_target=T[k, j], eps_tok=T[k, j] / np.nanmin(T[k]))
        for k in range(T.shape[0])
        for j, b in enumerate(sweep.batches)
    ]
    analysis.write_csv(here / "tokens_to_target.csv", t_rows)
    title = f"{name} ({len(sweep.seeds)} seeds, tiers {', '.join(map(str, sweep.batches))})"
    for d in DEFINITIONS:
        save_figure(figures.plot_rho_vs_progress(rho, d, title=title), here / f"rho_vs_progress_{d}.png")
    save_figure(figures.plot_matched_loss(matched, title=title), here / "matched_loss_separation.png")
    for fig in sorted(sweep.dir.glob("seeds_*.png")):  # the seeded sweep's own summary figures
        shutil.copyfile(fig, here / fig.name)
    cfg = sweep.config
    headline_values = dict(fraction=cfg["early_fraction"], tokens=cfg["early_tokens"], loss=cfg["early_loss"])
    tail = alpha_key(sweep.tail_window)
    deepest = max((p for p in rho if p["series"].startswith("activation/")), key=lambda p: _layer(p["series"]))
    headline = [
        dict(
            r,
            scale=name,
            role="alpha_tail" if r["statistic"] == tail else r["statistic"],
            deepest=r["series"] == deepest["series"],
        )
        for r in rho
        if _close(r["value"], headline_values[r["definition"]])
    ]
    return dict(
        headline=headline,
        forecast_cells=analysis.forecast_cells(rho),
        sweep_config=cfg,
        seeds=[str(s) for s in sweep.seeds],
        batches=sweep.batches,
    )


def _layer(series: str) -> int:
    return int(series.split("/L")[1].split(".")[0])


def _close(a: float, b: float) -> bool:
    return math.isclose(float(a), float(b), rel_tol=1e-9)


def parse_sweeps(items) -> dict[str, str]:
    """--sweeps items "name=directory" as {name: directory}."""
    out = {}
    for item in items:
        name, sep, directory = item.partition("=")
        if not sep or not name or not directory:
            raise UserError(f"--sweeps takes name=directory items, got {item!r}")
        out[name] = directory
    return out


def write_study(
    out: str | pathlib.Path,
    sweeps: Mapping[str, str],
    *,
    toy_progress: str | None = None,
    toy_dh: str | None = None,
    decision_runs: Sequence[str] = (),
    command: str = "",
    log: Callable[[str], None] = log_stderr,
) -> dict:
    """Every table and figure of the study into `out`; returns summary.json's dict."""
    out = pathlib.Path(out)
    loaded = {name: load_seeded_sweep(d) for name, d in sweeps.items()}  # every source readable before any write
    decided = [decisions.decision_row(d) for d in decision_runs]
    out.mkdir(parents=True, exist_ok=True)
    scales = {name: write_scale(name, sweep, out, log) for name, sweep in loaded.items()}
    headline = [r for s in scales.values() for r in s["headline"]]
    analysis.write_csv(out / "headline.csv", headline, HEADLINE_COLUMNS)
    if headline:
        title = (
            "early forecast by scale (" + ", ".join(f"{k}: {len(s['seeds'])} seeds" for k, s in scales.items()) + ")"
        )
        save_figure(figures.plot_scales(headline, title=title), out / "rho_by_scale.png")
    toy = write_toy_tables(toy_progress, toy_dh, out / "toy") if (toy_progress or toy_dh) else {}
    if decided:
        analysis.write_csv(out / "decisions.csv", decided, decisions.DECISION_COLUMNS)
    summary = dict(
        command=command,
        scales={k: {kk: v for kk, v in s.items() if kk != "headline"} for k, s in scales.items()},
        sources=dict(sweeps=dict(sweeps), toy_progress=toy_progress, toy_dh=toy_dh, decisions=list(decision_runs)),
        toy=toy,
        decisions=dict(decisions.summarize_decisions(decided), runs=decided) if decided else {},
    )
    write_json(out / "summary.json", summary)
    log(f"study tables and figures in {out}")
    return summary


__all__ = ["write_scale", "write_study", "parse_sweeps", "HEADLINE_COLUMNS"]
