"""The chain's summary from its records alone: per-family rows, per-transition gains, spectral features and
taxonomy labels, the CSV table and the figures."""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
from collections.abc import Callable, Mapping

import numpy as np

from spectral_jax import efficiency, plots, spectra
from spectral_jax.batch_sweep import TierRecords, load_spectrum, load_tier
from spectral_jax.chain.config import GRAD_MATRIX, transitions_of
from spectral_jax.errors import UserError
from spectral_jax.probes import ALIASES
from spectral_jax.records import log_stderr, read_json, write_csv, write_json
from spectral_jax.taxonomy import TaxonomyThresholds, classify_transition


def _series(run: TierRecords, kind: str) -> list[dict]:
    """The probe records of one spectrum kind at the deepest probed block (one per probe point, by step)."""
    matrix = ALIASES[GRAD_MATRIX][0]
    recs = [r for r in run.probes if r["kind"] == kind and (kind == "activation" or r["matrix"] == matrix)]
    if not recs:
        return []
    deepest = max(r["layer"] for r in recs)
    return sorted((r for r in recs if r["layer"] == deepest), key=lambda r: r["step"])


def _get(rec: Mapping | None, key: str):
    v = None if rec is None else rec.get(key)
    return v if v is not None and math.isfinite(float(v)) else None


def _delta(a, b):
    return None if a is None or b is None else b - a


def _log_ratio(a, b):
    return None if a is None or b is None or a <= 0 or b <= 0 else math.log(b / a)


def path_separation(run_a: TierRecords, run_b: TierRecords, kind: str, n_targets: int = 5) -> float | None:
    """Mean JS divergence between the two runs' spectra of `kind` at the probe points nearest each common loss
    target (efficiency.common_loss_targets / matched_loss_rows over their activation probe points)."""
    acts = {k: _series(r, "activation") for k, r in (("a", run_a), ("b", run_b))}
    if not acts["a"] or not acts["b"]:
        return None
    try:
        targets = efficiency.common_loss_targets({k: [r["val_loss"] for r in v] for k, v in acts.items()}, n_targets)
    except ValueError:
        return None  # the loss ranges do not overlap
    js = []
    for target in targets:
        picks = {}
        for key, run in (("a", run_a), ("b", run_b)):
            step = efficiency.matched_loss_rows(acts[key], [target])[0]["step"]
            recs = [r for r in _series(run, kind) if r["step"] == step]
            if not recs:
                break
            picks[key] = load_spectrum(run, recs[0])
        if len(picks) == 2:
            js.append(spectra.js_divergence(picks["a"], picks["b"]))
    return float(np.mean(js)) if js else None


def resolve_gain_target(spec: str | float, runs: Mapping[str, TierRecords]) -> float:
    """The loss at which T is read: "train" (the runs' own target), "common" (the lowest loss every run
    reached), or a number."""
    if spec == "train":
        targets = {r.result.target_loss for r in runs.values()}
        if len(targets) != 1:
            raise UserError(f"the runs were trained to different targets {sorted(targets)}; pass a gain target")
        return targets.pop()
    if spec == "common":
        best = [
            min(e.val_loss for e in r.evals if e.step > 0 and math.isfinite(e.val_loss))
            for r in runs.values()
            if any(e.step > 0 for e in r.evals)
        ]
        if len(best) != len(runs):
            raise UserError("a run has no eval after step 0, so no common loss exists; train longer")
        return float(max(best))
    try:
        return float(spec)
    except (TypeError, ValueError):
        raise UserError(f"gain target {spec!r} is neither 'train', 'common' nor a loss value") from None


def family_row(name: str, run: TierRecords, gain_target: float, q_side: Mapping | None) -> dict:
    res = run.result
    act, grad = _series(run, "activation"), _series(run, "gradient")
    fa, fg = (act[-1] if act else None), (grad[-1] if grad else None)
    return dict(
        family=name,
        status=res.status,
        tokens_to_target=res.tokens_to_target,
        tokens_to_gain_target=efficiency.tokens_to_target([e.to_dict() for e in run.evals], gain_target),
        throughput_tokens_per_s=res.throughput_tokens_per_s if q_side is None else q_side["tokens_per_s"],
        throughput_train=res.throughput_tokens_per_s,
        throughput_interleaved=None if q_side is None else q_side["tokens_per_s"],
        final_val_loss=res.final_val_loss,
        steps=res.steps,
        batch=res.batch,
        seq_len=res.seq_len,
        final_step=None if fa is None else fa["step"],
        act_alpha_head=_get(fa, "alpha_head"),
        act_alpha_tail=_get(fa, "alpha_tail"),
        act_rankme=_get(fa, "rankme"),
        act_head_mass=_get(fa, "head_mass10"),
        grad_alpha_head=_get(fg, "alpha_head"),
        grad_alpha_tail=_get(fg, "alpha_tail"),
        grad_rankme=_get(fg, "rankme"),
        grad_head_mass=_get(fg, "head_mass10"),
    )


def transition_row(
    a: str, b: str, runs: Mapping[str, TierRecords], rows: Mapping[str, dict], thresholds: TaxonomyThresholds
) -> dict:
    ra, rb = rows[a], rows[b]
    features = dict(
        d_act_alpha_head=_delta(ra["act_alpha_head"], rb["act_alpha_head"]),
        d_act_head_mass=_delta(ra["act_head_mass"], rb["act_head_mass"]),
        d_grad_log_rankme=_log_ratio(ra["grad_rankme"], rb["grad_rankme"]),
        d_grad_alpha=_delta(ra["grad_alpha_tail"], rb["grad_alpha_tail"]),
        d_grad_head_mass=_delta(ra["grad_head_mass"], rb["grad_head_mass"]),
        path_sep_act=path_separation(runs[a], runs[b], "activation"),
        path_sep_grad=path_separation(runs[a], runs[b], "gradient"),
    )
    ta, tb = ra["tokens_to_gain_target"], rb["tokens_to_gain_target"]
    qa, qb = ra["throughput_tokens_per_s"], rb["throughput_tokens_per_s"]
    g = dict(tok_gain=None, thr_gain=None, g_tok=None, g_thr=None)
    if ta and tb:
        g.update(tok_gain=efficiency.token_gain(ta, tb), g_tok=efficiency.log_token_gain(ta, tb))
    if qa and qb:
        g.update(thr_gain=efficiency.throughput_gain(qa, qb), g_thr=efficiency.log_throughput_gain(qa, qb))
    label = classify_transition(g["g_tok"], g["g_thr"], features, thresholds)
    return dict(a=a, b=b, name=f"{a}->{b}", **g, **features, **label)


def load_chain(out: str | os.PathLike) -> tuple[dict, dict[str, TierRecords]]:
    out = pathlib.Path(out)
    if not (out / "chain.json").is_file():
        raise FileNotFoundError(f"{out} is not a chain results directory (no chain.json)")
    meta = read_json(out / "chain.json")
    runs = {f: load_tier(out / f) for f in meta["families"] if (out / f / "result.json").is_file()}
    if not runs:
        raise FileNotFoundError(f"{out} holds no finished family run (<family>/result.json)")
    return meta, runs


def summarize_chain(
    out: str | os.PathLike,
    *,
    thresholds: TaxonomyThresholds | None = None,
    gain_target: str | float | None = None,
    log: Callable[[str], None] = log_stderr,
) -> dict:
    """summary.json, chain_table.csv and the figures, from the records alone."""
    out = pathlib.Path(out)
    meta, runs = load_chain(out)
    if thresholds is None:
        thresholds = TaxonomyThresholds(**meta["config"]["thresholds"])
    missing = [f for f in meta["families"] if f not in runs]
    if missing:
        log(f"families without a finished run (left out): {missing}")
    spec = meta["config"].get("gain_target", "train") if gain_target is None else gain_target
    target = resolve_gain_target(spec, runs)
    q_rule = meta["config"].get("throughput", "train")
    q_path = out / "throughput.json"
    q_side = read_json(q_path)["throughput"] if q_rule == "interleaved" and q_path.is_file() else {}
    if q_rule == "interleaved" and set(q_side) != set(runs):
        log("throughput.json is missing or does not cover every family; ThrGain uses the logged training Q")
        q_side, q_rule = {}, "train"
    rows = {f: family_row(f, r, target, q_side.get(f)) for f, r in runs.items()}
    transitions = [transition_row(a, b, runs, rows, thresholds) for a, b in transitions_of(list(runs))]
    first = next(iter(runs.values()))
    summary = dict(
        preset=meta["config"]["preset"],
        batch=meta["config"]["batch"],
        target_loss=first.result.target_loss,
        gain_target=target,
        gain_target_rule=spec,
        throughput_rule=q_rule,
        thresholds=dataclasses.asdict(thresholds),
        families=list(rows.values()),
        transitions=transitions,
        missing=missing,
        git_sha=first.run["environment"]["git_sha"],
    )
    write_json(out / "summary.json", summary)
    write_csv(out / "chain_table.csv", transitions, CSV_COLUMNS)
    _figures(out, summary, runs, tuple(meta["tail_window"]))
    return summary


CSV_COLUMNS = (
    "a",
    "b",
    "tok_gain",
    "thr_gain",
    "g_tok",
    "g_thr",
    "d_act_alpha_head",
    "d_act_head_mass",
    "d_grad_log_rankme",
    "d_grad_alpha",
    "d_grad_head_mass",
    "path_sep_act",
    "path_sep_grad",
    "act_score",
    "grad_score",
    "label",
    "reason",
)


def _figures(out: pathlib.Path, summary: dict, runs: Mapping[str, TierRecords], tail: tuple[int, int]) -> None:
    preset = summary["preset"]
    labelled = [t for t in summary["transitions"] if t["g_tok"] is not None and t["g_thr"] is not None]
    if labelled:
        plots.save_figure(
            plots.plot_gain_plane(
                labelled, title=f"chain ({preset}, B = {summary['batch']}): token gain vs throughput gain"
            ),
            out / "gain_plane.png",
        )
    finals = {}
    for f, run in runs.items():
        grad = _series(run, "gradient")
        if grad:
            finals[f] = load_spectrum(run, grad[-1])
    if finals:
        plots.save_figure(
            plots.plot_spectra(
                finals,
                title=f"chain ({preset}): final per-sample gradient spectra of W_O",
                ylabel="normalised singular value",
                window=tail,
            ),
            out / "final_gradient_spectra.png",
        )
    plots.save_figure(
        plots.plot_alpha_summaries(
            summary["families"], title=f"chain ({preset}): final activation vs gradient alpha_tail {list(tail)}"
        ),
        out / "alpha_summaries.png",
    )
    for kind, ylabel in (("activation", "normalised eigenvalue"), ("gradient", "normalised singular value")):
        series = {f: [(r["tokens"], load_spectrum(run, r)) for r in _series(run, kind)] for f, run in runs.items()}
        if any(series.values()):
            plots.save_figure(
                plots.plot_spectral_atlas(
                    series, title=f"chain ({preset}): {kind} spectra over training", ylabel=ylabel, window=tail
                ),
                out / f"atlas_{kind}.png",
            )
    curves = {f: ([e.tokens for e in r.evals], [e.val_loss for e in r.evals]) for f, r in runs.items()}
    plots.save_figure(plots.plot_loss_curves(curves, target=summary["target_loss"]), out / "loss_curves.png")


def format_chain_table(summary: dict) -> str:
    def f(v, fmt):
        return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, fmt)

    rows = {r["family"]: r for r in summary["families"]}
    lines = [
        f"chain ({summary['preset']}, B = {summary['batch']}), training target {summary['target_loss']}, "
        f"gains at val loss {summary['gain_target']:.4g} ({summary['gain_target_rule']}), "
        f"Q {summary['throughput_rule']}",
        f"{'family':>10} {'status':>8} {'final val':>9} {'T tokens':>10} {'Q tok/s':>8}",
    ]
    for r in rows.values():
        lines.append(
            f"{r['family']:>10} {r['status']:>8} {f(r['final_val_loss'], '.4f'):>9} "
            f"{f(r['tokens_to_gain_target'], ','):>10} {f(r['throughput_tokens_per_s'], ',.0f'):>8}"
        )
    lines.append(f"{'transition':>22} {'TokGain':>8} {'ThrGain':>8} {'act':>5} {'grad':>5}  label")
    for t in summary["transitions"]:
        lines.append(
            f"{t['name']:>22} {f(t['tok_gain'], '+.3f'):>8} {f(t['thr_gain'], '+.3f'):>8} "
            f"{f(t['act_score'], '.1f'):>5} {f(t['grad_score'], '.1f'):>5}  {t['label'] or '-'}"
        )
    return "\n".join(lines)
