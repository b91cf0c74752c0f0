"""The ablations that read batch sweeps: Adam vs Muon on LSWA (App. D, Fig. 7), seed control (Fig. 9), layerwise
early prediction (Fig. 10) and the probe-matrix dependence of gradient spectra (Fig. 6)."""

from __future__ import annotations

import itertools
import pathlib
from collections.abc import Callable

import numpy as np

from spectral_jax import efficiency, plots, spectra
from spectral_jax.ablations.common import (
    ADAM_FAMILY,
    MATRIX_LABELS,
    MUON_FAMILY,
    PROBE_MATRICES,
    AblationConfig,
    finite,
    probe_sweep,
    ratio,
    run_sweep,
    sample_std,
    tier_runs,
    value_range,
    write_ablation,
)
from spectral_jax.batch_sweep import load_spectrum, load_sweep
from spectral_jax.batch_sweep.summary import early_readout
from spectral_jax.errors import UserError
from spectral_jax.presets import get_preset
from spectral_jax.records import log_stderr


# ---- Adam vs Muon (App. D, Fig. 7) ---------------------------------------------------------------------------
def _family_summaries(sums: dict, fams: tuple[str, ...]) -> dict:
    """Per family: its tiers (the reported columns), within-family Spearman and the path of its sweep summary."""
    return {
        f: dict(
            tiers=[
                {
                    k: r[k]
                    for k in (
                        "batch",
                        "status",
                        "tokens_to_target",
                        "eps_tok",
                        "early_alpha_tail",
                        "early_alpha_tail_normalized",
                        "early_tokens",
                        "throughput_tokens_per_s",
                    )
                }
                for r in sums[f]["tiers"]
            ],
            spearman_within=sums[f]["spearman_within"],
            p_value=sums[f]["p_value"],
            n_reached=sums[f]["n_reached"],
            sweep=f"{f}/summary.json",
        )
        for f in fams
    }


def _token_ratio_rows(tokens: dict, tiers) -> list[dict]:
    """Per tier B: tokens to target of Muon and Adam and their ratio T_adam(B)/T_muon(B)."""
    return [
        dict(
            batch=b,
            tokens_muon=tokens[MUON_FAMILY].get(b),
            tokens_adam=tokens[ADAM_FAMILY].get(b),
            ratio_adam_over_muon=ratio(tokens[ADAM_FAMILY].get(b), tokens[MUON_FAMILY].get(b)),
        )
        for b in sorted(tiers)
    ]


def _adam_vs_muon_figures(
    cfg: AblationConfig, d: pathlib.Path, rows: dict, tokens: dict, across: dict, target_loss
) -> list[pathlib.Path]:
    """Tokens-to-target vs batch for both families, and (where any is finite) early alpha_tail vs eps_tok."""
    fams = tuple(rows)
    figs = [
        plots.save_figure(
            plots.plot_tokens_vs_batch(
                {f: list(tokens[f].items()) for f in fams},
                title=f"Muon ({MUON_FAMILY}) vs Adam ({ADAM_FAMILY}) matrix updates, {cfg.preset}: tokens to target "
                f"{target_loss}",
            ),
            d / "tokens_vs_batch.png",
        )
    ]
    points = [
        dict(family=f, batch=r["batch"], alpha=r["early_alpha_tail"], eps_tok=r["eps_tok"])
        for f in fams
        for r in rows[f]
        if finite(r["early_alpha_tail"]) and finite(r["eps_tok"])
    ]
    if points:
        figs.append(
            plots.save_figure(
                plots.plot_alpha_vs_eps(
                    points,
                    rho=across["rho"],
                    p_value=across["p_value"],
                    title=f"early alpha_tail vs eps_tok, {MUON_FAMILY} vs {ADAM_FAMILY} ({cfg.preset})\nrho = across "
                    f"families on min-max-normalised alpha",
                ),
                d / "early_alpha_vs_eps_tok.png",
            )
        )
    return figs


def adam_vs_muon(cfg: AblationConfig, log: Callable[[str], None] = log_stderr) -> dict:
    """LSWA (Muon on hidden matrices) vs LSWA-Adam over the same tiers: T(B), eps_tok, within/across Spearman of
    early alpha_tail vs eps_tok, and the token ratio T_adam(B)/T_muon(B) per tier."""
    name = "adam_vs_muon"
    fams = (MUON_FAMILY, ADAM_FAMILY)
    sums = {f: run_sweep(cfg, f, cfg.path(name, f), cfg.tiers, log=log) for f in fams}
    rows = {f: sums[f]["tiers"] for f in fams}
    across = efficiency.spearman_across(rows)
    tokens = {f: {r["batch"]: r["tokens_to_target"] for r in rows[f]} for f in fams}
    token_ratio = _token_ratio_rows(tokens, cfg.tiers)
    families = _family_summaries(sums, fams)
    target_loss = sums[MUON_FAMILY]["target_loss"]
    figs = _adam_vs_muon_figures(cfg, cfg.path(name), rows, tokens, across, target_loss)
    summary = dict(
        families=families,
        spearman_across=across,
        token_ratio=token_ratio,
        tiers=list(cfg.tiers),
        target_loss=target_loss,
        early_fraction=cfg.early_fraction,
    )
    ratios = [r["ratio_adam_over_muon"] for r in token_ratio if finite(r["ratio_adam_over_muon"])]
    return write_ablation(
        cfg,
        name,
        summary,
        figs,
        dict(
            spearman_within={f: families[f]["spearman_within"] for f in fams},
            spearman_across=across["rho"],
            median_token_ratio_adam_over_muon=float(np.median(ratios)) if ratios else None,
        ),
    )


# ---- seed control (Fig. 9) -----------------------------------------------------------------------------------
def _seed_tiers(cfg: AblationConfig, name: str, sweep: dict, tiers: dict, log: Callable[[str], None]) -> dict:
    """Seed -> its run at tier cfg.batch: the probe sweep's own run for the base seed, else a one-tier sweep."""
    seed_tiers = {}
    for s in dict.fromkeys(cfg.seeds):
        if s == cfg.base_seed and not cfg.vary_data_seed and cfg.batch in tiers:
            seed_tiers[s] = tiers[cfg.batch]  # the probe sweep's own run at this tier and seed
            continue
        extra = dict(seed=s, data_seed=s) if cfg.vary_data_seed else dict(seed=s)
        out = cfg.path(name, f"seed_{s}")
        # the probe sweep's probes: identical measurement, and its compiled probe programs are reused
        run_sweep(
            cfg,
            cfg.family,
            out,
            (cfg.batch,),
            layers=sweep["config"]["layers"],
            matrices=PROBE_MATRICES,
            log=log,
            **extra,
        )
        seed_tiers[s] = load_sweep(out)[1][cfg.batch]
    return seed_tiers


def _early(cfg: AblationConfig, tiers: dict, **series) -> dict:
    """The batch sweep's early read-out of one spectrum series (exact early points where replayed; the paper's
    fraction-of-T(B) point as the headline), with the preset's fixed-token and early-loss points."""
    preset = get_preset(cfg.preset)
    return early_readout(
        tiers, fraction=cfg.early_fraction, tokens=preset.early_tokens, loss=preset.early_loss, **series
    )


def _per_seed_rows(cfg: AblationConfig, seed_tiers: dict, last: int) -> list[dict]:
    """Per seed: tokens to target, status and the early alpha_tail of the last block's activation spectrum."""
    per_seed = []
    for s, t in seed_tiers.items():
        e = _early(cfg, {0: t}, layer=last)["tiers"][0]
        per_seed.append(
            dict(
                seed=s,
                data_seed=s if cfg.vary_data_seed else t.run["train"]["data_seed"],
                tokens_to_target=t.result.tokens_to_target,
                status=t.result.status,
                early_alpha_tail=e["early_alpha_tail"],
                early_tokens=e["early_tokens"],
                dir=str(t.dir),
            )
        )
    return per_seed


def _matched_loss_js(seed_tiers: dict, tiers: dict, last: int, log: Callable[[str], None]):
    """(targets, rows, note): seed-vs-seed and tier-vs-tier activation JS at every common loss target."""
    # matched-loss JS: every run's probe point nearest each common loss target (efficiency's selection)
    # step 0 is left out: every tier starts from the same initialisation, so tier-vs-tier JS there is 0 by construction
    labelled = {**{("seed", s): t for s, t in seed_tiers.items()}, **{("tier", b): t for b, t in tiers.items()}}
    recs = {k: [r for r in t.records("activation", last) if r["step"] > 0] for k, t in labelled.items()}
    js_rows, js_note = [], None
    try:
        targets = efficiency.common_loss_targets({k: [r["val_loss"] for r in v] for k, v in recs.items()})
    except ValueError as err:
        targets, js_note = [], f"matched-loss JS skipped: {err}"
        log(js_note)
    for target in targets:
        spec = {k: load_spectrum(labelled[k], efficiency.matched_loss_rows(recs[k], [target])[0]) for k in recs}
        seed_js = [
            spectra.js_divergence(spec[("seed", a)], spec[("seed", b)])
            for a, b in itertools.combinations(seed_tiers, 2)
        ]
        tier_js = [
            spectra.js_divergence(spec[("tier", a)], spec[("tier", b)]) for a, b in itertools.combinations(tiers, 2)
        ]
        js_rows.append(
            dict(
                target_loss=target,
                seed_js=seed_js,
                tier_js=tier_js,
                mean_seed_js=float(np.mean(seed_js)) if seed_js else None,
                mean_tier_js=float(np.mean(tier_js)) if tier_js else None,
                ratio=ratio(np.mean(seed_js) if seed_js else None, np.mean(tier_js) if tier_js else None),
            )
        )
    return targets, js_rows, js_note


def _spread_stats(per_seed: list[dict], tier_alpha: dict) -> dict:
    """Std and range of early alpha_tail across seeds vs across tiers, their ratios and the seeds' T(B) CV."""
    seed_vals = [r["early_alpha_tail"] for r in per_seed]
    tier_vals = list(tier_alpha.values())
    seed_tok = [r["tokens_to_target"] for r in per_seed]
    stats = dict(
        seed_std=sample_std(seed_vals),
        seed_range=value_range(seed_vals),
        tier_std=sample_std(tier_vals),
        tier_range=value_range(tier_vals),
    )
    stats.update(
        std_ratio_seed_over_tier=ratio(stats["seed_std"], stats["tier_std"]),
        range_ratio_seed_over_tier=ratio(stats["seed_range"], stats["tier_range"]),
        seed_tokens_to_target_cv=ratio(sample_std(seed_tok), np.mean([t for t in seed_tok if t]))
        if any(seed_tok)
        else None,
    )
    return stats


def seed_control(cfg: AblationConfig, log: Callable[[str], None] = log_stderr) -> dict:
    """Spread of early alpha_tail (and matched-loss activation-spectrum JS) across model seeds at one tier B,
    against the separation across the tiers of the probe sweep (one seed)."""
    name = "seed_control"
    if len(set(cfg.seeds)) < 2:
        raise UserError(f"seed_control needs at least two distinct seeds, got {cfg.seeds}; pass --seeds=42,43,44")
    sweep_dir = probe_sweep(cfg, log)
    sweep, tiers = load_sweep(sweep_dir)
    last = sweep["model"]["n_layer"] - 1
    seed_tiers = _seed_tiers(cfg, name, sweep, tiers, log)
    per_seed = _per_seed_rows(cfg, seed_tiers, last)
    tier_early = _early(cfg, tiers, layer=last)
    tier_alpha = {r["batch"]: r["early_alpha_tail"] for r in tier_early["tiers"]}
    targets, js_rows, js_note = _matched_loss_js(seed_tiers, tiers, last, log)
    mean_seed_js = float(np.mean([v for r in js_rows for v in r["seed_js"]])) if js_rows else None
    mean_tier_js = float(np.mean([v for r in js_rows for v in r["tier_js"]])) if js_rows else None
    stats = _spread_stats(per_seed, tier_alpha)
    figs = [
        plots.save_figure(
            plots.plot_seed_control(
                tier_alpha,
                {r["seed"]: r["early_alpha_tail"] for r in per_seed},
                cfg.batch,
                js_rows,
                title=f"seed control, {cfg.family} ({cfg.preset}): seeds {list(seed_tiers)} at B={cfg.batch} vs tiers "
                f"{sorted(tiers)}",
            ),
            cfg.path(name) / "seed_control.png",
        )
    ]
    summary = dict(
        family=cfg.family,
        batch=cfg.batch,
        seeds=list(seed_tiers),
        vary_data_seed=cfg.vary_data_seed,
        layer=last,
        early_fraction=cfg.early_fraction,
        per_seed=per_seed,
        tiers=[
            {k: r[k] for k in ("batch", "tokens_to_target", "eps_tok", "early_alpha_tail", "early_tokens")}
            for r in tier_early["tiers"]
        ],
        early_alpha_tail=stats,
        matched_loss_js=js_rows,
        matched_loss_targets=targets,
        mean_seed_js=mean_seed_js,
        mean_tier_js=mean_tier_js,
        js_ratio_seed_over_tier=ratio(mean_seed_js, mean_tier_js),
        note=js_note,
        sweep=str(sweep_dir),
    )
    return write_ablation(
        cfg,
        name,
        summary,
        figs,
        dict(
            std_ratio_seed_over_tier=stats["std_ratio_seed_over_tier"],
            js_ratio_seed_over_tier=summary["js_ratio_seed_over_tier"],
        ),
    )


# ---- layerwise early prediction (Fig. 10) --------------------------------------------------------------------
def layerwise(cfg: AblationConfig, log: Callable[[str], None] = log_stderr) -> dict:
    """Spearman(early alpha_tail of the activation spectrum at block l, eps_tok) for every block l."""
    name = "layerwise"
    sweep_dir = probe_sweep(cfg, log)
    sweep, tiers = load_sweep(sweep_dir)
    rows = []
    for layer in range(sweep["model"]["n_layer"]):
        e = _early(cfg, tiers, layer=layer)
        rows.append(
            dict(
                layer=layer,
                rho=e["spearman_within"],
                p_value=e["p_value"],
                n=e["n"],
                early_alpha_tail={r["batch"]: r["early_alpha_tail"] for r in e["tiers"]},
                eps_tok={r["batch"]: r["eps_tok"] for r in e["tiers"]},
            )
        )
    fig = plots.plot_rho_by_layer(
        rows,
        title=f"layerwise early prediction, {cfg.family} ({cfg.preset}), tiers "
        f"{sorted(tiers)}, early = {cfg.early_fraction:.0%} of T(B)",
    )
    figs = [plots.save_figure(fig, cfg.path(name, "rho_by_layer.png"))]
    scored = [r for r in rows if finite(r["rho"])]
    best = max(scored, key=lambda r: abs(r["rho"])) if scored else None
    summary = dict(
        family=cfg.family,
        tiers=sorted(tiers),
        early_fraction=cfg.early_fraction,
        tail_window=sweep["tail_window"],
        layers=rows,
        sweep=str(sweep_dir),
    )
    return write_ablation(
        cfg, name, summary, figs, dict(rho_by_layer=[r["rho"] for r in rows], strongest_layer=best and best["layer"])
    )


# ---- probe-matrix dependence (Fig. 6) ------------------------------------------------------------------------
def _matched_loss_points(tiers: dict, last: int, log: Callable[[str], None]) -> tuple[float | None, dict]:
    """(middle common loss target, tier B -> its last-block activation record nearest that target)."""
    act = {b: [r for r in t.records("activation", last) if r["step"] > 0] for b, t in tiers.items()}  # as seed_control
    try:
        targets = efficiency.common_loss_targets({b: [r["val_loss"] for r in v] for b, v in act.items()})
    except ValueError as err:
        targets = []
        log(f"matched-loss gradient spectra skipped: {err}")
    mid = targets[len(targets) // 2] if targets else None
    matched = {b: efficiency.matched_loss_rows(act[b], [mid])[0] for b in tiers} if targets else {}
    return mid, matched


def _matrix_entry(cfg: AblationConfig, tiers: dict, last: int, m: str, matched: dict) -> tuple[dict, dict]:
    """(summary entry, label -> spectrum) of one matrix: early alpha_tail / RankMe Spearman and matched-loss spectra."""
    runs_m = tier_runs(tiers, "gradient", last, m)
    entry = dict(matrix=m, label=MATRIX_LABELS[m], layer=last)
    for key in ("alpha_tail", "rankme"):
        e = _early(cfg, tiers, key=key, kind="gradient", layer=last, matrix=m)
        entry[key] = dict(
            rho=e["spearman_within"],
            p_value=e["p_value"],
            n=e["n"],
            early={r["batch"]: r["early_alpha_tail"] for r in e["tiers"]},
        )
    spectra_m, rows_m = {}, []
    for b, rec in matched.items():
        g = [r for r in runs_m[b]["records"] if r["step"] == rec["step"]]
        if g:
            spectra_m[f"B={b}"] = load_spectrum(tiers[b], g[0])
            rows_m.append(
                dict(
                    batch=b,
                    step=rec["step"],
                    val_loss=rec["val_loss"],
                    alpha_tail=g[0]["alpha_tail"],
                    rankme=g[0]["rankme"],
                )
            )
    entry["matched_loss"] = rows_m
    return entry, spectra_m


def probe_matrices(cfg: AblationConfig, log: Callable[[str], None] = log_stderr) -> dict:
    """Per final-block matrix (W_O, W_Q, W_V, MLP-out): Spearman of the early per-sample-gradient alpha_tail and
    RankMe vs eps_tok, and the gradient spectra of every tier at a common (matched) validation loss."""
    name = "probe_matrices"
    sweep_dir = probe_sweep(cfg, log)
    sweep, tiers = load_sweep(sweep_dir)
    last = sweep["model"]["n_layer"] - 1
    tail = tuple(sweep["tail_window"])
    mid, matched = _matched_loss_points(tiers, last, log)
    d = cfg.path(name)
    figs, per_matrix = [], []
    for m in PROBE_MATRICES:
        entry, spectra_m = _matrix_entry(cfg, tiers, last, m, matched)
        per_matrix.append(entry)
        if spectra_m:
            figs.append(
                plots.save_figure(
                    plots.plot_spectra(
                        spectra_m,
                        title=f"{cfg.family} ({cfg.preset}): per-sample gradient spectra of {MATRIX_LABELS[m]} "
                        f"(block {last})\nat matched val loss {mid:.3f}, M = {sweep['probe']['grad_samples']}",
                        ylabel="normalised singular value",
                        window=tail,
                    ),
                    d / f"gradient_spectra_{m}.png",
                )
            )
    summary = dict(
        family=cfg.family,
        tiers=sorted(tiers),
        early_fraction=cfg.early_fraction,
        tail_window=tail,
        grad_samples=sweep["probe"]["grad_samples"],
        matched_loss_target=mid,
        matrices=per_matrix,
        sweep=str(sweep_dir),
        note=None
        if sweep["probe"]["grad_samples"] >= tail[1]
        else f"grad_samples {sweep['probe']['grad_samples']} < {tail[1]}: the gradient spectrum is shorter than "
        f"the tail window {list(tail)}, so gradient alpha_tail is undefined (RankMe is not)",
    )
    return write_ablation(
        cfg,
        name,
        summary,
        figs,
        {f"rho_{k}": {e["matrix"]: e[k]["rho"] for e in per_matrix} for k in ("alpha_tail", "rankme")},
    )


__all__ = ["adam_vs_muon", "seed_control", "layerwise", "probe_matrices"]
