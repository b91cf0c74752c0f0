"""The fused, chunked head + cross-entropy: float64 NumPy math, and equality with the dense logits path."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from spectral_jax.models import GPT, head, make_config
from spectral_jax.models.head import (
    cross_entropy,
    default_chunk,
    fused_mean_nll,
    fused_token_nll,
    head_logits,
    token_nll,
)


def _numpy_nll_and_grads(cfg, w, x, y):
    """Per-token NLL of the soft-capped logits and the gradients of their sum, in float64."""
    w, x = w.astype(np.float64), x.astype(np.float64)
    z = x @ w
    if cfg.logit_head == "tanh":
        t = np.tanh(z / cfg.logit_cap)
        logits, dlog_dz = cfg.logit_cap * t, 1 - t**2
    elif cfg.logit_head == "sigmoid":
        s = 1 / (1 + np.exp(-z / (0.25 * cfg.logit_cap * np.sqrt(cfg.d_model))))
        logits, dlog_dz = cfg.logit_cap * s, s * (1 - s) / (0.25 * np.sqrt(cfg.d_model))
    else:
        logits, dlog_dz = z, np.ones_like(z)
    m = logits.max(-1, keepdims=True)
    lse = (m + np.log(np.exp(logits - m).sum(-1, keepdims=True)))[:, 0]
    valid = y >= 0
    safe = np.where(valid, y, 0)
    nll = np.where(valid, lse - logits[np.arange(len(y)), safe], 0.0)
    dlogits = np.exp(logits - lse[:, None])
    dlogits[np.arange(len(y)), safe] -= 1
    dz = dlogits * valid[:, None] * dlog_dz
    return nll, x.T @ dz, dz @ w.T


@pytest.mark.parametrize("logit_head", ["none", "tanh", "sigmoid"])
@pytest.mark.parametrize("chunk", [8, 24, 64])
def test_fused_matches_float64_numpy(logit_head, chunk):
    cfg = dataclasses.replace(
        make_config("betterwin", "tiny"), logit_head=logit_head, logit_cap=5.0, vocab_size=96, d_model=16, head_dim=8
    )
    rng = np.random.default_rng(0)
    n = 50  # not a multiple of any chunk: the padded tail must not leak into values or gradients
    x = rng.normal(size=(n, 16)).astype(np.float32)
    w = rng.normal(scale=0.5, size=(16, 96)).astype(np.float32)
    y = rng.integers(0, 96, n)
    y[[3, 17, 49]] = -1
    nll_ref, dw_ref, dx_ref = _numpy_nll_and_grads(cfg, w, x, y)

    fused = jax.jit(lambda w, x: fused_token_nll(cfg, w, x, jnp.asarray(y), chunk))
    np.testing.assert_allclose(fused(w, x), nll_ref, rtol=1e-5, atol=1e-5)
    assert float(fused(w, x)[3]) == 0.0
    dw, dx = jax.jit(jax.grad(lambda w, x: fused(w, x).sum(), (0, 1)))(w, x)
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-4, atol=1e-5 * np.abs(dw_ref).max())
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-4, atol=1e-5 * np.abs(dx_ref).max())
    # w held fixed (as the probes' perturbation gradients): the backward skips dW, dX is unchanged
    dx_only = jax.jit(jax.grad(lambda x: fused(jnp.asarray(w), x).sum()))(x)
    np.testing.assert_allclose(dx_only, dx, rtol=1e-6, atol=1e-7 * np.abs(dx_ref).max())


@pytest.mark.parametrize("logit_head,cap", [("none", 5.0), ("tanh", 5.0), ("sigmoid", 5.0), ("tanh", 90.0)])
@pytest.mark.parametrize("chunk", [8, 64])
def test_fused_mean_matches_float64_numpy(logit_head, cap, chunk):
    """The training loss whose forward forms the gradients by hand: value, dW and dX of a scaled mean
    (cotangent 3, not 1), and dX alone with w held fixed; soft-caps small enough for the max-free log-sum-exp
    and one too large for it (cap 90: exp(90) overflows float32)."""
    cfg = dataclasses.replace(
        make_config("betterwin", "tiny"), logit_head=logit_head, logit_cap=cap, vocab_size=96, d_model=16, head_dim=8
    )
    assert head._bounded(cfg) == (logit_head != "none" and cap < 50)
    rng = np.random.default_rng(4)
    n = 50
    x = rng.normal(size=(n, 16)).astype(np.float32)
    w = rng.normal(scale=0.5, size=(16, 96)).astype(np.float32)
    y = rng.integers(0, 96, n)
    y[[0, 20, 21]] = -1
    nll_ref, dw_ref, dx_ref = _numpy_nll_and_grads(cfg, w, x, y)
    n_valid = (y >= 0).sum()
    mean = jax.jit(lambda w, x: fused_mean_nll(cfg, w, x, jnp.asarray(y), chunk))
    np.testing.assert_allclose(mean(w, x), nll_ref.sum() / n_valid, rtol=1e-5)
    dw, dx = jax.jit(jax.grad(lambda w, x: 3.0 * mean(w, x), (0, 1)))(w, x)
    np.testing.assert_allclose(dw, 3 * dw_ref / n_valid, rtol=1e-4, atol=1e-5 * np.abs(dw_ref).max() / n_valid)
    np.testing.assert_allclose(dx, 3 * dx_ref / n_valid, rtol=1e-4, atol=1e-5 * np.abs(dx_ref).max() / n_valid)
    dx_only = jax.jit(jax.grad(lambda x: 3.0 * mean(jnp.asarray(w), x)))(x)
    np.testing.assert_allclose(dx_only, dx, rtol=1e-6, atol=1e-7 * np.abs(dx_ref).max())


def test_max_free_log_sum_exp_only_where_exp_cannot_overflow():
    """The soft-capped families at every tier take the max-free log-sum-exp; uncapped ones never do."""
    for tier in ("tiny", "d12", "d48"):
        assert head._bounded(make_config("betterwin", tier))  # cap 30 + log(50,304) = 40.8 < 80
        assert head._bounded(make_config("softcap", tier)) and head._bounded(make_config("attnscale", tier))
        assert not head._bounded(make_config("baseline", tier))
    big = dataclasses.replace(make_config("betterwin", "tiny"), logit_cap=1e4)
    x = jnp.full((2, 16), 1.0)
    w = jnp.full((16, big.vocab_size), 1.0)  # every logit at the cap of 1e4: any exp(z) would be inf
    nll = fused_mean_nll(big, w, x, jnp.asarray([1, 2]), 8)
    np.testing.assert_allclose(nll, np.log(big.vocab_size), rtol=1e-5)


def test_fused_equals_dense_token_nll_under_vmap():
    cfg = make_config("softcap", "tiny")
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(3, 40, 64)), jnp.float32)
    w = jnp.asarray(rng.normal(scale=0.1, size=(64, cfg.vocab_size)), jnp.float32)
    y = jnp.asarray(rng.integers(0, cfg.vocab_size, (3, 40)))
    per_row = jax.vmap(lambda x, y: fused_token_nll(cfg, w, x, y, 16))(x, y)
    dense, _ = token_nll(head_logits(cfg, w, x), y)
    np.testing.assert_allclose(per_row, dense, rtol=1e-5, atol=1e-5)


SMALL = dict(n_layer=2, vocab_size=512, eot_id=0)  # compile time; the head is the same at any depth


def _perturbed(cfg, seed=0):
    """A model whose zero-initialised projections and head are perturbed, so every gradient is non-zero."""
    graphdef, params = nnx.split(GPT(cfg, rngs=nnx.Rngs(seed)), nnx.Param)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    leaves = [a + 0.02 * jax.random.normal(k, a.shape, a.dtype) for a, k in zip(leaves, keys)]
    return graphdef, jax.tree.unflatten(tree, leaves)


# float32 families with each head variant: untied (none), tied (baseline), tanh softcap, sigmoid; FP8 below
@pytest.mark.parametrize("family", ["baseline", "untied", "softcap", "sublr"])
def test_model_loss_equals_cross_entropy_of_logits(family):
    cfg = make_config(family, "tiny", **SMALL)
    graphdef, params = _perturbed(cfg)
    T = min(cfg.seq_len, 128)
    tokens = jnp.asarray(np.random.default_rng(2).integers(1, cfg.vocab_size, (2, T + 1)))
    x, y = tokens[:, :-1], tokens[:, 1:].at[0, 7].set(-1)
    dense = jax.jit(jax.value_and_grad(lambda p: cross_entropy(nnx.merge(graphdef, p)(x), y)))
    fused = jax.jit(jax.value_and_grad(lambda p: nnx.merge(graphdef, p).loss(x, y, chunk=48)))
    (l_d, g_d), (l_f, g_f) = dense(params), fused(params)
    np.testing.assert_allclose(l_f, l_d, rtol=1e-6)
    scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(g_d))
    for a, b in zip(jax.tree.leaves(g_d), jax.tree.leaves(g_f)):
        np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-5 * scale)


def test_fp8_head_fused_loss_matches_dense_within_e5m2_rounding():
    cfg = make_config("fp8head", "tiny", **SMALL)
    graphdef, params = _perturbed(cfg)
    tokens = jnp.asarray(np.random.default_rng(3).integers(1, cfg.vocab_size, (2, 129)))
    x, y = tokens[:, :-1], tokens[:, 1:]
    dense = jax.jit(jax.value_and_grad(lambda p: cross_entropy(nnx.merge(graphdef, p)(x), y)))
    fused = jax.jit(jax.value_and_grad(lambda p: nnx.merge(graphdef, p).loss(x, y, chunk=64)))
    (l_d, g_d), (l_f, g_f) = dense(params), fused(params)
    np.testing.assert_allclose(l_f, l_d, rtol=1e-6)
    # the backward casts each chunk's logit gradient to e5m2 (2 mantissa bits): rounding flips, not errors
    for a, b in zip(jax.tree.leaves(g_d), jax.tree.leaves(g_f)):
        assert float(jnp.linalg.norm(b - a)) <= 2e-2 * float(jnp.linalg.norm(a)) + 1e-12


def test_default_chunk_bounds_the_logit_tile():
    assert default_chunk(8192, "cpu") == 512
    assert default_chunk(50_304, "cpu") == 80
    assert default_chunk(50_304, "gpu") * 50_304 <= 1 << 28
