"""Figures of a seeded batch sweep: mean and one standard deviation over seeds as error bars."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from matplotlib.ticker import NullFormatter

from spectral_jax.plots.base import _axes, _finite, series_colors


def _ms(stat: Mapping) -> tuple[float | None, float]:
    return stat["mean"], stat["sd"] or 0.0


def plot_seeded_tokens(tiers: Sequence[Mapping], *, target: float, title: str):
    """T(B) (interpolated crossing, mean +- sd over seeds) and eps_tok (mean +- sd) against B, log2 x."""
    fig, (ax_t, ax_e) = _axes(2, w=5.2, h=4.0)
    rows = [t for t in tiers if _finite(t["tokens_to_target_interpolated"]["mean"])]
    bs = [t["batch"] for t in rows]
    for ax, key, ylabel in (
        (ax_t, "tokens_to_target_interpolated", f"T(B): training tokens to val loss {target}"),
        (ax_e, "eps_tok", "eps_tok = T(B) / min T (ratio)"),
    ):
        means, sds = zip(*(_ms(t[key]) for t in rows)) if rows else ((), ())
        ax.errorbar(bs, means, yerr=sds, marker="o", capsize=4, color=series_colors(1)[0])
        ax.set_xscale("log", base=2)
        ax.set_xticks(bs, [str(b) for b in bs])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("batch size B (sequences per optimizer step)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    ax_t.set_title(f"{title}: tokens to target, mean +- sd over seeds", fontsize=9)
    ax_e.set_title("token efficiency (per seed, then mean +- sd)", fontsize=9)
    return fig


def plot_seeded_early(tiers: Sequence[Mapping], early: Mapping[str, Mapping], *, where: Mapping[str, str], title: str):
    """One panel per early-point kind: early alpha_tail (mean +- sd over seeds, x) against eps_tok (mean +- sd,
    y), each point labelled with its B; rho of the seed means with its bootstrap interval, and rho vs B, in the
    panel title."""
    kinds = list(early)
    fig, axes = _axes(len(kinds), w=4.6, h=4.2)
    colors = series_colors(len(tiers))
    for ax, kind in zip(axes, kinds):
        for color, t in zip(colors, tiers):
            (a, a_sd), (e, e_sd) = _ms(t["early"][kind]["alpha_tail"]), _ms(t["eps_tok"])
            if not (_finite(a) and _finite(e)):
                continue
            ax.errorbar([a], [e], xerr=[a_sd], yerr=[e_sd], marker="o", capsize=3, color=color)
            ax.annotate(f"B={t['batch']}", (a, e), textcoords="offset points", xytext=(4, 4), fontsize=8)
        s = early[kind]
        ci = f" [{s['ci95'][0]:+.2f}, {s['ci95'][1]:+.2f}]" if s.get("ci95") else ""
        rho = f"{s['rho_of_means']:+.2f}" if _finite(s["rho_of_means"]) else "undefined"
        rho_b = f"{s['rho_vs_batch_of_means']:+.2f}" if _finite(s["rho_vs_batch_of_means"]) else "undefined"
        ax.set_title(f"early point at {where[kind]}\nrho(alpha, eps_tok) {rho}{ci}; rho(alpha, B) {rho_b}", fontsize=8)
        ax.set_xlabel("early alpha_tail (activation covariance, dimensionless)")
        ax.set_ylabel("eps_tok = T(B) / min T (ratio)")
        ax.grid(alpha=0.3)
    fig.suptitle(
        f"{title}: early alpha vs token efficiency (error bars: 1 sd over seeds, 95 % bootstrap CI)", fontsize=9
    )
    return fig


__all__ = ["plot_seeded_tokens", "plot_seeded_early"]
