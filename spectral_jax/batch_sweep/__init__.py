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
import pathlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from spectral_jax import checkpoints, distributed, probes
from spectral_jax.batch_sweep.decide import Decision, finish_decision, run_phase_one
from spectral_jax.batch_sweep.early import EARLY_RECORDS, probe_exact_early_points
from spectral_jax.batch_sweep.records import TierRecords, load_spectrum, load_sweep, load_tier
from spectral_jax.batch_sweep.seeds import format_seeds_table, summarize_seeds
from spectral_jax.batch_sweep.summary import format_table, probed_series, summarize_sweep
from spectral_jax.data import load_data
from spectral_jax.data.sanity import data_warnings
from spectral_jax.data.tokenize import KINDS as TOKENIZERS
from spectral_jax.data.vocab import fit_vocab
from spectral_jax.errors import UserError
from spectral_jax.fields import option
from spectral_jax.lock import results_lock
from spectral_jax.lr_rules import default_lr_table, resolve_lr
from spectral_jax.lr_sweep import LRSweepConfig, run_lr_sweep
from spectral_jax.mesh import probe_mesh
from spectral_jax.models import make_config
from spectral_jax.presets import DEFAULT_BATCH_TIERS, ProbeOverrides, UsesPreset, get_preset
from spectral_jax.records import append_jsonl, code_versions, log_stderr, read_json, save_npz, write_json
from spectral_jax.schemas import ProbeRecord
from spectral_jax.train import RunState, TrainingDiverged, train
from spectral_jax.train_config import TrainOverrides

DEFAULT_TIERS = DEFAULT_BATCH_TIERS


@dataclasses.dataclass(frozen=True)
class SweepConfig(UsesPreset):
    """One family across batch tiers, on a preset, in the preset's sweep regime for the tokenizer (its tiers, target,
    cadences and early points, `presets.SweepRegime`); `train` and `probe` change those values."""

    family: str = option("betterwin", "family of the chain (spectral_jax.models.FAMILIES)")
    preset: str = option("tiny", "model/training preset: tiny (CPU), d12, d36, d48 (spectral_jax.presets)")
    tiers: tuple[int, ...] | None = option(None, "batch tiers B, sequences per step (default: the preset's)")
    data: str = option("embedded", "'embedded' (default corpus), a directory of .bin shards, or text files")
    tokenizer: str = option(
        "gpt2", "tokenizer of text data: gpt2 (the package's BPE) or bytes (UTF-8 bytes, with their own target)"
    )
    seeds: int = option(1, "seeds per tier (model init and data order: --seed + k, --data_seed + k)")
    lr: str = option(
        "tuned",
        "LR per tier: tuned (the successive-halving table shipped for family/preset/tokenizer), auto (run "
        "experiments.lr_sweep here for tiers its table lacks, then use it; see --lr_table), sqrt | linear | none "
        "(scaling of the family anchors with B/B0), a float multiplier, or a JSON table {family: {B: multiplier}}",
    )
    lr_table: str | None = option(
        None,
        "--lr=auto: the LR table written by experiments.lr_sweep (default "
        "results/lr_sweep/<family>_<preset>[_bytes]/lr_table.json)",
    )
    out: str | None = option(None, "results directory (default results/batch_sweep/<family>_<preset>)")
    resume: bool = option(
        True, "reuse finished tiers and resume interrupted ones from their checkpoints (--noresume starts them over)"
    )
    retry_diverged: bool = option(False, "retrain tiers whose earlier run diverged (else they stay diverged)")
    layers: tuple[int, ...] = option((-1,), "probe layers for activation spectra (block indices; -1 = deepest)")
    matrices: tuple[str, ...] = option(
        ("final_attn_out",),
        "gradient-probe matrices: final_attn_out, attn_out, attn_q, attn_v, mlp_out (comma-separated)",
    )
    early_fraction: float = option(0.2, "early point as a fraction of each tier's T(B) (the paper's; retrospective)")
    early_tokens: int | None = option(
        None, "early point at this many training tokens, every tier (default: the preset's sweep regime's)"
    )
    early_loss: float | None = option(
        None, "early point at the first eval at or below this val loss (default: the preset's sweep regime's)"
    )
    progress_fractions: tuple[float, ...] = option(
        (), "the study's grid: also probe exactly at these fractions of each tier's T(B) (replayed after training)"
    )
    progress_losses: tuple[float, ...] = option(
        (), "the study's grid: also probe exactly at the first eval at or below each of these val losses"
    )
    decide_at: str = option(
        "", "early decision: train every tier to tokens:N or loss:L, finish only the tiers ranked best (decide.py)"
    )
    decide_by: str = option("activation:rankme", "early decision statistic: <activation|gradient>:<rankme|...>")
    decide_sign: int = option(1, "+1: a larger early statistic predicts a less token-efficient tier; -1: the reverse")
    decide_keep: int = option(2, "early decision: tiers to finish")
    decide_reference: str | None = option(None, "early decision: a completed full sweep to measure it against")
    train: TrainOverrides = option(TrainOverrides(), "changes to the preset's training config")
    probe: ProbeOverrides = option(ProbeOverrides(), "changes to the preset's probe sizes")
    model_overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict, metadata={"flag": False})
    use_sweep_regime: bool = dataclasses.field(default=True, metadata={"flag": False})  # False: preset's own

    def out_dir(self) -> pathlib.Path:
        suffix = "" if self.tokenizer == "gpt2" else f"_{self.tokenizer}"
        return pathlib.Path(self.out or f"results/batch_sweep/{self.family}_{self.preset}{suffix}")

    def decision(self) -> Decision | None:
        if not self.decide_at:
            return None
        return Decision.parse(self.decide_at, self.decide_by, self.decide_sign, self.decide_keep, len(self.tiers))

    def early_defaults(self) -> tuple[int, float]:
        """(early tokens, early loss): the flags, else the sweep regime's."""
        regime = self.regime()
        return self.early_tokens or regime.early_tokens, self.early_loss or regime.early_loss


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
        records: str = "probes.jsonl",
        spectra_prefix: str = "step",
    ):
        self.records, self.spectra_prefix = records, spectra_prefix
        self.pool = pool_NxT1
        self.layers, self.matrices = tuple(layers), tuple(matrices)
        self.grad_samples, self.chunk = grad_samples, chunk
        self.tail, self.bank = tail, tuple(bank)

    def __call__(self, state: RunState, **extra) -> None:
        """Probe the model of `state`; `extra` fields go into every record (the early points' kind)."""
        result = probes.run_probes(
            state.model,
            self.pool,
            layers=self.layers,
            matrices=self.matrices,
            grad_samples=self.grad_samples,
            chunk=self.chunk,
            window=state.window,
            mesh=probe_mesh(state.train.mesh),  # the training devices, as one axis
        )
        rel = f"spectra/{self.spectra_prefix}_{state.step:07d}.npz"
        arrays = {f"activation/L{layer}": v for layer, v in result.activation.items()}
        arrays.update({f"gradient/{k}": v for k, v in result.gradient.items()})
        arrays.update({f"weight/{k}": v for k, v in result.weight.items()})
        save_npz(state.out_dir / rel, arrays)
        for rec in probes.summarize_probe(result, tail=self.tail, bank=self.bank):
            row = ProbeRecord.from_dict(
                dict(rec, step=state.step, tokens=state.tokens, val_loss=state.val_loss, window=state.window, file=rel)
            )
            append_jsonl(state.out_dir / self.records, {**row.to_dict(), **extra})


def check_config(cfg: SweepConfig, model_cfg) -> None:
    """Every flag that would fail later, checked before any data is loaded or model trained."""
    if not cfg.tiers or any(b < 1 for b in cfg.tiers):
        raise UserError(f"--tiers must be positive batch sizes, got {cfg.tiers}")
    if not 0 < cfg.early_fraction < 1:
        raise UserError(f"--early_fraction must lie in (0, 1), got {cfg.early_fraction}")
    if any(not 0 < f < 1 for f in cfg.progress_fractions) or any(not x > 0 for x in cfg.progress_losses):
        raise UserError(
            f"--progress_fractions must lie in (0, 1) and --progress_losses be positive, got "
            f"{cfg.progress_fractions} and {cfg.progress_losses}"
        )
    if cfg.tokenizer not in TOKENIZERS:
        raise UserError(f"--tokenizer must be one of {', '.join(TOKENIZERS)}, got {cfg.tokenizer!r}")
    early_tokens, early_loss = cfg.early_defaults()
    if early_tokens < 1 or not early_loss > 0:
        raise UserError(f"--early_tokens and --early_loss must be positive, got {early_tokens} and {early_loss}")
    cfg.decision()  # a bad --decide_* flag fails here
    try:
        probes.check_selection(model_cfg, cfg.layers, cfg.matrices)
    except ValueError as err:
        raise UserError(f"--layers / --matrices: {err}") from None


def resolve_tier_lrs(cfg: SweepConfig, model_cfg, log: Callable[[str], None] = log_stderr) -> dict[int, tuple]:
    """Every tier's (LR, how it was chosen) before any data is loaded or model trained, so a missing table entry
    fails now, not hours in. --lr=auto without --lr_table first runs the LR sweep (into its default directory) for
    the tiers its table lacks; with --lr_table it only reads that table."""
    ref = model_cfg.optim.reference_batch
    table = pathlib.Path(cfg.lr_table) if cfg.lr_table else default_lr_table(cfg.family, cfg.preset, cfg.tokenizer)

    def resolve(b):
        return resolve_lr(cfg.lr, b, ref, cfg.family, preset=cfg.preset, lr_table=table, tokenizer=cfg.tokenizer)

    if cfg.lr == "auto" and not cfg.lr_table:
        missing = [b for b in cfg.tiers if not _has_entry(resolve, b)]
        if missing:
            log(f"--lr=auto: tuning tiers {missing} by successive halving into {table.parent}")
            run_lr_sweep(
                LRSweepConfig(
                    family=cfg.family,
                    preset=cfg.preset,
                    tiers=tuple(missing),
                    data=cfg.data,
                    tokenizer=cfg.tokenizer,
                    out=str(table.parent),
                    train=cfg.train,
                    model_overrides=cfg.model_overrides,
                    use_sweep_regime=cfg.use_sweep_regime,
                ),
                log=log,
            )
    return {b: resolve(b) for b in cfg.tiers}


def _has_entry(resolve, batch: int) -> bool:
    try:
        resolve(batch)
    except ValueError:
        return False
    return True


def seed_configs(cfg: SweepConfig) -> list[tuple[pathlib.Path, TrainOverrides]]:
    """(results directory, training changes) of every seed: one seed writes to --out itself; N seeds to
    --out/seed{k}, with model init seed and data-order seed both offset by k."""
    if cfg.seeds < 1:
        raise UserError(f"--seeds must be >= 1, got {cfg.seeds}")
    out = cfg.out_dir()
    if cfg.seeds == 1:
        return [(out, cfg.train)]
    base = cfg.train_config()
    return [
        (
            out / f"seed{k}",
            dataclasses.replace(
                cfg.train, seed=base.seed + k, data_seed=None if base.data_seed is None else base.data_seed + k
            ),
        )
        for k in range(cfg.seeds)
    ]


def run_batch_sweep(cfg: SweepConfig, log: Callable[[str], None] = log_stderr) -> dict:
    """Train every tier for every seed (resuming finished/interrupted ones), then summarise. Returns the summary
    (summary.json's dict; with --seeds > 1, the seeds summary of `batch_sweep.seeds`)."""
    runs = seed_configs(cfg)
    model_cfg = make_config(cfg.family, cfg.preset, **cfg.model_changes())
    check_config(cfg, model_cfg)
    lrs = resolve_tier_lrs(cfg, model_cfg, log)
    with results_lock(cfg.out_dir(), log):
        data = load_data(cfg.data, tokenizer=cfg.tokenizer)
        dataset, vmap = fit_vocab(data, model_cfg.vocab_size, model_cfg.eot_id)
        dataset.metadata["warnings"] = data_warnings(dataset, vmap)
        for w in dataset.metadata["warnings"]:
            log(f"warning: {w}")
        t0 = time.perf_counter()
        for k, (out, train_changes) in enumerate(runs):
            seed_cfg = dataclasses.replace(cfg, out=str(out), seeds=1, train=train_changes)
            if len(runs) > 1:
                log(f"=== seed {k + 1}/{len(runs)} -> {out} ({time.perf_counter() - t0:.0f}s elapsed)")
            summary = _run_seed(seed_cfg, model_cfg, lrs, dataset, vmap, log)
        if len(runs) > 1 and distributed.is_primary():
            seed_dirs = [r[0].name for r in runs]
            write_json(cfg.out_dir() / "sweep.json", dict(config=sweep_config_record(cfg), seed_dirs=seed_dirs))
            summary = summarize_seeds(cfg.out_dir(), log=log)
            log(format_seeds_table(summary))
    return summary


def _run_seed(cfg: SweepConfig, model_cfg, lrs, dataset, vmap, log) -> dict:
    """One seed's sweep into cfg.out: every tier trained (or reused), its exact early points, its summary."""
    preset = get_preset(cfg.preset)
    out = cfg.out_dir()
    out.mkdir(parents=True, exist_ok=True)
    probe = cfg.probe_config()
    base_tc = cfg.train_config()
    pool = dataset.measurement_pool(model_cfg.seq_len, probe.pool_sequences, val_tokens=base_tc.val_tokens)
    tail, bank = preset.tail_window, preset.local_windows
    probe_args = dict(
        layers=cfg.layers,
        matrices=cfg.matrices,
        grad_samples=probe.grad_samples,
        chunk=probe.chunk,
        tail=tail,
        bank=bank,
    )
    # besides model, training and LRs, what the tiers' records depend on (a rerun with other values is refused)
    identity = dict(
        data=dataset.identity(),
        vocab_map=vmap and vmap.describe(),
        probe=dict(probe_args, pool_sequences=probe.pool_sequences),
        versions=code_versions(),
    )
    if cfg.resume:  # refuse before anything is written
        for b in cfg.tiers:
            checkpoints.check_resumable(model_cfg, base_tc.for_batch(b, lr=lrs[b][0]), out / f"tier_B{b}", identity)
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
    callback = ProbeCallback(pool, **probe_args)
    early_callback = ProbeCallback(pool, **probe_args, records=EARLY_RECORDS, spectra_prefix="exact")
    t0 = time.perf_counter()

    def run_info(rule):
        return dict(family=cfg.family, preset=cfg.preset, lr_rule=rule, vocab_map=vmap and vmap.describe())

    def train_early(b, budget, stop_when):  # the early decision's first phase
        tc = base_tc.for_batch(b, lr=lrs[b][0])
        tc = tc.replace(max_tokens=budget(tc.max_tokens))
        _train_tier(cfg, model_cfg, tc, dataset, out, callback, run_info(lrs[b][1]), identity, log, stop_when)

    decision = cfg.decision()
    tiers = sorted(cfg.tiers)
    if decision:
        tiers = run_phase_one(decision, tiers, out, train_early, probe_args, log)
    for i, batch in enumerate(tiers):
        lr, rule = lrs[batch]
        log(
            f"== {cfg.family} {cfg.preset}: tier {i + 1}/{len(tiers)}, B = {batch} sequences x "
            f"{model_cfg.seq_len} tokens, LR {rule} = {lr} ({time.perf_counter() - t0:.0f}s elapsed)"
        )
        tc = base_tc.for_batch(batch, lr=lr)
        if _train_tier(cfg, model_cfg, tc, dataset, out, callback, run_info(rule), identity, log):
            _exact_early_points(cfg, model_cfg, tc, dataset, out, early_callback, log)
    if decision:
        finish_decision(decision, out, tiers, cfg.decide_reference)
    distributed.barrier(f"summary {out}")  # process 0's records are all written
    if not distributed.is_primary():
        return {}
    summary = summarize_sweep(out, log=log)
    log(format_table(summary))
    return summary


def _train_tier(
    cfg: SweepConfig, model_cfg, tc, dataset, out, callback, run_info, identity, log, stop_when=None
) -> bool:
    """Train (or reuse) one tier; False when it diverged, now or in an earlier run (the sweep goes on without it)."""
    batch = tc.batch_size
    tier = out / f"tier_B{batch}"
    distributed.barrier(f"tier {tier}")  # every process reads what process 0 wrote before it
    retry = cfg.retry_diverged and _diverged(tier)
    if retry:
        log(f"[B={batch}] retraining the diverged tier from step 0 (--retry_diverged)")
    try:
        result = train(
            model_cfg,
            tc,
            dataset,
            tier,
            callbacks=[callback],
            resume=cfg.resume and not retry,
            log=log,
            run_info=run_info,
            identity=identity,
            stop_when=stop_when,
        )
    except TrainingDiverged as err:
        log(f"[B={batch}] {err}; the sweep goes on without this tier (--retry_diverged retrains it)")
        return False
    if result["status"] == "diverged":
        log(f"[B={batch}] this tier diverged in an earlier run; --retry_diverged retrains it")
        return False
    return True


def _exact_early_points(cfg: SweepConfig, model_cfg, tc, dataset, out, early_callback, log) -> None:
    """Replay the tier to its exact early points and probe there; then prune the checkpoints kept for it."""
    tier = out / f"tier_B{tc.batch_size}"
    distributed.barrier(f"early {tier}")  # the tier's records, written by process 0, are complete
    early_tokens, early_loss = cfg.early_defaults()
    probe_exact_early_points(
        model_cfg,
        tc,
        dataset,
        tier,
        early_callback,
        fraction=cfg.early_fraction,
        tokens=early_tokens,
        loss=early_loss,
        grid_fractions=cfg.progress_fractions,
        grid_losses=cfg.progress_losses,
        log=log,
    )
    if cfg.train.keep_checkpoints is None:  # the regime's extra checkpoints served the replay
        checkpoints.prune(tier, keep=get_preset(cfg.preset).train.keep_checkpoints)


def _diverged(tier: pathlib.Path) -> bool:
    path = tier / "result.json"
    return path.is_file() and read_json(path).get("status") == "diverged"


def sweep_config_record(cfg: SweepConfig) -> dict:
    """sweep.json's "config": the sweep's own fields, and the preset's probe sizes with the changes applied."""
    rec = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name not in ("train", "probe")}
    probe = cfg.probe_config()
    early_tokens, early_loss = cfg.early_defaults()
    return dict(
        rec,
        tiers=tuple(sorted(cfg.tiers)),
        early_tokens=early_tokens,
        early_loss=early_loss,
        train_overrides=cfg.train.changes(),
        model_overrides=cfg.model_changes(),
        pool_sequences=probe.pool_sequences,
        grad_samples=probe.grad_samples,
        probe_chunk=probe.chunk,
    )


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
    "seed_configs",
    "check_config",
    "resolve_tier_lrs",
    "summarize_seeds",
    "format_seeds_table",
    "probed_series",
    "DEFAULT_TIERS",
]
