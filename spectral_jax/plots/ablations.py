"""Ablation and LR-selection figures: T(B) per family, rho by layer, seed control (paper Figs. 7, 9, 10), val loss
per LR rung and the selected LR against B."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from spectral_jax.halving import candidate_key
from spectral_jax.plots.base import _axes, _blank, _finite, series_colors


def plot_tokens_vs_batch(series: Mapping[str, Sequence[tuple[int, int | None]]], *, title: str):
    """T(B) vs B on log-log axes, one line per family (paper Fig. 7 left); tiers that never reached are left out."""
    fig, (ax,) = _axes()
    styles = itertools.cycle((("o", "-"), ("s", "--"), ("^", ":")))  # equal T(B) must not hide a family
    for color, style, (label, pts) in zip(series_colors(len(series)), styles, series.items()):
        pts = sorted((b, t) for b, t in pts if t)
        ax.plot(
            [b for b, _ in pts],
            [t for _, t in pts],
            marker=style[0],
            ls=style[1],
            color=color,
            label=label,
            mfc="none" if style[0] != "o" else None,
            ms=7,
        )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch B (sequences per step)")
    ax.set_ylabel("tokens to target T(B)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    return fig


def plot_rho_by_layer(rows: Sequence[Mapping], *, title: str):
    """Spearman(early alpha_tail at layer l, eps_tok) vs l (paper Fig. 10); p-values annotated."""
    fig, (ax,) = _axes()
    xs = [r["layer"] for r in rows]
    ys = [r["rho"] if _finite(r["rho"]) else np.nan for r in rows]
    ax.plot(xs, ys, "o-", color=series_colors(1)[0])
    for r, y in zip(rows, ys):
        if _finite(r["p_value"]):
            ax.annotate(f"p={r['p_value']:.2g}", (r["layer"], y), textcoords="offset points", xytext=(3, 5), fontsize=7)
    ax.axhline(0, color="0.6", lw=0.8)
    ax.set_ylim(-1.05, 1.05)
    ax.set_xticks(xs)
    ax.set_xlabel("probe layer l (block index)")
    ax.set_ylabel("Spearman rho(early alpha_tail, eps_tok)")
    ax.set_title(title, fontsize=9)
    return fig


def plot_seed_control(
    tier_alpha: Mapping[int, float | None],
    seed_alpha: Mapping[int, float | None],
    batch: int,
    js_rows: Sequence[Mapping],
    *,
    title: str,
):
    """Left: early alpha_tail across tiers (line) and across seeds at one tier (points). Right: matched-loss JS
    divergence seed-vs-seed and tier-vs-tier per loss target (paper Fig. 9)."""
    fig, (ax, bx) = _axes(2, w=5.2)
    tiers = sorted((b, a) for b, a in tier_alpha.items() if _finite(a))
    c_tier, c_seed = series_colors(2)
    ax.plot([b for b, _ in tiers], [a for _, a in tiers], "o-", color=c_tier, label="tiers (one seed)")
    seeds = [(s, a) for s, a in seed_alpha.items() if _finite(a)]
    ax.scatter(
        [batch] * len(seeds),
        [a for _, a in seeds],
        color=c_seed,
        marker="x",
        s=50,
        zorder=3,
        label=f"seeds at B={batch}",
    )
    for s, a in seeds:
        ax.annotate(f"s={s}", (batch, a), textcoords="offset points", xytext=(5, 0), fontsize=7)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch B (sequences per step)")
    ax.set_ylabel("early alpha_tail (activation covariance)")
    ax.legend(fontsize=8)
    for i, (key, label, color) in enumerate((("seed_js", "seed vs seed", c_seed), ("tier_js", "tier vs tier", c_tier))):
        for j, row in enumerate(js_rows):
            vals = [v for v in row[key] if _finite(v)]
            bx.scatter([j + (i - 0.5) * 0.25] * len(vals), vals, color=color, s=14, label=label if j == 0 else None)
    bx.set_xticks(range(len(js_rows)), [f"{r['target_loss']:.2f}" for r in js_rows])
    bx.set_yscale("log")
    bx.set_xlabel("matched validation loss target")
    bx.set_ylabel("JS divergence of activation spectra (nats)")
    if js_rows:
        bx.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    return fig


# ---- LR selection -----------------------------------------------------------------------------------------
def plot_rung_losses(tiers: Sequence[Mapping[str, Any]]):
    """Val loss vs LR multiplier (log x), one panel per tier, one line per rung; the selection is starred and
    candidates that reached the target are ringed (their rank is by tokens, their loss is at the stop)."""
    fig = _blank(4.2 * len(tiers), 4.0)
    axes = fig.subplots(1, len(tiers), squeeze=False)[0]
    for ax, t in zip(axes, tiers):
        rows = t["table"]
        rungs = sorted({r["rung"] for r in rows})
        for color, k in zip(series_colors(len(rungs)), rungs):
            pts = sorted(
                (r["multiplier"], np.nan if r["loss"] is None else r["loss"], r["reached"])
                for r in rows
                if r["rung"] == k
            )
            x = [p[0] for p in pts]
            y = [p[1] for p in pts]
            budget = next(r["budget"] for r in rows if r["rung"] == k)
            ax.plot(x, y, "o-", color=color, ms=4, label=f"rung {k + 1}: {budget:,} tokens")
            ring = [(p[0], p[1]) for p in pts if p[2]]
            if ring:
                ax.scatter(*zip(*ring), s=90, facecolors="none", edgecolors="crimson", lw=1)
        final = [r for r in rows if r["candidate"] == t["selected"] and r["rung"] == rungs[-1]]
        if final and final[0]["loss"] is not None:
            ax.scatter(
                [t["multiplier"]],
                [final[0]["loss"]],
                marker="*",
                s=260,
                facecolors="none",
                edgecolors="crimson",
                lw=1.2,
                zorder=5,
                label=f"selected x{t['selected']}",
            )
        ax.set_xscale("log", base=2)
        ax.set_xticks(
            [c["multiplier"] for c in t["candidates"]], [c["key"] for c in t["candidates"]], fontsize=7, rotation=45
        )
        ax.minorticks_off()
        ax.set_xlabel(f"LR multiplier of the {t['family']} anchors (all groups)")
        ax.set_ylabel("last observed validation loss (nats/token)")
        ax.set_title(
            f"{t['family']} ({t['preset']}) B = {t['batch']} (B0 = {t['reference_batch']}); "
            f"eta {t['eta']:g}\nringed: reached target (ranked by tokens)",
            fontsize=8,
        )
        ax.legend(fontsize=7)
    return fig


def plot_selected_lr(tiers: Sequence[Mapping[str, Any]]):
    """Selected multiplier vs B (log-log) over the candidate grid, with the two scaling centres
    sqrt(B/B0) and B/B0 drawn through the anchor (multiplier 1 at B0)."""
    fig = _blank(6.4, 4.4)
    ax = fig.add_subplot()
    b = np.array([t["batch"] for t in tiers], float)
    b0 = tiers[0]["reference_batch"]
    for t in tiers:
        cands = [c["multiplier"] for c in t["candidates"]]
        ax.scatter([t["batch"]] * len(cands), cands, s=14, color="0.75", zorder=1)
    grid = np.geomspace(min(b.min(), b0) / 1.3, max(b.max(), b0) * 1.3, 50)
    ax.plot(grid, np.sqrt(grid / b0), "--", color="tab:blue", lw=1, label="sqrt(B/B0)")
    ax.plot(grid, grid / b0, ":", color="tab:green", lw=1.2, label="B/B0")
    ax.plot(b, [t["multiplier"] for t in tiers], "o-", color="crimson", ms=6, label="selected", zorder=3)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xticks(sorted({*b.tolist(), b0}), [f"{x:g}" for x in sorted({*b.tolist(), b0})])
    ticks = sorted({c["multiplier"] for t in tiers for c in t["candidates"]})
    ax.set_yticks(ticks, [candidate_key(m) for m in ticks], fontsize=7)
    ax.minorticks_off()
    ax.set_xlabel("batch B (sequences per step)")
    ax.set_ylabel("LR multiplier of the family anchors")
    ax.set_title(
        f"{tiers[0]['family']} ({tiers[0]['preset']}): successive-halving LR vs batch (grey: candidates, B0 = {b0})",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    return fig
