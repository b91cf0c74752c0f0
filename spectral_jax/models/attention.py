"""Attention masks and kernels: dense causal, document-aware windows at token or block granularity.

Mask semantics (docs/method.md §4 rows 7-15), for query position q and key position k of one sequence:
  causal      k <= q
  doc         docs[k] == docs[q], docs = cumsum(tokens == EOT) (an EOT starts the document it belongs to)
  "token"     q - k < window                                   (FixedWin, FlexWin, VTE, BetterWin)
  "block"     q // bs - k // bs < window // bs                 (SparseV..FP8Head, and each LSWA layer)
The reference's FlexAttention block masks (doc-overlap, full/partial lists, LSWA's clamped most-recent-first
block counts) are sparsity bookkeeping whose token-level result is exactly these predicates.

`banded_attention` never builds a TxT mask unless asked to: queries go in blocks of `block_size`, and each
query block attends a static band of min(n_blocks, ceil(max_window / bs) + 1) key blocks ending at its own
block, masked by the run-time `window` (a traced int32), causality and document ids. Memory is O(T *
max_window); the whole band is computed even while the warming-up window is narrower. Three kernels realise
the same predicates (tests check each against the brute-force mask, values and gradients):
  "banded"   every query block's band stacked at once: one batched matmul (B, H, T/bs, bs, band);
  "chunked"  chunks of CHUNK_QUERIES queries (ACCELERATOR_CHUNK_QUERIES off CPU), each against its own band.
             The backward keeps the chunks' probabilities while they total at most REMAT_BYTES per layer (tiny:
             4.5 MB), and beyond that recomputes them per chunk (rematerialised: the (T, band) probabilities are
             never stored). On CPU up to MAX_STATIC_CHUNKS chunks are a loop over static slices (independent
             tiles the cores run concurrently, no padded band for the first chunks; with saved probabilities, a
             hand-written backward whose products are all plain matmuls); longer sequences, and every
             sequence on accelerators, a scan. The default ("auto") on CPU, and on accelerators for long
             sequences (timings in docs/benchmarks.md);
  "dense"    the predicates as one T x T mask (jax.nn.dot_product_attention).
"auto" = chunked on CPU; elsewhere dense when the band covers at least half of the sequence, else chunked. Not
banded: its backward keeps every layer's (T, band) scores, probabilities, mask and banded k / v copies. At d12
BetterWin (T = 65,536, band 1,920) the whole model's saved residuals come to 162 GB with banded attention, more
than an H200 holds, and to 40 GB with chunked (`jax.eval_shape` of the loss's VJP; a test bounds it).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

GRANULARITIES = ("token", "block")
IMPLS = ("auto", "banded", "chunked", "dense")
CHUNK_QUERIES = 64  # queries per step of the chunked kernel on CPU (64 beat 32 and 128 at tiny on 2 CPU cores)
# Off CPU: tiles of 2,048 queries x (2,048 + window) keys are GEMMs of >= 1 GFLOP per head group, and the scan's
# stacked key / value bands stay under 2x the keys (d12: 3,840 / 2,048); chosen by that arithmetic, not yet timed.
ACCELERATOR_CHUNK_QUERIES = 2048
MAX_STATIC_CHUNKS = 64  # the chunked kernel unrolls up to this many chunks, scans beyond (compile time)
# Saved probabilities per layer above which the chunked kernel rematerialises its tiles: below it, storing them
# is faster than recomputing; at d12 lengths they would need GBs.
REMAT_BYTES = 1 << 26


def document_ids(tokens_BxT: jax.Array, eot_id: int) -> jax.Array:
    """Document index of every position: cumulative count of EOT tokens up to and including it."""
    return jnp.cumsum(tokens_BxT == eot_id, axis=-1, dtype=jnp.int32)


def band_blocks(seq_len: int, max_window: int, block_size: int) -> int:
    """Static number of key blocks each query block attends: enough for any window <= max_window."""
    return min(seq_len // block_size, math.ceil(max_window / block_size) + 1)


def check_blocked(seq_len: int, block_size: int) -> None:
    if seq_len % block_size:
        raise ValueError(
            f"sequence length {seq_len} is not a multiple of the attention block size {block_size}; "
            f"pad or trim the batch to a multiple of {block_size}"
        )


def _window_allowed(q_pos, k_pos, window, granularity: str, block_size: int):
    """Window term of the mask; a run-time window keeps at least one token (one block), never an empty row."""
    if granularity == "token":
        return q_pos - k_pos < jnp.maximum(window, 1)
    return q_pos // block_size - k_pos // block_size < jnp.maximum(window // block_size, 1)


def banded_attention(
    q_BxTxHxK: jax.Array,
    k_BxTxHxK: jax.Array,
    v_BxTxHxK: jax.Array,
    *,
    window: jax.Array | int,
    max_window: int,
    block_size: int,
    granularity: str = "token",
    docs_BxT: jax.Array | None = None,
    scale: float,
    impl: str = "auto",
) -> jax.Array:
    """Causal sliding-window attention over a static key band; `window` may change without retracing.

    impl: one of IMPLS (module docstring); all give the same result."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity {granularity!r} not in {GRANULARITIES}")
    if impl not in IMPLS:
        raise ValueError(f"impl {impl!r} not in {IMPLS}")
    B, T, H, K = q_BxTxHxK.shape
    check_blocked(T, block_size)
    bs = block_size
    nq = T // bs
    nb = band_blocks(T, max_window, bs)
    pad = (nb - 1) * bs
    window = jnp.asarray(window, jnp.int32)
    if impl == "auto":
        impl = "chunked" if jax.default_backend() == "cpu" or 2 * nb * bs < T else "dense"
    if impl == "chunked":
        return _chunked_attention(
            q_BxTxHxK,
            k_BxTxHxK,
            v_BxTxHxK,
            window=window,
            pad=pad,
            block_size=bs,
            granularity=granularity,
            docs_BxT=docs_BxT,
            scale=scale,
        )
    if impl == "dense":
        pos = jnp.arange(T)
        q_pos, k_pos = pos[:, None], pos[None, :]
        allowed = ((k_pos <= q_pos) & _window_allowed(q_pos, k_pos, window, granularity, bs))[None]
        if docs_BxT is not None:
            allowed = allowed & (docs_BxT[:, :, None] == docs_BxT[:, None, :])
        return jax.nn.dot_product_attention(q_BxTxHxK, k_BxTxHxK, v_BxTxHxK, scale=scale, mask=allowed[:, None])

    def band(x_BxTx___, fill):
        """(B, T, ...) -> (B, nq, nb*bs, ...): for query block i, key blocks i-nb+1 .. i."""
        widths = [(0, 0), (pad, 0)] + [(0, 0)] * (x_BxTx___.ndim - 2)
        x = jnp.pad(x_BxTx___, widths, constant_values=fill)
        x = x.reshape(B, nq + nb - 1, bs, *x_BxTx___.shape[2:])
        x = jnp.stack([x[:, j : j + nq] for j in range(nb)], axis=2)
        return x.reshape(B, nq, nb * bs, *x_BxTx___.shape[2:])

    q_BxQxSxHxK = q_BxTxHxK.reshape(B, nq, bs, H, K)
    k_BxQxNxHxK = band(k_BxTxHxK, 0)
    v_BxQxNxHxK = band(v_BxTxHxK, 0)
    s_BxHxQxSxN = jnp.einsum("bqshk,bqnhk->bhqsn", q_BxQxSxHxK, k_BxQxNxHxK, preferred_element_type=jnp.float32) * scale

    q_pos_QxS = jnp.arange(T).reshape(nq, bs)
    k_pos_QxN = (jnp.arange(nq)[:, None] - (nb - 1)) * bs + jnp.arange(nb * bs)[None, :]
    q_pos, k_pos = q_pos_QxS[:, :, None], k_pos_QxN[:, None, :]
    allowed_QxSxN = (k_pos >= 0) & (k_pos <= q_pos) & _window_allowed(q_pos, k_pos, window, granularity, bs)
    allowed = allowed_QxSxN[None, None]
    if docs_BxT is not None:
        dq_BxQxS = docs_BxT.reshape(B, nq, bs)
        dk_BxQxN = band(docs_BxT, -1)
        allowed = allowed & (dq_BxQxS[:, :, :, None] == dk_BxQxN[:, :, None, :])[:, None]
    s_BxHxQxSxN = jnp.where(allowed, s_BxHxQxSxN, -jnp.inf)
    p_BxHxQxSxN = jax.nn.softmax(s_BxHxQxSxN, axis=-1).astype(v_BxTxHxK.dtype)
    o_BxQxSxHxK = jnp.einsum("bhqsn,bqnhk->bqshk", p_BxHxQxSxN, v_BxQxNxHxK)
    return o_BxQxSxHxK.reshape(B, T, H, K)


def _chunk_size(seq_len: int, block_size: int, backend: str | None = None) -> int:
    """The largest multiple of block_size <= max(queries, block_size) that divides seq_len, queries =
    CHUNK_QUERIES on CPU, ACCELERATOR_CHUNK_QUERIES elsewhere (backend default: jax.default_backend())."""
    cpu = (backend or jax.default_backend()) == "cpu"
    c = max((CHUNK_QUERIES if cpu else ACCELERATOR_CHUNK_QUERIES) // block_size, 1) * block_size
    while seq_len % c:
        c -= block_size
    return c


def _chunked_attention(
    q_BxTxHxK, k_BxTxHxK, v_BxTxHxK, *, window, pad: int, block_size: int, granularity: str, docs_BxT, scale: float
) -> jax.Array:
    """The "chunked" kernel: chunk c of C queries attends keys [c*C - pad, (c+1)*C); tiles rematerialised in the
    backward when their probabilities would exceed REMAT_BYTES.

    On CPU up to MAX_STATIC_CHUNKS chunks run as a Python loop over static slices of (B, H, T, K) operands: no
    stacked band copies, the first chunks attend only the keys that exist (no left padding), and independent
    chunks can run concurrently on the cores; with saved tiles, through `_static_chunks`' hand-written backward
    (no transposed-operand products). Longer sequences, and all on accelerators, scan over a stacked,
    left-padded band: compile time stays bounded, and a rematerialised step saves only its operands (the
    static loop's tiles also keep their (C, S) biases: 10.9 GB at d12)."""
    B, T, H, K = q_BxTxHxK.shape
    C = _chunk_size(T, block_size)
    nc = T // C
    saved_bytes = B * H * T * (C + pad) * jnp.dtype(jnp.float32).itemsize
    remat = jax.checkpoint if saved_bytes > REMAT_BYTES else (lambda f: f)

    def bias(q_pos_C, k_pos_S, dq_BxC, dk_BxS):
        """(B or 1, 1, C, S) float32: 0 where the mask allows, -inf elsewhere (never a whole row: each query
        sees itself, since the window keeps >= 1 token and an EOT belongs to its own document)."""
        q_pos, k_pos = q_pos_C[:, None], k_pos_S[None, :]
        allowed = (k_pos >= 0) & (k_pos <= q_pos) & _window_allowed(q_pos, k_pos, window, granularity, block_size)
        allowed = allowed[None, None]
        if dq_BxC is not None:
            allowed = allowed & (dq_BxC[:, :, None] == dk_BxS[:, None, :])[:, None]
        return jnp.where(allowed, 0.0, -jnp.inf)

    tile = remat(lambda *operands: _tile(*operands, scale)[0])
    q, k, v = (t.transpose(0, 2, 1, 3) for t in (q_BxTxHxK, k_BxTxHxK, v_BxTxHxK))  # (B, H, T, K)
    if nc <= MAX_STATIC_CHUNKS and jax.default_backend() == "cpu":
        pos = jnp.arange(T)
        spans = tuple((max(0, c * C - pad), (c + 1) * C) for c in range(nc))
        # the biases are inputs of the tiles, so a backward (or a rematerialised tile) does not recompute them
        biases = tuple(
            bias(
                pos[c * C : hi],
                pos[lo:hi],
                *((None, None) if docs_BxT is None else (docs_BxT[:, c * C : hi], docs_BxT[:, lo:hi])),
            )
            for c, (lo, hi) in enumerate(spans)
        )
        if saved_bytes <= REMAT_BYTES:
            return _static_chunks(q, k, v, biases, spans, C, scale).transpose(0, 2, 1, 3)
        k_chunks, v_chunks = _overlapping_slices(k, spans, T), _overlapping_slices(v, spans, T)
        outs = [tile(q[:, :, c * C : hi], k_chunks[c], v_chunks[c], biases[c]) for c, (lo, hi) in enumerate(spans)]
        return jnp.concatenate(outs, axis=2).transpose(0, 2, 1, 3)

    S = C + pad

    def band(x, fill, axis):
        """chunk c's keys, stacked on a new leading axis."""
        widths = [(0, 0)] * x.ndim
        widths[axis] = (pad, 0)
        x = jnp.pad(x, widths, constant_values=fill)
        return jnp.stack([jax.lax.slice_in_dim(x, c * C, c * C + S, axis=axis) for c in range(nc)])

    q_NxBxHxCxK = q.reshape(B, H, nc, C, K).transpose(2, 0, 1, 3, 4)
    q_pos_NxC = jnp.arange(T).reshape(nc, C)
    k_pos_NxS = jnp.arange(nc)[:, None] * C - pad + jnp.arange(S)[None, :]
    docs = (None, None) if docs_BxT is None else (docs_BxT.reshape(B, nc, C).swapaxes(0, 1), band(docs_BxT, -1, 1))
    step = remat(lambda q, k, v, *positions_docs: tile(q, k, v, bias(*positions_docs)))
    _, o_NxBxHxCxK = jax.lax.scan(
        lambda _, xs: (None, step(*xs)), None, (q_NxBxHxCxK, band(k, 0, 2), band(v, 0, 2), q_pos_NxC, k_pos_NxS, *docs)
    )
    return o_NxBxHxCxK.transpose(1, 0, 3, 2, 4).reshape(B, T, H, K)


def _tile(q_BxHxCxK, k_BxHxSxK, v_BxHxSxK, bias_Bx1xCxS, scale: float):
    """One chunk's attention -> (output, e = exp(s - rowmax), row sums of e). The softmax is written out over the
    additive mask (cheaper than jnp.where + jax.nn.softmax) and normalised after the value product: (e v) / sum(e)
    divides the C x K output, not the C x S tile, and its backward's row reduction runs over K instead of S."""
    s_BxHxCxS = (
        jnp.einsum("bhqk,bhsk->bhqs", q_BxHxCxK, k_BxHxSxK, preferred_element_type=jnp.float32) * scale + bias_Bx1xCxS
    )
    e_BxHxCxS = jnp.exp(s_BxHxCxS - jax.lax.stop_gradient(jnp.max(s_BxHxCxS, axis=-1, keepdims=True)))
    u_BxHxCxK = jnp.einsum(
        "bhqs,bhsk->bhqk", e_BxHxCxS.astype(v_BxHxSxK.dtype), v_BxHxSxK, preferred_element_type=jnp.float32
    )
    l_BxHxCx1 = jnp.sum(e_BxHxCxS, axis=-1, keepdims=True)
    return (u_BxHxCxK / l_BxHxCx1).astype(v_BxHxSxK.dtype), e_BxHxCxS, l_BxHxCx1


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _static_chunks(q_BxHxTxK, k_BxHxTxK, v_BxHxTxK, biases, spans, C: int, scale: float) -> jax.Array:
    """The static chunk loop (chunk c: queries [c*C, (c+1)*C) against keys spans[c], additive mask biases[c])
    with a hand-written backward over the tiles' saved e = exp(s - max) and row sums.

    Autodiff's dK = dS^T q and dV = P^T dO contract both operands over their query axis, a product XLA CPU
    cannot hand to YNNPACK (it ran 128 single-threaded fallback dots per tiny forward + backward). Here they
    are formed transposed, dK^T = q^T dS and dV^T = (dO / l)^T e, from q^T and dO^T materialised once per
    layer, summed over the overlapping spans along the key axis and transposed back once: every product is a
    plain YNNPACK matmul. Values are the tile's."""
    return _static_chunks_fwd(q_BxHxTxK, k_BxHxTxK, v_BxHxTxK, biases, spans, C, scale)[0]


def _static_chunks_fwd(q_BxHxTxK, k_BxHxTxK, v_BxHxTxK, biases, spans, C, scale):
    k_chunks = tuple(jax.lax.slice_in_dim(k_BxHxTxK, lo, hi, axis=2) for lo, hi in spans)
    v_chunks = tuple(jax.lax.slice_in_dim(v_BxHxTxK, lo, hi, axis=2) for lo, hi in spans)
    outs, es, sums = zip(
        *(
            _tile(q_BxHxTxK[:, :, c * C : hi], k_chunks[c], v_chunks[c], biases[c], scale)
            for c, (lo, hi) in enumerate(spans)
        )
    )
    o_BxHxTxK = jnp.concatenate(outs, axis=2)
    return o_BxHxTxK, (q_BxHxTxK, k_chunks, v_chunks, es, sums, o_BxHxTxK)


def _static_chunks_bwd(spans, C, scale, residuals, g_BxHxTxK):
    """o = (e v) / l, e = exp(s - max), s = scale q k^T + bias: dS = e (g v^T - rowsum(g o)) / l."""
    q, k_chunks, v_chunks, es, sums, o = residuals
    T = q.shape[2]
    f32 = functools.partial(jnp.einsum, preferred_element_type=jnp.float32)
    g_dot_o_BxHxTx1 = jnp.sum(g_BxHxTxK.astype(jnp.float32) * o.astype(jnp.float32), axis=-1, keepdims=True)
    # barriers: XLA would fold these transposes back into the products as transposed operands
    qT_BxHxKxT = jax.lax.optimization_barrier(jnp.swapaxes(q, 2, 3))
    gT_BxHxKxT = jax.lax.optimization_barrier(jnp.swapaxes(g_BxHxTxK, 2, 3))
    dq, dkT, dvT = [], [], []
    for c, (_lo, hi) in enumerate(spans):
        e_BxHxCxS, l_BxHxCx1, rows = es[c], sums[c], slice(c * C, hi)
        dp_BxHxCxS = f32("bhqk,bhsk->bhqs", g_BxHxTxK[:, :, rows], v_chunks[c])
        ds_BxHxCxS = e_BxHxCxS * ((dp_BxHxCxS - g_dot_o_BxHxTx1[:, :, rows]) / l_BxHxCx1)
        dq.append(f32("bhqs,bhsk->bhqk", ds_BxHxCxS, k_chunks[c]) * scale)
        dkT.append(f32("bhkq,bhqs->bhks", qT_BxHxKxT[..., rows], ds_BxHxCxS) * scale)
        dvT.append(f32("bhkq,bhqs->bhks", gT_BxHxKxT[..., rows] / jnp.swapaxes(l_BxHxCx1, 2, 3), e_BxHxCxS))
    dk = jnp.swapaxes(_sum_overlapping(dkT, spans, T, axis=3), 2, 3)
    dv = jnp.swapaxes(_sum_overlapping(dvT, spans, T, axis=3), 2, 3)
    return (
        jnp.concatenate(dq, axis=2).astype(q.dtype),
        dk.astype(k_chunks[0].dtype),
        dv.astype(v_chunks[0].dtype),
        None,
    )


_static_chunks.defvjp(_static_chunks_fwd, _static_chunks_bwd)


def _sum_overlapping(g_chunks, spans, T: int, axis: int) -> jax.Array:
    """The length-T array whose slice [lo:hi] along `axis` receives each chunk's g (chunks overlap), summed
    segment by segment between consecutive span boundaries and concatenated once."""
    g0 = g_chunks[0]
    cuts = sorted({0, T} | {b for span in spans for b in span})
    segments = []
    for a, b in zip(cuts[:-1], cuts[1:]):
        parts = [
            jax.lax.slice_in_dim(g, a - lo, b - lo, axis=axis)
            for g, (lo, hi) in zip(g_chunks, spans)
            if lo <= a and b <= hi
        ]
        shape = g0.shape[:axis] + (b - a,) + g0.shape[axis + 1 :]
        segments.append(functools.reduce(jnp.add, parts) if parts else jnp.zeros(shape, g0.dtype))
    return jnp.concatenate(segments, axis=axis)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _overlapping_slices(x_BxHxTxK: jax.Array, spans: tuple[tuple[int, int], ...], T: int) -> tuple[jax.Array, ...]:
    """x[:, :, lo:hi] for each static (lo, hi) span (the chunks' overlapping key ranges) of x's T positions.

    The backward sums the slices' cotangents segment by segment (between consecutive span boundaries) and
    concatenates once; autodiff's transpose pads every slice's cotangent to T and adds them, which XLA CPU ran as
    one slow many-operand fusion per layer."""
    return tuple(jax.lax.slice_in_dim(x_BxHxTxK, lo, hi, axis=2) for lo, hi in spans)


def _overlapping_slices_fwd(x_BxHxTxK, spans, T):
    return _overlapping_slices(x_BxHxTxK, spans, T), None


def _overlapping_slices_bwd(spans, T, _, g_chunks):
    return (_sum_overlapping(g_chunks, spans, T, axis=2),)


_overlapping_slices.defvjp(_overlapping_slices_fwd, _overlapping_slices_bwd)


def dense_attention(
    q_BxTxHxK: jax.Array, k_BxTxHxK: jax.Array, v_BxTxHxK: jax.Array, *, scale: float, docs_BxT: jax.Array | None = None
) -> jax.Array:
    """Full causal attention (prefix families attend across documents unless docs are given)."""
    if docs_BxT is None:
        return jax.nn.dot_product_attention(q_BxTxHxK, k_BxTxHxK, v_BxTxHxK, scale=scale, is_causal=True)
    same_doc_Bx1xTxT = (docs_BxT[:, :, None] == docs_BxT[:, None, :])[:, None]
    return jax.nn.dot_product_attention(
        q_BxTxHxK, k_BxTxHxK, v_BxTxHxK, scale=scale, is_causal=True, mask=same_doc_Bx1xTxT
    )


# ---- brute-force references (tests, documentation) -----------------------------------------------
def reference_mask(
    seq_len: int,
    *,
    window: int | None,
    granularity: str = "token",
    block_size: int = 128,
    docs_T: np.ndarray | None = None,
) -> np.ndarray:
    """The TxT boolean mask the kernels realise, built by brute force (window None = plain causal)."""
    q = np.arange(seq_len)[:, None]
    k = np.arange(seq_len)[None, :]
    mask = k <= q
    if docs_T is not None:
        docs_T = np.asarray(docs_T)
        mask &= docs_T[:, None] == docs_T[None, :]
    if window is not None:
        if granularity == "token":
            mask &= q - k < window
        else:
            mask &= q // block_size - k // block_size < window // block_size
    return mask


def masked_attention(q_BxTxHxK, k_BxTxHxK, v_BxTxHxK, mask_BxTxT, *, scale: float) -> jax.Array:
    """Dense softmax attention under an explicit mask (reference for the banded kernel)."""
    s_BxHxTxT = scale * jnp.einsum("bqhk,bthk->bhqt", q_BxTxHxK, k_BxTxHxK, preferred_element_type=jnp.float32)
    s_BxHxTxT = jnp.where(jnp.asarray(mask_BxTxT)[:, None], s_BxHxTxT, -jnp.inf)
    p_BxHxTxT = jax.nn.softmax(s_BxHxTxT, axis=-1).astype(v_BxTxHxK.dtype)
    return jnp.einsum("bhqt,bthk->bqhk", p_BxHxTxT, v_BxTxHxK)


# ---- window schedules (docs/method.md §1.3, §8), pure functions of progress f in [0, 1] ------------------
def window_progress(step: int, warmup_steps: int) -> float:
    """f = min(step / W, 1); a zero warmup is already warm."""
    return 1.0 if warmup_steps <= 0 else min(step / warmup_steps, 1.0)


def token_window(progress: float, *, window_min: int, window_max: int, quantum: int) -> int:
    """FlexWin: quantum * floor((min + f*(max-min)) / quantum) tokens (d12: 64*floor((64+1728f)/64))."""
    w = quantum * math.floor((window_min + progress * (window_max - window_min)) / quantum)
    return int(min(max(w, window_min), window_max))


def block_window_blocks(progress: float, *, window_min: int, window_max: int, block_size: int) -> int:
    """SparseV family: max(1, floor(max(bs, floor((min + f*(max-min))/bs)*bs)/bs)) blocks."""
    w = window_min + progress * (window_max - window_min)
    return max(1, math.floor(max(block_size, math.floor(w / block_size) * block_size) / block_size))


def lswa_window_blocks(progress: float, *, window_min: int, window_max: int, block_size: int) -> int:
    """LSWA long window: clamp(ceil((max-min)*f/bs), 1, max/bs) blocks (d12: clamp(ceil(1728f/128),1,14))."""
    blocks = math.ceil((window_max - window_min) * progress / block_size)
    return int(min(max(blocks, 1), window_max // block_size))


def short_window_blocks(long_blocks):
    """LSWA short layers: max(1, long // 2) blocks (works on ints and traced arrays)."""
    if isinstance(long_blocks, int):
        return max(1, long_blocks // 2)
    return jnp.maximum(1, long_blocks // 2)


def scheduled_window(config, progress: float) -> int:
    """The window in tokens that `GPT.__call__(window=...)` takes at training progress f."""
    kw = dict(window_min=config.window_min, window_max=config.window_max)
    bs = config.attn_block_size
    if config.window == "token":
        return token_window(progress, quantum=config.window_quantum, **kw)
    if config.window == "block":
        return bs * block_window_blocks(progress, block_size=bs, **kw)
    if config.window == "lswa":
        return bs * lswa_window_blocks(progress, block_size=bs, **kw)
    return config.max_window
