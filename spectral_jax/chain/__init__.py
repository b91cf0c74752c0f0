"""The architecture chain as a library: train each family at one batch, then gains, spectral features, taxonomy.

`run_chain(ChainConfig)` is what `python -m experiments.chain` calls; `summarize_chain(dir)` rebuilds the
summary and figures from the records alone. Every family trains to the target at the same tokens per optimizer
step, the paper's "B = 8" (8 trunk sequences: 8 x 65,536 = 524,288 tokens at d12, where the prefix families run
512 x 1,024): a family with a shorter sequence length runs batch x trunk_T / T sequences. Transitions are
parent -> family along `FAMILIES` (so LSWA -> LSWA-Adam is the Adam-vs-Muon control and LSWA -> SubLR the
reference's SubLR row), for every family whose parent is in the run.

Per transition a -> b (docs/method.md §3.2): TokGain = T(a)/T(b) - 1, ThrGain = Q(b)/Q(a) - 1 and their logs, and the
spectral features the taxonomy reads (taxonomy.classify_transition):
  d_act_alpha_head, d_act_head_mass   movement of the head of the final activation spectrum (deepest block)
  d_grad_log_rankme, d_grad_alpha,    change of concentration of the final per-sample gradient spectrum of the
  d_grad_head_mass                    probed matrix (ln RankMe, alpha over the tail window, top-10 mass)
  path_sep_act, path_sep_grad         checkpoint-wise path separation: the mean JS divergence between a's and
                                      b's spectra at the probe points nearest each common loss target
"Final" is the probe point at the run's stop (the target eval, or the budget's end).

Q for ThrGain: by default every family's real training step is timed side by side in one process after the
runs (train_step.interleaved_throughput, rounds taken in turn, written to throughput.json), because the Q a run logs
during its own wall time moves with whatever else the machine runs; `throughput="train"` uses the logged Q.

T for the gains is read from each run's eval records at the gain target: by default the training target (the
paper's definition; a family that never reaches it has no T and its transitions no label), or "common": the
lowest validation loss that EVERY family reached (max over families of their best eval), so every transition
gets a token gain at one matched loss even when some families stop on their budget; or a given loss.

    <out>/chain.json                  resolved config (families, preset, batch, thresholds, probe settings)
    <out>/<family>/...                one train() run directory per family (run.json, metrics, probes, spectra)
    <out>/summary.json, chain_table.csv, *.png
"""

from __future__ import annotations

import time
from collections.abc import Callable

from spectral_jax.batch_sweep import ProbeCallback
from spectral_jax.chain.config import DEFAULT_BATCH, GRAD_MATRIX, ChainConfig, family_batch, transitions_of
from spectral_jax.chain.summary import (
    CSV_COLUMNS,
    format_chain_table,
    load_chain,
    path_separation,
    resolve_gain_target,
    summarize_chain,
)
from spectral_jax.data import load_data
from spectral_jax.data.vocab import fit_vocab
from spectral_jax.errors import UserError
from spectral_jax.lock import results_lock
from spectral_jax.lr_rules import resolve_lr
from spectral_jax.models import make_config
from spectral_jax.presets import get_preset
from spectral_jax.records import code_versions, environment, log_stderr, read_json, write_json
from spectral_jax.train import train
from spectral_jax.train_step import interleaved_throughput


def run_chain(cfg: ChainConfig, log: Callable[[str], None] = log_stderr) -> dict:
    """Train every family (reusing finished runs, resuming interrupted ones), then summarise."""
    families = cfg.resolved_families()
    preset = get_preset(cfg.preset)
    if cfg.batch < 1:
        raise UserError(f"--batch must be >= 1, got {cfg.batch}")
    if len(families) < 2 or not transitions_of(families):
        raise UserError(
            f"families {list(families)} contain no transition (a family and its parent); "
            "name consecutive families, e.g. --families=baseline,rope,muon,untied"
        )
    configs = {f: make_config(f, cfg.preset, **dict(cfg.model_overrides)) for f in families}
    first = configs[families[0]]
    out = cfg.out_dir()
    out.mkdir(parents=True, exist_ok=True)
    with results_lock(out, log):  # one writer per chain directory
        dataset, vmap = fit_vocab(load_data(cfg.data), first.vocab_size, first.eot_id)
        probe = cfg.probe_config()
        base_tc = cfg.train_config()
        tail, bank = preset.tail_window, preset.local_windows
        trunk_T = int(cfg.model_overrides.get("seq_len", preset.model.trunk_seq_len))
        write_json(
            out / "chain.json",
            dict(
                config=cfg,
                families=families,
                transitions=transitions_of(families),
                probe=probe,
                tail_window=tail,
                local_windows=bank,
                trunk_seq_len=trunk_T,
                data=dataset.metadata,
            ),
        )
        identity = dict(data=dataset.identity(), vocab_map=vmap and vmap.describe(), versions=code_versions())
        pools, t0 = {}, time.perf_counter()  # measurement pools by sequence length; the start time
        for i, fam in enumerate(families):
            mc = configs[fam]
            batch = family_batch(mc, trunk_T, cfg.batch)
            if mc.seq_len not in pools:
                pools[mc.seq_len] = dataset.measurement_pool(
                    mc.seq_len, probe.pool_sequences, val_tokens=base_tc.val_tokens
                )
            callback = ProbeCallback(
                pools[mc.seq_len],
                layers=(-1,),
                matrices=(GRAD_MATRIX,),
                grad_samples=probe.grad_samples,
                chunk=probe.chunk,
                tail=tail,
                bank=bank,
            )
            lr, rule = resolve_lr(cfg.lr, batch, mc.optim.reference_batch, fam)
            tc = base_tc.for_batch(batch, lr=lr)
            log(
                f"== chain {cfg.preset}: family {i + 1}/{len(families)} {fam}, B = {batch} x {mc.seq_len} tokens, "
                f"LR {rule} = {lr} ({time.perf_counter() - t0:.0f}s elapsed)"
            )
            train(
                mc,
                tc,
                dataset,
                out / fam,
                callbacks=[callback],
                resume=cfg.resume,
                log=log,
                run_info=dict(
                    family=fam,
                    preset=cfg.preset,
                    lr_rule=rule,
                    chain_batch=cfg.batch,
                    vocab_map=vmap and vmap.describe(),
                ),
                identity=identity,
            )
        if cfg.throughput == "interleaved":
            _measure_throughput(out, cfg, families, configs, trunk_T, base_tc, dataset, log)
        summary = summarize_chain(out, log=log)
        log(format_chain_table(summary))
        return summary


def _measure_throughput(out, cfg, families, configs, trunk_T, base_tc, dataset, log) -> None:
    """Time every family's training step side by side (throughput.json); reused while the families match."""
    path = out / "throughput.json"
    if cfg.resume and path.is_file():
        old = read_json(path)
        if old.get("families") == list(families) and old.get("rounds") == cfg.throughput_rounds:
            log(f"throughput: reusing {path}")
            return
    runs = {}
    for fam in families:
        mc = configs[fam]
        batch = family_batch(mc, trunk_T, cfg.batch)
        lr, _ = resolve_lr(cfg.lr, batch, mc.optim.reference_batch, fam)
        runs[fam] = (mc, base_tc.for_batch(batch, lr=lr))
    log(f"throughput: timing {len(runs)} training steps side by side ({cfg.throughput_rounds} rounds)")
    q = interleaved_throughput(runs, dataset, rounds=cfg.throughput_rounds, log=log)
    write_json(
        path,
        dict(families=list(families), rounds=cfg.throughput_rounds, throughput=q, devices=environment().get("devices")),
    )


__all__ = [
    "ChainConfig",
    "DEFAULT_BATCH",
    "GRAD_MATRIX",
    "run_chain",
    "summarize_chain",
    "load_chain",
    "transitions_of",
    "family_batch",
    "path_separation",
    "resolve_gain_target",
    "format_chain_table",
    "CSV_COLUMNS",
]
