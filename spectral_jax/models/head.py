"""The LM head and its cross-entropy: logit soft-caps, the FP8 head matmul, and a fused, token-chunked
head + cross-entropy that never holds the (tokens x vocabulary) logits.

Why fused: the head is the largest matrix of a small model (57 % of the tiny tier's matmul FLOPs) and its
(N, V) logits are the largest tensors of a step; writing and re-reading them (logits, soft-cap, softmax, their
gradients) cost more than the matmuls on CPU, and at d12 (T = 65,536, V = 50,304) they would be 13 GB of float32
per sequence. `fused_token_nll` runs the head and the loss over chunks of `chunk` tokens whose logits stay in
cache; its backward recomputes each chunk's logits (one extra head matmul) and forms dX and dW from them. The
loss is the same function of the same logits (`head_logits` is the model's only head), so training, evaluation
and the probes' per-sample losses share it. `fused_mean_nll` is the training loss (`GPT.loss`) as a scalar: its
forward forms dW and dX while each chunk is in cache, so the backward does not recompute the logits.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from spectral_jax.models.config import ModelConfig
from spectral_jax.models.matmul import xt_dot


def logit_head(z: jax.Array, config: ModelConfig) -> jax.Array:
    """Logit soft-cap in float32: none, cap*tanh(z/cap) or cap*sigmoid(z/(cap/4*sqrt(d)))."""
    return _capped_with_slope(config, z)[0]


def _capped_with_slope(config: ModelConfig, u: jax.Array) -> tuple[jax.Array, jax.Array | None]:
    """(logit_head(u), its elementwise derivative or None for the identity), float32. One definition of the
    soft-caps: `logit_head` takes the value (autodiff drops the unused slope), the fused training head both."""
    u = u.astype(jnp.float32)
    cap = config.logit_cap
    if config.logit_head == "tanh":
        t = jnp.tanh(u / cap)
        return cap * t, 1.0 - t * t
    if config.logit_head == "sigmoid":
        s = 0.25 * cap * math.sqrt(config.d_model)
        sg = jax.nn.sigmoid(u / s)
        return cap * sg, (cap / s) * sg * (1.0 - sg)
    return u, None


# ---- FP8 head -----------------------------------------------------------------------------------
@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def fp8_matmul(x_NxD, w_DxV, x_scale: float, w_scale: float, grad_scale: float) -> jax.Array:
    """x @ w through float8 like record 19: e4m3fn operands scaled by x_scale / w_scale, bf16 out.

    The backward casts the output gradient (times grad_scale) to e5m2 and forms dX (bf16) and dW (fp32)
    from fp8 products with the reference's scales. One code path: XLA accepts fp8 dot_general with float32
    accumulation on CPU too, where it upcasts the fp8 operands exactly (a faithful emulation); on GPUs with
    fp8 units XLA may lower the same dot_general to an fp8 GEMM.
    """
    return _fp8_forward(x_NxD, w_DxV, x_scale, w_scale, grad_scale)[0]


def _dot(a, b, contract):
    return jax.lax.dot_general(a, b, (contract, ((), ())), preferred_element_type=jnp.float32)


def _fp8_forward(x_NxD, w_DxV, x_scale, w_scale, grad_scale):
    x_f8 = (x_NxD * x_scale).astype(jnp.float8_e4m3fn)
    w_f8 = (w_DxV * w_scale).astype(jnp.float8_e4m3fn)
    out_NxV = (_dot(x_f8, w_f8, ((1,), (0,))) * (1.0 / (x_scale * w_scale))).astype(jnp.bfloat16)
    return out_NxV, (x_f8, w_f8, jnp.zeros((), x_NxD.dtype), jnp.zeros((), w_DxV.dtype))


def _fp8_backward(x_scale, w_scale, grad_scale, residuals, g_NxV):
    x_f8, w_f8, x_proto, w_proto = residuals
    g_f8 = (g_NxV.astype(jnp.float32) * grad_scale).astype(jnp.float8_e5m2)
    dx_NxD = (_dot(g_f8, w_f8, ((1,), (1,))) * (1.0 / (grad_scale * w_scale))).astype(jnp.bfloat16)
    dw_DxV = _dot(x_f8, g_f8, ((0,), (0,))) * (1.0 / (grad_scale * x_scale))
    return dx_NxD.astype(x_proto.dtype), dw_DxV.astype(w_proto.dtype)


fp8_matmul.defvjp(_fp8_forward, _fp8_backward)


def head_logits(config: ModelConfig, w_DxV: jax.Array, x_NxD: jax.Array) -> jax.Array:  # x: (..., D)
    """Float32 logits of final hidden states x (already through the last rms_norm) under head weight w_DxV
    (the tied embedding transposed, or the untied kernel): FP8 matmul, tied float32 dot or untied dot in the
    compute dtype (as nnx.Embed.attend / nnx.Linear do), then the family's soft-cap."""
    if config.fp8_head:
        lead = x_NxD.shape[:-1]
        z = fp8_matmul(
            x_NxD.reshape(-1, x_NxD.shape[-1]), w_DxV, config.fp8_x_scale, config.fp8_w_scale, config.fp8_grad_scale
        ).reshape(*lead, -1)
    else:
        dtype = _head_dtype(config, w_DxV, x_NxD)
        z = jnp.dot(x_NxD.astype(dtype), w_DxV.astype(dtype))
    return logit_head(z, config)


def _head_dtype(config: ModelConfig, w_DxV, x_NxD):
    """The head matmul's dtype: float32 when tied (as nnx.Embed.attend), else the compute dtype."""
    return jnp.result_type(x_NxD, w_DxV) if config.tied_head else jnp.dtype(config.compute_dtype)


# ---- cross-entropy ------------------------------------------------------------------------------
def _picked(logits_NxV: jax.Array, safe_N: jax.Array) -> jax.Array:
    # a one-hot select instead of take_along_axis: its transpose is a fused elementwise op, not a scatter
    # into the (N, V) gradient followed by a transposed copy, which dominated a tiny CPU step
    hit_NxV = jnp.arange(logits_NxV.shape[-1], dtype=safe_N.dtype) == safe_N[..., None]
    return jnp.sum(jnp.where(hit_NxV, logits_NxV, 0.0), axis=-1)


def token_nll(logits_BxTxV: jax.Array, targets_BxT: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-token negative log-likelihood in float32 (0 where target < 0) and the validity mask."""
    logits = logits_BxTxV.astype(jnp.float32)
    valid_BxT = targets_BxT >= 0
    safe_BxT = jnp.where(valid_BxT, targets_BxT, 0)
    return jnp.where(valid_BxT, jax.nn.logsumexp(logits, axis=-1) - _picked(logits, safe_BxT), 0.0), valid_BxT


def mean_nll(nll_BxT: jax.Array, valid_BxT: jax.Array) -> jax.Array:
    """Mean over every valid token of the batch."""
    return nll_BxT.sum() / jnp.maximum(valid_BxT.sum(), 1)


def mean_nll_per_sequence(nll_BxT: jax.Array, valid_BxT: jax.Array) -> jax.Array:
    """Mean over the valid tokens of each sequence."""
    return nll_BxT.sum(-1) / jnp.maximum(valid_BxT.sum(-1), 1)


def cross_entropy_per_sequence(logits_BxTxV: jax.Array, targets_BxT: jax.Array) -> jax.Array:
    """Mean token cross-entropy of each sequence in float32; targets < 0 are ignored."""
    return mean_nll_per_sequence(*token_nll(logits_BxTxV, targets_BxT))


def cross_entropy(logits_BxTxV: jax.Array, targets_BxT: jax.Array) -> jax.Array:
    """Mean token cross-entropy over every valid token of the batch, float32."""
    return mean_nll(*token_nll(logits_BxTxV, targets_BxT))


# ---- fused, chunked head + cross-entropy --------------------------------------------------------
# Logits per chunk: 2^22 float32 (16 MiB) on CPU, i.e. 512 tokens at tiny, the fastest of the chunk sizes
# timed there (a chunk's logits stay in cache); 2^28 (1 GiB) elsewhere, where the chunk only bounds memory (d12:
# 5,336 tokens x 50,304).
_CHUNK_LOGITS = {"cpu": 1 << 22}
_CHUNK_LOGITS_DEFAULT = 1 << 28


def default_chunk(vocab_size: int, backend: str | None = None) -> int:
    """Tokens per chunk of `fused_token_nll` on `backend` (default: jax.default_backend())."""
    budget = _CHUNK_LOGITS.get(backend or jax.default_backend(), _CHUNK_LOGITS_DEFAULT)
    return max(8, budget // vocab_size // 8 * 8)


def _chunked(chunk: int, *arrays_N):
    """Pad the leading axis N to a multiple of `chunk` (targets with -1, the rest with 0), then (K, chunk, ...)."""
    n = arrays_N[0].shape[0]
    pad = -n % chunk
    out = []
    for a in arrays_N:
        fill = -1 if jnp.issubdtype(a.dtype, jnp.integer) else 0
        a = jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1), constant_values=fill)
        out.append(a.reshape(-1, chunk, *a.shape[1:]))
    return out


def _bounded(config: ModelConfig) -> bool:
    """Soft-capped logits lie within +-cap: exp(z) summed over V cannot overflow float32 (e^88) when
    cap + log V < 80, so the log-sum-exp needs no max pass (the same value up to rounding: float32's relative
    precision does not depend on the shift)."""
    return config.logit_head in ("tanh", "sigmoid") and config.logit_cap + math.log(config.vocab_size) < 80


def _nll_from_lse(z_CxV, lse_C, y_C):
    """Per-token NLL lse - z[y], 0 where y < 0. Forward-only (the fused heads' custom VJPs), so the target's
    logit is a gather, not a one-hot select."""
    valid_C = y_C >= 0
    picked_C = jnp.take_along_axis(z_CxV, jnp.where(valid_C, y_C, 0)[:, None], axis=-1)[:, 0]
    return jnp.where(valid_C, lse_C - picked_C, 0.0)


def _nll_and_lse(config: ModelConfig, z_CxV, y_C):
    """(per-token NLL, 0 where y < 0; logsumexp) of one chunk's float32 logits."""
    if _bounded(config):
        lse_C = jnp.log(jnp.sum(jnp.exp(z_CxV), axis=-1))
    else:
        lse_C = jax.nn.logsumexp(z_CxV, axis=-1)
    return _nll_from_lse(z_CxV, lse_C, y_C), lse_C


def _nll_and_softmax(config: ModelConfig, z_CxV, y_C):
    """(per-token NLL, 0 where y < 0; softmax(z)) of one chunk's float32 logits, for the paths that form the
    gradient in the forward. Bounded heads exponentiate once: softmax = e^z / sum(e^z) reuses the log-sum-exp's
    e^z instead of a second exp pass over the chunk."""
    if not _bounded(config):
        nll_C, lse_C = _nll_and_lse(config, z_CxV, y_C)
        return nll_C, jnp.exp(z_CxV - lse_C[:, None])
    e_CxV = jnp.exp(z_CxV)
    s_C = jnp.sum(e_CxV, axis=-1)
    return _nll_from_lse(z_CxV, jnp.log(s_C), y_C), e_CxV * (1.0 / s_C)[:, None]


def _dlogits_from_softmax(p_CxV, y_C, g_C):
    """g * dNLL/dz = g * (softmax(z) - onehot(y)) per token, 0 where y < 0."""
    hit_CxV = jnp.arange(p_CxV.shape[-1], dtype=y_C.dtype) == y_C[:, None]
    return (p_CxV - hit_CxV) * jnp.where(y_C >= 0, g_C, 0.0)[:, None]


def _dlogits(z_CxV, lse_C, y_C, g_C):
    """_dlogits_from_softmax with the softmax from the chunk's saved log-sum-exp."""
    return _dlogits_from_softmax(jnp.exp(z_CxV - lse_C[:, None]), y_C, g_C)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 4))
def fused_token_nll(config: ModelConfig, w_DxV: jax.Array, x_NxD: jax.Array, y_N: jax.Array, chunk: int) -> jax.Array:
    """Per-token NLL (0 where y < 0) of head_logits(config, w, x) against y, `chunk` tokens at a time.

    Equal to token_nll(head_logits(config, w, x), y) up to float32 rounding (tested), values and gradients
    w.r.t. w and x; memory O(chunk x V) instead of O(N x V)."""
    return _scan_forward(config, w_DxV, x_NxD, y_N, chunk)[0]


def _fused_forward(config, w_DxV, x_NxD, y_N, chunk):
    """custom_vjp forward with symbolic zeros: each primal arrives as CustomVJPPrimal(value, perturbed).

    When w is not differentiated (the probes differentiate perturbations or one block's kernel) and the head is
    linear in its cotangent (every head but FP8, whose backward rounds g * dz to e5m2), the forward also forms
    each token's dNLL/dx = J_x^T (softmax - onehot) while the chunk's logits are in cache, and the backward is a
    scaling by g: no second head pass. Otherwise the backward recomputes the chunk's logits."""
    w, x, y = w_DxV.value, x_NxD.value, y_N.value
    if w_DxV.perturbed or config.fp8_head:
        nll_N, lse_KxC = _scan_forward(config, w, x, y, chunk)
        return nll_N, {"recompute": (w, x, y, lse_KxC)}  # the key is static pytree structure
    nll_N, _, dx_NxD = _scan_with_grads(config, w, x, y, chunk, jnp.float32(1.0), with_dw=False)
    return nll_N, {"scale": dx_NxD}


def _scan_with_grads(config, w_DxV, x_NxD, y_N, chunk, g, *, with_dw: bool):
    """(per-token NLL (N,), dW (None unless with_dw), dX (N, D)) of the NLL scaled by the scalar g per token, each
    chunk's gradients formed while its logits are in cache (no second head pass)."""
    if config.fp8_head:
        raise ValueError(
            "the FP8 head's backward rounds g * dz to e5m2, which this path does not; "
            "differentiate fused_token_nll, whose backward recomputes through fp8_matmul"
        )
    x_KxCxD, y_KxC = _chunked(chunk, x_NxD, y_N)
    dtype = _head_dtype(config, w_DxV, x_NxD)
    w_c = w_DxV.astype(dtype)

    def grads(x_CxD, y_C):
        """head_logits' products written out: the soft-cap's slope from its forward, dW through xt_dot."""
        x_c = x_CxD.astype(dtype)
        z_CxV, slope_CxV = _capped_with_slope(config, x_c @ w_c)
        nll_C, p_CxV = _nll_and_softmax(config, z_CxV, y_C)
        du_CxV = _dlogits_from_softmax(p_CxV, y_C, jnp.full_like(nll_C, g))
        du_CxV = (du_CxV if slope_CxV is None else du_CxV * slope_CxV).astype(dtype)
        dw_c = xt_dot(x_c, du_CxV).astype(w_DxV.dtype) if with_dw else None
        return nll_C, dw_c, (du_CxV @ w_c.T).astype(x_CxD.dtype)

    def step(dw_DxV, xy):
        nll_C, dw_c, dx_CxD = grads(*xy)
        return (dw_DxV + dw_c if with_dw else None), (nll_C, dx_CxD)

    dw_DxV, (nll_KxC, dx_KxCxD) = jax.lax.scan(step, jnp.zeros_like(w_DxV) if with_dw else None, (x_KxCxD, y_KxC))
    n = x_NxD.shape[0]
    return nll_KxC.reshape(-1)[:n], dw_DxV, dx_KxCxD.reshape(-1, x_NxD.shape[-1])[:n]


def _scan_forward(config, w_DxV, x_NxD, y_N, chunk):
    """(per-token NLL (N,), per-chunk logsumexp (K, chunk))."""
    x_KxCxD, y_KxC = _chunked(chunk, x_NxD, y_N)
    _, (nll_KxC, lse_KxC) = jax.lax.scan(
        lambda _, xy: (None, _nll_and_lse(config, head_logits(config, w_DxV, xy[0]), xy[1])), None, (x_KxCxD, y_KxC)
    )
    return nll_KxC.reshape(-1)[: x_NxD.shape[0]], lse_KxC


def _fused_backward(config, chunk, residuals, g_N):
    if isinstance(g_N, jax.custom_derivatives.SymbolicZero):
        return None, None, None
    if "scale" in residuals:
        return None, g_N[:, None] * residuals["scale"], None
    w_DxV, x_NxD, y_N, lse_KxC = residuals["recompute"]
    x_KxCxD, y_KxC, g_KxC = _chunked(chunk, x_NxD, y_N, g_N)

    def step(dw_DxV, inputs):
        x_CxD, y_C, lse_C, g_C = inputs
        z_CxV, pull = jax.vjp(lambda w, x: head_logits(config, w, x), w_DxV, x_CxD)
        dw_c, dx_CxD = pull(_dlogits(z_CxV, lse_C, y_C, g_C))
        return dw_DxV + dw_c, dx_CxD

    dw_DxV, dx_KxCxD = jax.lax.scan(step, jnp.zeros_like(w_DxV), (x_KxCxD, y_KxC, lse_KxC, g_KxC))
    return dw_DxV, dx_KxCxD.reshape(-1, x_NxD.shape[-1])[: x_NxD.shape[0]], None


fused_token_nll.defvjp(_fused_forward, _fused_backward, symbolic_zeros=True)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 4))
def fused_mean_nll(config: ModelConfig, w_DxV: jax.Array, x_NxD: jax.Array, y_N: jax.Array, chunk: int) -> jax.Array:
    """mean_nll(fused_token_nll(config, w, x, y, chunk), y >= 0): the training loss, as a scalar.

    Under differentiation its forward forms dW and dX (of the mean, i.e. with the 1/n_valid cotangent the
    per-token path's backward would receive) while each chunk's logits are in cache, and the backward only
    scales them by the scalar cotangent: three head matmuls and one pass over the logits instead of four and
    two. Not for the FP8 head, whose
    backward rounds g * dz to e5m2: GPT.loss takes fused_token_nll there."""
    return mean_nll(_scan_forward(config, w_DxV, x_NxD, y_N, chunk)[0], y_N >= 0)


def _mean_forward(config, w_DxV, x_NxD, y_N, chunk):
    w, x, y = w_DxV.value, x_NxD.value, y_N.value
    n_valid = jnp.maximum((y >= 0).sum(), 1).astype(jnp.float32)
    # dW only when the head weight is differentiated (training); activations-only gradients skip it
    nll_N, dw_DxV, dx_NxD = _scan_with_grads(config, w, x, y, chunk, 1.0 / n_valid, with_dw=w_DxV.perturbed)
    return mean_nll(nll_N, y >= 0), (dw_DxV, dx_NxD)


def _mean_backward(config, chunk, residuals, g):
    if isinstance(g, jax.custom_derivatives.SymbolicZero):
        return None, None, None
    dw_DxV, dx_NxD = residuals
    return (None if dw_DxV is None else g * dw_DxV), g * dx_NxD, None


fused_mean_nll.defvjp(_mean_forward, _mean_backward, symbolic_zeros=True)
