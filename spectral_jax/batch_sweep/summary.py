"""A batch sweep's summary from its records alone: T(B) at the first eval and interpolated, eps_tok, the three
kinds of early point and their Spearman correlations, matched-loss spectra, Spearman vs progress, warnings, the
figures and the printed table."""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
from collections.abc import Callable

import numpy as np

from spectral_jax import efficiency, plots, probes
from spectral_jax.batch_sweep.records import TierRecords, load_spectrum, load_sweep
from spectral_jax.presets import get_preset, preset_names
from spectral_jax.records import log_stderr, write_json
from spectral_jax.schemas import MatchedLossRow, SweepSummary, TierRow

_MATRIX_LABELS = {"attn_out": "W_O", "attn_q": "W_Q", "attn_v": "W_V", "attn_k": "W_K", "mlp_out": "MLP-out"}


def probed_series(sweep: dict) -> tuple[int, str]:
    """(activation layer, gradient matrix) the summary reads: the deepest probed block and the first probed matrix,
    as the sweep's --layers and --matrices named them."""
    n_layer = sweep["model"]["n_layer"]
    layer = max(int(v) % n_layer for v in sweep["config"].get("layers") or (-1,))
    first = (sweep["config"].get("matrices") or ("final_attn_out",))[0]
    return layer, probes.ALIASES.get(first, (first,))[0]


def _early_points(
    tiers: dict[int, TierRecords],
    runs: dict,
    fraction: float,
    tokens: int,
    loss: float,
    *,
    kind: str = "activation",
    layer: int | None = None,
    matrix: str | None = None,
    key: str = "alpha_tail",
) -> dict[int, dict[str, dict]]:
    """Per tier, the three early points (never step 0) of one spectrum series: fraction of T(B) (retrospective),
    fixed tokens and the first eval at or below an early loss (both known online), each with its realised step,
    tokens, fraction of T(B), val loss, `key` (as "alpha_tail") and whether it is exact (measured at its own step
    by replay) or the nearest training probe (when the sweep ran without the replay)."""
    out = {}
    for b, run in runs.items():
        tier, recs, T = tiers[b], efficiency.after_start(run["records"]), run["tokens_to_target"]
        exact_steps = tier.early_steps(fraction=fraction, tokens=tokens, loss=loss)
        nearest = {
            "fraction": efficiency.select_at_fraction(recs, T, fraction) if recs and T else None,
            "tokens": efficiency.select_at_tokens(recs, tokens) if recs else None,
            "loss": efficiency.select_first_below(recs, loss),
        }
        replayed = tier.records(kind, layer, matrix, early=True)
        out[b] = {}
        for point, near in nearest.items():
            exact = [r for r in replayed if point in r.get("early_kinds", ()) and r["step"] == exact_steps[point]]
            r = exact[0] if exact else near if exact_steps[point] is not None else None  # None: past the run's end
            out[b][point] = (
                None
                if r is None
                else dict(
                    step=r["step"],
                    tokens=r["tokens"],
                    fraction_of_T=r["tokens"] / T if T else None,
                    val_loss=r["val_loss"],
                    alpha_tail=r.get(key),
                    exact=bool(exact),
                )
            )
    return out


def early_readout(
    tiers: dict[int, TierRecords],
    *,
    fraction: float,
    tokens: int,
    loss: float,
    kind: str = "activation",
    layer: int | None = None,
    matrix: str | None = None,
    key: str = "alpha_tail",
) -> dict:
    """The sweep's early read-out of one spectrum series (`kind`, `layer`, `matrix`, summary `key`), as the
    summary computes it: T(B) interpolated, eps_tok, the three early points per tier (exact where replayed), per
    point kind rho vs eps_tok and vs B, and the paper's fraction-of-T(B) point in `early_prediction`'s shape:
    {"tiers": [{batch, tokens_to_target, eps_tok, early_tokens, early_step, early_val_loss, early_alpha_tail,
    early_alpha_tail_normalized}], "spearman_within", "p_value", "n", "points", "by_kind"}."""
    T = {b: t.tokens_to_target() for b, t in tiers.items()}
    runs = {b: dict(tokens_to_target=T[b], records=t.records(kind, layer, matrix)) for b, t in tiers.items()}
    points = _early_points(tiers, runs, fraction, tokens, loss, kind=kind, layer=layer, matrix=matrix, key=key)
    eps = efficiency.token_efficiency(T)
    by_kind = _early_spearman(points, eps)
    headline = {b: p["fraction"] for b, p in points.items() if p["fraction"] and T[b]}
    normalized = efficiency.minmax_normalize({b: p["alpha_tail"] for b, p in headline.items()})
    rows = [
        dict(batch=b, tokens_to_target=T[b], eps_tok=eps[b], **_headline_fields(headline.get(b), normalized.get(b)))
        for b in sorted(tiers)
    ]
    for row in rows:
        for field in (
            "early_tokens",
            "early_step",
            "early_val_loss",
            "early_alpha_tail",
            "early_alpha_tail_normalized",
        ):
            row.setdefault(field, None)
    fr = by_kind["fraction"]
    return dict(
        tiers=rows,
        spearman_within=fr["rho"],
        p_value=fr["p_value"],
        n=fr["n"],
        points=points,
        by_kind=by_kind,
        T=T,
        runs=runs,
    )


def _early_spearman(points: dict, eps: dict) -> dict[str, dict]:
    """Per early-point kind: Spearman(alpha_tail, eps_tok) over the reached tiers and Spearman(alpha_tail, B) beside
    it, so a reader sees whether alpha tracks efficiency or only the batch size."""
    out = {}
    for kind in ("fraction", "tokens", "loss"):
        tiers = [b for b in points if points[b][kind] and eps.get(b) is not None]
        alpha = [points[b][kind]["alpha_tail"] for b in tiers]
        vs_eps = efficiency.spearman(alpha, [eps[b] for b in tiers])
        vs_batch = efficiency.spearman(alpha, tiers)
        out[kind] = dict(
            rho=vs_eps.rho, p_value=vs_eps.p_value, n=vs_eps.n, rho_vs_batch=vs_batch.rho, p_vs_batch=vs_batch.p_value
        )
    return out


FAR = 0.25  # a realised early point more than this relative distance from the requested one is warned about
MIN_EARLY_STEPS = 30  # an early point before this many optimizer steps is warned about (docs/method.md §3.5)


def _warnings(tiers: dict[int, TierRecords], points: dict, n_reached: int, fraction: float, tokens: int) -> list[str]:
    """What makes this summary's forecast weak, in words (summary.json's `warnings`, repeated under the table):
    tiers that missed the target, missing early points, early points far from where they were asked for (probes
    are taken only every few evals), and a Spearman over fewer than 4 tiers."""
    out = [
        f"tier B={b} did not reach the target ({t.result.status})"
        for b, t in tiers.items()
        if t.result.status != "reached"
    ]
    for b, p in points.items():
        out += [f"tier B={b} has no {kind} early point" for kind, v in p.items() if v is None]
        out += [
            f"tier B={b}: the {kind} early point is at step {v['step']} (< {MIN_EARLY_STEPS} optimizer steps)"
            for kind, v in p.items()
            if v is not None and v["step"] < MIN_EARLY_STEPS
        ]
        if (
            p["fraction"]
            and not p["fraction"]["exact"]
            and abs(p["fraction"]["fraction_of_T"] - fraction) > FAR * fraction
        ):
            out.append(
                f"tier B={b}: the {fraction:.0%} early point was taken at {p['fraction']['fraction_of_T']:.0%} of T(B)"
            )
        if p["tokens"] and not p["tokens"]["exact"] and abs(p["tokens"]["tokens"] - tokens) > FAR * tokens:
            out.append(f"tier B={b}: the {tokens:,}-token early point was taken at {p['tokens']['tokens']:,} tokens")
    if n_reached < 4:
        out.append(f"Spearman rests on {n_reached} tiers (fewer than 4): rho can take only a few values")
    return out


def _lr_warnings(cfg: dict) -> list[str]:
    """The shipped LR table was tuned on the embedded corpus: say so when the sweep trained on other data."""
    if cfg.get("lr") == "tuned" and cfg.get("data") not in ("embedded", "", None):
        return [
            f"LRs come from the table tuned on the embedded corpus, not on --data={cfg['data']}; --lr=auto tunes "
            "them on this data"
        ]
    return []


def _headline_fields(point: dict | None, normalized: float | None) -> dict:
    """The tier row's early_* fields: the fraction-of-T(B) early point (the paper's)."""
    if point is None:
        return {}
    return dict(
        early_tokens=point["tokens"],
        early_step=point["step"],
        early_val_loss=point["val_loss"],
        early_alpha_tail=point["alpha_tail"],
        early_alpha_tail_normalized=normalized,
    )


def summarize_sweep(
    out: str | os.PathLike, *, early_fraction: float | None = None, log: Callable[[str], None] = log_stderr
) -> dict:
    """summary.json and the figures, from the records alone."""
    out = pathlib.Path(out)
    sweep, tiers = load_sweep(out)
    cfg = sweep["config"]
    preset = get_preset(cfg["preset"]) if cfg["preset"] in preset_names() else None
    fraction = early_fraction if early_fraction is not None else cfg["early_fraction"]
    regime = preset.sweep_regime(cfg.get("tokenizer", "gpt2")) if preset else None
    early_tokens = cfg.get("early_tokens") or (regime.early_tokens if regime else None)
    early_loss = cfg.get("early_loss") or (regime.early_loss if regime else None)
    layer, matrix = probed_series(sweep)
    readout = early_readout(tiers, fraction=fraction, tokens=early_tokens, loss=early_loss, layer=layer)
    T_interp, runs, points, early_spearman = readout["T"], readout["runs"], readout["points"], readout["by_kind"]
    by_batch = {row["batch"]: row for row in readout["tiers"]}
    tier_rows = tuple(
        TierRow.from_dict(
            {
                **dataclasses.asdict(t.result),
                **{k: v for k, v in by_batch[b].items() if k != "tokens_to_target"},
                "tokens_to_target_interpolated": T_interp[b],
                "early_points": points[b],
                "lr": t.run.get("train", {}).get("lr"),
                "lr_rule": t.run.get("lr_rule"),
                "learning_rates": t.run.get("learning_rates"),
            }
        )
        for b, t in tiers.items()
    )
    targets, matched = _matched_loss(tiers, runs, matrix, log)
    progress = efficiency.spearman_vs_progress(
        runs,
        windows=[tuple(w) for w in sweep["local_windows"]],
        fractions=[round(f, 2) for f in np.linspace(0.05, 1.0, 20)],
        kind="activation",
        layer=layer,
    )
    first = next(iter(tiers.values()))
    summary = SweepSummary(
        family=cfg["family"],
        preset=cfg["preset"],
        tail_window=tuple(sweep["tail_window"]),
        early_fraction=fraction,
        tiers=tier_rows,
        spearman_within=early_spearman["fraction"]["rho"],
        p_value=early_spearman["fraction"]["p_value"],
        n_reached=early_spearman["fraction"]["n"],
        target_loss=first.result.target_loss,
        matched_loss=tuple(matched),
        matched_loss_targets=tuple(targets),
        spearman_vs_progress=tuple(progress),
        git_sha=first.run["environment"]["git_sha"],
        probe_layer=layer,
        probe_matrix=matrix,
        early_tokens=early_tokens,
        early_loss=early_loss,
        early_points=early_spearman,
        warnings=tuple(
            [f"data: {w}" for w in sweep.get("data", {}).get("warnings", ())]
            + _warnings(tiers, points, early_spearman["fraction"]["n"], fraction, early_tokens)
            + _lr_warnings(cfg)
        ),
    )
    write_json(out / "summary.json", summary.to_dict())
    _figures(out, summary, tiers, layer)
    return summary.to_dict()


def _matched_loss(
    tiers: dict[int, TierRecords], runs: dict, matrix: str, log
) -> tuple[list[float], list[MatchedLossRow]]:
    """Matched-loss activation spectra (docs/method.md §1.6): every tier's probe point (after step 0, where every
    tier is the same initial model) nearest each common loss target, with the gradient summaries of `matrix` at
    the same point."""
    after = {b: efficiency.after_start(run["records"]) for b, run in runs.items()}
    try:
        targets = efficiency.common_loss_targets(
            {b: [r["val_loss"] for r in recs] for b, recs in after.items() if recs}
        )
    except ValueError as err:
        log(f"matched-loss selection skipped: {err}")
        return [], []
    matched = []
    for target in targets:
        for b, t in tiers.items():
            rec = efficiency.matched_loss_rows(after[b], [target])[0]
            grads = _gradient_records(t, matrix, rec["step"])
            matched.append(
                MatchedLossRow(
                    target_loss=target,
                    batch=b,
                    step=rec["step"],
                    tokens=rec["tokens"],
                    val_loss=rec["val_loss"],
                    alpha_tail=rec.get("alpha_tail"),
                    rankme=rec.get("rankme"),
                    grad_alpha_tail=grads[0].get("alpha_tail") if grads else None,
                    grad_rankme=grads[0].get("rankme") if grads else None,
                    file=rec["file"],
                )
            )
    return targets, matched


def _gradient_records(tier: TierRecords, matrix: str, step: int) -> list[dict]:
    """The tier's gradient records of `matrix` at `step`, deepest probed block first."""
    recs = [r for r in tier.probes if r["kind"] == "gradient" and r["matrix"] == matrix and r["step"] == step]
    return sorted(recs, key=lambda r: -(r["layer"] if r["layer"] is not None else -1))


def _figures(out: pathlib.Path, summary: SweepSummary, tiers: dict[int, TierRecords], layer: int) -> None:
    family, preset, tail = summary.family, summary.preset, summary.tail_window
    if summary.matched_loss_targets:
        mid = summary.matched_loss_targets[len(summary.matched_loss_targets) // 2]
        chosen = {r.batch: r for r in summary.matched_loss if r.target_loss == mid}
        acts = {
            f"B={b}": load_spectrum(tiers[b], dict(kind="activation", layer=layer, file=r.file))
            for b, r in chosen.items()
        }
        plots.save_figure(
            plots.plot_spectra(
                acts,
                title=f"{family} ({preset}): activation spectra at matched val loss {mid:.3f}",
                ylabel="normalised eigenvalue",
                window=tail,
            ),
            out / "matched_loss_activation_spectra.png",
        )
        grads = {}
        block = None
        for b, r in chosen.items():
            recs = _gradient_records(tiers[b], summary.probe_matrix, r.step)
            if recs:
                grads[f"B={b}"] = load_spectrum(tiers[b], recs[0])
                block = recs[0]["layer"]
        label = _MATRIX_LABELS.get(summary.probe_matrix, summary.probe_matrix)
        if grads:
            plots.save_figure(
                plots.plot_spectra(
                    grads,
                    title=f"{family} ({preset}): per-sample gradient spectra of {label} (block {block}) at val loss "
                    f"{mid:.3f}",
                    ylabel="normalised singular value",
                    window=tail,
                ),
                out / "gradient_spectra.png",
            )
    points = [
        dict(family=family, batch=r.batch, alpha=r.early_alpha_tail, eps_tok=r.eps_tok)
        for r in summary.tiers
        if r.early_alpha_tail is not None and r.eps_tok is not None
    ]
    if points:
        plots.save_figure(
            plots.plot_alpha_vs_eps(
                points,
                rho=summary.spearman_within,
                p_value=summary.p_value,
                title=f"{family} ({preset}): early alpha_tail ({summary.early_fraction:.0%} of T(B)) vs eps_tok",
            ),
            out / "early_alpha_vs_eps_tok.png",
        )
    curves = {f"B={b}": ([e.tokens for e in t.evals], [e.val_loss for e in t.evals]) for b, t in tiers.items()}
    plots.save_figure(plots.plot_loss_curves(curves, target=summary.target_loss), out / "loss_curves.png")
    if summary.spearman_vs_progress:
        plots.save_figure(
            plots.plot_spearman_vs_progress(summary.spearman_vs_progress), out / "spearman_vs_progress.png"
        )


def format_table(summary: dict) -> str:
    """The printed summary: per tier T(B) (first eval and interpolated), eps_tok and early alpha_tail; per early-point
    kind rho against eps_tok and against B; the warnings."""

    def f(v, fmt):
        return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, fmt)

    lines = [
        f"{summary['family']} ({summary['preset']}), target val loss {summary['target_loss']}; activation alpha_tail "
        f"{list(summary['tail_window'])} at block {summary.get('probe_layer')}",
        f"{'B':>4} {'LR x':>7} {'status':>8} {'T(B) eval':>10} {'T(B) interp':>11} {'eps_tok':>8} {'early a_tail':>12} "
        f"{'norm':>6} {'tok/s':>8}",
    ]
    for r in summary["tiers"]:
        lr = r.get("lr")
        lines.append(
            f"{r['batch']:>4} {f(lr, '.4g') if not isinstance(lr, dict) else 'table':>7} {r['status']:>8} "
            f"{f(r['tokens_to_target'], ','):>10} "
            f"{f(r.get('tokens_to_target_interpolated'), ',.0f'):>11} {f(r['eps_tok'], '.3f'):>8} "
            f"{f(r['early_alpha_tail'], '.4f'):>12} {f(r['early_alpha_tail_normalized'], '.2f'):>6} "
            f"{f(r['throughput_tokens_per_s'], ',.0f'):>8}"
        )
    rules = sorted({r.get("lr_rule") for r in summary["tiers"] if r.get("lr_rule")})
    if rules:
        lines.append(f"LR x: multiplier of the family's anchor LRs, {'; '.join(rules)}")
    lines.append(
        f"Spearman(early alpha_tail at {summary['early_fraction']:.0%} of T(B), eps_tok) = "
        f"{f(summary['spearman_within'], '.3f')} (p = {f(summary['p_value'], '.3g')}, n = {summary['n_reached']})"
    )
    where = dict(
        fraction=f"{summary['early_fraction']:.0%} of T(B)",
        tokens=f"{f(summary.get('early_tokens'), ',')} tokens",
        loss=f"first val loss <= {summary.get('early_loss')}",
    )
    for kind, e in (summary.get("early_points") or {}).items():
        lines.append(
            f"  early point at {where[kind]}: rho vs eps_tok {f(e['rho'], '+.3f')} (p {f(e['p_value'], '.3g')}), "
            f"rho vs B {f(e['rho_vs_batch'], '+.3f')}, n = {e['n']}"
        )
    lines += [f"warning: {w}" for w in summary.get("warnings", ())]
    return "\n".join(lines)


__all__ = ["summarize_sweep", "format_table", "probed_series", "early_readout"]
