"""Models written the way a user of spectral-jax would write them, with nothing of ours inside: no `.config`, no
sow, no probe hooks. The lens tests probe these, a Hugging Face Flax GPT-2 (linen) and equinox's own MLP."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx


class Block(nnx.Module):
    """Pre-LayerNorm transformer block built from flax's own NNX layers."""

    def __init__(self, d: int, heads: int, rngs: nnx.Rngs):
        self.ln1 = nnx.LayerNorm(d, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(heads, d, decode=False, rngs=rngs)
        self.ln2 = nnx.LayerNorm(d, rngs=rngs)
        self.up = nnx.Linear(d, 4 * d, rngs=rngs)
        self.down = nnx.Linear(4 * d, d, rngs=rngs)

    def __call__(self, x):
        mask = nnx.make_causal_mask(jnp.ones(x.shape[:-1], jnp.int32))
        x = x + self.attn(self.ln1(x), mask=mask)
        return x + self.down(jax.nn.gelu(self.up(self.ln2(x))))


class TinyLM(nnx.Module):
    """A 2-block causal LM over a small vocabulary."""

    def __init__(self, vocab: int = 64, d: int = 32, heads: int = 2, n_blocks: int = 2, seq: int = 16, *, seed=0):
        rngs = nnx.Rngs(seed)
        self.tok = nnx.Embed(vocab, d, rngs=rngs)
        self.pos = nnx.Embed(seq, d, rngs=rngs)
        self.blocks = nnx.List([Block(d, heads, rngs) for _ in range(n_blocks)])
        self.ln_f = nnx.LayerNorm(d, rngs=rngs)
        self.head = nnx.Linear(d, vocab, use_bias=False, rngs=rngs)

    def hidden_states(self, tokens):
        h = self.tok(tokens) + self.pos(jnp.arange(tokens.shape[-1]))
        outs = []
        for blk in self.blocks:
            h = blk(h)
            outs.append(h)
        return outs

    def __call__(self, tokens):
        return self.head(self.ln_f(self.hidden_states(tokens)[-1]))


def lm_loss(model, window):
    """Mean next-token cross-entropy of ONE window (T+1 tokens): the per-example loss a user writes."""
    logits = model(window[None, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, window[None, 1:]).mean()


def mlp_params(key, sizes=(12, 24, 5)):
    """A plain params dict of a tanh MLP."""
    keys = jax.random.split(key, len(sizes) - 1)
    return {
        f"layer{i}": {"w": jax.random.normal(k, (a, b)) / jnp.sqrt(a), "b": jnp.zeros(b)}
        for i, (k, a, b) in enumerate(zip(keys, sizes[:-1], sizes[1:]))
    }


def mlp_hidden(params, x):
    h = x
    for i in range(len(params) - 1):
        h = jnp.tanh(h @ params[f"layer{i}"]["w"] + params[f"layer{i}"]["b"])
    return h


def mlp_loss(params, example):
    x, y = example
    last = params[f"layer{len(params) - 1}"]
    logits = mlp_hidden(params, x) @ last["w"] + last["b"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y)
