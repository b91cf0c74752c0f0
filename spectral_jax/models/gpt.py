"""One NNX GPT whose ModelConfig switches realise every family of the modded-nanogpt chain.

Parameters are float32; matmuls run in `config.compute_dtype`; the residual stream stays float32 and
`__call__` returns float32 logits after the logit head. Parameter names (the optimizer groups by path):
`embed` (token embedding; the tied head is `embed.attend`), `pos_embed`, `vte` / `value_embeds`,
`lm_head` (kernel (d, V)), `blocks` (nnx.List of Block: `attn.{c_attn | c_q,c_k,c_v}`, `attn.c_proj`,
`mlp.c_fc`, `mlp.c_proj`, all kernels laid out (in, out)), and scalars `attn.lamb` (0-D), `attn.mix` (2,),
`lambdas` (2,), `skip_weights` (L/2,).

Probes (no forked model). Every block sows its residual output as `block_out`; the blocks listed in
`config.probe_layers` (default: the last) also sow the INPUT of each probed matrix and perturb its OUTPUT:
  attn: `attn_in` (input of W_Q/W_K/W_V), `c_q_out`, `c_v_out` (or `c_attn_out` when fused),
        `c_proj_in` / `c_proj_out` (W_O);   mlp: `c_proj_in` / `c_proj_out` (MLP output projection).
Sow and perturb only act inside `nnx.capture` (elsewhere they are skipped, so a plain jitted train step
never mutates the module and never retraces). Block outputs of a forward pass:

    logits, acts = nnx.capture(model, nnx.Intermediate)(tokens_BxT)
    block_out = acts["blocks"][l]["block_out"][0]          # (B, T, D); sow stores a 1-tuple

W_O input and output gradient from one batched backward (spectral_jax.probes implements this):

    _, zeros = nnx.capture(model, nnx.Perturbation)(tokens_BxT)           # perturbation slots
    def loss_fn(perturb):                                                 # w.r.t. the perturbations only
        logits, acts = nnx.capture(model, nnx.Intermediate, init=perturb)(tokens_BxT)
        return cross_entropy_per_sequence(logits, targets_BxT).sum(), acts
    g, acts = jax.grad(loss_fn, has_aux=True)(zeros)
    a_BxTxD = acts["blocks"][L-1]["attn"]["c_proj_in"][0]
    g_BxTxD = g["blocks"][L-1]["attn"]["c_proj_out"][...]  # = dL_b/d(W_O output) of each sequence's mean loss
    grad_W_O[b] = a[b].T @ g[b]      # per-sequence mean-CE gradient, kernel layout (in, out)
(Differentiating the SUM of per-sequence losses keeps this exact when some targets are ignored; differentiating the
batch-mean loss would weight sequences by their valid-token counts.)
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from spectral_jax.models import attention
from spectral_jax.models.config import ModelConfig
from spectral_jax.models.head import (  # noqa: F401  (re-exported: these lived here before head.py)
    cross_entropy,
    cross_entropy_per_sequence,
    default_chunk,
    fp8_matmul,
    fused_mean_nll,
    fused_token_nll,
    head_logits,
    logit_head,
    mean_nll,
)
from spectral_jax.models.matmul import matmul
from spectral_jax.models.rotary import apply_rotary, rotary_frequencies, rotary_tables  # noqa: F401


# ---- small pure helpers -----------------------------------------------------------------------
def rms_norm(x: jax.Array) -> jax.Array:
    """Parameter-free RMSNorm over the last axis, eps = finfo(x.dtype).eps (torch's default)."""
    eps = jnp.finfo(x.dtype).eps
    x32 = x.astype(jnp.float32)
    return (x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)).astype(x.dtype)


# ---- initialisers -------------------------------------------------------------------------------
def _uniform(bound: float):
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def _fan_in_uniform(key, shape, dtype=jnp.float32):
    """PyTorch nn.Linear default, for an (in, out) kernel."""
    return _uniform(1.0 / math.sqrt(shape[0]))(key, shape, dtype)


def _normal(std: float):
    return jax.nn.initializers.normal(std)


_zeros = jax.nn.initializers.zeros


def _hidden_init(config: ModelConfig):
    return _normal(0.02) if config.init == "gpt2" else _fan_in_uniform


def _out_proj_init(config: ModelConfig):
    """Attention/MLP output projections: zero (pytorch families) or N(0, 0.02/sqrt(2L)) (GPT-2 init)."""
    return _normal(0.02 / math.sqrt(2 * config.n_layer)) if config.init == "gpt2" else _zeros


def _embed_init(config: ModelConfig):
    """Token embedding: N(0,0.02) (GPT-2), the tied Linear's U(+-1/sqrt(d)), or N(0,1) when untied."""
    if config.init == "gpt2":
        return _normal(0.02)
    return _uniform(1.0 / math.sqrt(config.d_model)) if config.tied_head else _normal(1.0)


def _aux_embed_init(config: ModelConfig):
    """Learned positions and value embeddings: N(0,1) (torch Embedding) or N(0,0.02) (GPT-2)."""
    return _normal(0.02) if config.init == "gpt2" else _normal(1.0)


def _linear(d_in, d_out, config, init, rngs):
    return nnx.Linear(
        d_in,
        d_out,
        use_bias=False,
        kernel_init=init,
        dtype=jnp.dtype(config.compute_dtype),
        param_dtype=jnp.float32,
        rngs=rngs,
    )


def _joint_linear(x, linears) -> list[jax.Array]:
    """Bias-free nnx.Linear layers sharing one input as ONE matmul against their concatenated kernels, split
    back: the same values and parameter gradients as calling each (the parameters stay separate, so optimizer
    groups and probes are unchanged), but one (N, d) x (d, sum of widths) product instead of several skinny ones
    (the tiny tier's q/k/v projections were 64 x 64 each, ~40 GFLOP/s on CPU)."""
    first = linears[0]
    kernel = jnp.concatenate([lin.kernel[...] for lin in linears], axis=1)
    x, kernel = first.promote_dtype((x, kernel), dtype=first.dtype)
    return jnp.split(matmul(x, kernel), np.cumsum([lin.out_features for lin in linears])[:-1].tolist(), axis=-1)


def _apply(linear: nnx.Linear, x: jax.Array) -> jax.Array:
    """A bias-free nnx.Linear through `matmul.matmul` (nnx.Linear's dtype promotion and values, with a backward
    whose products XLA CPU runs as plain matmuls)."""
    x, kernel = linear.promote_dtype((x, linear.kernel[...]), dtype=linear.dtype)
    return matmul(x, kernel)


# ---- capture helpers ----------------------------------------------------------------------------
def _capturing(module: nnx.Module) -> bool:
    """True only inside nnx.capture (which sets `__captures__`); outside it sow/perturb would add
    attributes to the module, change its graph and make every jitted step retrace."""
    return hasattr(module, "__captures__")


def _sow(module: nnx.Module, name: str, x: jax.Array) -> None:
    if _capturing(module):
        module.sow(nnx.Intermediate, name, x)


def _perturb(module: nnx.Module, name: str, x: jax.Array) -> jax.Array:
    return module.perturb(name, x) if _capturing(module) else x


# ---- modules ------------------------------------------------------------------------------------
class MLP(nnx.Module):
    """Linear(d, r*d) -> ReLU^2 -> Linear(r*d, d), no biases."""

    def __init__(self, config: ModelConfig, *, probe: bool, rngs: nnx.Rngs):
        hidden = config.mlp_ratio * config.d_model
        self.c_fc = _linear(config.d_model, hidden, config, _hidden_init(config), rngs)
        self.c_proj = _linear(hidden, config.d_model, config, _out_proj_init(config), rngs)
        self.probe = probe

    def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
        h_BxTxF = jnp.square(jax.nn.relu(_apply(self.c_fc, x_BxTxD)))
        if self.probe:
            _sow(self, "c_proj_in", h_BxTxF)
        y_BxTxD = _apply(self.c_proj, h_BxTxF)
        return _perturb(self, "c_proj_out", y_BxTxD) if self.probe else y_BxTxD


class CausalSelfAttention(nnx.Module):
    """Multi-head attention with the configured positions, value mixing, mask and scale."""

    def __init__(self, config: ModelConfig, *, probe: bool, rngs: nnx.Rngs):
        d = config.d_model
        init = _hidden_init(config)
        if config.fused_qkv:
            self.c_attn = _linear(d, 3 * d, config, init, rngs)
        else:
            self.c_q = _linear(d, d, config, init, rngs)
            self.c_k = _linear(d, d, config, init, rngs)
            self.c_v = _linear(d, d, config, init, rngs)
        self.c_proj = _linear(d, d, config, _out_proj_init(config), rngs)
        if config.value_mix in ("block0", "vte", "vte_half"):
            self.lamb = nnx.Param(jnp.asarray(0.5, jnp.float32))
        elif config.value_mix == "sparse":
            self.mix = nnx.Param(jnp.asarray([0.5, 0.5], jnp.float32))
        self.config = config
        self.probe = probe

    def _qkv(self, x_BxTxD):
        if self.probe:
            _sow(self, "attn_in", x_BxTxD)
        if self.config.fused_qkv:
            qkv = _apply(self.c_attn, x_BxTxD)
            qkv = _perturb(self, "c_attn_out", qkv) if self.probe else qkv
            return jnp.split(qkv, 3, axis=-1)
        q, k, v = _joint_linear(x_BxTxD, (self.c_q, self.c_k, self.c_v))
        if self.probe:
            q, v = _perturb(self, "c_q_out", q), _perturb(self, "c_v_out", v)
        return q, k, v

    def _mix_values(self, v, v1, ve):
        """block0: (1-lamb) v + lamb v1 (block 0's raw v); vte: same with the layer's chunk;
        sparse: mix0 v + mix1 ve (mix0 v where the layer has no table)."""
        mix = self.config.value_mix
        if mix == "sparse":
            m = self.mix[...].astype(v.dtype)
            return m[0] * v + (0 if ve is None else m[1] * ve.astype(v.dtype))
        other = (v if v1 is None else v1) if mix == "block0" else ve
        if mix == "none" or other is None:
            return v
        lamb = self.lamb[...].astype(v.dtype)
        return (1 - lamb) * v + lamb * other.astype(v.dtype)

    def __call__(self, x_BxTxD, *, window, docs_BxT, v1_BxTxHxK=None, ve_BxTxD=None):
        """Returns (attention output, this layer's raw values for block-0 value mixing)."""
        cfg = self.config
        B, T, _ = x_BxTxD.shape
        heads = lambda t: t.reshape(B, T, cfg.n_head, cfg.head_dim)
        q, k, v = map(heads, self._qkv(x_BxTxD))
        v_raw = v
        ve = None if ve_BxTxD is None else heads(ve_BxTxD)
        v = self._mix_values(v, v1_BxTxHxK, ve)
        if cfg.qk_norm:
            q, k = rms_norm(q), rms_norm(k)
        if cfg.pos != "learned":
            inv_freq = rotary_frequencies(cfg.head_dim, cfg.pos, cfg.rope_base)
            sign = -1.0 if cfg.pos == "trunc_rope" else 1.0
            q, k = apply_rotary(q, inv_freq, sign), apply_rotary(k, inv_freq, sign)
        if cfg.window == "none":
            y = attention.dense_attention(q, k, v, scale=cfg.scale, docs_BxT=docs_BxT)
        else:
            y = attention.banded_attention(
                q,
                k,
                v,
                window=cfg.fixed_window if cfg.window == "fixed" else window,
                max_window=cfg.max_window,
                block_size=cfg.attn_block_size,
                granularity="token" if cfg.window in ("fixed", "token") else "block",
                docs_BxT=docs_BxT,
                scale=cfg.scale,
            )
        y_BxTxD = y.reshape(B, T, cfg.d_model)
        if self.probe:
            _sow(self, "c_proj_in", y_BxTxD)
        out = _apply(self.c_proj, y_BxTxD)
        return (_perturb(self, "c_proj_out", out) if self.probe else out), v_raw


class Block(nnx.Module):
    """Pre-norm block: optional x0 lambdas, attention (absent in the no-attention layer), ReLU^2 MLP."""

    def __init__(self, config: ModelConfig, layer: int, *, rngs: nnx.Rngs):
        probe = layer in config.resolved_probe_layers()
        has_attn = layer != config.no_attn_layer
        self.attn = CausalSelfAttention(config, probe=probe, rngs=rngs) if has_attn else None
        self.mlp = MLP(config, probe=probe, rngs=rngs)
        if config.x0_lambdas:
            self.lambdas = nnx.Param(jnp.asarray([1.0, 0.0], jnp.float32))

    def __call__(self, x_BxTxD, x0_BxTxD, *, window, docs_BxT, v1_BxTxHxK=None, ve_BxTxD=None):
        if hasattr(self, "lambdas"):
            lam = self.lambdas[...]
            x_BxTxD = lam[0] * x_BxTxD + lam[1] * x0_BxTxD
        v = None
        if self.attn is not None:
            y, v = self.attn(
                rms_norm(x_BxTxD), window=window, docs_BxT=docs_BxT, v1_BxTxHxK=v1_BxTxHxK, ve_BxTxD=ve_BxTxD
            )
            x_BxTxD = x_BxTxD + y
        x_BxTxD = x_BxTxD + self.mlp(rms_norm(x_BxTxD))
        _sow(self, "block_out", x_BxTxD)
        return x_BxTxD, v


class GPT(nnx.Module):
    """Decoder-only LM; `config` switches select the family (see spectral_jax.models.config)."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        d, V, L = config.d_model, config.vocab_size, config.n_layer
        self.config = config
        self.embed = nnx.Embed(V, d, embedding_init=_embed_init(config), param_dtype=jnp.float32, rngs=rngs)
        if config.pos == "learned":
            self.pos_embed = nnx.Embed(config.seq_len, d, embedding_init=_aux_embed_init(config), rngs=rngs)
        if config.n_value_chunks:
            self.vte = nnx.Embed(V, d * config.n_value_chunks, embedding_init=_aux_embed_init(config), rngs=rngs)
        if config.value_mix == "sparse":
            self.value_embeds = nnx.List(
                [
                    nnx.Embed(V, d, embedding_init=_aux_embed_init(config), rngs=rngs)
                    for _ in range(config.value_embed_tables)
                ]
            )
        self.blocks = nnx.List([Block(config, i, rngs=rngs) for i in range(L)])
        if config.unet:
            self.skip_weights = nnx.Param(jnp.ones(L // 2, jnp.float32))
        if not config.tied_head:
            head_init = _normal(0.02) if config.init == "gpt2" else _zeros
            self.lm_head = _linear(d, V, config, head_init, rngs)

    # -- input checks -----------------------------------------------------------------------------
    def _check_inputs(self, T: int, window) -> None:
        cfg = self.config
        if T > cfg.seq_len:
            raise ValueError(
                f"sequence length {T} exceeds config.seq_len {cfg.seq_len}; "
                "feed shorter sequences or build the model with a larger seq_len"
            )
        if cfg.window != "none":
            attention.check_blocked(T, cfg.attn_block_size)
        if window is None or cfg.window in ("none", "fixed"):
            return
        try:
            w = int(window)
        except jax.errors.JAXTypeError:
            return
        if not 1 <= w <= cfg.window_max:
            raise ValueError(
                f"window {w} outside [1, window_max={cfg.window_max}]; "
                "use a schedule value (attention.scheduled_window) or raise window_max"
            )

    def _layer_windows(self, window) -> list:
        """Run-time window (tokens) of every layer; LSWA short layers get max(1, long//2) blocks."""
        cfg = self.config
        if cfg.window in ("none", "fixed"):
            return [None] * cfg.n_layer
        w = jnp.asarray(cfg.window_max if window is None else window, jnp.int32)
        if cfg.window != "lswa":
            return [w] * cfg.n_layer
        bs = cfg.attn_block_size
        long_blocks = jnp.maximum(1, w // bs)
        short = attention.short_window_blocks(long_blocks) * bs
        return [long_blocks * bs if is_long else short for is_long in cfg.long_window_layers()]

    def _value_embeds(self, tokens_BxT) -> list:
        cfg = self.config
        layout = cfg.value_embed_layout()
        if cfg.n_value_chunks:
            chunks = jnp.split(self.vte(tokens_BxT), cfg.n_value_chunks, axis=-1)
            return [None if i is None else chunks[i] for i in layout]
        if cfg.value_mix == "sparse":
            tables = [emb(tokens_BxT) for emb in self.value_embeds]
            return [None if i is None else tables[i] for i in layout]
        return [None] * cfg.n_layer

    def head_weight(self) -> jax.Array:
        """The head's (d, V) weight: the tied embedding transposed, or the untied kernel."""
        return self.embed.embedding[...].T if self.config.tied_head else self.lm_head.kernel[...]

    def head(self, x_BxTxD) -> jax.Array:
        """Logits (float32) from final hidden states already through the last rms_norm: the LM head with the
        family's tying, FP8 path and soft-cap (`head.head_logits`). Public for probes that perturb the last
        hidden state."""
        return head_logits(self.config, self.head_weight(), x_BxTxD)

    def _head_inputs(self, tokens_BxT, targets_BxT, window, chunk):
        """(head weight, hidden states (B*T, D), targets (B*T,), loss chunk) for the fused head + loss."""
        h_BxTxD = self.hidden(tokens_BxT, window=window)
        B, T, D = h_BxTxD.shape
        chunk = chunk or default_chunk(self.config.vocab_size)
        return self.head_weight(), h_BxTxD.reshape(B * T, D), targets_BxT.reshape(B * T), min(chunk, B * T)

    def token_nll(
        self,
        tokens_BxT: jax.Array,
        targets_BxT: jax.Array,
        *,
        window: jax.Array | int | None = None,
        chunk: int | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """(per-token NLL, validity mask), each (B, T), of the logits `__call__` would return, through the fused
        chunked head + cross-entropy (`head.fused_token_nll`; `chunk` tokens at a time, default
        `head.default_chunk`). Targets < 0 are ignored (NLL 0). Training, evaluation and the probes use this."""
        nll_N = fused_token_nll(self.config, *self._head_inputs(tokens_BxT, targets_BxT, window, chunk))
        return nll_N.reshape(targets_BxT.shape), targets_BxT >= 0

    def loss(
        self,
        tokens_BxT: jax.Array,
        targets_BxT: jax.Array,
        *,
        window: jax.Array | int | None = None,
        chunk: int | None = None,
    ) -> jax.Array:
        """Mean token cross-entropy over the batch's valid targets (float32), as in training: the same value as
        mean_nll(*token_nll(...)), through `head.fused_mean_nll` (gradients formed in the forward) except for
        the FP8 head."""
        if self.config.fp8_head:
            return mean_nll(*self.token_nll(tokens_BxT, targets_BxT, window=window, chunk=chunk))
        return fused_mean_nll(self.config, *self._head_inputs(tokens_BxT, targets_BxT, window, chunk))

    def __call__(self, tokens_BxT: jax.Array, *, window: jax.Array | int | None = None) -> jax.Array:
        """Logits (B, T, V) float32. `window`: current attention window in tokens (traced int32 is fine;
        None = window_max; ignored by dense and fixed-window models)."""
        return self.head(self.hidden(tokens_BxT, window=window))

    def hidden(self, tokens_BxT: jax.Array, *, window: jax.Array | int | None = None) -> jax.Array:
        """The head's input (B, T, D): the last block's output through the final rms_norm."""
        cfg = self.config
        T = tokens_BxT.shape[1]
        self._check_inputs(T, window)
        x = self.embed(tokens_BxT).astype(jnp.float32)
        if cfg.pos == "learned":
            x = x + self.pos_embed(jnp.arange(T))[None]
        if cfg.embed_norm:
            x = rms_norm(x)
        x0 = x
        docs = attention.document_ids(tokens_BxT, cfg.eot_id) if cfg.doc_mask else None
        windows = self._layer_windows(window)
        value_embeds = self._value_embeds(tokens_BxT)
        half = cfg.n_layer // 2
        skips, v1 = [], None
        for i, block in enumerate(self.blocks):
            if cfg.unet and i >= half:
                x = x + self.skip_weights[...][i - half] * skips.pop()
            x, v = block(x, x0, window=windows[i], docs_BxT=docs, v1_BxTxHxK=v1, ve_BxTxD=value_embeds[i])
            if i == 0 and cfg.value_mix == "block0":
                v1 = v
            if cfg.unet and i < half:
                skips.append(x)
        return rms_norm(x)
