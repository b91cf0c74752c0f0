"""The study's figures: rho vs training progress per early definition, and the matched-loss separation."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from spectral_jax.plots.base import _blank, series_colors

X_LABELS = {
    "fraction": "fraction of the tier's own T(B)",
    "tokens": "training tokens (thousands)",
    "loss": "first eval at val loss <= L (nats/token)",
}
DEFINITION_TITLES = {
    "fraction": "early point at a fraction of each tier's T(B) (retrospective)",
    "tokens": "early point at a fixed number of training tokens (online)",
    "loss": "early point at the first eval at or below a val loss (online)",
}
PAPER_RHO = 0.97  # the paper's within-family rho at d12


def _series_name(series: str) -> str:
    kind, _, rest = series.partition("/")
    return f"activation layer {rest[1:]}" if kind == "activation" else f"per-sample gradient {rest}"


def _panel_grid(n: int, w: float = 3.6, h: float = 3.0):
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig = _blank(w * cols, h * rows + 0.6)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def plot_rho_vs_progress(rows: Sequence[dict], definition: str, *, title: str):
    """One panel per statistic: rho(statistic, eps_tok) of the seed means (solid, 95 % bootstrap band over seeds)
    and rho(statistic, B) (dashed) against the early point, one colour per spectrum series."""
    rows = [r for r in rows if r["definition"] == definition]
    stats_ = sorted({r["statistic"] for r in rows}, key=_stat_order)
    series = sorted({r["series"] for r in rows})
    fig, axes = _panel_grid(max(len(stats_), 1))
    colors = series_colors(len(series))
    for ax, stat in zip(axes, stats_):
        for color, s in zip(colors, series):
            sel = sorted((r for r in rows if r["statistic"] == stat and r["series"] == s), key=lambda r: r["value"])
            if not sel:
                continue
            x = np.array([r["value"] for r in sel], float)
            x = x / 1e3 if definition == "tokens" else x
            y, lo, hi = (np.array([r[k] for r in sel], float) for k in ("rho", "rho_lo", "rho_hi"))
            ax.plot(x, y, marker="o", ms=3, color=color, label=f"{_series_name(s)}: rho(stat, eps_tok)")
            ax.fill_between(x, lo, hi, color=color, alpha=0.18, linewidth=0)
            ax.plot(x, [r["rho_B"] for r in sel], ls="--", lw=1, color=color, label=f"{_series_name(s)}: rho(stat, B)")
        ax.axhline(0, color="grey", lw=0.8)
        ax.axhline(PAPER_RHO, color="black", lw=0.8, ls=":")
        ax.set_ylim(-1.05, 1.05)
        ax.set_title(_stat_label(stat), fontsize=9)
        ax.set_ylabel("Spearman rho over tiers (seed means)", fontsize=8)
        ax.set_xlabel(X_LABELS[definition], fontsize=8)
        if definition == "loss":
            ax.invert_xaxis()
        ax.grid(alpha=0.3)
    if stats_:
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 2), fontsize=7, frameon=False)
    fig.suptitle(
        f"{title}, {DEFINITION_TITLES[definition]}\ndoes the early statistic forecast token efficiency? "
        f"solid: rho(statistic, eps_tok) with its 95 % bootstrap band over seeds; dashed: rho(statistic, B); "
        f"dotted: the paper's +{PAPER_RHO} (d12)",
        fontsize=9,
    )
    return fig


def plot_matched_loss(rows: Sequence[dict], *, title: str):
    """One panel per series: between-tier sd over within-tier (seed) sd of each statistic at matched val loss;
    filled markers where the one-way ANOVA across tiers gives p < 0.05."""
    series = sorted({r["series"] for r in rows})
    stats_ = sorted({r["statistic"] for r in rows}, key=_stat_order)
    fig, axes = _panel_grid(max(len(series), 1), w=4.6, h=3.6)
    colors = series_colors(len(stats_))
    for ax, s in zip(axes, series):
        for color, stat in zip(colors, stats_):
            sel = sorted((r for r in rows if r["series"] == s and r["statistic"] == stat), key=lambda r: r["loss"])
            sel = [r for r in sel if np.isfinite(r["ratio"]) and r["ratio"] > 0]
            if not sel:
                continue
            x, y = [r["loss"] for r in sel], [r["ratio"] for r in sel]
            ax.plot(x, y, color=color, lw=1, label=_stat_label(stat))
            sig = [(a, b) for a, b, r in zip(x, y, sel) if r["anova_p"] < 0.05]
            ax.scatter(x, y, s=14, facecolors="none", edgecolors=[color])
            if sig:
                ax.scatter(*zip(*sig), s=14, color=color)
        ax.axhline(1, color="grey", lw=0.8)
        ax.set_yscale("log")
        ax.invert_xaxis()
        ax.set_title(_series_name(s), fontsize=9)
        ax.set_xlabel("matched val loss L (nats/token; first eval at or below L)", fontsize=8)
        ax.set_ylabel("between-tier sd / within-tier sd (ratio)", fontsize=8)
        ax.grid(alpha=0.3)
    if series:
        ax0 = axes[0]
        ax0.legend(fontsize=6, loc="best")
    fig.suptitle(f"{title}\nat equal loss, do tiers differ? filled: ANOVA across tiers p < 0.05", fontsize=9)
    return fig


SCALE_STATISTICS = ("alpha_tail", "past_head", "rankme")


def plot_scales(headline: Sequence[dict], *, title: str):
    """rho(statistic, eps_tok) of the seed means with its 95 % bootstrap interval at each scale's headline early
    point, one panel per definition, the deepest probed activation layer; alpha_tail is each scale's tail window."""
    scales = list(dict.fromkeys(r["scale"] for r in headline))
    defs = [d for d in X_LABELS if any(r["definition"] == d for r in headline)]
    fig, axes = _panel_grid(max(len(defs), 1), w=4.4, h=3.6)
    colors = series_colors(len(scales))
    for ax, d in zip(axes, defs):
        for k, (scale, color) in enumerate(zip(scales, colors)):
            rows = [r for r in headline if r["scale"] == scale and r["definition"] == d and r.get("deepest")]
            for j, stat in enumerate(SCALE_STATISTICS):
                r = next((r for r in rows if r["role"] == stat), None)
                if r is None or not np.isfinite(r["rho"]):
                    continue
                x = j + (k - (len(scales) - 1) / 2) * 0.18
                if np.isfinite(r["rho_lo"]):  # the percentile interval, which need not contain the estimate
                    ax.vlines(x, r["rho_lo"], r["rho_hi"], color=color, lw=1.5)
                ax.plot([x], [r["rho"]], marker="o", color=color, ls="none", label=scale if j == 0 else None)
                ax.plot([x], [r["rho_B"]], marker="x", color=color, ls="none")
        ax.axhline(0, color="grey", lw=0.8)
        ax.axhline(PAPER_RHO, color="black", lw=0.8, ls=":")
        ax.set_xticks(range(len(SCALE_STATISTICS)), ["alpha_tail", "alpha past head", "RankMe"])
        ax.set_ylim(-1.05, 1.05)
        ax.set_ylabel("Spearman rho over tiers (seed means)", fontsize=8)
        ax.set_title(DEFINITION_TITLES[d], fontsize=8)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="lower left")
    fig.suptitle(
        f"{title}\no: rho(statistic, eps_tok) with 95 % bootstrap interval over seeds; x: rho(statistic, B); "
        f"dotted: the paper's +{PAPER_RHO}",
        fontsize=9,
    )
    return fig


def _stat_order(stat: str):
    if stat.startswith("alpha["):
        lo, hi = stat[6:-1].split(",")
        return (0, int(lo), int(hi))
    return (1, 0, 0) if stat == "past_head" else (2, 0, 0)


def _stat_label(stat: str) -> str:
    if stat.startswith("alpha["):
        return f"alpha over ranks {stat[5:]} (dimensionless)"
    if stat == "past_head":
        return "alpha over ranks [2 RankMe, n] (past the head)"
    return "RankMe (effective rank)"


__all__ = ["plot_rho_vs_progress", "plot_matched_loss", "plot_scales", "X_LABELS"]
