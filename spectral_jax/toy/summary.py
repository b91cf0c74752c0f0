"""The toy experiment's summary: per-run rows, the reach / Fourier / Spearman-vs-progress / band-sweep / gradient
tables and the figures, from the run files that spectral_jax.toy.experiment writes (its `summarize` loads them and
calls `write_summary`)."""

from __future__ import annotations

import math
import pathlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from spectral_jax import efficiency
from spectral_jax.records import to_jsonable, write_json
from spectral_jax.toy import figures as figs
from spectral_jax.toy.probes import band_key

if TYPE_CHECKING:  # experiment imports this module (its summarize calls write_summary)
    from spectral_jax.toy.experiment import ToyExperimentConfig


def _mean_sd(values: Sequence[float]) -> dict:
    """Mean, sample sd, min, max and count of the finite values (Nones for none)."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], float)
    if v.size == 0:
        return dict(mean=None, sd=None, min=None, max=None, n=0)
    return dict(
        mean=float(v.mean()),
        sd=float(v.std(ddof=1)) if v.size > 1 else 0.0,
        min=float(v.min()),
        max=float(v.max()),
        n=int(v.size),
    )


def record_at_step(run: Mapping, step: int) -> dict:
    """The run's Fourier-probed record at `step` (its last before), or its first; a stopped run stays at its stop."""
    recs = [r for r in run["records"] if "fourier" in r]
    before = [r for r in recs if r["step"] <= step]
    return before[-1] if before else recs[0]


def band_mean(rec: Mapping, key: str) -> float:
    """Mean over the checkpoint probe bands of one Fourier summary."""
    return float(np.mean([v[key] for v in rec["fourier"].values()]))


def _fourier_tables(cfg: ToyExperimentConfig, runs: list[dict]) -> dict:
    """H_peak / PC1 peak mass / H_S per stage at the checkpoints (mean over the checkpoint bands, spread over batches
    and seeds) and ΔH_peak per consecutive-stage transition, paired by batch and seed. Checkpoint i is the same step
    for every stage at one batch (`checkpoint_steps(B)`); a run that stopped earlier contributes its stop state."""
    by = {(r["stage"], r["batch"], r["seed"]): r for r in runs}
    n_ck = len(cfg.checkpoint_steps(min(cfg.batches)))
    ck = lambda r, i: record_at_step(r, cfg.checkpoint_steps(r["batch"])[i])  # noqa: E731
    labels = [f"ck{i + 1}" for i in range(n_ck)]
    keys = {"H_peak": "H_peak", "pc1_peak_mass": "pca_peak_mass_pc1", "H_S": "H_S"}
    per_stage = {}
    for stage in cfg.stages:
        rows = {}
        mine = [r for r in runs if r["stage"] == stage]
        for name, key in keys.items():
            rows[name] = {labels[i]: _mean_sd([band_mean(ck(r, i), key) for r in mine]) for i in range(n_ck)}
        per_stage[stage] = rows
    transitions = {}
    for a, b in zip(cfg.stages, cfg.stages[1:]):
        rows = {}
        pairs = [(by[(a, B, seed)], by[(b, B, seed)]) for (stage, B, seed) in by if stage == a and (b, B, seed) in by]
        for name, key in (("dH_peak", "H_peak"), ("dpc1_peak_mass", "pca_peak_mass_pc1"), ("dH_S", "H_S")):
            rows[name] = {}
            for i in range(n_ck):
                diffs = [band_mean(ck(rb, i), key) - band_mean(ck(ra, i), key) for ra, rb in pairs]
                rows[name][labels[i]] = _mean_sd(diffs)
        rows["dH_peak_mean_over_checkpoints"] = _mean_sd([rows["dH_peak"][x]["mean"] for x in labels])["mean"]
        transitions[f"{a}->{b}"] = rows
    names = list(transitions)
    ratios = {}
    for n2, n1 in ratio_pairs(names):
        m1 = transitions[n1]["dH_peak_mean_over_checkpoints"]
        m2 = transitions[n2]["dH_peak_mean_over_checkpoints"]
        if m1 is not None and m2 is not None and m1 != 0:
            ratios[f"({n2})/({n1})"] = m2 / m1
    steps = {str(b): cfg.checkpoint_steps(b) for b in cfg.batches}
    return dict(
        checkpoints=labels,
        checkpoint_steps_by_batch=steps,
        bands=[band_key(b) for b in cfg.probe.bands],
        stages=per_stage,
        transition_order=names,
        transitions=transitions,
        dH_peak_ratios=ratios,
        by_run=[_checkpoint_row(r, labels[i], ck(r, i)) for r in runs for i in range(n_ck)],
    )


def ratio_pairs(transitions: Sequence[str]) -> list[tuple[str, str]]:
    """The (numerator, denominator) transitions whose ΔH_peak ratio is reported: each later one over each earlier."""
    return [(later, earlier) for i, earlier in enumerate(transitions) for later in transitions[i + 1 :]]


def _checkpoint_row(run: Mapping, label: str, rec: Mapping) -> dict:
    """One run at one checkpoint: the step probed (its stop when it stopped earlier), val loss there, H_peak."""
    val = {e["step"]: e["val_loss"] for e in run.get("evals", [])}
    return dict(
        stage=run["stage"],
        batch=run["batch"],
        seed=run["seed"],
        checkpoint=label,
        step=rec["step"],
        val_loss=val.get(rec["step"]),
        H_peak=band_mean(rec, "H_peak"),
    )


def _progress_tables(cfg: ToyExperimentConfig, runs: list[dict]) -> dict:
    """Spearman(alpha over ranks 10-40 at fraction f of T(B), eps_tok) vs f: within each (stage, seed) across
    batches (efficiency.spearman_vs_progress), and pooled over every reached run of a seed (raw alpha vs T(B))."""
    lo, hi = cfg.probe.local
    key = f"alpha_{lo}_{hi}"
    within = []
    for seed in cfg.seeds:
        for stage in cfg.stages:
            fam = {
                r["batch"]: dict(
                    tokens_to_target=r["tokens_to_target"], records=[x for x in r["records"] if x.get(key) is not None]
                )
                for r in runs
                if r["stage"] == stage and r["seed"] == seed
            }
            if sum(v["tokens_to_target"] is not None for v in fam.values()) < 3:
                continue
            for row in efficiency.spearman_vs_progress(fam, windows=[(lo, hi)], fractions=cfg.progress_fractions):
                within.append(dict(row, stage=stage, seed=seed, **_realized(fam, row["fraction"])))
    pooled = []
    for seed in cfg.seeds:
        reached = [r for r in runs if r["seed"] == seed and r["tokens_to_target"] is not None]
        for f in cfg.progress_fractions:
            xs, ys = [], []
            for r in reached:
                recs = efficiency.after_start([x for x in r["records"] if x.get(key) is not None])
                if recs:
                    xs.append(efficiency.select_at_fraction(recs, r["tokens_to_target"], f)[key])
                    ys.append(r["tokens_to_target"])
            res = efficiency.spearman(xs, ys)
            pooled.append(dict(fraction=f, seed=seed, rho=res.rho, p_value=res.p_value, n=res.n))
    return dict(
        key=key,
        within_stage=within,
        pooled=pooled,
        pooled_mean=_by_fraction(pooled),
        within_stage_mean=_by_fraction(within),
    )


def _realized(fam: Mapping, fraction: float) -> dict:
    """The fractions of T(B) the snapshots chosen for `fraction` actually sit at (min and max over the reached
    runs): on a fixed snapshot grid a short run's early fractions land later."""
    got = [
        efficiency.select_at_fraction(recs, v["tokens_to_target"], fraction)["tokens"] / v["tokens_to_target"]
        for v in fam.values()
        if v["tokens_to_target"] and (recs := efficiency.after_start(v["records"]))
    ]
    return dict(realized_min=min(got, default=None), realized_max=max(got, default=None))


def _by_fraction(rows: list[dict]) -> list[dict]:
    """Per progress fraction: mean +- sd of the rows' Spearman rho."""
    out = []
    for f in sorted({r["fraction"] for r in rows}):
        out.append(dict(fraction=f, **_mean_sd([r["rho"] for r in rows if r["fraction"] == f])))
    return out


def _reach_table(cfg: ToyExperimentConfig, runs: list[dict]) -> dict:
    """Per stage and batch: runs reaching the target, T(B), steps, final loss, LRs; per seed the token-optimal B."""
    table = {}
    for stage in cfg.stages:
        table[stage] = {}
        for b in cfg.batches:
            rs = [r for r in runs if r["stage"] == stage and r["batch"] == b]
            T = [r["tokens_to_target"] for r in rs if r["tokens_to_target"] is not None]
            table[stage][str(b)] = dict(
                reached=len(T),
                runs=len(rs),
                tokens_to_target=_mean_sd(T),
                steps_to_target=_mean_sd([r["steps"] for r in rs if r["status"] == "reached"]),
                final_val_loss=_mean_sd([r["final_val_loss"] for r in rs]),
                lr=sorted({r["lr"] for r in rs}),
            )
        best = {}
        for seed in cfg.seeds:
            reached = {
                r["batch"]: r["tokens_to_target"]
                for r in runs
                if r["stage"] == stage and r["seed"] == seed and r["tokens_to_target"] is not None
            }
            if reached:
                best[str(seed)] = min(reached, key=lambda b: (reached[b], b))
        table[stage]["token_optimal_batch_by_seed"] = best
    return table


def _band_sweep_table(cfg: ToyExperimentConfig, runs: list[dict]) -> dict:
    """Per stage and band: H_peak and H_S at step 0 and at the stop (mean +- sd over batches and seeds)."""
    table = {}
    for stage in cfg.stages:
        rs = [r for r in runs if r["stage"] == stage]
        table[stage] = {}
        for b in cfg.probe.sweep_bands:
            k = band_key(b)
            row = {}
            for when, pick in (("step0", lambda r: r["records"][0]), ("final", lambda r: r["records"][-1])):
                for key in ("H_peak", "H_S", "H_gini", "pca_peak_mass_pc1"):
                    row[f"{key}_{when}"] = _mean_sd(
                        [pick(r)["band_sweep"][k][key] for r in rs if "band_sweep" in pick(r)]
                    )
            table[stage][k] = row
    return table


def _gradient_table(cfg: ToyExperimentConfig, runs: list[dict]) -> dict:
    """Final-state gradient summaries per stage: proxy (reference) and true per-sample (psg) RankMe / alpha_head."""
    table = {}
    for stage in cfg.stages:
        finals = [r["records"][-1] for r in runs if r["stage"] == stage]
        table[stage] = {
            k: _mean_sd([f.get(k) for f in finals])
            for k in (
                "alpha_10_40",
                "alpha_head",
                "rankme",
                "grad_alpha_10_40",
                "grad_rankme",
                "psg_alpha_head",
                "psg_rankme",
            )
        }
    return table


def write_summary(
    out: pathlib.Path, cfg: ToyExperimentConfig, runs: list[dict], *, figures: bool, wall_seconds: float | None
) -> dict:
    """summary.json (and the figures) in `out` from the experiment's config and its (non-empty) run files."""
    summary = dict(
        config=to_jsonable(cfg),
        n_runs=len(runs),
        runs=[
            {
                k: r[k]
                for k in (
                    "stage",
                    "batch",
                    "seed",
                    "lr",
                    "status",
                    "steps",
                    "tokens",
                    "tokens_to_target",
                    "final_val_loss",
                    "tokens_per_second",
                    "wall_seconds",
                )
            }
            for r in runs
        ],
        reach=_reach_table(cfg, runs),
        fourier=_fourier_tables(cfg, runs),
        spearman_vs_progress=_progress_tables(cfg, runs),
        band_sweep=_band_sweep_table(cfg, runs),
        gradient_spectra=_gradient_table(cfg, runs),
        wall_seconds=wall_seconds,
    )
    if figures:
        summary["figures"] = figs.write_figures(out, cfg, runs, summary)
    write_json(out / "summary.json", summary)
    return summary


__all__ = ["write_summary", "record_at_step", "band_mean", "ratio_pairs"]
