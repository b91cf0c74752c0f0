"""Toy figures (paper Figs. 4a, 4b, 4c, 11a, 11b, 11c and loss curves) from the toy experiment's run files.

Each function returns a stand-alone matplotlib Figure (own Agg canvas, nothing registered with pyplot, like
spectral_jax.plots); `write_figures` saves them atomically with spectral_jax.plots.save_figure.
"""

from __future__ import annotations

import math
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from spectral_jax import efficiency, spectra
from spectral_jax.plots import save_figure, series_colors
from spectral_jax.toy.probes import band_key

STAGE_COLORS = {"baseline": "tab:gray", "rope": "tab:blue", "muon": "tab:orange", "untied": "tab:red"}


def _panels(n: int, w: float = 4.2, h: float = 3.4) -> tuple[Figure, list]:
    cols = min(n, 2) if n > 1 else 1
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(w * cols, h * rows), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(n)]
    return fig, axes


def _batch_colors(batches: Sequence[int]) -> dict[int, tuple]:
    return dict(zip(batches, series_colors(len(batches))))


def _color(stage: str):
    return STAGE_COLORS.get(stage, "black")


def _first_seed(runs: Sequence[Mapping]) -> int:
    return min(r["seed"] for r in runs)


def loss_curves(cfg, runs: Sequence[Mapping]) -> Figure:
    """Validation loss vs training tokens, one panel per stage, one line per batch (first seed)."""
    seed = _first_seed(runs)
    fig, axes = _panels(len(cfg.stages))
    colors = _batch_colors(cfg.batches)
    for ax, stage in zip(axes, cfg.stages):
        for r in runs:
            if r["stage"] == stage and r["seed"] == seed:
                ev = [e for e in r["evals"] if e["tokens"] > 0]
                ax.plot(
                    [e["tokens"] for e in ev],
                    [e["val_loss"] for e in ev],
                    color=colors[r["batch"]],
                    label=f"B={r['batch']} (lr {r['lr']:.2g})",
                    lw=1.3,
                )
        ax.axhline(cfg.target, color="crimson", ls="--", lw=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"{stage} (seed {seed}); dashed: target {cfg.target:g}", fontsize=9)
        ax.set_xlabel("training tokens")
        ax.set_ylabel("validation loss (nats/token)")
        if ax.get_legend_handles_labels()[0]:  # a stage without runs yet (a partial summary) has none
            ax.legend(fontsize=7)
    return fig


def spearman_vs_progress(progress: Mapping) -> Figure:
    """Fig. 4a: Spearman(alpha over ranks 10-40 at fraction f of T(B), T(B)) vs f: pooled over reached runs
    (mean over seeds, band = min..max over seeds) and within each stage across batches."""
    fig, ax = _panels(1, 6.4, 4.4)
    ax = ax[0]
    pooled = [r for r in progress["pooled_mean"] if r["mean"] is not None]
    if pooled:
        f = [r["fraction"] for r in pooled]
        ax.plot(f, [r["mean"] for r in pooled], "o-", color="black", ms=3, label="pooled over stages x batches")
        ax.fill_between(f, [r["min"] for r in pooled], [r["max"] for r in pooled], color="0.8", alpha=0.6, lw=0)
    stages = list(dict.fromkeys(r["stage"] for r in progress["within_stage"]))
    for stage in stages:
        rows = [r for r in progress["within_stage"] if r["stage"] == stage]
        fr = sorted({r["fraction"] for r in rows})
        means = [
            np.nanmean([r["rho"] if r["rho"] is not None else np.nan for r in rows if r["fraction"] == x]) for x in fr
        ]
        ax.plot(fr, means, "s--", color=_color(stage), ms=3, lw=1, label=f"within {stage} (across batches)")
    ax.axhline(0, color="0.6", lw=0.8)
    ax.set_ylim(-1.05, 1.05)
    ax.set_xlabel("training progress (fraction of each run's tokens to target)")
    ax.set_ylabel(f"Spearman rho({progress['key']}, tokens to target)")
    ax.set_title("local activation-tail statistic (ranks 10-40) vs eventual token cost", fontsize=9)
    if pooled or stages:
        ax.legend(fontsize=7)
    else:
        ax.text(
            0.5,
            0.5,
            "no Spearman: fewer than 3 runs reached the target\n(per seed pooled, or per stage)",
            transform=ax.transAxes,
            ha="center",
            va="center",
            fontsize=9,
            color="0.3",
        )
    return fig


def fourier_profiles(cfg, runs: Sequence[Mapping], band: tuple[int, int]) -> Figure:
    """Fig. 4c: normalised Fourier energy of H over positive frequencies at step 0 and at the end, per stage
    (first seed, smallest batch)."""
    seed, batch = _first_seed(runs), min(cfg.batches)
    fig, axes = _panels(len(cfg.stages))
    k = band_key(band)
    for ax, stage in zip(axes, cfg.stages):
        run = next((r for r in runs if r["stage"] == stage and r["seed"] == seed and r["batch"] == batch), None)
        if run is None:
            continue
        for rec, style, label in (
            (run["records"][0], dict(color="0.5", ls="--"), "step 0"),
            (run["records"][-1], dict(color=_color(stage)), f"end (step {run['steps']})"),
        ):
            en = np.asarray(rec["fourier"][k]["energy"])
            r = np.arange(1, band[0] // 2 + 1)
            ax.plot(r, en[r], lw=1.2, label=label, **style)
        ax.set_title(f"{stage}, band c0={band[0]}, o0={band[1]} (B={batch}, seed {seed})", fontsize=8)
        ax.set_xlabel("Fourier frequency r")
        ax.set_ylabel("normalised energy En_r")
        ax.legend(fontsize=7)
    return fig


def matched_loss_spectra(cfg, runs: Sequence[Mapping]) -> tuple[Figure, dict]:
    """Fig. 11a: activation spectra at a common validation loss, one line per batch, one panel per stage (first
    seed). The loss is the middle of efficiency.common_loss_targets over the batches' records."""
    seed = _first_seed(runs)
    fig, axes = _panels(len(cfg.stages))
    colors = _batch_colors(cfg.batches)
    chosen = {}
    for ax, stage in zip(axes, cfg.stages):
        rs = [r for r in runs if r["stage"] == stage and r["seed"] == seed]
        try:
            targets = efficiency.common_loss_targets({r["batch"]: [x["val_loss"] for x in r["records"]] for r in rs})
        except ValueError as err:
            ax.set_title(f"{stage}: no common loss ({err})"[:80], fontsize=7)
            continue
        target = targets[len(targets) // 2]
        chosen[stage] = dict(target=target, rows={})
        for r in rs:
            rec = efficiency.matched_loss_rows(r["records"], [target])[0]
            v = spectra.trace_normalize(rec["act_eigenvalues"])
            keep = v > 0
            ax.plot(
                np.arange(1, v.size + 1)[keep],
                v[keep],
                color=colors[r["batch"]],
                lw=1.2,
                label=f"B={r['batch']} (step {rec['step']}, loss {rec['val_loss']:.2f})",
            )
            chosen[stage]["rows"][str(r["batch"])] = dict(
                step=rec["step"], val_loss=rec["val_loss"], alpha_10_40=rec.get("alpha_10_40")
            )
        lo, hi = cfg.probe.local
        ax.axvspan(lo, hi, color="0.9", zorder=0)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"{stage}: matched val loss {target:.3f} (seed {seed}); shaded ranks {lo}-{hi}", fontsize=8)
        ax.set_xlabel("rank j")
        ax.set_ylabel("trace-normalised eigenvalue")
        ax.legend(fontsize=7)
    return fig, chosen


def delta_h_peak(fourier_table: Mapping) -> Figure:
    """Fig. 11b: ΔH_peak per consecutive-stage transition at the three checkpoints (mean +- sd over batches and
    seeds; H_peak averaged over the checkpoint probe bands)."""
    fig, ax = _panels(1, 6.4, 4.4)
    ax = ax[0]
    names = fourier_table.get("transition_order") or list(fourier_table["transitions"])  # summary.json sorts keys
    steps = fourier_table["checkpoints"]
    width = 0.8 / max(len(steps), 1)
    colors = series_colors(len(steps))
    for j, s in enumerate(steps):
        means = [fourier_table["transitions"][n]["dH_peak"][s]["mean"] for n in names]
        sds = [fourier_table["transitions"][n]["dH_peak"][s]["sd"] for n in names]
        x = np.arange(len(names)) + (j - (len(steps) - 1) / 2) * width
        ax.bar(
            x,
            [np.nan if m is None else m for m in means],
            width,
            yerr=[0 if v is None else v for v in sds],
            color=colors[j],
            label=f"checkpoint {j + 1}",
            capsize=2,
        )
    ax.axhline(0, color="0.6", lw=0.8)
    ax.set_xticks(np.arange(len(names)), names, fontsize=8)
    ax.set_xlabel("transition")
    ax.set_ylabel("ΔH_peak (mean over batches and seeds; error bar 1 sd)")
    at = "; ".join(
        f"B={b}: steps {', '.join(map(str, v))}" for b, v in fourier_table["checkpoint_steps_by_batch"].items()
    )
    ax.set_title(
        f"Fourier concentration gain per transition (band {', '.join(fourier_table['bands'])})\ncheckpoints {at}",
        fontsize=7,
    )
    ax.legend(fontsize=7)
    return fig


def band_sweep(cfg, sweep_table: Mapping) -> Figure:
    """Fig. 11c: H_peak at the end per probe band and stage (mean +- sd over batches and seeds), with step 0 dashed."""
    fig, axes = _panels(2, 5.2, 3.8)
    bands = [band_key(b) for b in cfg.probe.sweep_bands]
    x = np.arange(len(bands))
    for ax, key in zip(axes, ("H_peak", "H_S")):
        for stage in cfg.stages:
            fin = [sweep_table[stage][b][f"{key}_final"] for b in bands]
            ax.errorbar(
                x,
                [np.nan if v["mean"] is None else v["mean"] for v in fin],
                yerr=[0 if v["sd"] is None else v["sd"] for v in fin],
                fmt="o-",
                ms=3,
                capsize=2,
                lw=1.2,
                color=_color(stage),
                label=f"{stage} (end)",
            )
        init = [
            np.nanmean(
                [
                    np.nan
                    if sweep_table[s][b][f"{key}_step0"]["mean"] is None
                    else sweep_table[s][b][f"{key}_step0"]["mean"]
                    for s in cfg.stages
                ]
            )
            for b in bands
        ]
        ax.plot(x, init, ":", color="black", lw=1, label="step 0 (mean over stages)")
        ax.set_xticks(x, bands, rotation=45, fontsize=7)
        ax.set_yscale("log")
        ax.set_xlabel("probe band c0:o0")
        ax.set_ylabel(f"{key} (normalised Fourier mass)")
        ax.legend(fontsize=6)
    return fig


def h_s_curves(cfg, runs: Sequence[Mapping], band: tuple[int, int]) -> Figure:
    """Fig. 4b-style: task-band concentration H_S vs training step per stage (first seed, smallest batch)."""
    seed, batch = _first_seed(runs), min(cfg.batches)
    fig, ax = _panels(1, 6.4, 4.2)
    ax = ax[0]
    k = band_key(band)
    for stage in cfg.stages:
        run = next((r for r in runs if r["stage"] == stage and r["seed"] == seed and r["batch"] == batch), None)
        if run is None:
            continue
        recs = [x for x in run["records"] if "fourier" in x]
        ax.plot(
            [x["step"] for x in recs],
            [x["fourier"][k]["H_S"] for x in recs],
            "o-",
            ms=3,
            color=_color(stage),
            label=stage,
        )
    ax.set_xlabel("training step")
    ax.set_ylabel(f"H_S (mass on r = ±1), band {k}")
    ax.set_title(f"task-band concentration (B={batch}, seed {seed})", fontsize=9)
    ax.legend(fontsize=7)
    return fig


def write_figures(out: str | pathlib.Path, cfg, runs: Sequence[Mapping], summary: Mapping) -> dict:
    """Save every figure under out/; returns {name: file name} plus the matched-loss choices."""
    out = pathlib.Path(out)
    band = tuple(cfg.probe.bands[0])
    written = {}

    def save(name, fig):
        save_figure(fig, out / f"{name}.png")
        written[name] = f"{name}.png"

    save("loss_curves", loss_curves(cfg, runs))
    save("fig4a_spearman_vs_progress", spearman_vs_progress(summary["spearman_vs_progress"]))
    save("fig4b_h_s_curves", h_s_curves(cfg, runs, band))
    save("fig4c_fourier_profile", fourier_profiles(cfg, runs, band))
    fig, chosen = matched_loss_spectra(cfg, runs)
    save("fig11a_matched_loss_spectra", fig)
    save("fig11b_delta_h_peak", delta_h_peak(summary["fourier"]))
    save("fig11c_band_sweep", band_sweep(cfg, summary["band_sweep"]))
    return dict(files=written, matched_loss=chosen)
