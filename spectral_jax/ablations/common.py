"""What the ablations share: their config, the batch sweeps they run, the summary index, small statistics."""

from __future__ import annotations

import dataclasses
import math
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from spectral_jax.batch_sweep import SweepConfig, TierRecords, run_batch_sweep, sweep_config_record
from spectral_jax.errors import UserError
from spectral_jax.fields import option
from spectral_jax.models import make_config
from spectral_jax.presets import ProbeOverrides, UsesPreset, get_preset
from spectral_jax.records import log_stderr, read_json, to_jsonable, write_json
from spectral_jax.train_config import TrainOverrides

PROBE_MATRICES = ("attn_out", "attn_q", "attn_v", "mlp_out")  # attn_out first: the sweep summary's W_O figure
MATRIX_LABELS = {"attn_out": "W_O", "attn_q": "W_Q", "attn_v": "W_V", "mlp_out": "MLP-out"}
MUON_FAMILY, ADAM_FAMILY = "lswa", "lswa_adam"


@dataclasses.dataclass(frozen=True)
class AblationConfig(UsesPreset):
    """What every ablation shares (tiers, budgets, probes) plus the few per-ablation knobs."""

    out: str | None = option(None, "results directory (default results/ablations/<preset>)")
    preset: str = option("tiny", "model/training preset: tiny (CPU), d12, d36, d48 (spectral_jax.presets)")
    family: str = option(
        "betterwin",
        "family for seed_control / layerwise / probe_matrices (and the fresh model "
        "of data_split); adam_vs_muon always compares lswa with lswa_adam",
    )
    tiers: tuple[int, ...] | None = option(None, "batch tiers B, sequences per step (default: the preset's)")
    data: str = option("embedded", "training data: 'embedded', a directory of .bin shards, or text files")
    lr: str = option("sqrt", "LR rule per tier (as experiments.batch_sweep --lr)")
    resume: bool = option(True, "reuse finished tiers and resume interrupted ones")
    early_fraction: float = option(0.2, "early checkpoint as a fraction of each tier's T(B)")
    batch: int = option(
        8,
        "seed_control: the tier B trained with every seed; data_split under 'all': the "
        "probe-sweep tier whose checkpoint is measured",
    )
    seeds: tuple[int, ...] = option((42, 43, 44), "seed_control: model init seeds")
    vary_data_seed: bool = option(False, "seed_control: also use seed s as the train-stream shuffle seed")
    data_a: str = option("embedded:val", "data_split source A: '<--data spec>[:pool|val|train]' (split default pool)")
    data_b: str = option("embedded:pool", "data_split source B, same syntax")
    model_dir: str | None = option(
        None,
        "data_split: a trained tier directory (e.g. <sweep>/tier_B8) whose newest "
        "checkpoint is measured; default a freshly initialised --family model (seed "
        "--seed)",
        name="model",
    )
    split_sequences: int | None = option(None, "data_split: sequences per sample (default: the preset's pool size)")
    train: TrainOverrides = option(TrainOverrides(), "changes to the preset's training config")
    probe: ProbeOverrides = option(ProbeOverrides(), "changes to the preset's probe sizes")

    def path(self, *parts: str) -> pathlib.Path:
        return pathlib.Path(self.out or f"results/ablations/{self.preset}").joinpath(*parts)

    @property
    def base_seed(self) -> int:
        return self.train.apply(get_preset(self.preset).train).seed


# ---- sweeps ----------------------------------------------------------------------------------------------
def run_sweep(
    cfg: AblationConfig,
    family: str,
    out: pathlib.Path,
    tiers: Sequence[int],
    *,
    layers=(-1,),
    matrices=("final_attn_out",),
    log: Callable[[str], None],
    **train_changes,
) -> dict:
    """run_batch_sweep with the ablation's shared settings; refuses a directory probed differently (its finished
    tiers would be reused with records that lack the requested spectra)."""
    train = dataclasses.replace(cfg.train, **train_changes)
    sc = SweepConfig(
        family=family,
        preset=cfg.preset,
        tiers=tuple(tiers),
        data=cfg.data,
        lr=cfg.lr,
        out=str(out),
        resume=cfg.resume,
        layers=tuple(layers),
        matrices=tuple(matrices),
        early_fraction=cfg.early_fraction,
        train=train,
        probe=cfg.probe,
        use_sweep_regime=False,  # the ablations run at the preset's own tiers, target and cadences
    )
    old = out / "sweep.json"
    if old.is_file():
        stored = read_json(old)["config"]
        keys = ("family", "layers", "matrices", "pool_sequences", "grad_samples", "data")
        new = to_jsonable(sweep_config_record(sc))
        diff = [k for k in keys if stored.get(k) != new[k]]
        if diff:
            raise UserError(
                f"{out} holds a sweep with other {', '.join(diff)} "
                f"({', '.join(f'{k}={stored.get(k)}' for k in diff)}); its finished tiers would be "
                "reused without the requested spectra: use another --out or delete that directory"
            )
    return run_batch_sweep(sc, log=log)


def probe_sweep(cfg: AblationConfig, log: Callable[[str], None] = log_stderr) -> pathlib.Path:
    """The shared sweep of cfg.family: activations at every block, gradients of four final-block matrices."""
    n_layer = make_config(cfg.family, cfg.preset).n_layer
    out = cfg.path("probe_sweep")
    run_sweep(cfg, cfg.family, out, cfg.tiers, layers=tuple(range(n_layer)), matrices=PROBE_MATRICES, log=log)
    return out


def tier_runs(tiers: Mapping[int, TierRecords], kind: str, layer: int, matrix: str | None = None) -> dict:
    return {
        b: dict(tokens_to_target=t.result.tokens_to_target, records=t.records(kind, layer, matrix))
        for b, t in tiers.items()
    }


def finite(v) -> bool:
    return v is not None and math.isfinite(float(v))


def write_ablation(
    cfg: AblationConfig, name: str, summary: dict, figures: Sequence[pathlib.Path], headline: Mapping[str, Any]
) -> dict:
    """<out>/<name>/summary.json, then the <out>/summary.json index entry."""
    d = cfg.path(name)
    summary = dict(summary, ablation=name, preset=cfg.preset, figures=[p.name for p in figures])
    write_json(d / "summary.json", summary)
    index_path = cfg.path("summary.json")
    index = read_json(index_path) if index_path.is_file() else {}
    index.setdefault("ablations", {})[name] = dict(
        summary=f"{name}/summary.json", figures=[f"{name}/{p.name}" for p in figures], **headline
    )
    index.update(preset=cfg.preset, out=str(cfg.path()))
    write_json(index_path, index)
    return summary


def sample_std(values: Sequence[float]) -> float | None:
    v = [float(x) for x in values if finite(x)]
    return float(np.std(v, ddof=1)) if len(v) >= 2 else None


def value_range(values: Sequence[float]) -> float | None:
    v = [float(x) for x in values if finite(x)]
    return float(max(v) - min(v)) if len(v) >= 2 else None


def ratio(a, b) -> float | None:
    return float(a) / float(b) if finite(a) and finite(b) and float(b) != 0 else None
