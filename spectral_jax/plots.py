"""Figures from tidy result tables (paper Figs. 1a, 2, 3a, 8 and loss curves).

Every plotting function builds a stand-alone `matplotlib.figure.Figure` with its own Agg canvas and returns
it: nothing is registered with pyplot and the global backend is never changed, so importing this module is
safe inside notebooks. `save_figure` writes the file atomically. Legends carry one entry per batch tier (or
per window / family where that is the series); reference lines and rank windows are annotated in the axes
instead of the legend.
"""

from __future__ import annotations

import io
import itertools
import math
import os
import pathlib
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from spectral_jax import spectra
from spectral_jax.halving import candidate_key
from spectral_jax.records import atomic_write_bytes

__all__ = [
    "save_figure",
    "plot_spectra",
    "plot_alpha_vs_eps",
    "plot_loss_curves",
    "plot_spearman_vs_progress",
    "plot_gain_plane",
    "plot_alpha_summaries",
    "plot_spectral_atlas",
    "series_colors",
    "plot_tokens_vs_batch",
    "plot_rho_by_layer",
    "plot_seed_control",
    "plot_rung_losses",
    "plot_selected_lr",
]


def _blank(w: float, h: float) -> Figure:
    """A stand-alone Agg figure (never registered with pyplot)."""
    fig = Figure(figsize=(w, h), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _figure(w: float = 6.4, h: float = 4.4) -> tuple[Figure, object]:
    fig = _blank(w, h)
    return fig, fig.add_subplot()


def _axes(ncols: int = 1, w: float = 6.4, h: float = 4.4) -> tuple[Figure, Sequence]:
    fig = _blank(w * ncols, h)
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def series_colors(n: int) -> list:
    """n colours along viridis (the palette of every figure here)."""
    cmap = colormaps["viridis"]
    return [cmap(x) for x in np.linspace(0.0, 0.85, max(n, 1))]


def _finite(v) -> bool:
    return v is not None and math.isfinite(float(v))


def save_figure(fig: Figure, path: str | os.PathLike) -> pathlib.Path:
    """Write `fig` to `path` atomically (temp file in the same directory, then os.replace) and close it.

    The format follows the suffix (.png, .pdf, .svg; PNG when there is none). Parent directories are created.
    "Close" releases the figure from pyplot if the caller made it with pyplot; figures from this module are
    not tracked by pyplot and are freed once unreferenced.
    """
    path = pathlib.Path(path)
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format=path.suffix[1:].lower() or "png")
        atomic_write_bytes(path, buf.getvalue())
    finally:
        pyplot = sys.modules.get("matplotlib.pyplot")
        if pyplot is not None:
            pyplot.close(fig)
    return path


def plot_spectra(
    spectra_by_label: Mapping[str, np.ndarray],
    *,
    title: str,
    ylabel: str,
    window: tuple[int, int] | None = None,
    normalize: bool = True,
) -> Figure:
    """Log-log rank vs value, one line per label (e.g. "B=4"); values trace-normalised unless normalize=False.

    An optional rank window (lo, hi) is shaded. A spectrum with no positive value (e.g. the gradient of a
    zero-initialised matrix) keeps its legend entry, marked "(all zero)", with nothing drawn.
    """
    fig, ax = _figure()
    for color, (label, values) in zip(series_colors(len(spectra_by_label)), spectra_by_label.items()):
        raw = np.asarray(values, float)
        if not np.any(raw > 0):
            ax.plot([], [], color=color, label=f"{label} (all zero)")
            continue
        v = spectra.trace_normalize(raw) if normalize else np.sort(raw)[::-1]
        ranks = np.arange(1, v.size + 1)
        keep = v > 0
        ax.plot(ranks[keep], v[keep], color=color, label=label, lw=1.5)
    ax.set_xscale("log")
    ax.set_yscale("log")
    if window is not None:
        lo, hi = window
        ax.axvspan(lo, hi, color="0.88", zorder=0)
        ax.text(
            math.sqrt(lo * hi),
            0.02,
            f"ranks {lo}-{hi}",
            transform=ax.get_xaxis_transform(),
            ha="center",
            va="bottom",
            fontsize=8,
            color="0.3",
        )
    ax.set_xlabel("rank j (1-indexed)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    return fig


def plot_alpha_vs_eps(
    points: Sequence[Mapping],
    *,
    rho: float | None = None,
    p_value: float | None = None,
    title: str = "early alpha_tail vs token efficiency",
    xlabel: str = "early alpha_tail (activation covariance, dimensionless)",
) -> Figure:
    """Scatter of early alpha (x) vs eps_tok (y), one colour per family (key "family" or "label"), each point
    annotated with its batch; Spearman rho (and p) in the title when given and finite (paper Fig. 2)."""
    fig, ax = _figure()
    fam_of = [str(p.get("family", p.get("label", "")) or "") for p in points]
    families = list(dict.fromkeys(fam_of))
    for color, fam in zip(series_colors(len(families)), families):
        pts = [p for p, f in zip(points, fam_of) if f == fam]
        ax.scatter([p["alpha"] for p in pts], [p["eps_tok"] for p in pts], color=color, label=fam or None, s=30)
        for p in pts:
            ax.annotate(
                f"B={p['batch']}", (p["alpha"], p["eps_tok"]), textcoords="offset points", xytext=(4, 4), fontsize=8
            )
    ax.set_xlabel(xlabel)
    ax.set_ylabel("token efficiency eps_tok = T(B) / min T (ratio)")
    if _finite(rho):
        title += f"\nSpearman rho = {rho:.3f}" + (f", p = {p_value:.3g}" if _finite(p_value) else "")
    ax.set_title(title, fontsize=9)
    if any(families):
        ax.legend(fontsize=8)
    return fig


def plot_loss_curves(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float | None]]],
    *,
    target: float | None = None,
    title: str = "validation loss per batch tier",
) -> Figure:
    """Validation loss vs training tokens (log x), one line per tier; optional dashed target line.

    Points at 0 tokens cannot sit on a log axis and are dropped; None losses become gaps.
    """
    fig, ax = _figure()
    for color, (label, (tokens, losses)) in zip(series_colors(len(curves)), curves.items()):
        t = np.asarray(tokens, float)
        y = np.asarray([np.nan if v is None else v for v in losses], float)
        keep = t > 0
        ax.plot(t[keep], y[keep], color=color, label=label, lw=1.5, marker="o", ms=2)
    ax.set_xscale("log")
    if target is not None:
        ax.axhline(target, color="crimson", ls="--", lw=1)
        ax.text(
            0.99,
            target,
            f"target {target:g}",
            transform=ax.get_yaxis_transform(),
            ha="right",
            va="bottom",
            fontsize=8,
            color="crimson",
        )
    ax.set_xlabel("training tokens")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    return fig


def plot_spearman_vs_progress(
    rows: Sequence[Mapping], *, title: str = "Spearman(alpha, eps_tok) vs training progress"
) -> Figure:
    """Rows of `efficiency.spearman_vs_progress`: one line per rank window, x = fraction of T(B), y = rho."""
    fig, ax = _figure()
    windows = list(dict.fromkeys(tuple(r["window"]) for r in rows))
    for color, w in zip(series_colors(len(windows)), windows):
        pts = sorted(
            (r["fraction"], r["rho"] if _finite(r["rho"]) else np.nan) for r in rows if tuple(r["window"]) == w
        )
        ax.plot([f for f, _ in pts], [r for _, r in pts], "o-", color=color, label=f"ranks {w[0]}-{w[1]}", ms=3)
    ax.axhline(0, color="0.6", lw=0.8)
    ax.set_ylim(-1.05, 1.05)
    ax.set_xlabel("training progress (fraction of each tier's T(B))")
    ax.set_ylabel("Spearman rho(alpha, eps_tok)")
    ax.set_title(title, fontsize=9)
    if windows:
        ax.legend(fontsize=8)
    return fig


def plot_gain_plane(transitions: Sequence[Mapping], *, title: str = "token gain vs throughput gain") -> Figure:
    """Transitions a->b on the (g_tok, g_thr) plane (paper Fig. 3a), coloured by their "label" field.

    Each transition: {"g_tok", "g_thr", "label" (optional class), and "name" or ("a", "b") for the point's
    annotation "a->b"}.
    """
    fig, ax = _figure()
    labels = list(dict.fromkeys(str(t.get("label", "") or "") for t in transitions))
    for color, lab in zip(series_colors(len(labels)), labels):
        pts = [t for t in transitions if str(t.get("label", "") or "") == lab]
        ax.scatter([t["g_tok"] for t in pts], [t["g_thr"] for t in pts], color=color, label=lab or None, s=30)
        for t in pts:
            name = t.get("name") or f"{t.get('a', '?')}->{t.get('b', '?')}"
            ax.annotate(name, (t["g_tok"], t["g_thr"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.axhline(0, color="0.6", lw=0.8)
    ax.axvline(0, color="0.6", lw=0.8)
    ax.set_xlabel("log token gain g_tok = ln T(a)/T(b) (natural log)")
    ax.set_ylabel("log throughput gain g_thr = ln Q(b)/Q(a) (natural log)")
    ax.set_title(title, fontsize=9)
    if any(labels):
        ax.legend(fontsize=8)
    return fig


def plot_alpha_summaries(
    rows: Sequence[Mapping],
    *,
    x: str = "act_alpha_tail",
    y: str = "grad_alpha_tail",
    xlabel: str = "activation alpha_tail (final)",
    ylabel: str = "gradient alpha_tail (final)",
    title: str = "activation vs gradient spectral exponents",
) -> Figure:
    """One point per variant (paper Fig. 3c): an activation summary against a gradient summary, annotated with
    the row's "family" and joined in chain order. Rows with a missing value are left out."""
    fig, ax = _figure()
    pts = [r for r in rows if _finite(r.get(x)) and _finite(r.get(y))]
    if pts:
        xs, ys = [r[x] for r in pts], [r[y] for r in pts]
        ax.plot(xs, ys, color="0.75", lw=0.8, zorder=1)
        for color, r in zip(series_colors(len(pts)), pts):
            ax.scatter([r[x]], [r[y]], color=color, s=30, zorder=2, label=r.get("family"))
            ax.annotate(str(r.get("family", "")), (r[x], r[y]), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.legend(fontsize=7, ncol=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    return fig


def plot_spectral_atlas(
    series: Mapping[str, Sequence[tuple[float, np.ndarray]]],
    *,
    title: str,
    ylabel: str,
    progress_label: str = "training tokens",
    window: tuple[int, int] | None = None,
    ncols: int = 4,
) -> Figure:
    """A grid with one panel per variant (paper Figs. 13-16): that variant's trace-normalised spectra at every
    probe point, coloured by training progress (one shared colour bar), on log-log axes. All-zero spectra
    (nothing to normalise) are skipped."""
    names = [n for n, pts in series.items() if len(pts)]
    if not names:
        raise ValueError("plot_spectral_atlas needs at least one variant with spectra")
    ncols = max(1, min(ncols, len(names)))
    nrows = math.ceil(len(names) / ncols)
    fig = Figure(figsize=(3.0 * ncols + 0.8, 2.5 * nrows + 0.6), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True)
    cmap = colormaps["viridis"]
    vmax = max(float(t) for n in names for t, _ in series[n]) or 1.0
    for ax, name in zip(axes.flat, names):
        for t, values in sorted(series[name], key=lambda p: p[0]):
            values = np.asarray(values, np.float64)
            if not (np.all(np.isfinite(values)) and values.sum() > 0):
                continue  # e.g. the zero gradient of a zero-initialised head at step 0
            v = spectra.trace_normalize(values)
            v = v[v > 0]
            ax.loglog(np.arange(1, v.size + 1), v, color=cmap(float(t) / vmax), lw=0.9)
        if window is not None:
            ax.axvspan(window[0], window[1], color="0.85", zorder=0)
        ax.set_title(name, fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes.flat[len(names) :]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel, fontsize=8)
    for ax in axes[-1, :]:
        ax.set_xlabel("rank", fontsize=8)
    bar = fig.colorbar(ScalarMappable(Normalize(0, vmax), cmap), ax=axes, shrink=0.8)
    bar.set_label(progress_label, fontsize=8)
    fig.suptitle(title, fontsize=9)
    return fig


# ---- ablations (paper App. D, Figs. 7, 9, 10) -----------------------------------------------------------
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
