"""The batch sweep (the main job): train one family at every batch tier, probe spectra, summarise, plot.

`run_batch_sweep(SweepConfig)` is what `python -m experiments.batch_sweep` calls; `summarize_sweep(dir)` is
what `python -m experiments.report` calls, and it needs nothing but the records on disk:

    <out>/sweep.json                     resolved sweep config
    <out>/tier_B{B}/run.json             resolved model/optimizer/train config, git SHA, versions, devices
    <out>/tier_B{B}/metrics.jsonl        one EvalRow per eval (step, tokens, val_loss, ...)
    <out>/tier_B{B}/probes.jsonl         one ProbeRecord per spectrum per probe point (summaries, tidy)
    <out>/tier_B{B}/spectra/step_*.npz   raw spectra (activation eigenvalues, gradient/weight singular values)
    <out>/tier_B{B}/result.json          TierResult: status, T(B), throughput
    <out>/summary.json + *.png           SweepSummary, written by summarize_sweep
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from spectral_jax import efficiency, plots, probes
from spectral_jax.data import load_data
from spectral_jax.data.vocab import fit_vocab
from spectral_jax.fields import option
from spectral_jax.lr_rules import default_lr_table, resolve_lr  # noqa: F401  (re-exported)
from spectral_jax.models import make_config
from spectral_jax.presets import DEFAULT_BATCH_TIERS, ProbeOverrides, UsesPreset, get_preset
from spectral_jax.records import append_jsonl, log_stderr, read_json, read_jsonl, save_npz, write_json
from spectral_jax.schemas import EvalRow, MatchedLossRow, ProbeRecord, SweepSummary, TierResult, TierRow, spectrum_key
from spectral_jax.train import RunState, train
from spectral_jax.train_config import TrainOverrides

DEFAULT_TIERS = DEFAULT_BATCH_TIERS


@dataclasses.dataclass(frozen=True)
class SweepConfig(UsesPreset):
    """One family across batch tiers, on a preset; `train` and `probe` change the preset's values."""

    family: str = option("betterwin", "family of the chain (spectral_jax.models.FAMILIES)")
    preset: str = option("tiny", "model/training preset: tiny (CPU), d12, d36, d48 (spectral_jax.presets)")
    tiers: tuple[int, ...] | None = option(None, "batch tiers B, sequences per step (default: the preset's)")
    data: str = option("embedded", "'embedded' (default corpus), a directory of .bin shards, or text files")
    lr: str = option(
        "sqrt",
        "LR rule per tier: sqrt | linear | none (scaling of the family anchors with B/B0), a "
        "float multiplier, a JSON table {family: {B: multiplier or {group: lr}}}, or auto (the "
        "successive-halving table of experiments.lr_sweep, see --lr_table)",
    )
    lr_table: str | None = option(
        None,
        "--lr=auto: the LR table written by experiments.lr_sweep (default "
        "results/lr_sweep/<family>_<preset>/lr_table.json)",
    )
    out: str | None = option(None, "results directory (default results/batch_sweep/<family>_<preset>)")
    resume: bool = option(True, "reuse finished tiers and resume interrupted ones from their checkpoints")
    layers: tuple[int, ...] = option((-1,), "probe layers for activation spectra (block indices; -1 = deepest)")
    matrices: tuple[str, ...] = option(
        ("final_attn_out",),
        "gradient-probe matrices: final_attn_out, attn_out, attn_q, attn_v, mlp_out (comma-separated)",
    )
    early_fraction: float = option(0.2, "early checkpoint as a fraction of each tier's T(B)")
    train: TrainOverrides = option(TrainOverrides(), "changes to the preset's training config")
    probe: ProbeOverrides = option(ProbeOverrides(), "changes to the preset's probe sizes")
    model_overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict, metadata={"flag": False})

    def out_dir(self) -> pathlib.Path:
        return pathlib.Path(self.out or f"results/batch_sweep/{self.family}_{self.preset}")


class ProbeCallback:
    """At each probe point: activation / gradient / weight spectra over the fixed pool -> npz + probes.jsonl."""

    def __init__(
        self,
        pool_NxT1: np.ndarray,
        *,
        layers,
        matrices,
        grad_samples: int,
        chunk: int,
        tail: tuple[int, int],
        bank: Sequence[tuple[int, int]],
    ):
        self.pool = pool_NxT1
        self.layers, self.matrices = tuple(layers), tuple(matrices)
        self.grad_samples, self.chunk = grad_samples, chunk
        self.tail, self.bank = tail, tuple(bank)

    def __call__(self, state: RunState) -> None:
        result = probes.run_probes(
            state.model,
            self.pool,
            layers=self.layers,
            matrices=self.matrices,
            grad_samples=self.grad_samples,
            chunk=self.chunk,
            window=state.window,
        )
        rel = f"spectra/step_{state.step:07d}.npz"
        arrays = {f"activation/L{layer}": v for layer, v in result.activation.items()}
        arrays.update({f"gradient/{k}": v for k, v in result.gradient.items()})
        arrays.update({f"weight/{k}": v for k, v in result.weight.items()})
        save_npz(state.out_dir / rel, arrays)
        for rec in probes.summarize_probe(result, tail=self.tail, bank=self.bank):
            row = ProbeRecord.from_dict(
                dict(rec, step=state.step, tokens=state.tokens, val_loss=state.val_loss, window=state.window, file=rel)
            )
            append_jsonl(state.out_dir / "probes.jsonl", row.to_dict())


def run_batch_sweep(cfg: SweepConfig, log: Callable[[str], None] = log_stderr) -> dict:
    """Train every tier (resuming finished/interrupted ones), then summarise. Returns summary.json's dict."""
    preset = get_preset(cfg.preset)
    if not cfg.tiers or any(b < 1 for b in cfg.tiers):
        raise ValueError(f"--tiers must be positive batch sizes, got {cfg.tiers}")
    model_cfg = make_config(cfg.family, cfg.preset, **dict(cfg.model_overrides))
    # every tier's LR before loading data or training: a missing table entry fails now, not hours in
    lrs = {
        b: resolve_lr(cfg.lr, b, model_cfg.optim.reference_batch, cfg.family, preset=cfg.preset, lr_table=cfg.lr_table)
        for b in cfg.tiers
    }
    out = cfg.out_dir()
    out.mkdir(parents=True, exist_ok=True)
    dataset, vmap = fit_vocab(load_data(cfg.data), model_cfg.vocab_size, model_cfg.eot_id)
    probe = cfg.probe_config()
    base_tc = cfg.train_config()
    pool = dataset.measurement_pool(model_cfg.seq_len, probe.pool_sequences, val_tokens=base_tc.val_tokens)
    tail, bank = preset.tail_window, preset.local_windows
    write_json(
        out / "sweep.json",
        dict(
            config=sweep_config_record(cfg),
            model=model_cfg,
            probe=probe,
            tail_window=tail,
            local_windows=bank,
            data=dataset.metadata,
        ),
    )
    callback = ProbeCallback(
        pool,
        layers=cfg.layers,
        matrices=cfg.matrices,
        grad_samples=probe.grad_samples,
        chunk=probe.chunk,
        tail=tail,
        bank=bank,
    )
    t0 = time.perf_counter()
    for i, batch in enumerate(sorted(cfg.tiers)):
        lr, rule = lrs[batch]
        log(
            f"== {cfg.family} {cfg.preset}: tier {i + 1}/{len(cfg.tiers)}, B = {batch} sequences x "
            f"{model_cfg.seq_len} tokens, LR {rule} = {lr} ({time.perf_counter() - t0:.0f}s elapsed)"
        )
        train(
            model_cfg,
            base_tc.for_batch(batch, lr=lr),
            dataset,
            out / f"tier_B{batch}",
            callbacks=[callback],
            resume=cfg.resume,
            log=log,
            run_info=dict(family=cfg.family, preset=cfg.preset, lr_rule=rule, vocab_map=vmap and vmap.describe()),
        )
    summary = summarize_sweep(out, log=log)
    log(format_table(summary))
    return summary


def sweep_config_record(cfg: SweepConfig) -> dict:
    """sweep.json's "config": the sweep's own fields, and the preset's probe sizes with the changes applied."""
    rec = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name not in ("train", "probe")}
    probe = cfg.probe_config()
    return dict(
        rec,
        train_overrides=cfg.train.changes(),
        model_overrides=dict(cfg.model_overrides),
        pool_sequences=probe.pool_sequences,
        grad_samples=probe.grad_samples,
        probe_chunk=probe.chunk,
    )


# ---- summary from records -------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TierRecords:
    """Everything one finished tier wrote (probe rows stay the dicts `efficiency` selects from)."""

    dir: pathlib.Path
    result: TierResult
    run: dict
    evals: tuple[EvalRow, ...]
    probes: tuple[dict, ...]

    def records(self, kind: str, layer: int | None, matrix: str | None = None) -> list[dict]:
        """Probe rows of one spectrum kind at one layer (and matrix), in step order."""
        return [
            r
            for r in self.probes
            if r["kind"] == kind and r["layer"] == layer and (matrix is None or r["matrix"] == matrix)
        ]


def load_tier(directory: pathlib.Path) -> TierRecords:
    directory = pathlib.Path(directory)
    if not (directory / "result.json").is_file():
        raise FileNotFoundError(
            f"{directory} has no result.json: the tier did not finish; rerun the sweep (it resumes) or drop the tier"
        )
    return TierRecords(
        dir=directory,
        result=TierResult.from_dict(read_json(directory / "result.json")),
        run=read_json(directory / "run.json"),
        evals=tuple(EvalRow.from_dict(r) for r in read_jsonl(directory / "metrics.jsonl")),
        probes=tuple(read_jsonl(directory / "probes.jsonl")),
    )


def load_sweep(out: str | os.PathLike) -> tuple[dict, dict[int, TierRecords]]:
    out = pathlib.Path(out)
    if not (out / "sweep.json").is_file():
        raise FileNotFoundError(f"{out} is not a batch-sweep results directory (no sweep.json)")
    sweep = read_json(out / "sweep.json")
    tiers = {}
    for d in sorted(out.glob("tier_B*")):
        if (d / "result.json").is_file():
            tiers[int(d.name[len("tier_B") :])] = load_tier(d)
    if not tiers:
        raise FileNotFoundError(f"{out} holds no finished tier (tier_B*/result.json)")
    return sweep, dict(sorted(tiers.items()))


def load_spectrum(tier: TierRecords, record: dict) -> np.ndarray:
    """The raw spectrum behind a probe record, from the tier directory's npz."""
    with np.load(tier.dir / record["file"]) as f:
        return np.asarray(f[spectrum_key(record["kind"], record["layer"], record.get("matrix"))])


def summarize_sweep(
    out: str | os.PathLike, *, early_fraction: float | None = None, log: Callable[[str], None] = log_stderr
) -> dict:
    """summary.json and the figures, from the records alone."""
    out = pathlib.Path(out)
    sweep, tiers = load_sweep(out)
    fraction = early_fraction if early_fraction is not None else sweep["config"]["early_fraction"]
    last_layer = sweep["model"]["n_layer"] - 1
    runs = {
        b: dict(tokens_to_target=t.result.tokens_to_target, records=t.records("activation", last_layer))
        for b, t in tiers.items()
    }
    early = efficiency.early_prediction(runs, fraction=fraction, key="alpha_tail", kind="activation", layer=last_layer)
    by_batch = {row["batch"]: row for row in early["tiers"]}
    tier_rows = [
        TierRow.from_dict({**by_batch.get(b, {}), **dataclasses.asdict(t.result), "batch": b}) for b, t in tiers.items()
    ]
    targets, matched = _matched_loss(tiers, runs, log)
    progress = efficiency.spearman_vs_progress(
        runs,
        windows=[tuple(w) for w in sweep["local_windows"]],
        fractions=[round(f, 2) for f in np.linspace(0.05, 1.0, 20)],
        kind="activation",
    )
    first = next(iter(tiers.values()))
    summary = SweepSummary(
        family=sweep["config"]["family"],
        preset=sweep["config"]["preset"],
        tail_window=tuple(sweep["tail_window"]),
        early_fraction=fraction,
        tiers=tuple(tier_rows),
        spearman_within=early["spearman_within"],
        p_value=early["p_value"],
        n_reached=early["n"],
        target_loss=first.result.target_loss,
        matched_loss=tuple(matched),
        matched_loss_targets=tuple(targets),
        spearman_vs_progress=tuple(progress),
        git_sha=first.run["environment"]["git_sha"],
    )
    write_json(out / "summary.json", summary.to_dict())
    _figures(out, summary, tiers, last_layer)
    return summary.to_dict()


def _matched_loss(tiers: dict[int, TierRecords], runs: dict, log) -> tuple[list[float], list[MatchedLossRow]]:
    """Matched-loss activation spectra (docs/method.md §1.6): every tier's probe point nearest each common loss
    target, with the gradient summaries of the same point."""
    try:
        targets = efficiency.common_loss_targets(
            {b: [r["val_loss"] for r in run["records"]] for b, run in runs.items() if run["records"]}
        )
    except ValueError as err:
        log(f"matched-loss selection skipped: {err}")
        return [], []
    matched = []
    for target in targets:
        for b, t in tiers.items():
            rec = efficiency.matched_loss_rows(runs[b]["records"], [target])[0]
            grads = [r for r in t.probes if r["kind"] == "gradient" and r["step"] == rec["step"]]
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
        for b, r in chosen.items():
            recs = [g for g in tiers[b].probes if g["kind"] == "gradient" and g["step"] == r.step]
            if recs:
                grads[f"B={b}"] = load_spectrum(tiers[b], recs[0])
        if grads:
            plots.save_figure(
                plots.plot_spectra(
                    grads,
                    title=f"{family} ({preset}): per-sample gradient spectra of W_O at val loss {mid:.3f}",
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
    def f(v, fmt):
        return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, fmt)

    lines = [
        f"{summary['family']} ({summary['preset']}), target val loss {summary['target_loss']}",
        f"{'B':>4} {'status':>8} {'T(B) tokens':>12} {'eps_tok':>8} {'early a_tail':>12} {'norm':>6} {'tok/s':>8}",
    ]
    for r in summary["tiers"]:
        lines.append(
            f"{r['batch']:>4} {r['status']:>8} {f(r['tokens_to_target'], ','):>12} "
            f"{f(r['eps_tok'], '.3f'):>8} {f(r['early_alpha_tail'], '.4f'):>12} "
            f"{f(r['early_alpha_tail_normalized'], '.2f'):>6} {f(r['throughput_tokens_per_s'], ',.0f'):>8}"
        )
    lines.append(
        f"Spearman(early alpha_tail, eps_tok) = {f(summary['spearman_within'], '.3f')} "
        f"(p = {f(summary['p_value'], '.3g')}, n = {summary['n_reached']})"
    )
    return "\n".join(lines)


__all__ = [
    "SweepConfig",
    "ProbeCallback",
    "TierRecords",
    "run_batch_sweep",
    "summarize_sweep",
    "load_sweep",
    "load_tier",
    "load_spectrum",
    "format_table",
    "resolve_lr",
    "default_lr_table",
    "sweep_config_record",
    "DEFAULT_TIERS",
]
