"""Masks, banded attention kernel and window schedules against brute-force references."""

import math

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from spectral_jax.models import attention, make_config

B, T, H, K, BS, MAX_W = 2, 64, 2, 8, 8, 40


def _random_docs(rng, batch, length, eot=7, vocab=16):
    tokens = rng.integers(0, vocab, (batch, length))
    tokens[0, :3] = eot  # consecutive EOTs: one-token documents
    return tokens, attention.document_ids(jnp.asarray(tokens), eot)


IMPLS = ["banded", "chunked", "chunked_remat", "chunked_scan", "dense"]


def _impl(monkeypatch, impl):
    """The kernel name for banded_attention; chunked variants take chunks of 16 queries (4 per sequence):
    "chunked" keeps its tiles' probabilities for the backward (these sizes are under REMAT_BYTES),
    "chunked_remat" rematerialises them, "chunked_scan" is the scan path (long sequences), rematerialised."""
    if impl.startswith("chunked"):
        monkeypatch.setattr(attention, "CHUNK_QUERIES", 16)
        monkeypatch.setattr(attention, "MAX_STATIC_CHUNKS", 0 if impl == "chunked_scan" else 64)
        monkeypatch.setattr(attention, "REMAT_BYTES", attention.REMAT_BYTES if impl == "chunked" else 0)
    return "chunked" if impl.startswith("chunked") else impl


_masked = jax.jit(lambda q, k, v, mask: attention.masked_attention(q, k, v, mask, scale=0.3))


def _qkv(seed=0):
    keys = jax.random.split(jax.random.key(seed), 3)
    return [jax.random.normal(k, (B, T, H, K), jnp.float32) for k in keys]


def test_document_ids_eot_starts_its_document():
    tokens = jnp.asarray([[5, 9, 3, 9, 9, 4]])
    np.testing.assert_array_equal(attention.document_ids(tokens, 9), [[0, 1, 1, 2, 3, 3]])


def test_reference_mask_small_cases():
    token = attention.reference_mask(5, window=2)
    np.testing.assert_array_equal(token.sum(1), [1, 2, 2, 2, 2])
    assert token[4, 3] and not token[4, 2] and not token[3, 4]
    block = attention.reference_mask(8, window=4, granularity="block", block_size=2)
    assert block[7, 4] and not block[7, 3]  # q block 3 sees key blocks 2..3
    docs = np.array([0, 0, 1, 1, 1])
    masked = attention.reference_mask(5, window=None, docs_T=docs)
    assert masked[4, 2] and not masked[4, 1] and masked[1, 0]


@pytest.mark.parametrize("granularity,windows", [("token", [1, 7, 8, 9, 23, 40]), ("block", [8, 16, 24, 40])])
@pytest.mark.parametrize("use_docs", [False, True])
@pytest.mark.parametrize("impl", IMPLS)
def test_banded_matches_dense_with_brute_force_mask(granularity, windows, use_docs, impl, monkeypatch):
    impl = _impl(monkeypatch, impl)
    q, k, v = _qkv()
    tokens, docs = _random_docs(np.random.default_rng(1), B, T)
    traces = []

    @jax.jit
    def banded(q, k, v, docs, window):
        traces.append(1)
        return attention.banded_attention(
            q,
            k,
            v,
            window=window,
            max_window=MAX_W,
            block_size=BS,
            granularity=granularity,
            docs_BxT=docs if use_docs else None,
            scale=0.3,
            impl=impl,
        )

    for w in windows:
        out = banded(q, k, v, docs, jnp.int32(w))
        masks = np.stack(
            [
                attention.reference_mask(
                    T,
                    window=w,
                    granularity=granularity,
                    block_size=BS,
                    docs_T=np.asarray(docs[b]) if use_docs else None,
                )
                for b in range(B)
            ]
        )
        ref = _masked(q, k, v, masks)
        np.testing.assert_allclose(out, ref, atol=2e-5, rtol=2e-5)
    assert len(traces) == 1, "changing the window must not retrace"


@pytest.mark.parametrize("backend,narrow,wide", [("cpu", "chunked", "chunked"), ("gpu", "chunked", "dense")])
def test_auto_impl_choice(monkeypatch, backend, narrow, wide):
    """auto: chunked on CPU; elsewhere dense only when the band spans half the sequence, else chunked (never
    banded, whose saved residuals do not fit at d12)."""
    calls = []
    real_chunked, real_dpa = attention._chunked_attention, jax.nn.dot_product_attention
    monkeypatch.setattr(
        attention, "_chunked_attention", lambda *a, **kw: calls.append("chunked") or real_chunked(*a, **kw)
    )
    monkeypatch.setattr(jax.nn, "dot_product_attention", lambda *a, **kw: calls.append("dense") or real_dpa(*a, **kw))
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    q, k, v = _qkv(4)
    for max_window, expected in ((16, narrow), (MAX_W, wide)):  # bands of 3 x 8 < T/2 = 32, and 48 >= 32
        calls.clear()
        attention.banded_attention(q, k, v, window=8, max_window=max_window, block_size=BS, scale=0.3)
        assert calls[:1] == ([] if expected == "banded" else [expected])
    with pytest.raises(ValueError, match="impl"):
        attention.banded_attention(q, k, v, window=8, max_window=16, block_size=BS, scale=0.3, impl="flash")


def test_chunk_size_divides_the_sequence():
    assert attention._chunk_size(512, 16) == 64
    assert attention._chunk_size(48, 16) == 48 and attention._chunk_size(80, 16) == 16
    assert attention._chunk_size(65_536, 128) == 128
    assert attention._chunk_size(65_536, 128, "gpu") == 2048 and attention._chunk_size(1_024, 128, "gpu") == 1024


def test_accelerators_scan_the_chunks(monkeypatch):
    """Off CPU the chunked kernel scans even a few chunks (bounded compile time, no saved per-chunk biases),
    with the same values as the CPU's static loop."""
    monkeypatch.setattr(attention, "CHUNK_QUERIES", 16)
    monkeypatch.setattr(attention, "ACCELERATOR_CHUNK_QUERIES", 16)
    q, k, v = _qkv(5)
    _, docs = _random_docs(np.random.default_rng(6), B, T)
    run = lambda: jax.jit(
        lambda q, k, v: attention.banded_attention(
            q, k, v, window=13, max_window=MAX_W, block_size=BS, docs_BxT=docs, scale=0.3, impl="chunked"
        )
    )(q, k, v)
    static = run()
    jax.clear_caches()
    monkeypatch.setattr(attention.jax, "default_backend", lambda: "gpu")
    scans = []
    real_scan = jax.lax.scan
    monkeypatch.setattr(attention.jax.lax, "scan", lambda *a, **kw: scans.append(1) or real_scan(*a, **kw))
    scanned = run()
    assert scans, "the accelerator path must scan"
    np.testing.assert_allclose(scanned, static, atol=2e-6, rtol=2e-6)


def test_band_wider_than_sequence_is_clipped():
    q, k, v = _qkv(1)
    assert attention.band_blocks(T, 10 * T, BS) == T // BS
    out = jax.jit(
        lambda q, k, v: attention.banded_attention(q, k, v, window=T, max_window=10 * T, block_size=BS, scale=0.5)
    )(q, k, v)
    causal = np.broadcast_to(attention.reference_mask(T, window=None), (B, T, T))
    ref = jax.jit(attention.masked_attention, static_argnames="scale")(q, k, v, causal, scale=0.5)
    np.testing.assert_allclose(out, ref, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_banded_gradients_match_dense(impl, monkeypatch):
    impl = _impl(monkeypatch, impl)
    q, k, v = _qkv(2)
    _, docs = _random_docs(np.random.default_rng(3), B, T)
    masks = np.stack([attention.reference_mask(T, window=13, docs_T=np.asarray(d)) for d in docs])

    def banded_loss(q, k, v):
        out = attention.banded_attention(
            q, k, v, window=13, max_window=MAX_W, block_size=BS, docs_BxT=docs, scale=0.3, impl=impl
        )
        return jnp.sum(jnp.sin(out))

    dense_loss = lambda q, k, v: jnp.sum(jnp.sin(attention.masked_attention(q, k, v, masks, scale=0.3)))
    grads_band = jax.jit(jax.grad(banded_loss, (0, 1, 2)))(q, k, v)
    grads_dense = jax.jit(jax.grad(dense_loss, (0, 1, 2)))(q, k, v)
    for g_band, g_dense in zip(grads_band, grads_dense):
        np.testing.assert_allclose(g_band, g_dense, atol=5e-5, rtol=5e-5)


def test_dense_attention_is_causal_and_doc_aware():
    q, k, v = _qkv(4)
    _, docs = _random_docs(np.random.default_rng(5), B, T)
    dense = jax.jit(attention.dense_attention, static_argnames="scale")
    masked = jax.jit(attention.masked_attention, static_argnames="scale")
    causal = np.broadcast_to(attention.reference_mask(T, window=None), (B, T, T))
    np.testing.assert_allclose(dense(q, k, v, scale=0.3), masked(q, k, v, causal, scale=0.3), atol=2e-5)
    doc_masks = np.stack([attention.reference_mask(T, window=None, docs_T=np.asarray(d)) for d in docs])
    np.testing.assert_allclose(
        dense(q, k, v, scale=0.3, docs_BxT=docs), masked(q, k, v, doc_masks, scale=0.3), atol=2e-5
    )


def test_memory_is_banded_at_long_context():
    """At T=65,536 the kernel's largest intermediate is O(T * window), not T x T."""
    spec = jax.ShapeDtypeStruct((1, 65_536, 6, 128), jnp.bfloat16)
    fn = lambda q, k, v: attention.banded_attention(
        q, k, v, window=1792, max_window=1792, block_size=128, docs_BxT=jnp.zeros((1, 65_536), jnp.int32), scale=0.1
    )
    jaxpr = jax.make_jaxpr(fn)(spec, spec, spec)
    biggest = max(math.prod(v.aval.shape) for eqn in jaxpr.eqns for v in eqn.outvars)
    assert biggest <= 6 * 65_536 * 15 * 128  # heads * T * band keys
    assert biggest < 65_536**2


def test_kernel_rejects_unblocked_length():
    q = jnp.zeros((1, 60, 1, 4))
    with pytest.raises(ValueError, match="multiple of the attention block size 16"):
        attention.banded_attention(q, q, q, window=16, max_window=32, block_size=16, scale=1.0)


def test_window_schedules_match_reference_formulas():
    for f in np.linspace(0, 1, 97):
        f = float(f)
        assert attention.token_window(f, window_min=64, window_max=1792, quantum=64) == min(
            1792, 64 * math.floor((64 + f * 1728) / 64)
        )
        assert attention.block_window_blocks(f, window_min=64, window_max=1792, block_size=128) == max(
            1, math.floor(max(128, math.floor((64 + 1728 * f) / 128) * 128) / 128)
        )
        assert attention.lswa_window_blocks(f, window_min=64, window_max=1792, block_size=128) == min(
            max(math.ceil(1728 * f / 128), 1), 14
        )
    assert attention.short_window_blocks(1) == 1 and attention.short_window_blocks(7) == 3
    assert attention.window_progress(1500, 3000) == 0.5 and attention.window_progress(9, 0) == 1.0


@pytest.mark.parametrize(
    "family,first,last", [("fixedwin", 1024, 1024), ("flexwin", 64, 1792), ("sparsev", 128, 1792), ("lswa", 128, 1792)]
)
def test_scheduled_window_d12_and_tiny(family, first, last):
    d12 = make_config(family, "d12")
    assert attention.scheduled_window(d12, 0.0) == first
    assert attention.scheduled_window(d12, 1.0) == last
    tiny = make_config(family, "tiny")
    assert attention.scheduled_window(tiny, 0.0) == first // 8
    assert attention.scheduled_window(tiny, 1.0) == last // 8
    for f in (0.0, 0.3, 1.0):
        w = attention.scheduled_window(tiny, f)
        assert 1 <= w <= tiny.max_window <= tiny.seq_len
        if family in ("sparsev", "lswa"):
            assert w % tiny.attn_block_size == 0


@pytest.mark.parametrize("spans", [((0, 8), (0, 16), (4, 24), (16, 32)), ((2, 6), (10, 14))])
def test_overlapping_slices_backward_equals_autodiff_of_slicing(spans):
    """The chunked kernel's key/value slices: values as plain slices, and the segment-wise backward (overlapping
    spans summed, positions no span covers zero) equal to autodiff's pad-and-add, also under vmap."""
    x = jax.random.normal(jax.random.key(0), (2, 3, 32, 4))
    cots = [jax.random.normal(jax.random.key(i + 1), (2, 3, hi - lo, 4)) for i, (lo, hi) in enumerate(spans)]

    def loss(x, fast):
        parts = attention._overlapping_slices(x, spans, 32) if fast else [x[:, :, lo:hi] for lo, hi in spans]
        return sum(jnp.sum(jnp.sin(p) * c) for p, c in zip(parts, cots))

    for a, b in zip(attention._overlapping_slices(x, spans, 32), [x[:, :, lo:hi] for lo, hi in spans]):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(jax.grad(loss)(x, True), jax.grad(loss)(x, False), rtol=1e-6, atol=1e-6)
    xs = jnp.stack([x, 2 * x])
    np.testing.assert_allclose(
        jax.vmap(jax.grad(lambda x: loss(x, True)))(xs),
        jax.vmap(jax.grad(lambda x: loss(x, False)))(xs),
        rtol=1e-6,
        atol=1e-6,
    )


@pytest.mark.parametrize("remat_bytes,expect", [(None, False), (0, True)])
def test_chunked_tiles_are_rematerialised_only_above_remat_bytes(remat_bytes, expect, monkeypatch):
    if remat_bytes is not None:
        monkeypatch.setattr(attention, "REMAT_BYTES", remat_bytes)
    q, k, v = _qkv(4)
    loss = lambda q, k, v: jnp.sum(
        attention.banded_attention(q, k, v, window=13, max_window=MAX_W, block_size=BS, scale=0.3, impl="chunked")
    )
    jaxpr = str(jax.make_jaxpr(jax.grad(loss, (0, 1, 2)))(q, k, v))
    assert ("checkpoint" in jaxpr or "remat" in jaxpr) == expect


def _dot_general_dims(jaxpr):
    """(lhs ndim, lhs contracting dims) of every dot_general in a jaxpr, sub-jaxprs included."""
    out = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (lhs_contract, _), _ = eqn.params["dimension_numbers"]
            out.append((eqn.invars[0].aval.ndim, tuple(lhs_contract)))
    for sub in jax.extend.core.subjaxprs(jaxpr):
        out += _dot_general_dims(sub)
    return out


@pytest.mark.parametrize("remat_bytes,plain", [(None, True), (0, False)])
def test_saved_tiles_backward_uses_only_plain_products(remat_bytes, plain, monkeypatch):
    """With saved tiles the static chunk loop's backward contracts every product over its left operand's last
    axis (dK^T = q^T dS, dV^T = (dO / l)^T e), the layout XLA CPU hands to YNNPACK; autodiff's dK = dS^T q and
    dV = P^T dO (still used by rematerialised tiles) contract over the query axis."""
    monkeypatch.setattr(attention, "CHUNK_QUERIES", 16)
    if remat_bytes is not None:
        monkeypatch.setattr(attention, "REMAT_BYTES", remat_bytes)
    q, k, v = _qkv(7)
    loss = lambda q, k, v: jnp.sum(
        jnp.sin(
            attention.banded_attention(q, k, v, window=13, max_window=MAX_W, block_size=BS, scale=0.3, impl="chunked")
        )
    )
    dims = _dot_general_dims(jax.make_jaxpr(jax.grad(loss, (0, 1, 2)))(q, k, v).jaxpr)
    assert len(dims) >= 4 * 6  # 4 chunks: 2 forward and 4 backward products each
    assert all(contract == (ndim - 1,) for ndim, contract in dims) == plain
