"""Models of the modded-nanogpt chain: configuration, families, the NNX GPT and its attention kernels."""

from __future__ import annotations

import math

import jax
from flax import nnx

from spectral_jax.models.config import ModelConfig, base_config
from spectral_jax.models.families import FAMILIES, Family, family_chain, make_config
from spectral_jax.models.gpt import GPT, cross_entropy, cross_entropy_per_sequence


def abstract_model(config: ModelConfig) -> GPT:
    """The GPT with ShapeDtypeStruct leaves (nnx.eval_shape): shapes without allocating parameters."""
    return nnx.eval_shape(lambda: GPT(config, rngs=nnx.Rngs(0)))


def count_params(model: GPT) -> int:
    """Trainable parameters of a (possibly abstract) model; a tied head is the embedding, counted once."""
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))


def param_count(family: str, tier: str) -> int:
    """Parameter count of `family` at `tier`, from shapes only (no allocation)."""
    return count_params(abstract_model(make_config(family, tier)))


__all__ = [
    "FAMILIES",
    "Family",
    "GPT",
    "ModelConfig",
    "abstract_model",
    "base_config",
    "count_params",
    "cross_entropy",
    "cross_entropy_per_sequence",
    "family_chain",
    "make_config",
    "param_count",
]
