"""The paper's ablations as a library: Adam vs Muon on LSWA (App. D, Fig. 7), seed control (Fig. 9), layerwise
early prediction (Fig. 10), probe-matrix dependence of gradient spectra (Fig. 6) and the data-split spectral JS
divergence (Fig. 5). `python -m experiments.ablations <subcommand>` calls these functions.

Every training run is a `spectral_jax.runs.run_batch_sweep` (resumable; finished tiers are reused), and every
statistic comes from `spectral_jax.efficiency` over the sweep records. Layout under `out`:

    probe_sweep/                 ONE batch sweep of `family` probing every block's activations and four final-block
                                 matrices (W_O, W_Q, W_V, MLP-out); layerwise, probe_matrices and seed_control
                                 all read it, so no tier is trained twice
    adam_vs_muon/{lswa,lswa_adam}/   one batch sweep per family
    seed_control/seed_{s}/       one-tier sweeps at `batch` with model seed s and the probe sweep's probes (the
                                 probe sweep's own seed reuses its tier)
    <ablation>/summary.json + *.png
    summary.json                 index: per ablation its summary path, figures and headline numbers

Definitions. "Early" = the probe point nearest `early_fraction` (20 %) of the run's own T(B)
(`efficiency.early_prediction`). Seed spread = sample std (ddof 1) and range of the seeds' early alpha_tail at
tier `batch`; tier separation = the same over the probe sweep's tiers (one seed); the summary gives their ratios.
Matched loss = `efficiency.common_loss_targets` / `matched_loss_rows` over probe points with step > 0 (at step 0
every tier is the same initialised model, so tier-vs-tier JS would be 0 by construction). Data split: sources are
"<--data spec>[:pool|val|train]"; the default compares the embedded corpus' val split with its pool split (two
disjoint sets of held-out files). Each source gives 2n windows (T+1 tokens, stride T+1, from the split's start;
the pool split is the sweep's measurement pool); JS(A half 1, B half 1) is the split effect and JS(A half 1,
A half 2) (and B's) the same-source noise floor. The model is a tier checkpoint (`model_dir`) or, by default, a
freshly initialised model: its zero-initialised output projections make every block output equal the token
embedding, so at init all layers give the same spectrum (the token statistics seen through random embeddings).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from spectral_jax import efficiency, plots, runs, spectra
from spectral_jax.runs import DEFAULT_TIERS, SweepConfig, load_sweep, run_batch_sweep
from spectral_jax.train import log_stderr, train_config, write_json

ABLATIONS = ("adam_vs_muon", "seed_control", "layerwise", "probe_matrices", "data_split")
PROBE_MATRICES = ("attn_out", "attn_q", "attn_v", "mlp_out")  # attn_out first: the sweep summary's W_O figure
MATRIX_LABELS = {"attn_out": "W_O", "attn_q": "W_Q", "attn_v": "W_V", "mlp_out": "MLP-out"}
MUON_FAMILY, ADAM_FAMILY = "lswa", "lswa_adam"
SPLITS = ("pool", "val", "train")


@dataclasses.dataclass(frozen=True)
class AblationConfig:
    """What every ablation shares (tiers, budgets, probes) plus the few per-ablation knobs."""

    out: str
    preset: str = "tiny"
    family: str = "betterwin"  # layerwise / probe_matrices / seed_control (adam_vs_muon is lswa vs lswa_adam)
    tiers: tuple[int, ...] = DEFAULT_TIERS
    data: str = "embedded"
    lr: str = "sqrt"
    resume: bool = True
    pool_sequences: int | None = None
    grad_samples: int | None = None
    early_fraction: float = 0.2
    train_overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    # seed_control
    batch: int = 8
    seeds: tuple[int, ...] = (42, 43, 44)
    vary_data_seed: bool = False  # also set the train-stream shuffle seed to s in seed run s
    # data_split
    data_a: str = "embedded:val"
    data_b: str = "embedded:pool"
    model_dir: str | None = None  # a tier directory with a checkpoint; None: a freshly initialised model
    split_sequences: int | None = None  # sequences per sample (default: the preset's pool size)

    def path(self, *parts: str) -> pathlib.Path:
        return pathlib.Path(self.out).joinpath(*parts)

    @property
    def base_seed(self) -> int:
        return int(self.train_overrides.get("seed", train_config(self.preset).seed))


# ---- sweeps ----------------------------------------------------------------------------------------------
def _sweep(cfg: AblationConfig, family: str, out: pathlib.Path, tiers: Sequence[int], *, layers=(-1,),
           matrices=("final_attn_out",), log: Callable[[str], None], **overrides) -> dict:
    """run_batch_sweep with the ablation's shared settings; refuses a directory probed differently (its finished
    tiers would be reused with records that lack the requested spectra)."""
    sc = SweepConfig(family=family, preset=cfg.preset, tiers=tuple(tiers), data=cfg.data, lr=cfg.lr, out=str(out),
                     resume=cfg.resume, layers=tuple(layers), matrices=tuple(matrices),
                     pool_sequences=cfg.pool_sequences, grad_samples=cfg.grad_samples,
                     early_fraction=cfg.early_fraction, train_overrides={**cfg.train_overrides, **overrides})
    old = out / "sweep.json"
    if old.is_file():
        stored = json.loads(old.read_text())["config"]
        keys = ("family", "layers", "matrices", "pool_sequences", "grad_samples", "data")
        new = json.loads(json.dumps({k: getattr(sc, k) for k in keys}))
        diff = [k for k in keys if stored.get(k) != new[k]]
        if diff:
            raise ValueError(f"{out} holds a sweep with other {', '.join(diff)} ({', '.join(f'{k}={stored.get(k)}' for k in diff)}); "
                             "its finished tiers would be reused without the requested spectra: use another --out "
                             "or delete that directory")
    return run_batch_sweep(sc, log=log)


def probe_sweep(cfg: AblationConfig, log: Callable[[str], None] = log_stderr) -> pathlib.Path:
    """The shared sweep of cfg.family: activations at every block, gradients of four final-block matrices."""
    from spectral_jax.models import make_config

    n_layer = make_config(cfg.family, cfg.preset).n_layer
    out = cfg.path("probe_sweep")
    _sweep(cfg, cfg.family, out, cfg.tiers, layers=tuple(range(n_layer)), matrices=PROBE_MATRICES, log=log)
    return out


def _records(tier: dict, kind: str, layer: int, matrix: str | None = None) -> list[dict]:
    return [r for r in tier["probes"] if r["kind"] == kind and r["layer"] == layer
            and (matrix is None or r["matrix"] == matrix)]


def _runs(tiers: Mapping[int, dict], kind: str, layer: int, matrix: str | None = None) -> dict:
    return {b: dict(tokens_to_target=t["result"]["tokens_to_target"], records=_records(t, kind, layer, matrix))
            for b, t in tiers.items()}


def _finite(v) -> bool:
    return v is not None and math.isfinite(float(v))


def _write(cfg: AblationConfig, name: str, summary: dict, figures: Sequence[pathlib.Path],
           headline: Mapping[str, Any]) -> dict:
    """<out>/<name>/summary.json, then the <out>/summary.json index entry."""
    d = cfg.path(name)
    summary = dict(summary, ablation=name, preset=cfg.preset, figures=[p.name for p in figures])
    write_json(d / "summary.json", summary)
    index_path = cfg.path("summary.json")
    index = json.loads(index_path.read_text()) if index_path.is_file() else {}
    index.setdefault("ablations", {})[name] = dict(summary=f"{name}/summary.json",
                                                   figures=[f"{name}/{p.name}" for p in figures], **headline)
    index.update(preset=cfg.preset, out=str(cfg.out))
    write_json(index_path, index)
    return summary


def _std(values: Sequence[float]) -> float | None:
    v = [float(x) for x in values if _finite(x)]
    return float(np.std(v, ddof=1)) if len(v) >= 2 else None


def _range(values: Sequence[float]) -> float | None:
    v = [float(x) for x in values if _finite(x)]
    return float(max(v) - min(v)) if len(v) >= 2 else None


def _ratio(a, b) -> float | None:
    return float(a) / float(b) if _finite(a) and _finite(b) and float(b) != 0 else None


# ---- small figures this module needs (plots.py has the shared ones) -----------------------------------------
def _axes(ncols: int = 1, w: float = 6.4, h: float = 4.4):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w * ncols, h), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def plot_tokens_vs_batch(series: Mapping[str, Sequence[tuple[int, int | None]]], *, title: str):
    """T(B) vs B on log-log axes, one line per family (paper Fig. 7 left); tiers that never reached are left out."""
    fig, (ax,) = _axes()
    styles = itertools.cycle((("o", "-"), ("s", "--"), ("^", ":")))  # equal T(B) must not hide a family
    for color, style, (label, pts) in zip(plots.series_colors(len(series)), styles, series.items()):
        pts = sorted((b, t) for b, t in pts if t)
        ax.plot([b for b, _ in pts], [t for _, t in pts], marker=style[0], ls=style[1], color=color, label=label,
                mfc="none" if style[0] != "o" else None, ms=7)
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
    ax.plot(xs, ys, "o-", color=plots.series_colors(1)[0])
    for r, y in zip(rows, ys):
        if _finite(r["p_value"]):
            ax.annotate(f"p={r['p_value']:.2g}", (r["layer"], y), textcoords="offset points", xytext=(3, 5),
                        fontsize=7)
    ax.axhline(0, color="0.6", lw=0.8)
    ax.set_ylim(-1.05, 1.05)
    ax.set_xticks(xs)
    ax.set_xlabel("probe layer l (block index)")
    ax.set_ylabel("Spearman rho(early alpha_tail, eps_tok)")
    ax.set_title(title, fontsize=9)
    return fig


def plot_seed_control(tier_alpha: Mapping[int, float | None], seed_alpha: Mapping[int, float | None], batch: int,
                      js_rows: Sequence[Mapping], *, title: str):
    """Left: early alpha_tail across tiers (line) and across seeds at one tier (points). Right: matched-loss JS
    divergence seed-vs-seed and tier-vs-tier per loss target (paper Fig. 9)."""
    fig, (ax, bx) = _axes(2, w=5.2)
    tiers = sorted((b, a) for b, a in tier_alpha.items() if _finite(a))
    c_tier, c_seed = plots.series_colors(2)
    ax.plot([b for b, _ in tiers], [a for _, a in tiers], "o-", color=c_tier, label="tiers (one seed)")
    seeds = [(s, a) for s, a in seed_alpha.items() if _finite(a)]
    ax.scatter([batch] * len(seeds), [a for _, a in seeds], color=c_seed, marker="x", s=50, zorder=3,
               label=f"seeds at B={batch}")
    for s, a in seeds:
        ax.annotate(f"s={s}", (batch, a), textcoords="offset points", xytext=(5, 0), fontsize=7)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch B (sequences per step)")
    ax.set_ylabel("early alpha_tail (activation covariance)")
    ax.legend(fontsize=8)
    for i, (key, label, color) in enumerate((("seed_js", "seed vs seed", c_seed), ("tier_js", "tier vs tier", c_tier))):
        for j, row in enumerate(js_rows):
            vals = [v for v in row[key] if _finite(v)]
            bx.scatter([j + (i - 0.5) * 0.25] * len(vals), vals, color=color, s=14,
                       label=label if j == 0 else None)
    bx.set_xticks(range(len(js_rows)), [f"{r['target_loss']:.2f}" for r in js_rows])
    bx.set_yscale("log")
    bx.set_xlabel("matched validation loss target")
    bx.set_ylabel("JS divergence of activation spectra (nats)")
    if js_rows:
        bx.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    return fig


# ---- Adam vs Muon (App. D, Fig. 7) ---------------------------------------------------------------------------
def adam_vs_muon(cfg: AblationConfig, log: Callable[[str], None] = log_stderr) -> dict:
    """LSWA (Muon on hidden matrices) vs LSWA-Adam over the same tiers: T(B), eps_tok, within/across Spearman of
    early alpha_tail vs eps_tok, and the token ratio T_adam(B)/T_muon(B) per tier."""
    name = "adam_vs_muon"
    fams = (MUON_FAMILY, ADAM_FAMILY)
    sums = {f: _sweep(cfg, f, cfg.path(name, f), cfg.tiers, log=log) for f in fams}
    rows = {f: sums[f]["tiers"] for f in fams}
    across = efficiency.spearman_across(rows)
    tokens = {f: {r["batch"]: r["tokens_to_target"] for r in rows[f]} for f in fams}
    ratio = [dict(batch=b, tokens_muon=tokens[MUON_FAMILY].get(b), tokens_adam=tokens[ADAM_FAMILY].get(b),
                  ratio_adam_over_muon=_ratio(tokens[ADAM_FAMILY].get(b), tokens[MUON_FAMILY].get(b)))
              for b in sorted(cfg.tiers)]
    families = {f: dict(tiers=[{k: r[k] for k in ("batch", "status", "tokens_to_target", "eps_tok",
                                                   "early_alpha_tail", "early_alpha_tail_normalized",
                                                   "early_tokens", "throughput_tokens_per_s")} for r in rows[f]],
                        spearman_within=sums[f]["spearman_within"], p_value=sums[f]["p_value"],
                        n_reached=sums[f]["n_reached"], sweep=f"{f}/summary.json") for f in fams}
    d = cfg.path(name)
    figs = [plots.save_figure(plot_tokens_vs_batch(
        {f: list(tokens[f].items()) for f in fams},
        title=f"Muon ({MUON_FAMILY}) vs Adam ({ADAM_FAMILY}) matrix updates, {cfg.preset}: tokens to target "
              f"{sums[MUON_FAMILY]['target_loss']}"), d / "tokens_vs_batch.png")]
    points = [dict(family=f, batch=r["batch"], alpha=r["early_alpha_tail"], eps_tok=r["eps_tok"])
              for f in fams for r in rows[f] if _finite(r["early_alpha_tail"]) and _finite(r["eps_tok"])]
    if points:
        figs.append(plots.save_figure(plots.plot_alpha_vs_eps(
            points, rho=across["rho"], p_value=across["p_value"],
            title=f"early alpha_tail vs eps_tok, {MUON_FAMILY} vs {ADAM_FAMILY} ({cfg.preset})\nrho = across "
                  f"families on min-max-normalised alpha"), d / "early_alpha_vs_eps_tok.png"))
    summary = dict(families=families, spearman_across=across, token_ratio=ratio, tiers=list(cfg.tiers),
                   target_loss=sums[MUON_FAMILY]["target_loss"], early_fraction=cfg.early_fraction)
    ratios = [r["ratio_adam_over_muon"] for r in ratio if _finite(r["ratio_adam_over_muon"])]
    return _write(cfg, name, summary, figs, dict(
        spearman_within={f: families[f]["spearman_within"] for f in fams}, spearman_across=across["rho"],
        median_token_ratio_adam_over_muon=float(np.median(ratios)) if ratios else None))


# ---- seed control (Fig. 9) -----------------------------------------------------------------------------------
def seed_control(cfg: AblationConfig, log: Callable[[str], None] = log_stderr) -> dict:
    """Spread of early alpha_tail (and matched-loss activation-spectrum JS) across model seeds at one tier B,
    against the separation across the tiers of the probe sweep (one seed)."""
    name = "seed_control"
    if len(set(cfg.seeds)) < 2:
        raise ValueError(f"seed_control needs at least two distinct seeds, got {cfg.seeds}; pass --seeds=42,43,44")
    sweep_dir = probe_sweep(cfg, log)
    sweep, tiers = load_sweep(sweep_dir)
    last = sweep["model"]["n_layer"] - 1
    seed_tiers = {}
    for s in dict.fromkeys(cfg.seeds):
        if s == cfg.base_seed and not cfg.vary_data_seed and cfg.batch in tiers:
            seed_tiers[s] = tiers[cfg.batch]  # the probe sweep's own run at this tier and seed
            continue
        extra = dict(seed=s, data_seed=s) if cfg.vary_data_seed else dict(seed=s)
        out = cfg.path(name, f"seed_{s}")
        # the probe sweep's probes: identical measurement, and its compiled probe programs are reused
        _sweep(cfg, cfg.family, out, (cfg.batch,), layers=sweep["config"]["layers"], matrices=PROBE_MATRICES,
               log=log, **extra)
        seed_tiers[s] = load_sweep(out)[1][cfg.batch]

    def early(tier):
        run = {0: dict(tokens_to_target=tier["result"]["tokens_to_target"],
                       records=_records(tier, "activation", last))}
        return efficiency.early_prediction(run, fraction=cfg.early_fraction, layer=last)["tiers"][0]

    per_seed = []
    for s, t in seed_tiers.items():
        e = early(t)
        per_seed.append(dict(seed=s, data_seed=s if cfg.vary_data_seed else t["run"]["train"]["data_seed"],
                             tokens_to_target=t["result"]["tokens_to_target"], status=t["result"]["status"],
                             early_alpha_tail=e["early_alpha_tail"], early_tokens=e["early_tokens"],
                             dir=str(t["dir"])))
    tier_early = efficiency.early_prediction(_runs(tiers, "activation", last), fraction=cfg.early_fraction,
                                             layer=last)
    tier_alpha = {r["batch"]: r["early_alpha_tail"] for r in tier_early["tiers"]}
    seed_vals = [r["early_alpha_tail"] for r in per_seed]
    tier_vals = list(tier_alpha.values())
    seed_tok = [r["tokens_to_target"] for r in per_seed]

    # matched-loss JS: every run's probe point nearest each common loss target (efficiency's selection)
    # step 0 is left out: every tier starts from the same initialisation, so tier-vs-tier JS there is 0 by construction
    labelled = {**{("seed", s): t for s, t in seed_tiers.items()}, **{("tier", b): t for b, t in tiers.items()}}
    recs = {k: [r for r in _records(t, "activation", last) if r["step"] > 0] for k, t in labelled.items()}
    js_rows, js_note = [], None
    try:
        targets = efficiency.common_loss_targets({k: [r["val_loss"] for r in v] for k, v in recs.items()})
    except ValueError as err:
        targets, js_note = [], f"matched-loss JS skipped: {err}"
        log(js_note)
    for target in targets:
        spec = {k: runs.load_spectrum(labelled[k], efficiency.matched_loss_rows(recs[k], [target])[0]) for k in recs}
        seed_js = [spectra.js_divergence(spec[("seed", a)], spec[("seed", b)])
                   for a, b in itertools.combinations(seed_tiers, 2)]
        tier_js = [spectra.js_divergence(spec[("tier", a)], spec[("tier", b)])
                   for a, b in itertools.combinations(tiers, 2)]
        js_rows.append(dict(target_loss=target, seed_js=seed_js, tier_js=tier_js,
                            mean_seed_js=float(np.mean(seed_js)) if seed_js else None,
                            mean_tier_js=float(np.mean(tier_js)) if tier_js else None,
                            ratio=_ratio(np.mean(seed_js) if seed_js else None,
                                         np.mean(tier_js) if tier_js else None)))
    mean_seed_js = float(np.mean([v for r in js_rows for v in r["seed_js"]])) if js_rows else None
    mean_tier_js = float(np.mean([v for r in js_rows for v in r["tier_js"]])) if js_rows else None
    stats = dict(seed_std=_std(seed_vals), seed_range=_range(seed_vals), tier_std=_std(tier_vals),
                 tier_range=_range(tier_vals))
    stats.update(std_ratio_seed_over_tier=_ratio(stats["seed_std"], stats["tier_std"]),
                 range_ratio_seed_over_tier=_ratio(stats["seed_range"], stats["tier_range"]),
                 seed_tokens_to_target_cv=_ratio(_std(seed_tok), np.mean([t for t in seed_tok if t]))
                 if any(seed_tok) else None)
    d = cfg.path(name)
    figs = [plots.save_figure(plot_seed_control(
        tier_alpha, {r["seed"]: r["early_alpha_tail"] for r in per_seed}, cfg.batch, js_rows,
        title=f"seed control, {cfg.family} ({cfg.preset}): seeds {list(seed_tiers)} at B={cfg.batch} vs tiers "
              f"{sorted(tiers)}"), d / "seed_control.png")]
    summary = dict(family=cfg.family, batch=cfg.batch, seeds=list(seed_tiers), vary_data_seed=cfg.vary_data_seed,
                   layer=last, early_fraction=cfg.early_fraction, per_seed=per_seed,
                   tiers=[{k: r[k] for k in ("batch", "tokens_to_target", "eps_tok", "early_alpha_tail",
                                               "early_tokens")} for r in tier_early["tiers"]],
                   early_alpha_tail=stats, matched_loss_js=js_rows, matched_loss_targets=targets,
                   mean_seed_js=mean_seed_js, mean_tier_js=mean_tier_js,
                   js_ratio_seed_over_tier=_ratio(mean_seed_js, mean_tier_js), note=js_note,
                   sweep=str(sweep_dir))
    return _write(cfg, name, summary, figs, dict(
        std_ratio_seed_over_tier=stats["std_ratio_seed_over_tier"],
        js_ratio_seed_over_tier=summary["js_ratio_seed_over_tier"]))


# ---- layerwise early prediction (Fig. 10) --------------------------------------------------------------------
def layerwise(cfg: AblationConfig, log: Callable[[str], None] = log_stderr) -> dict:
    """Spearman(early alpha_tail of the activation spectrum at block l, eps_tok) for every block l."""
    name = "layerwise"
    sweep_dir = probe_sweep(cfg, log)
    sweep, tiers = load_sweep(sweep_dir)
    rows = []
    for layer in range(sweep["model"]["n_layer"]):
        e = efficiency.early_prediction(_runs(tiers, "activation", layer), fraction=cfg.early_fraction, layer=layer)
        rows.append(dict(layer=layer, rho=e["spearman_within"], p_value=e["p_value"], n=e["n"],
                         early_alpha_tail={r["batch"]: r["early_alpha_tail"] for r in e["tiers"]},
                         eps_tok={r["batch"]: r["eps_tok"] for r in e["tiers"]}))
    fig = plot_rho_by_layer(rows, title=f"layerwise early prediction, {cfg.family} ({cfg.preset}), tiers "
                                        f"{sorted(tiers)}, early = {cfg.early_fraction:.0%} of T(B)")
    figs = [plots.save_figure(fig, cfg.path(name, "rho_by_layer.png"))]
    finite = [r for r in rows if _finite(r["rho"])]
    best = max(finite, key=lambda r: abs(r["rho"])) if finite else None
    summary = dict(family=cfg.family, tiers=sorted(tiers), early_fraction=cfg.early_fraction,
                   tail_window=sweep["tail_window"], layers=rows, sweep=str(sweep_dir))
    return _write(cfg, name, summary, figs, dict(
        rho_by_layer=[r["rho"] for r in rows], strongest_layer=best and best["layer"]))


# ---- probe-matrix dependence (Fig. 6) ------------------------------------------------------------------------
def probe_matrices(cfg: AblationConfig, log: Callable[[str], None] = log_stderr) -> dict:
    """Per final-block matrix (W_O, W_Q, W_V, MLP-out): Spearman of the early per-sample-gradient alpha_tail and
    RankMe vs eps_tok, and the gradient spectra of every tier at a common (matched) validation loss."""
    name = "probe_matrices"
    sweep_dir = probe_sweep(cfg, log)
    sweep, tiers = load_sweep(sweep_dir)
    last = sweep["model"]["n_layer"] - 1
    tail = tuple(sweep["tail_window"])
    act = {b: [r for r in _records(t, "activation", last) if r["step"] > 0] for b, t in tiers.items()}  # as seed_control
    try:
        targets = efficiency.common_loss_targets({b: [r["val_loss"] for r in v] for b, v in act.items()})
    except ValueError as err:
        targets = []
        log(f"matched-loss gradient spectra skipped: {err}")
    mid = targets[len(targets) // 2] if targets else None
    matched = {b: efficiency.matched_loss_rows(act[b], [mid])[0] for b in tiers} if targets else {}
    d = cfg.path(name)
    figs, per_matrix = [], []
    for m in PROBE_MATRICES:
        runs_m = _runs(tiers, "gradient", last, m)
        entry = dict(matrix=m, label=MATRIX_LABELS[m], layer=last)
        for key in ("alpha_tail", "rankme"):
            e = efficiency.early_prediction(runs_m, fraction=cfg.early_fraction, key=key, kind="gradient",
                                            layer=last, matrix=m)
            entry[key] = dict(rho=e["spearman_within"], p_value=e["p_value"], n=e["n"],
                              early={r["batch"]: r["early_alpha_tail"] for r in e["tiers"]})
        spectra_m, rows_m = {}, []
        for b, rec in matched.items():
            g = [r for r in runs_m[b]["records"] if r["step"] == rec["step"]]
            if g:
                spectra_m[f"B={b}"] = runs.load_spectrum(tiers[b], g[0])
                rows_m.append(dict(batch=b, step=rec["step"], val_loss=rec["val_loss"],
                                   alpha_tail=g[0]["alpha_tail"], rankme=g[0]["rankme"]))
        entry["matched_loss"] = rows_m
        per_matrix.append(entry)
        if spectra_m:
            figs.append(plots.save_figure(plots.plot_spectra(
                spectra_m, title=f"{cfg.family} ({cfg.preset}): per-sample gradient spectra of {MATRIX_LABELS[m]} "
                                 f"(block {last})\nat matched val loss {mid:.3f}, M = {sweep['probe']['grad_samples']}",
                ylabel="normalised singular value", window=tail), d / f"gradient_spectra_{m}.png"))
    summary = dict(family=cfg.family, tiers=sorted(tiers), early_fraction=cfg.early_fraction, tail_window=tail,
                   grad_samples=sweep["probe"]["grad_samples"], matched_loss_target=mid, matrices=per_matrix,
                   sweep=str(sweep_dir),
                   note=None if sweep["probe"]["grad_samples"] >= tail[1] else
                   f"grad_samples {sweep['probe']['grad_samples']} < {tail[1]}: the gradient spectrum is shorter than "
                   f"the tail window {list(tail)}, so gradient alpha_tail is undefined (RankMe is not)")
    return _write(cfg, name, summary, figs, {
        f"rho_{k}": {e["matrix"]: e[k]["rho"] for e in per_matrix} for k in ("alpha_tail", "rankme")})


# ---- data-split JS divergence (Fig. 5) -----------------------------------------------------------------------
def parse_source(spec: str) -> tuple[str, str]:
    """"<--data spec>[:<split>]" -> (data spec, split); split one of pool (default), val, train."""
    head, sep, tail = spec.rpartition(":")
    return (head, tail) if sep and tail in SPLITS else (spec, "pool")


def _sample(dataset, split: str, seq_len: int, n: int, val_tokens: int) -> np.ndarray:
    """2n windows (T+1, stride T+1) of one split: the measurement pool for "pool", else from the split's start."""
    from spectral_jax.data import SequenceSource

    if split == "pool":
        return dataset.measurement_pool(seq_len, 2 * n, val_tokens=val_tokens)
    return SequenceSource(getattr(dataset, split), seq_len, stride=seq_len + 1, num_sequences=2 * n).as_array()


def load_tier_model(tier_dir: str | pathlib.Path):
    """(model, window, description) from a finished tier's newest checkpoint. The model config is rebuilt with
    make_config from the tier's records and must reproduce the run's config fingerprint."""
    import orbax.checkpoint as ocp
    from flax import nnx

    from spectral_jax.models import GPT, make_config
    from spectral_jax.optim import make_optimizer
    from spectral_jax.train import Schedules, TrainConfig, config_fingerprint, restore_state

    tier_dir = pathlib.Path(tier_dir)
    if not (tier_dir / "run.json").is_file() or not (tier_dir / "checkpoints").is_dir():
        raise FileNotFoundError(f"--model={tier_dir} is not a trained tier directory (needs run.json and "
                                "checkpoints/); pass a batch-sweep tier such as results/.../tier_B8, or omit --model")
    run = json.loads((tier_dir / "run.json").read_text())
    overrides = {}
    sweep_json = tier_dir.parent / "sweep.json"
    if sweep_json.is_file():
        overrides = json.loads(sweep_json.read_text())["config"].get("model_overrides") or {}
    config = make_config(run["family"], run["preset"], **overrides)
    tc = TrainConfig(**run["train"])
    if config_fingerprint(config, tc, run["learning_rates"]) != run["fingerprint"]:
        raise ValueError(f"{tier_dir}: the model config rebuilt from run.json does not match the run's fingerprint "
                         "(written by another code version?); retrain the tier or pass another --model")
    model = GPT(config, rngs=nnx.Rngs(tc.seed))
    _, params = nnx.split(model, nnx.Param)
    sched = Schedules.build(config, tc)
    opt_state = make_optimizer(config, run["learning_rates"], step_scale=sched.step_scale).init(params)
    manager = ocp.CheckpointManager(tier_dir.resolve() / "checkpoints")
    step = manager.latest_step()
    if step is None:
        raise FileNotFoundError(f"{tier_dir}/checkpoints holds no checkpoint; rerun the sweep for that tier")
    nnx.update(model, restore_state(manager, step, params, opt_state)[0])
    return model, sched.window(config, step), dict(kind="checkpoint", dir=str(tier_dir), step=step,
                                                   tokens=step * sched.tokens_per_step, family=run["family"])


def _mapped(dataset, like, vmap):
    """`dataset` read through the model's vocabulary map (built on its training data `like`)."""
    from spectral_jax.data import TokenDataset
    from spectral_jax.data.vocab import source_eot

    for key in ("tokenizer", "vocab_sha256"):
        if dataset.metadata.get(key) != like.metadata.get(key):
            raise ValueError(f"data source tokenised with {key}={dataset.metadata.get(key)!r} but the model's "
                             f"training data uses {like.metadata.get(key)!r}; tokenise both with the same vocabulary")
    if source_eot(dataset) != source_eot(like):
        raise ValueError(f"data source EOT id {source_eot(dataset)} differs from the training data's "
                         f"{source_eot(like)}")
    if vmap is None:
        return dataset
    streams = {k: getattr(dataset, k) for k in ("train", "val", "pool")}
    return TokenDataset(**{k: v.mapped(vmap.lut) if v is not None else None for k, v in streams.items()},
                        metadata=dataset.metadata, root=dataset.root)


def data_split_js(cfg: AblationConfig, log: Callable[[str], None] = log_stderr) -> dict:
    """Activation spectra of one model on two data sources (A, B) and the JS divergence between them, against
    the noise floor JS(A half 1, A half 2) (and B's). Samples are n = split_sequences windows each; A1 vs B1 is
    the split comparison, A1 vs A2 / B1 vs B2 (disjoint windows of the same source) the floor."""
    from flax import nnx

    from spectral_jax import probes
    from spectral_jax.data import load_data
    from spectral_jax.data.vocab import fit_vocab
    from spectral_jax.models import GPT, attention, make_config

    name = "data_split"
    if cfg.model_dir:
        model, window, model_info = load_tier_model(cfg.model_dir)
        train_data = json.loads((pathlib.Path(cfg.model_dir).parent / "sweep.json").read_text())["config"]["data"] \
            if (pathlib.Path(cfg.model_dir).parent / "sweep.json").is_file() else cfg.data
    else:
        config = make_config(cfg.family, cfg.preset)
        model = GPT(config, rngs=nnx.Rngs(cfg.base_seed))
        window = attention.scheduled_window(config, 0.0)
        model_info = dict(kind="init", family=cfg.family, seed=cfg.base_seed, step=0, tokens=0)
        train_data = cfg.data
    config = model.config
    like = load_data(train_data)
    _, vmap = fit_vocab(like, config.vocab_size, config.eot_id)
    n = cfg.split_sequences or runs.PROBE_DEFAULTS[cfg.preset]["pool_sequences"]
    val_tokens = train_config(cfg.preset, **cfg.train_overrides).val_tokens
    layers = tuple(range(config.n_layer))
    chunk = probes.default_chunk(config.seq_len, n)
    loaded: dict[str, Any] = {}
    samples = {}
    for tag, spec in (("A", cfg.data_a), ("B", cfg.data_b)):
        data, split = parse_source(spec)
        if data not in loaded:
            loaded[data] = _mapped(load_data(data), like, vmap)
        pool = _sample(loaded[data], split, config.seq_len, n, val_tokens)
        x = probes.split_windows(pool)[0]
        samples[tag + "1"], samples[tag + "2"] = x[:n], x[n:]
    log(f"data_split: {n} sequences x {config.seq_len} tokens per sample, A = {cfg.data_a}, B = {cfg.data_b}, "
        f"model {model_info['kind']}")
    spec = {k: probes.activation_spectrum(model, [x[i:i + chunk] for i in range(0, n, chunk)], layers,
                                          window=window) for k, x in samples.items()}
    rows = []
    for layer in layers:
        s = {k: v[layer] for k, v in spec.items()}
        js_ab = spectra.js_divergence(s["A1"], s["B1"])
        floor_a, floor_b = spectra.js_divergence(s["A1"], s["A2"]), spectra.js_divergence(s["B1"], s["B2"])
        rows.append(dict(layer=layer, js_a_vs_b=js_ab, js_floor_a=floor_a, js_floor_b=floor_b,
                         ratio_to_floor=_ratio(js_ab, max(floor_a, floor_b)),
                         alpha_tail={k: _alpha(v, cfg.preset) for k, v in s.items()}))
    last = rows[-1]
    d = cfg.path(name)
    s_last = {k: v[layers[-1]] for k, v in spec.items()}
    figs = [plots.save_figure(plots.plot_spectra(
        {f"A = {cfg.data_a} (half 1)": s_last["A1"], "A (half 2)": s_last["A2"],
         f"B = {cfg.data_b} (half 1)": s_last["B1"]},
        title=f"activation spectra on two data sources, block {layers[-1]} ({model_info['kind']} model)\n"
              f"JS(A, B) = {last['js_a_vs_b']:.3g}; floor JS(A1, A2) = {last['js_floor_a']:.3g}",
        ylabel="normalised eigenvalue", window=spectra.tail_window(cfg.preset)), d / "spectra_a_vs_b.png")]
    summary = dict(data_a=cfg.data_a, data_b=cfg.data_b, model=model_info, sequences_per_sample=n,
                   seq_len=config.seq_len, window=int(window), layers=rows, js_a_vs_b=last["js_a_vs_b"],
                   js_floor_a=last["js_floor_a"], js_floor_b=last["js_floor_b"],
                   ratio_to_floor=last["ratio_to_floor"])
    return _write(cfg, name, summary, figs, dict(js_a_vs_b=last["js_a_vs_b"], js_floor_a=last["js_floor_a"],
                                                 js_floor_b=last["js_floor_b"]))


def _alpha(values, preset: str) -> float | None:
    try:
        return spectra.alpha(values, spectra.tail_window(preset)).alpha
    except ValueError:
        return None


# ---- everything -----------------------------------------------------------------------------------------------
def run_all(cfg: AblationConfig, log: Callable[[str], None] = log_stderr) -> dict:
    """Every ablation; the probe sweep is trained once, and data_split measures its tier `batch` (if swept)."""
    out = {}
    for name, fn in (("layerwise", layerwise), ("probe_matrices", probe_matrices), ("seed_control", seed_control),
                     ("adam_vs_muon", adam_vs_muon)):
        log(f"== ablation {name}")
        out[name] = fn(cfg, log)
    tier = cfg.path("probe_sweep", f"tier_B{cfg.batch}")
    split_cfg = cfg if cfg.model_dir or not tier.is_dir() else dataclasses.replace(cfg, model_dir=str(tier))
    log("== ablation data_split")
    out["data_split"] = data_split_js(split_cfg, log)
    return out


RUNNERS: Mapping[str, Callable[..., dict]] = dict(adam_vs_muon=adam_vs_muon, seed_control=seed_control,
                                                  layerwise=layerwise, probe_matrices=probe_matrices,
                                                  data_split=data_split_js, all=run_all)

__all__ = ["ABLATIONS", "AblationConfig", "PROBE_MATRICES", "RUNNERS", "adam_vs_muon", "data_split_js",
           "layerwise", "load_tier_model", "parse_source", "probe_matrices", "probe_sweep", "run_all",
           "seed_control", "plot_rho_by_layer", "plot_seed_control", "plot_tokens_vs_batch"]
