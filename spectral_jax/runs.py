"""The batch-sweep experiment as a library: train every tier, probe spectra, summarise, plot.

`run_batch_sweep(SweepConfig)` is what `python -m experiments.batch_sweep` calls; `summarize_sweep(dir)` is
what `python -m experiments.report` calls, and it needs nothing but the records on disk:

    <out>/sweep.json                     resolved sweep config
    <out>/tier_B{B}/run.json             resolved model/optimizer/train config, git SHA, versions, devices
    <out>/tier_B{B}/metrics.jsonl        one row per eval (step, tokens, val_loss, ...)
    <out>/tier_B{B}/probes.jsonl         one row per spectrum per probe point (summaries, tidy)
    <out>/tier_B{B}/spectra/step_*.npz   raw spectra (activation eigenvalues, gradient/weight singular values)
    <out>/tier_B{B}/result.json          status, T(B), throughput
    <out>/summary.json + *.png           written by summarize_sweep
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from spectral_jax import spectra
from spectral_jax.data.shards import atomic_write_bytes
from spectral_jax.train import (RunState, append_jsonl, log_stderr, lr_multiplier_for_batch,
                                read_jsonl, train, train_config, write_json)

DEFAULT_TIERS = (1, 2, 4, 8, 16, 32)
# Paper App. E local windows (d12, 768 eigenvalues). The tiny tier has 64: its windows keep the same roles
# (head side, the [8,17] tail window = d12's [100,200] scaled by 64/768, and the far tail).
LOCAL_WINDOWS = {"tiny": ((2, 8), (8, 17), (17, 34)), "d12": spectra.LOCAL_WINDOWS,
                 "d36": spectra.LOCAL_WINDOWS, "d48": spectra.LOCAL_WINDOWS}
PROBE_DEFAULTS = {"tiny": dict(pool_sequences=32, grad_samples=32, chunk=8),
                  "d12": dict(pool_sequences=512, grad_samples=512, chunk=1),
                  "d36": dict(pool_sequences=1024, grad_samples=512, chunk=1),
                  "d48": dict(pool_sequences=1024, grad_samples=512, chunk=1)}


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    family: str = "betterwin"
    preset: str = "tiny"
    tiers: tuple[int, ...] = DEFAULT_TIERS
    data: str = "embedded"
    lr: str = "sqrt"  # "sqrt" | "linear" | "none" (scaling rule), a float multiplier, a JSON table path, "auto"
    lr_table: str | None = None  # --lr=auto: the lr_sweep table (default results/lr_sweep/<family>_<preset>/...)
    out: str | None = None
    resume: bool = True
    layers: tuple[int, ...] = (-1,)
    matrices: tuple[str, ...] = ("final_attn_out",)
    pool_sequences: int | None = None
    grad_samples: int | None = None
    probe_chunk: int | None = None
    early_fraction: float = 0.2
    train_overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    model_overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def out_dir(self) -> pathlib.Path:
        return pathlib.Path(self.out or f"results/batch_sweep/{self.family}_{self.preset}")

    def probe_settings(self) -> dict:
        return probe_settings(self.preset, pool_sequences=self.pool_sequences, grad_samples=self.grad_samples,
                              chunk=self.probe_chunk)


def probe_settings(preset: str, **overrides: int | None) -> dict:
    """The preset's probe sizes (pool_sequences, grad_samples, chunk) with the non-None `overrides` applied."""
    if preset not in PROBE_DEFAULTS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PROBE_DEFAULTS)}")
    unknown = set(overrides) - set(PROBE_DEFAULTS[preset])
    if unknown:
        raise ValueError(f"unknown probe settings {sorted(unknown)}; choose from {sorted(PROBE_DEFAULTS[preset])}")
    return {**PROBE_DEFAULTS[preset], **{k: v for k, v in overrides.items() if v is not None}}


def save_npz(path: pathlib.Path, arrays: Mapping[str, np.ndarray]) -> None:
    import io

    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    atomic_write_bytes(path, buf.getvalue())


class ProbeCallback:
    """At each probe point: activation / gradient / weight spectra over the fixed pool -> npz + probes.jsonl."""

    def __init__(self, pool_NxT1: np.ndarray, *, layers, matrices, grad_samples: int, chunk: int,
                 tail: tuple[int, int], bank: Sequence[tuple[int, int]]):
        self.pool = pool_NxT1
        self.layers, self.matrices = tuple(layers), tuple(matrices)
        self.grad_samples, self.chunk = grad_samples, chunk
        self.tail, self.bank = tail, tuple(bank)

    def __call__(self, state: RunState) -> None:
        from spectral_jax import probes

        result = probes.run_probes(state.model, self.pool, layers=self.layers, matrices=self.matrices,
                                   grad_samples=self.grad_samples, chunk=self.chunk, window=state.window)
        rel = f"spectra/step_{state.step:07d}.npz"
        arrays = {f"activation/L{layer}": v for layer, v in result.activation.items()}
        arrays.update({f"gradient/{k}": v for k, v in result.gradient.items()})
        arrays.update({f"weight/{k}": v for k, v in result.weight.items()})
        (state.out_dir / "spectra").mkdir(exist_ok=True)
        save_npz(state.out_dir / rel, arrays)
        for rec in probes.summarize_probe(result, tail=self.tail, bank=self.bank):
            append_jsonl(state.out_dir / "probes.jsonl",
                         dict(rec, step=state.step, tokens=state.tokens, val_loss=state.val_loss,
                              window=state.window, file=rel))


def resolve_lr(spec: str, batch: int, reference_batch: int, family: str, *, preset: str = "tiny",
               lr_table: str | os.PathLike | None = None) -> tuple[Any, str]:
    """--lr: a scaling rule name, a float multiplier, a JSON table {family: {batch: multiplier|{group: lr}}}, or
    "auto": the successive-halving table of experiments.lr_sweep (`lr_table`, default
    results/lr_sweep/<family>_<preset>/lr_table.json)."""
    if spec in ("sqrt", "linear", "none"):
        return lr_multiplier_for_batch(batch, reference_batch, spec), f"{spec}(B/{reference_batch})"
    if spec == "auto":
        from spectral_jax.lr_select import default_table_path

        path = pathlib.Path(lr_table) if lr_table else default_table_path(family, preset)
        if not path.is_file():
            raise ValueError(f"--lr=auto needs the successive-halving LR table, and {path} does not exist: run "
                             f"python -m experiments.lr_sweep --family={family} --preset={preset} --tiers=<the tiers> "
                             "first (or pass --lr_table=PATH)")
        return _table_entry(path, family, batch, fix=f"run python -m experiments.lr_sweep --family={family} "
                            f"--preset={preset} --tiers={batch} (it adds the tier to the table)"), \
            f"successive halving ({path})"
    try:
        return float(spec), "constant multiplier"
    except ValueError:
        pass
    path = pathlib.Path(spec)
    if not path.is_file():
        raise ValueError(f"--lr={spec!r} is neither a rule (sqrt, linear, none), a number, auto, nor a JSON file")
    return _table_entry(path, family, batch, fix="add it or pick another --lr"), f"table {path}"


def _table_entry(path: pathlib.Path, family: str, batch: int, *, fix: str) -> Any:
    try:
        table = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"LR table {path} is not valid JSON ({err})") from None
    entry = table.get(family, table).get(str(batch)) if isinstance(table, dict) else None
    if entry is None:
        raise ValueError(f"LR table {path} has no entry for family {family!r} at batch {batch}; {fix}")
    return entry


def run_batch_sweep(cfg: SweepConfig, log: Callable[[str], None] = log_stderr) -> dict:
    """Train every tier (resuming finished/interrupted ones), then summarise. Returns summary.json's dict."""
    from spectral_jax.data import load_data
    from spectral_jax.data.vocab import fit_vocab
    from spectral_jax.models import make_config

    if cfg.preset not in PROBE_DEFAULTS:
        raise ValueError(f"unknown preset {cfg.preset!r}; choose one of {sorted(PROBE_DEFAULTS)}")
    if not cfg.tiers or any(b < 1 for b in cfg.tiers):
        raise ValueError(f"--tiers must be positive batch sizes, got {cfg.tiers}")
    model_cfg = make_config(cfg.family, cfg.preset, **dict(cfg.model_overrides))
    # every tier's LR before loading data or training: a missing table entry fails now, not hours in
    lrs = {b: resolve_lr(cfg.lr, b, model_cfg.optim.reference_batch, cfg.family, preset=cfg.preset,
                         lr_table=cfg.lr_table) for b in cfg.tiers}
    out = cfg.out_dir()
    out.mkdir(parents=True, exist_ok=True)
    dataset, vmap = fit_vocab(load_data(cfg.data), model_cfg.vocab_size, model_cfg.eot_id)
    probe = cfg.probe_settings()
    base_tc = train_config(cfg.preset, **dict(cfg.train_overrides))
    pool = dataset.measurement_pool(model_cfg.seq_len, probe["pool_sequences"], val_tokens=base_tc.val_tokens)
    tail = spectra.tail_window(cfg.preset)
    bank = LOCAL_WINDOWS[cfg.preset]
    write_json(out / "sweep.json", dict(config=cfg, model=model_cfg, probe=probe, tail_window=tail,
                                        local_windows=bank, data=dataset.metadata))
    callback = ProbeCallback(pool, layers=cfg.layers, matrices=cfg.matrices, grad_samples=probe["grad_samples"],
                             chunk=probe["chunk"], tail=tail, bank=bank)
    t0 = time.perf_counter()
    for i, batch in enumerate(sorted(cfg.tiers)):
        lr, rule = lrs[batch]
        tc = base_tc.replace(batch_size=batch, lr=lr,
                             micro_batch=base_tc.micro_batch if base_tc.micro_batch is None or
                             batch % base_tc.micro_batch == 0 else None)
        log(f"== {cfg.family} {cfg.preset}: tier {i + 1}/{len(cfg.tiers)}, B = {batch} sequences x "
            f"{model_cfg.seq_len} tokens, LR {rule} = {lr} ({time.perf_counter() - t0:.0f}s elapsed)")
        train(model_cfg, tc, dataset, out / f"tier_B{batch}", callbacks=[callback], resume=cfg.resume, log=log,
              run_info=dict(family=cfg.family, preset=cfg.preset, lr_rule=rule, vocab_map=vmap and vmap.describe()))
    summary = summarize_sweep(out, log=log)
    log(format_table(summary))
    return summary


# ---- summary from records -------------------------------------------------------------------------------
def load_tier(directory: pathlib.Path) -> dict:
    result_path = directory / "result.json"
    if not result_path.is_file():
        raise FileNotFoundError(f"{directory} has no result.json: the tier did not finish; rerun the sweep "
                                "(it resumes) or drop the tier")
    return dict(result=json.loads(result_path.read_text()),
                run=json.loads((directory / "run.json").read_text()),
                evals=read_jsonl(directory / "metrics.jsonl"),
                probes=read_jsonl(directory / "probes.jsonl"), dir=directory)


def load_sweep(out: str | os.PathLike) -> tuple[dict, dict[int, dict]]:
    out = pathlib.Path(out)
    if not (out / "sweep.json").is_file():
        raise FileNotFoundError(f"{out} is not a batch-sweep results directory (no sweep.json)")
    sweep = json.loads((out / "sweep.json").read_text())
    tiers = {}
    for d in sorted(out.glob("tier_B*")):
        if (d / "result.json").is_file():
            tiers[int(d.name[len("tier_B"):])] = load_tier(d)
    if not tiers:
        raise FileNotFoundError(f"{out} holds no finished tier (tier_B*/result.json)")
    return sweep, dict(sorted(tiers.items()))


def load_spectrum(tier: dict, record: dict) -> np.ndarray:
    """The raw spectrum behind a probe record, from the run directory's npz (tier: a `load_tier` dict)."""
    key = (f"activation/L{record['layer']}" if record["kind"] == "activation"
           else f"{record['kind']}/L{record['layer']}.{record['matrix']}")
    with np.load(tier["dir"] / record["file"]) as f:
        return np.asarray(f[key])


def summarize_sweep(out: str | os.PathLike, *, early_fraction: float | None = None,
                    log: Callable[[str], None] = log_stderr) -> dict:
    """summary.json and the figures, from the records alone."""
    from spectral_jax import efficiency, plots

    out = pathlib.Path(out)
    sweep, tiers = load_sweep(out)
    family, preset = sweep["config"]["family"], sweep["config"]["preset"]
    fraction = early_fraction if early_fraction is not None else sweep["config"]["early_fraction"]
    windows = [tuple(w) for w in sweep["local_windows"]]
    tail = tuple(sweep["tail_window"])
    last_layer = sweep["model"]["n_layer"] - 1

    def act_records(t):
        return [r for r in t["probes"] if r["kind"] == "activation" and r["layer"] == last_layer]

    runs = {b: dict(tokens_to_target=t["result"]["tokens_to_target"], records=act_records(t))
            for b, t in tiers.items()}
    early = efficiency.early_prediction(runs, fraction=fraction, key="alpha_tail", kind="activation",
                                        layer=last_layer)
    by_batch = {row["batch"]: row for row in early["tiers"]}
    tier_rows = []
    for b, t in tiers.items():
        res = t["result"]
        row = dict(batch=b, status=res["status"], tokens_to_target=res["tokens_to_target"],
                   throughput_tokens_per_s=res["throughput_tokens_per_s"], final_val_loss=res["final_val_loss"],
                   steps=res["steps"], eps_tok=None, early_alpha_tail=None, early_alpha_tail_normalized=None,
                   early_tokens=None, early_step=None)
        row.update({k: v for k, v in by_batch.get(b, {}).items() if k in row or k.startswith("early")})
        tier_rows.append(row)

    # matched-loss activation spectra (docs/method.md §1.6): probe points nearest common loss targets
    matched = []
    try:
        targets = efficiency.common_loss_targets(
            {b: [r["val_loss"] for r in run["records"]] for b, run in runs.items() if run["records"]})
    except ValueError as err:
        targets = []
        log(f"matched-loss selection skipped: {err}")
    for target in targets:
        for b, t in tiers.items():
            rec = efficiency.matched_loss_rows(runs[b]["records"], [target])[0]
            grads = [r for r in t["probes"] if r["kind"] == "gradient" and r["step"] == rec["step"]]
            matched.append(dict(target_loss=target, batch=b, step=rec["step"], tokens=rec["tokens"],
                                val_loss=rec["val_loss"], alpha_tail=rec.get("alpha_tail"),
                                rankme=rec.get("rankme"),
                                grad_alpha_tail=grads[0].get("alpha_tail") if grads else None,
                                grad_rankme=grads[0].get("rankme") if grads else None, file=rec["file"]))
    progress = efficiency.spearman_vs_progress(
        runs, windows=windows, fractions=[round(f, 2) for f in np.linspace(0.05, 1.0, 20)], kind="activation")
    summary = dict(
        family=family, preset=preset, tail_window=tail, early_fraction=fraction, tiers=tier_rows,
        spearman_within=early["spearman_within"], p_value=early["p_value"], n_reached=early["n"],
        target_loss=next(iter(tiers.values()))["result"]["target_loss"], matched_loss=matched,
        matched_loss_targets=targets, spearman_vs_progress=progress,
        git_sha=next(iter(tiers.values()))["run"]["environment"]["git_sha"],
    )
    write_json(out / "summary.json", summary)
    _figures(out, summary, tiers, act_records, targets, tail, plots)
    return summary


def _figures(out, summary, tiers, act_records, targets, tail, plots) -> None:
    family, preset = summary["family"], summary["preset"]
    if targets:
        mid = targets[len(targets) // 2]
        chosen = {r["batch"]: r for r in summary["matched_loss"] if r["target_loss"] == mid}
        acts = {f"B={b}": load_spectrum(tiers[b], dict(kind="activation", layer=act_records(tiers[b])[0]["layer"],
                                                   file=r["file"])) for b, r in chosen.items()}
        plots.save_figure(plots.plot_spectra(
            acts, title=f"{family} ({preset}): activation spectra at matched val loss {mid:.3f}",
            ylabel="normalised eigenvalue", window=tail), out / "matched_loss_activation_spectra.png")
        grads = {}
        for b, r in chosen.items():
            recs = [g for g in tiers[b]["probes"] if g["kind"] == "gradient" and g["step"] == r["step"]]
            if recs:
                grads[f"B={b}"] = load_spectrum(tiers[b], recs[0])
        if grads:
            plots.save_figure(plots.plot_spectra(
                grads, title=f"{family} ({preset}): per-sample gradient spectra of W_O at val loss {mid:.3f}",
                ylabel="normalised singular value", window=tail), out / "gradient_spectra.png")
    points = [dict(family=family, batch=r["batch"], alpha=r["early_alpha_tail"], eps_tok=r["eps_tok"])
              for r in summary["tiers"] if r["early_alpha_tail"] is not None and r["eps_tok"] is not None]
    if points:
        plots.save_figure(plots.plot_alpha_vs_eps(
            points, rho=summary["spearman_within"], p_value=summary["p_value"],
            title=f"{family} ({preset}): early alpha_tail ({summary['early_fraction']:.0%} of T(B)) vs eps_tok"),
            out / "early_alpha_vs_eps_tok.png")
    curves = {f"B={b}": ([e["tokens"] for e in t["evals"]], [e["val_loss"] for e in t["evals"]])
              for b, t in tiers.items()}
    plots.save_figure(plots.plot_loss_curves(curves, target=summary["target_loss"]), out / "loss_curves.png")
    if summary["spearman_vs_progress"]:
        plots.save_figure(plots.plot_spearman_vs_progress(summary["spearman_vs_progress"]),
                          out / "spearman_vs_progress.png")


def format_table(summary: dict) -> str:
    def f(v, fmt):
        return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, fmt)

    lines = [f"{summary['family']} ({summary['preset']}), target val loss {summary['target_loss']}",
             f"{'B':>4} {'status':>8} {'T(B) tokens':>12} {'eps_tok':>8} {'early a_tail':>12} {'norm':>6} "
             f"{'tok/s':>8}"]
    for r in summary["tiers"]:
        lines.append(f"{r['batch']:>4} {r['status']:>8} {f(r['tokens_to_target'], ','):>12} "
                     f"{f(r['eps_tok'], '.3f'):>8} {f(r['early_alpha_tail'], '.4f'):>12} "
                     f"{f(r['early_alpha_tail_normalized'], '.2f'):>6} {f(r['throughput_tokens_per_s'], ',.0f'):>8}")
    lines.append(f"Spearman(early alpha_tail, eps_tok) = {f(summary['spearman_within'], '.3f')} "
                 f"(p = {f(summary['p_value'], '.3g')}, n = {summary['n_reached']})")
    return "\n".join(lines)


__all__ = ["SweepConfig", "ProbeCallback", "run_batch_sweep", "summarize_sweep", "load_sweep", "load_spectrum",
           "format_table",
           "resolve_lr", "DEFAULT_TIERS", "LOCAL_WINDOWS"]
