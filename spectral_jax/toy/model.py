"""The toy transformer chain Baseline -> RoPE -> Muon -> Untied as configurations of the main NNX GPT.

docs/method.md §6.2: 2 layers, 4 heads x 32 = 128 wide, ReLU^2 MLP 128 -> 256 -> 128 (ff_mult 2), parameter-free
rms_norm pre-norm, zero-initialised attention and MLP output projections, no biases, dense causal attention,
vocabulary 1,024, context 64, no logit cap. Each stage is the main chain's family of the same name
(`spectral_jax.models.FAMILIES`) folded onto toy dimensions, so the toy reuses the LM's modules unchanged:

  baseline  tied head, learned positions, fused qkv                      401,408 parameters
  rope      separate q/k/v, per-head QK rms_norm, rotary (half split, base 10000), still tied   393,216
  muon      the RoPE model; the optimizer changes (spectral_jax.toy.train)                     393,216
  untied    separate zero-initialised lm_head, rms_norm right after the embedding            524,288

Initialisation follows the reference toy (torch defaults): Linear kernels U(+-1/sqrt(fan_in)), token embedding
N(0, 1) (tied or not), learned positions N(0, 0.02). The main GPT's "pytorch" init draws a TIED embedding from the
tied Linear's U(+-1/sqrt(d)) and positions from N(0, 1) (the LM reference), so `init_toy_model` redraws those two
tables after construction; everything else is the main GPT's own init.

The representation h used by every toy probe is the final normalised hidden state, the input of the LM head:
h = rms_norm(residual stream after the last block), shape (B, L, 128). `hidden_and_logits` reads it through NNX's
capture of the last block's `block_out` (no forked model); spectral_jax.toy.probes.last_states reads its last
position in chunks without the LM head.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from spectral_jax.errors import UserError
from spectral_jax.models import GPT, ModelConfig, make_config
from spectral_jax.models.gpt import rms_norm
from spectral_jax.optim import OptimConfig

STAGES: tuple[str, ...] = ("baseline", "rope", "muon", "untied")
"""The toy chain in order; each name is also the main chain's family that realises it."""

STAGE_OPTIMIZER = {"baseline": "adamw", "rope": "adamw", "muon": "muon", "untied": "muon"}
EXPECTED_PARAMS = {"baseline": 401_408, "rope": 393_216, "muon": 393_216, "untied": 524_288}
"""Reference parameter counts (docs/method.md §6.2)."""


@dataclasses.dataclass(frozen=True)
class ToyDims:
    """Toy model dimensions (defaults = the reference's Track A transformer)."""

    vocab_size: int = 1024
    seq_len: int = 64
    d_model: int = 128
    n_head: int = 4
    n_layer: int = 2
    ff_mult: int = 2

    def __post_init__(self):
        for name in ("vocab_size", "seq_len", "d_model", "n_head", "n_layer", "ff_mult"):
            if getattr(self, name) < 1:
                raise UserError(f"ToyDims.{name} must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.n_head:
            raise UserError(f"d_model {self.d_model} is not divisible by n_head {self.n_head}")


def check_stage(stage: str) -> str:
    if stage not in STAGES:
        raise UserError(f"unknown toy stage {stage!r}; choose one of {list(STAGES)}")
    return stage


def toy_config(stage: str, dims: ToyDims = ToyDims()) -> ModelConfig:
    """ModelConfig of a toy stage: the main family `stage` at toy dimensions, torch-default init, float32.

    `optim` is replaced by the toy recipe's anchors (constant LR 3e-4, no clipping, betas (0.9, 0.999); Muon
    groups: matrices at 50x); spectral_jax.toy.train.toy_optimizer is what actually builds the optimizer (its
    AdamW groups carry weight decay 0.01, which OptimConfig cannot express)."""
    check_stage(stage)
    kind = STAGE_OPTIMIZER[stage]
    optim = OptimConfig(
        kind=kind,
        lr=3e-4,
        weight_decay=0.0,
        lr_embed=3e-4,
        lr_head=3e-4,
        lr_matrix=50 * 3e-4,
        lr_scalar=3e-4,
        betas=(0.9, 0.999),
        betas_embed=(0.9, 0.999),
        betas_scalar=(0.9, 0.999),
        momentum=0.95,
        momentum_start=0.95,
        momentum_warmup_steps=0,
        nesterov=True,
        grad_clip=None,
        schedule="constant",
        reference_batch=32,
    )
    return make_config(
        stage,
        "tiny",
        vocab_size=dims.vocab_size,
        eot_id=0,
        n_layer=dims.n_layer,
        n_head=dims.n_head,
        head_dim=dims.d_model // dims.n_head,
        d_model=dims.d_model,
        mlp_ratio=dims.ff_mult,
        seq_len=dims.seq_len,
        compute_dtype="float32",
        init="pytorch",
        logit_head="none",
        optim=optim,
    )


def init_toy_model(config: ModelConfig, seed: int = 0) -> GPT:
    """The main GPT built from a toy config, with the reference toy's embedding init (module docstring)."""
    key = jax.random.PRNGKey(seed)
    model = GPT(config, rngs=nnx.Rngs(params=jax.random.fold_in(key, 0)))
    emb = model.embed.embedding
    emb[...] = jax.random.normal(jax.random.fold_in(key, 1), emb[...].shape, jnp.float32)
    if config.pos == "learned":
        pos = model.pos_embed.embedding
        pos[...] = 0.02 * jax.random.normal(jax.random.fold_in(key, 2), pos[...].shape, jnp.float32)
    return model


def build_toy_model(stage: str, seed: int = 0, dims: ToyDims = ToyDims()) -> GPT:
    """init_toy_model(toy_config(stage, dims), seed)."""
    return init_toy_model(toy_config(stage, dims), seed)


def toy_param_count(stage: str, dims: ToyDims = ToyDims()) -> int:
    """Parameters of a toy stage, counted on an abstract model (no allocation)."""
    cfg = toy_config(stage, dims)
    abstract = nnx.eval_shape(lambda: GPT(cfg, rngs=nnx.Rngs(0)))
    return sum(int(x.size) for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))


@functools.partial(jax.jit, static_argnums=0)
def _hidden_and_logits(graphdef, state, x_BxL):
    model = nnx.merge(graphdef, state)
    logits, acts = nnx.capture(model, nnx.Intermediate)(x_BxL)
    last = model.config.n_layer - 1
    return rms_norm(acts["blocks"][last]["block_out"][0]), logits


def hidden_and_logits(model: GPT, x_BxL) -> tuple[jax.Array, jax.Array]:
    """(h, logits): the final normalised hidden state (B, L, D) and the logits (B, L, V) of one forward."""
    graphdef, state = nnx.split(model)
    return _hidden_and_logits(graphdef, state, jnp.asarray(x_BxL, jnp.int32))
