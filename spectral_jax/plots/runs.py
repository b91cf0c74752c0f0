"""Batch-sweep and chain figures: spectra, early alpha vs eps_tok, loss curves, Spearman vs progress, the gain
plane, alpha summaries and spectral atlases (paper Figs. 1a, 2, 3a, 8)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from spectral_jax import spectra
from spectral_jax.plots.base import _figure, _finite, series_colors


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
    drawn = 0
    for color, (label, values) in zip(series_colors(len(spectra_by_label)), spectra_by_label.items()):
        raw = np.asarray(values, float)
        if not np.any(raw > 0):
            ax.plot([], [], color=color, label=f"{label} (all zero)")
            continue
        v = spectra.trace_normalize(raw) if normalize else np.sort(raw)[::-1]
        ranks = np.arange(1, v.size + 1)
        keep = v > 0
        ax.plot(ranks[keep], v[keep], color=color, label=label, lw=1.5)
        drawn += 1
    if drawn:
        ax.set_xscale("log")
        ax.set_yscale("log")
    else:  # log axes need a positive value; say why the panel is empty instead of failing
        ax.text(0.5, 0.5, "every spectrum is all zero", transform=ax.transAxes, ha="center", color="0.3")
        window = None
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
    ax.xaxis.set_minor_formatter(NullFormatter())
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
