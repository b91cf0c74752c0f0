"""The paper's ablations as a library: Adam vs Muon on LSWA (App. D, Fig. 7), seed control (Fig. 9), layerwise
early prediction (Fig. 10), probe-matrix dependence of gradient spectra (Fig. 6) and the data-split spectral JS
divergence (Fig. 5). `python -m experiments.ablations <subcommand>` calls these functions.

Every training run is a `spectral_jax.batch_sweep.run_batch_sweep` (resumable; finished tiers are reused), and every
statistic comes from `spectral_jax.efficiency` over the sweep records. Layout under `out`:

    probe_sweep/                 ONE batch sweep of `family` probing every block's activations and four final-block
                                 matrices (W_O, W_Q, W_V, MLP-out); layerwise, probe_matrices and seed_control
                                 all read it, so no tier is trained twice
    adam_vs_muon/{lswa,lswa_adam}/   one batch sweep per family
    seed_control/seed_{s}/       one-tier sweeps at `batch` with model seed s and the probe sweep's probes (the
                                 probe sweep's own seed reuses its tier)
    <ablation>/summary.json + *.png
    summary.json                 index: per ablation its summary path, figures and headline numbers

Definitions. "Early" = the batch sweep's early read-out (`batch_sweep.summary.early_readout`): the exact point at
`early_fraction` (20 %) of the run's own interpolated T(B), measured by replay. Seed spread = sample std (ddof 1)
and range of the seeds' early alpha_tail at tier `batch`; tier separation = the same over the probe sweep's tiers
(one seed); the summary gives their ratios.
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
from collections.abc import Callable, Mapping

from spectral_jax.ablations.common import PROBE_MATRICES, AblationConfig, probe_sweep
from spectral_jax.ablations.data_split import data_split_js, parse_source
from spectral_jax.ablations.sweeps import adam_vs_muon, layerwise, probe_matrices, seed_control
from spectral_jax.records import log_stderr

ABLATIONS = ("adam_vs_muon", "seed_control", "layerwise", "probe_matrices", "data_split")


def run_all(cfg: AblationConfig, log: Callable[[str], None] = log_stderr) -> dict:
    """Every ablation; the probe sweep is trained once, and data_split measures its tier `batch` (if swept)."""
    out = {}
    for name, fn in (
        ("layerwise", layerwise),
        ("probe_matrices", probe_matrices),
        ("seed_control", seed_control),
        ("adam_vs_muon", adam_vs_muon),
    ):
        log(f"== ablation {name}")
        out[name] = fn(cfg, log)
    tier = cfg.path("probe_sweep", f"tier_B{cfg.batch}")
    split_cfg = cfg if cfg.model_dir or not tier.is_dir() else dataclasses.replace(cfg, model_dir=str(tier))
    log("== ablation data_split")
    out["data_split"] = data_split_js(split_cfg, log)
    return out


RUNNERS: Mapping[str, Callable[..., dict]] = dict(
    adam_vs_muon=adam_vs_muon,
    seed_control=seed_control,
    layerwise=layerwise,
    probe_matrices=probe_matrices,
    data_split=data_split_js,
    all=run_all,
)

__all__ = [
    "ABLATIONS",
    "AblationConfig",
    "PROBE_MATRICES",
    "RUNNERS",
    "adam_vs_muon",
    "data_split_js",
    "layerwise",
    "parse_source",
    "probe_matrices",
    "probe_sweep",
    "run_all",
    "seed_control",
]
