"""Model configuration: one frozen ModelConfig (dimensions plus one switch per intervention) and its base at a
preset's dimensions. The chain of families as deltas on it, and `make_config`, are in `models.families`.

Preset dimensions (tiny, d12, d36, d48: `spectral_jax.presets`, docs/method.md §4): d12 12 layers, 6 heads x 128
= 768, T 1024 for the prefix families (baseline..unet) and 65,536 from fixedwin; d36 36 x (20 x 64), d48
48 x (25 x 64), trunk T 32,768; tiny is the CPU preset that runs every code path.

Scaled rules for any even L (docs/method.md §4): no-attention layer min(L-1, L//2+1); sparse value-embedding
pattern k = clamp(round(L/4), 3, L//2) front layers cycling tables 0,1,2,..., then L-2k None, then the same
k-cycle; BetterWin value chunks L/2, decoder layer L/2+i reuses chunk L/2-1-i. LSWA generalisation: layer
i is long iff its mirrored encoder index e = min(i, L-1-i) satisfies e % 4 == 0; for L=12 this gives the
reference pattern L S S S L S | S L S S S L, and the last layer is always long.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from spectral_jax.errors import UserError
from spectral_jax.optim import OptimConfig
from spectral_jax.presets import ModelDims, get_preset

POSITIONS = ("learned", "rope", "trunc_rope")
VALUE_MIXES = ("none", "block0", "vte", "vte_half", "sparse")
WINDOWS = ("none", "fixed", "token", "block", "lswa")
LOGIT_HEADS = ("none", "tanh", "sigmoid")
INITS = ("pytorch", "gpt2")
DTYPES = ("float32", "bfloat16")


def _choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise UserError(f"ModelConfig.{name}={value!r} is not one of {choices}")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Dimensions plus one switch per intervention; defaults are the Baseline architecture at d12.

    Window lengths are in tokens. `window` picks the mask: "none" dense causal; "fixed" a constant
    token window `fixed_window`; "token" a run-time token window in [window_min, window_max];
    "block" a run-time window of whole `attn_block_size` blocks; "lswa" the same with long/short layers.
    """

    vocab_size: int = 50304
    n_layer: int = 12
    n_head: int = 6
    d_model: int = 768
    head_dim: int = 128
    seq_len: int = 1024
    mlp_ratio: int = 4
    eot_id: int = 50256
    compute_dtype: str = "float32"  # matmul dtype; parameters and the residual stream stay float32
    # attention
    pos: str = "learned"
    rope_base: float = 10000.0
    qk_norm: bool = False  # parameter-free per-head RMSNorm of q and k before rotary
    fused_qkv: bool = True
    attn_scale: float | None = None  # None -> 1/sqrt(head_dim)
    no_attn_layer: int | None = None  # that block keeps only its MLP
    # embeddings, value mixing, skips, head
    tied_head: bool = True
    embed_norm: bool = False  # rms_norm right after the embedding (from Untied on)
    value_mix: str = "none"
    value_embed_tables: int = 3  # value_mix == "sparse"
    x0_lambdas: bool = False  # per-block lambdas [1, 0]: x <- l0 x + l1 x0
    unet: bool = False  # learnable skip_weights ones(L/2), decoder block L/2+i <- encoder L/2-1-i
    logit_head: str = "none"  # "tanh": cap*tanh(z/cap); "sigmoid": cap*sigmoid(z/(cap/4*sqrt(d_model)))
    logit_cap: float = 30.0
    fp8_head: bool = False
    fp8_x_scale: float = 2.0
    fp8_w_scale: float = 32.0
    fp8_grad_scale: float = float(2**29)
    init: str = "pytorch"  # "pytorch": U(+-1/sqrt(fan_in)), N(0,1) embeds; "gpt2": N(0,0.02)
    # masking and windows
    window: str = "none"
    doc_mask: bool = False
    attn_block_size: int = 128
    window_min: int = 64
    window_max: int = 1792
    window_quantum: int = 64
    fixed_window: int = 1024
    window_warmup_steps: int = 0  # optimizer steps at optim.reference_batch
    probe_layers: tuple[int, ...] = (-1,)  # blocks whose matrices sow inputs / perturb outputs
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)

    def __post_init__(self):
        _choice("pos", self.pos, POSITIONS)
        _choice("value_mix", self.value_mix, VALUE_MIXES)
        _choice("window", self.window, WINDOWS)
        _choice("logit_head", self.logit_head, LOGIT_HEADS)
        _choice("init", self.init, INITS)
        _choice("compute_dtype", self.compute_dtype, DTYPES)
        if self.n_head * self.head_dim != self.d_model:
            raise UserError(
                f"n_head*head_dim = {self.n_head}*{self.head_dim} != d_model {self.d_model}; "
                "set head_dim = d_model // n_head"
            )
        if self.pos != "learned" and self.head_dim % 4:
            raise UserError(f"rotary needs head_dim divisible by 4, got {self.head_dim}")
        if (self.unet or self.value_mix == "vte_half") and self.n_layer % 2:
            raise UserError(f"U-Net skips and mirrored value chunks need an even n_layer, got {self.n_layer}")
        if self.value_mix == "vte_half" and not self.unet:
            raise UserError("value_mix='vte_half' mirrors the U-Net decoder: set unet=True")
        if self.no_attn_layer is not None and not 0 <= self.no_attn_layer < self.n_layer:
            raise UserError(f"no_attn_layer={self.no_attn_layer} outside [0, {self.n_layer})")
        if self.no_attn_layer == 0 and self.value_mix == "block0":
            raise UserError("value_mix='block0' needs attention in block 0; move no_attn_layer")
        if not all(-self.n_layer <= i < self.n_layer for i in self.probe_layers):
            raise UserError(f"probe_layers {self.probe_layers} outside [-{self.n_layer}, {self.n_layer})")
        if self.window != "none":
            self._check_windows()

    def _check_windows(self):
        bs = self.attn_block_size
        if self.seq_len % bs:
            raise UserError(
                f"seq_len {self.seq_len} is not a multiple of attn_block_size {bs}; "
                f"use seq_len {math.ceil(self.seq_len / bs) * bs} or another block size"
            )
        if not 1 <= self.window_min <= self.window_max:
            raise UserError(f"need 1 <= window_min <= window_max, got {self.window_min}, {self.window_max}")
        if self.window in ("block", "lswa") and self.window_max % bs:
            raise UserError(f"block windows need window_max ({self.window_max}) to be a multiple of {bs}")
        if self.max_window > self.seq_len:
            raise UserError(
                f"attention window {self.max_window} tokens is wider than seq_len {self.seq_len}; "
                "raise seq_len or lower window_max / fixed_window"
            )

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    # ---- derived layout -------------------------------------------------------------------------
    @property
    def max_window(self) -> int:
        """Widest attention window in tokens (seq_len for dense attention)."""
        return {"none": self.seq_len, "fixed": self.fixed_window}.get(self.window, self.window_max)

    @property
    def scale(self) -> float:
        return self.attn_scale if self.attn_scale is not None else 1.0 / math.sqrt(self.head_dim)

    @property
    def n_value_chunks(self) -> int:
        return {"vte": self.n_layer, "vte_half": self.n_layer // 2}.get(self.value_mix, 0)

    def value_embed_layout(self) -> tuple[int | None, ...]:
        """Per layer: which value chunk (vte) or table (sparse) mixes into v; None for no value embed."""
        L = self.n_layer
        if self.value_mix == "vte":
            return tuple(range(L))
        if self.value_mix == "vte_half":
            return tuple(i if i < L // 2 else L - 1 - i for i in range(L))
        if self.value_mix == "sparse":
            k = min(max(round(0.25 * L), 3), L // 2)
            cycle = [i % self.value_embed_tables for i in range(k)]
            return tuple(cycle + [None] * (L - 2 * k) + cycle)
        return (None,) * L

    def long_window_layers(self) -> tuple[bool, ...]:
        """Per layer: True for the long window (every layer unless window == 'lswa')."""
        L = self.n_layer
        if self.window != "lswa":
            return (True,) * L
        return tuple(min(i, L - 1 - i) % 4 == 0 for i in range(L))

    def resolved_probe_layers(self) -> tuple[int, ...]:
        return tuple(sorted({i % self.n_layer for i in self.probe_layers}))

    @classmethod
    def preset(cls, name: str, **override) -> ModelConfig:
        """The baseline architecture at a preset's dimensions (spectral_jax.presets)."""
        return base_config(get_preset(name).model, **override)


def base_config(dims: ModelDims, **override) -> ModelConfig:
    """The baseline architecture at a preset's dimensions (prefix sequence length), with `override`."""
    fields = dict(
        n_layer=dims.n_layer,
        n_head=dims.n_head,
        head_dim=dims.head_dim,
        d_model=dims.d_model,
        seq_len=dims.prefix_seq_len,
        attn_block_size=dims.attn_block_size,
        window_min=dims.window_min,
        window_max=dims.window_max,
        window_quantum=dims.window_quantum,
        fixed_window=dims.fixed_window,
        compute_dtype=dims.compute_dtype,
        fp8_grad_scale=dims.fp8_grad_scale,
        vocab_size=dims.vocab_size,
        eot_id=dims.eot_id,
    )
    return ModelConfig(**{**fields, **override})
