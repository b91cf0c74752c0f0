"""The modded-nanogpt intervention chain as config deltas, and `make_config`, which folds them onto a preset.

`FAMILIES` is the chain of docs/method.md §4 as an ordered mapping family -> Family(parent, delta, note).
`make_config(family, preset)` starts from the preset's base config (baseline architecture at its dimensions) and
folds every delta from the root down to `family`. A delta maps field names to values; the key "optim" holds a dict
of OptimConfig field deltas; a `Derived` value is computed from the partially folded config and the preset's
dimensions (e.g. the trunk sequence length, the scaled no-attention layer).
"""

from __future__ import annotations

import dataclasses
import types
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from spectral_jax.errors import UserError
from spectral_jax.models.config import ModelConfig, base_config
from spectral_jax.presets import ModelDims, get_preset


@dataclasses.dataclass(frozen=True)
class Derived:
    """A delta value computed from the config folded so far and the tier."""

    fn: Callable[[ModelConfig, ModelDims], Any]
    text: str

    def __repr__(self) -> str:
        return f"Derived({self.text})"


TRUNK_SEQ_LEN = Derived(lambda cfg, tier: tier.trunk_seq_len, "tier trunk seq_len")
PREFIX_REFERENCE_BATCH = Derived(
    lambda cfg, tier: 8 * tier.trunk_seq_len // tier.prefix_seq_len,
    "8 x trunk T / prefix T sequences: the trunk's 8-sequence step in tokens",
)
SCALED_NO_ATTN = Derived(lambda cfg, tier: min(cfg.n_layer - 1, cfg.n_layer // 2 + 1), "min(L-1, L//2+1)")


@dataclasses.dataclass(frozen=True)
class Family:
    """One link of the chain: the parent it extends, the fields it changes, and why."""

    parent: str | None
    delta: Mapping[str, Any]
    note: str


def _family(parent: str | None, note: str, **delta) -> Family:
    return Family(parent, types.MappingProxyType(delta), note)


_MUON_LRS = dict(lr_embed=0.6, lr_head=0.008, lr_matrix=0.04, lr_scalar=0.04)

FAMILIES: Mapping[str, Family] = OrderedDict(
    [
        (
            "baseline",
            _family(
                None,
                "GPT-2 small: learned positions, fused qkv, tied head; AdamW 6e-4 wd 0.1, no clip (paper LR)",
                pos="learned",
                fused_qkv=True,
                tied_head=True,
                init="pytorch",
                optim=dict(
                    kind="adamw",
                    lr=6e-4,
                    weight_decay=0.1,
                    grad_clip=None,
                    schedule="cosine",
                    num_iterations=60_000,
                    reference_batch=PREFIX_REFERENCE_BATCH,
                ),
            ),
        ),
        (
            "rope",
            _family(
                "baseline",
                "rotary + per-head QK RMSNorm, separate q/k/v, GPT-2 N(0,0.02) init; c_proj bias omitted",
                pos="rope",
                qk_norm=True,
                fused_qkv=False,
                init="gpt2",
                optim=dict(weight_decay=0.0, grad_clip=1.0, num_iterations=50_000),
            ),
        ),
        (
            "muon",
            _family(
                "rope",
                "Muon on block matrices (0.00036), AdamW 0.0036 on the tied embedding/head",
                init="pytorch",
                optim=dict(
                    kind="muon",
                    lr_embed=0.0036,
                    lr_head=0.0036,
                    lr_matrix=0.00036,
                    schedule="warmdown",
                    warmdown_frac=0.1,
                    momentum=0.95,
                    momentum_start=0.95,
                    momentum_warmup_steps=0,
                ),
            ),
        ),
        (
            "untied",
            _family(
                "muon",
                "untied zero-init lm_head, N(0,1) embedding, rms_norm after the embedding",
                tied_head=False,
                embed_norm=True,
                optim=dict(lr_embed=0.3, lr_head=0.002, lr_matrix=0.02, num_iterations=30_000),
            ),
        ),
        (
            "valuemix",
            _family(
                "untied",
                "block-0 value mixing (lamb 0.5), x0 lambdas [1,0], 30*tanh logit cap, momentum warmup",
                value_mix="block0",
                x0_lambdas=True,
                logit_head="tanh",
                logit_cap=30.0,
                optim=dict(
                    **_MUON_LRS,
                    momentum_start=0.85,
                    momentum_warmup_steps=500,
                    warmdown_frac=0.03,
                    num_iterations=50_000,
                ),
            ),
        ),
        (
            "unet",
            _family(
                "valuemix",
                "U-Net skips with learnable skip_weights ones(L/2)",
                unet=True,
                optim=dict(warmdown_frac=0.1, num_iterations=20_000),
            ),
        ),
        (
            "fixedwin",
            _family(
                "unet",
                "trunk sequence length, document-aware causal window of fixed_window tokens",
                seq_len=TRUNK_SEQ_LEN,
                window="fixed",
                doc_mask=True,
                optim=dict(reference_batch=8, num_iterations=20_000),
            ),
        ),
        (
            "flexwin",
            _family(
                "fixedwin",
                "token window warmed up window_min -> window_max in window_quantum steps",
                window="token",
                window_warmup_steps=4000,
                optim=dict(num_iterations=40_000),
            ),
        ),
        (
            "vte",
            _family(
                "flexwin",
                "value token embeddings: L chunks of d, one per layer, replace block-0 values",
                value_mix="vte",
                optim=dict(num_iterations=10_000),
            ),
        ),
        (
            "betterwin",
            _family(
                "vte",
                "L/2 value chunks with mirrored decoder reuse; block-sparse window (same token semantics)",
                value_mix="vte_half",
                optim=dict(num_iterations=20_000),
            ),
        ),
        (
            "sparsev",
            _family(
                "betterwin",
                "3 value tables in the scaled sparse pattern, mix [0.5,0.5], no-attention layer, "
                "block-granular windows, Adam betas (0.8,0.95) for embed/scalar",
                value_mix="sparse",
                no_attn_layer=SCALED_NO_ATTN,
                window="block",
                window_warmup_steps=2000,
                optim=dict(
                    betas_embed=(0.8, 0.95), betas_scalar=(0.8, 0.95), momentum_warmup_steps=300, num_iterations=3000
                ),
            ),
        ),
        (
            "truncrope",
            _family(
                "sparsev",
                "truncated rotary: head_dim/4 frequencies 1..1/1024 then head_dim/4 identity pairs",
                pos="trunc_rope",
                window_warmup_steps=3000,
                optim=dict(num_iterations=10_000),
            ),
        ),
        ("softcap", _family("truncrope", "logit cap 15*tanh(z/15)", logit_cap=15.0)),
        ("fp8head", _family("softcap", "FP8 lm_head matmul (e4m3 forward, e5m2 gradient)", fp8_head=True)),
        ("lswa", _family("fp8head", "long/short block windows by layer (short = max(1, long//2))", window="lswa")),
        ("attnscale", _family("lswa", "attention scale 0.12 (scale_training/18)", attn_scale=0.12)),
        (
            "sublr",
            _family(
                "lswa",
                "attention scale 0.12 + 30*sigmoid(z/(7.5*sqrt(d))) head; sub-LRs are dead code upstream",
                attn_scale=0.12,
                logit_head="sigmoid",
                logit_cap=30.0,
            ),
        ),
        (
            "lswa_adam",
            _family(
                "lswa",
                "control: Adam(0.004, (0.9,0.95)) on block matrices instead of Muon",
                optim=dict(kind="adam", lr_matrix=0.004, betas_matrix=(0.9, 0.95), momentum_warmup_steps=0),
            ),
        ),
    ]
)


def family_chain(family: str) -> list[str]:
    """Family names from the root down to `family`."""
    if family not in FAMILIES:
        raise UserError(f"unknown family {family!r}; choose one of {list(FAMILIES)}")
    chain = []
    name: str | None = family
    while name is not None:
        chain.append(name)
        name = FAMILIES[name].parent
    return chain[::-1]


def _fold(cfg: ModelConfig, delta: Mapping[str, Any], tier: ModelDims) -> ModelConfig:
    changes = {}
    for key, value in delta.items():
        if isinstance(value, Derived):
            value = value.fn(cfg, tier)
        if key == "optim" and isinstance(value, Mapping):
            value = dataclasses.replace(
                cfg.optim, **{k: v.fn(cfg, tier) if isinstance(v, Derived) else v for k, v in value.items()}
            )
        changes[key] = value
    return cfg.replace(**changes)


_DIMENSION_FIELDS = frozenset(
    {"vocab_size", "eot_id", "n_layer", "n_head", "head_dim", "d_model", "mlp_ratio", "compute_dtype"}
)


def make_config(family: str, tier: str | ModelDims, **override) -> ModelConfig:
    """Fold the chain of deltas from the root down to `family` onto a preset's base (`tier`: a preset name or
    its ModelDims), then `override`.

    Dimension overrides (n_layer, d_model, vocab_size, ...) also go into the base, so derived deltas such as
    the no-attention layer follow them."""
    tier_spec = get_preset(tier).model if isinstance(tier, str) else tier
    cfg = base_config(tier_spec, **{k: v for k, v in override.items() if k in _DIMENSION_FIELDS})
    for name in family_chain(family):
        cfg = _fold(cfg, FAMILIES[name].delta, tier_spec)
    return _fold(cfg, override, tier_spec) if override else cfg
