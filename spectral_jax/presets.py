"""One object per preset: model dimensions, training defaults, probe sizes, rank windows and batch tiers.

Every entry point and library function looks a preset up here by name (`get_preset("tiny")`); nothing else holds
per-preset tables. A new preset is one `register_preset(Preset(...))` (here, or in a user's script before the
library is called). Presets change shapes and budgets, never code: the CPU `tiny` preset runs every code path
that the GPU presets d12 / d36 / d48 run (docs/method.md §4 "tier dimensions").

tiny: 8 layers, 2 heads x 32 = 64 wide, a compact 8,192-id vocabulary (EOT id 0; `spectral_jax.data.vocab` maps
the most frequent train tokens to their own ids and the rest to UNK), prefix T 128, trunk T 512, attention block
and every window length = d12's / 8 (block 16, windows 8..224), float32. 8 layers (not 6) so the scaled sparse
value-embedding pattern keeps its middle None layers. The FP8 head's gradient scale is 2^16: d12's 2^29 is sized
for a 524,288-token step and overflows float8_e5m2 at tiny batches. Its target 3.6 and budgets are calibrated so
every tier 1..32 reaches the target on the embedded corpus within a CPU budget.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from typing import Any

from spectral_jax import spectra
from spectral_jax.errors import UserError
from spectral_jax.fields import option, overrides_of
from spectral_jax.train_config import TrainConfig

Window = tuple[int, int]
DEFAULT_BATCH_TIERS = (1, 2, 4, 8, 16, 32)  # the paper's d12 tiers (sequences per step)


@dataclasses.dataclass(frozen=True)
class ModelDims:
    """Dimensions, sequence lengths and window geometry of one model size (the families' deltas fold onto it)."""

    n_layer: int
    n_head: int
    head_dim: int
    prefix_seq_len: int  # T of the prefix families (baseline..unet)
    trunk_seq_len: int  # T from fixedwin on
    attn_block_size: int = 128
    window_min: int = 64
    window_max: int = 1792
    window_quantum: int = 64
    fixed_window: int = 1024
    compute_dtype: str = "bfloat16"
    fp8_grad_scale: float = float(2**29)
    vocab_size: int = 50304
    eot_id: int = 50256

    @property
    def d_model(self) -> int:
        return self.n_head * self.head_dim


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
    """How much data the spectral probes read at each probe point."""

    pool_sequences: int = option(512, "sequences in the measurement pool (activation covariance)")
    grad_samples: int = option(512, "M, sequences for per-sample gradients")
    chunk: int = option(1, "sequences per probe forward/backward chunk (bounds probe memory)", name="probe_chunk")

    def replace(self, **changes) -> ProbeConfig:
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class SweepRegime:
    """The batch sweep's defaults on one preset and tokenizer: its tiers, the fixed-tokens and matched-loss early
    points, and the changes to the preset's training config (target, budget, cadences) that put the sweep in the
    regime its question needs (docs/method.md §3.5)."""

    tiers: tuple[int, ...]
    early_tokens: int
    early_loss: float
    train: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    model: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # ModelConfig changes (e.g. seq_len)
    lr_rungs: tuple[int, ...] | None = None  # the LR sweep's halving rungs (None: the reference's, scaled)
    lr_multipliers: tuple[float, ...] | None = None  # the LR sweep's grid around each centre (None: halving's)
    lr_centers: tuple[str, ...] | None = None  # its scaling centres (None: sqrt and linear)

    def train_config(self, base: TrainConfig) -> TrainConfig:
        return base.replace(**dict(self.train))


@dataclasses.dataclass(frozen=True)
class Preset:
    """Everything that differs between model sizes; `tail_window` None scales d12's [100, 200] by the width."""

    name: str
    model: ModelDims
    train: TrainConfig
    probe: ProbeConfig
    tail_window: Window | None = None  # alpha_tail's rank window
    local_windows: tuple[Window, ...] = spectra.LOCAL_WINDOWS  # Fig. 8 windows (Spearman vs progress)
    batch_tiers: tuple[int, ...] = DEFAULT_BATCH_TIERS
    early_tokens: int = 104_857_600  # the fixed-tokens early point, common to all tiers (d12: two evals)
    early_loss: float = 4.0  # the matched-early-loss point: first probe at or below this val loss
    sweeps: Mapping[str, SweepRegime] = dataclasses.field(default_factory=dict)  # by tokenizer; default: the above

    def __post_init__(self):
        if self.tail_window is None:
            object.__setattr__(self, "tail_window", spectra.scaled_tail_window(self.model.d_model))

    def sweep_regime(self, tokenizer: str = "gpt2") -> SweepRegime:
        """The batch sweep's regime for `tokenizer`: the registered one, else this preset's own tiers, early
        points and training config."""
        if tokenizer in self.sweeps:
            return self.sweeps[tokenizer]
        return SweepRegime(self.batch_tiers, self.early_tokens, self.early_loss)


ProbeOverrides = overrides_of(ProbeConfig, "ProbeOverrides")


class UsesPreset:
    """Mixin of the experiment configs: a `preset` name, `train` (TrainOverrides) and `probe` (ProbeOverrides)
    changes to its values, and optional `tiers` that default to the preset's. Configs whose `use_sweep_regime` is
    true (the batch sweep and its LR sweep) start from the preset's `SweepRegime` for their `tokenizer`; the others
    (chain, ablations) from the preset's own tiers, early points and training config."""

    use_sweep_regime = False

    def __post_init__(self):
        if getattr(self, "tiers", ()) is None:
            object.__setattr__(self, "tiers", self.regime().tiers)

    def regime(self) -> SweepRegime:
        """The regime this config starts from (the preset's own values as one when it uses no sweep regime)."""
        preset = get_preset(self.preset)
        if self.use_sweep_regime:
            return preset.sweep_regime(getattr(self, "tokenizer", "gpt2"))
        return SweepRegime(preset.batch_tiers, preset.early_tokens, preset.early_loss)

    def train_config(self) -> TrainConfig:
        return self.train.apply(self.regime().train_config(get_preset(self.preset).train))

    def model_changes(self) -> dict[str, Any]:
        """ModelConfig changes: the regime's, then the config's own `model_overrides`."""
        return {**dict(self.regime().model), **dict(getattr(self, "model_overrides", {}))}

    def probe_config(self) -> ProbeConfig:
        return self.probe.apply(get_preset(self.preset).probe)


_D12_TRAIN = TrainConfig(
    target_loss=3.2,
    eval_every_tokens=52_428_800,
    val_tokens=10_485_760,
    eval_batch=1,
    max_micro_batch=1,
    checkpoint_every_tokens=209_715_200,
)

_PRESETS: dict[str, Preset] = {}


def register_preset(preset: Preset, *, replace: bool = False) -> Preset:
    """Make `preset` available by name to every entry point and library function."""
    if preset.name in _PRESETS and not replace:
        raise UserError(f"preset {preset.name!r} already exists; pass replace=True to redefine it")
    _PRESETS[preset.name] = preset
    return preset


def unregister_preset(name: str) -> None:
    _PRESETS.pop(name, None)


def get_preset(name: str) -> Preset:
    if name not in _PRESETS:
        raise UserError(f"unknown preset {name!r}; choose one of {sorted(_PRESETS)}")
    return _PRESETS[name]


def preset_names() -> tuple[str, ...]:
    return tuple(_PRESETS)


def presets() -> Mapping[str, Preset]:
    """A read-only view of every registered preset."""
    return types.MappingProxyType(_PRESETS)


# The tiny batch sweep's regime (docs/results.md "choosing the main job's regime"): T = 256 and tiers 1..8 so that
# the largest tier takes >= 30 optimizer steps before every default early point (30 x 8 x 256 = 61,440 tokens;
# 20 % of T(8) ~ 300k tokens), a target past the early rank collapse, and an eval cadence that is a whole number
# of steps at every tier (12,288 tokens = 6,144 x 2, and 6,144 = 256 x lcm(1, 2, 3, 4, 6, 8)).
_TINY_SWEEP = SweepRegime(
    tiers=(1, 2, 3, 4, 6, 8),
    early_tokens=61_440,
    early_loss=3.7,
    train=dict(
        target_loss=2.85,
        max_tokens=1_228_800,
        eval_every_tokens=12_288,
        val_tokens=6_144,
        eval_batch=8,
        checkpoint_every_tokens=49_152,
        keep_checkpoints=64,
    ),
    model=dict(seq_len=256),
    lr_rungs=(49_152, 147_456, 589_824),
)

# UTF-8 bytes: the same tiers, cadences and early tokens; the target and early loss in nats per byte, calibrated on
# the embedded corpus (B = 8 at the sqrt rule: val 2.62 after 30 steps, 1.90 at 356k and 1.82 at 418k tokens), so
# that B = 8 again takes ~190 steps to the target and ~45 to the early loss (docs/results.md).
_TINY_BYTES_SWEEP = dataclasses.replace(_TINY_SWEEP, early_loss=2.5, train=dict(_TINY_SWEEP.train, target_loss=1.85))

register_preset(
    Preset(
        "tiny",
        ModelDims(
            8,
            2,
            32,
            prefix_seq_len=128,
            trunk_seq_len=512,
            attn_block_size=16,
            window_min=8,
            window_max=224,
            window_quantum=8,
            fixed_window=128,
            compute_dtype="float32",
            fp8_grad_scale=float(2**16),
            vocab_size=8192,
            eot_id=0,
        ),
        TrainConfig(
            target_loss=3.6,
            max_tokens=600_000,
            eval_every_tokens=4_096,
            val_tokens=8_192,
            eval_batch=16,
            checkpoint_every_tokens=65_536,
            schedule_scale=0.05,
            max_micro_batch=4,
            probe_every_evals=3,
            log_every_seconds=15.0,
        ),
        ProbeConfig(pool_sequences=32, grad_samples=32, chunk=8),
        local_windows=((2, 8), (8, 17), (17, 34)),  # head side, d12's [100, 200] scaled by 64/768, far tail
        early_tokens=16_384,  # 4 evals; about 20 % of the smallest tier's T(B) on the embedded corpus
        early_loss=5.0,  # well above the target 3.6, below the initial ~9.0
        sweeps={"gpt2": _TINY_SWEEP, "bytes": _TINY_BYTES_SWEEP},
    )
)
# small: the largest LM whose batch sweep fits a few CPU hours with seeds (docs/results.md "the study"). Chosen
# by measurement on 2 cores at B = 8 x 256 tokens (TrainStep, betterwin): 8 x 64 (tiny) 15.5k tokens/s, 6 x 128
# 8.6k, 6 x 192 4.6k, 4 x 256 3.8k, 6 x 256 2.9k. 6 layers x 2 heads x 64 at T = 256 reaches val 2.49 after 553k
# tokens at B = 8 (anchor LRs), so target 2.5 lies well past the early rank collapse. Its critical batch is larger
# than tiny's at 2.85, so the tiers reach B = 16 (20 % of T(16) still >= 30 steps); 12,288 = 256 x lcm(2..16)
# keeps the eval cadence whole at every tier. The LR grid is the sqrt centre times 0.71..2.83: where tiny's
# successive halving chose (1.2-2 x sqrt) and not the linear centre's small-B candidates, which all lost there.
_SMALL_SWEEP = SweepRegime(
    tiers=(2, 4, 6, 8, 12, 16),
    early_tokens=122_880,  # 30 steps at B = 16
    early_loss=3.3,
    train=dict(
        target_loss=2.5,
        max_tokens=2_457_600,
        eval_every_tokens=12_288,
        val_tokens=12_288,
        eval_batch=8,
        probe_every_evals=2,
        checkpoint_every_tokens=24_576,  # every second eval: the replay of an exact point is <= 2 evals
        keep_checkpoints=256,
    ),
    model=dict(seq_len=256),
    lr_rungs=(49_152, 196_608, 786_432),
    lr_multipliers=(2**-0.5, 1.0, 2**0.5, 2.0, 2**1.5),
    lr_centers=("sqrt",),
)

register_preset(
    Preset(
        "small",
        dataclasses.replace(get_preset("tiny").model, n_layer=6, n_head=2, head_dim=64),
        get_preset("tiny").train,
        ProbeConfig(pool_sequences=32, grad_samples=32, chunk=8),
        local_windows=((2, 7), (7, 15), (17, 33)),  # Fig. 8's (10, 40), (40, 90), (100, 200) x 128 / 768
        early_tokens=122_880,
        early_loss=3.3,
        sweeps={"gpt2": _SMALL_SWEEP},
    )
)
register_preset(
    Preset(
        "d12",
        ModelDims(12, 6, 128, prefix_seq_len=1024, trunk_seq_len=65_536),
        _D12_TRAIN,
        ProbeConfig(pool_sequences=512, grad_samples=512, chunk=1),
        tail_window=(100, 200),
    )
)
register_preset(
    Preset(
        "d36",
        ModelDims(36, 20, 64, prefix_seq_len=1024, trunk_seq_len=32_768),
        _D12_TRAIN,
        ProbeConfig(pool_sequences=1024, grad_samples=512, chunk=1),
        tail_window=(200, 400),
    )
)
register_preset(
    Preset(
        "d48",
        ModelDims(48, 25, 64, prefix_seq_len=1024, trunk_seq_len=32_768),
        _D12_TRAIN,
        ProbeConfig(pool_sequences=1024, grad_samples=512, chunk=1),
        tail_window=(400, 800),
    )
)

__all__ = [
    "DEFAULT_BATCH_TIERS",
    "ModelDims",
    "ProbeConfig",
    "ProbeOverrides",
    "Preset",
    "SweepRegime",
    "UsesPreset",
    "register_preset",
    "unregister_preset",
    "get_preset",
    "preset_names",
    "presets",
]
