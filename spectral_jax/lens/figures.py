"""Figures of the model-agnostic layer: spectra on log-log rank axes, and a monitor's summaries over steps.

Every function returns a stand-alone matplotlib Figure (no pyplot state); `spectral_jax.plots.base.save_figure`
writes one atomically.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from spectral_jax.plots.base import _blank, _figure, series_colors

_YLABEL = {"eigenvalue": "eigenvalue / trace", "singular_value": "singular value / sum"}


def spectrum_axes(spectra: Sequence, ax=None, *, title: str | None = None, window=None):
    """Trace-normalised values against rank (log-log), one line per Spectrum, the tail window shaded."""
    if ax is None:
        fig, ax = _figure()
    else:
        fig = ax.figure
    colors = series_colors(len(spectra))
    drawn = 0
    for s, c in zip(spectra, colors):
        v = np.asarray(s.values, np.float64)
        total = v.sum()
        keep = v > 0
        if total <= 0 or keep.sum() < 1:
            continue
        ranks = np.arange(1, v.size + 1)
        ax.loglog(ranks[keep], v[keep] / total, color=c, lw=1.2, label=f"{s.kind} {s.path}")
        drawn += 1
    if drawn == 0:
        ax.text(0.5, 0.5, "every spectrum is all zero", ha="center", va="center", transform=ax.transAxes)
    w = window or (spectra[0].default_tail() if spectra else None)
    if w is not None and drawn:
        ax.axvspan(w[0], w[1], color="0.85", zorder=0, label=f"tail window ranks {w[0]}-{w[1]}")
    quantity = spectra[0].quantity if spectra else "eigenvalue"
    ax.set_xlabel("rank j")
    ax.set_ylabel(_YLABEL[quantity])
    ax.set_title(title or "spectra", fontsize=9)
    if drawn:
        ax.legend(fontsize=7)
    return fig


def monitor_figure(records: Sequence[dict], metrics: Sequence[str] = ("alpha_tail", "rankme")):
    """A grid: one row per kind (activation / gradient / weight), one column per summary metric, each metric
    against the training step with one line per path (alpha_tail with its 95 % bootstrap band)."""
    kinds = [k for k in ("activation", "gradient", "weight") if any(r["kind"] == k for r in records)] or ["activation"]
    fig = _blank(4.6 * len(metrics), 3.2 * len(kinds))
    grid = fig.subplots(len(kinds), len(metrics), squeeze=False)
    for row, kind in zip(grid, kinds):
        series: dict[str, list[dict]] = {}
        for r in records:
            if r["kind"] == kind:
                series.setdefault(r["path"], []).append(r)
        colors = series_colors(len(series))
        for ax, metric in zip(row, metrics):
            drawn = 0
            for (path, rows), c in zip(series.items(), colors):
                rows = sorted((r for r in rows if r.get(metric) is not None), key=lambda r: r["step"])
                if not rows:
                    continue
                xs = [r["step"] for r in rows]
                ax.plot(xs, [r[metric] for r in rows], "o-", color=c, ms=3, lw=1.2, label=path)
                drawn += 1
                lo, hi = [r.get(f"{metric}_ci_low") for r in rows], [r.get(f"{metric}_ci_high") for r in rows]
                if all(v is not None for v in lo + hi):
                    ax.fill_between(xs, lo, hi, color=c, alpha=0.2, lw=0)
            ax.set_xlabel("training step")
            ax.set_ylabel(metric)
            band = " (band: 95 % bootstrap CI)" if metric == "alpha_tail" else ""
            ax.set_title(f"{kind} spectra: {metric}{band}", fontsize=9)
            if drawn:
                ax.legend(fontsize=6)
            else:
                ax.text(0.5, 0.5, f"no {metric} (spectra too short?)", ha="center", va="center", transform=ax.transAxes)
    return fig
