"""Attention masks and kernels: dense causal, document-aware windows at token or block granularity.

Mask semantics (PROTOCOL §4 rows 7-15), for query position q and key position k of one sequence:
  causal      k <= q
  doc         docs[k] == docs[q], docs = cumsum(tokens == EOT) (an EOT starts the document it belongs to)
  "token"     q - k < window                                   (FixedWin, FlexWin, VTE, BetterWin)
  "block"     q // bs - k // bs < window // bs                 (SparseV..FP8Head, and each LSWA layer)
The reference's FlexAttention block masks (doc-overlap, full/partial lists, LSWA's clamped most-recent-first
block counts) are sparsity bookkeeping whose token-level result is exactly these predicates.

`banded_attention` never builds a TxT mask: queries go in blocks of `block_size`, and each query block
attends a static band of min(n_blocks, ceil(max_window / bs) + 1) key blocks ending at its own block,
masked by the run-time `window` (a traced int32), causality and document ids. Memory is O(T * max_window);
the whole band is computed even while the warming-up window is narrower. When the band covers at least half
of the sequence (short CPU sequences: tiny T = 512 with a 240-token band) the same predicates are applied as
a dense T x T mask instead (`impl="auto"`): the band would save no work there, and one large batched matmul
runs 2-3x faster on CPU than the stacked band (BUILD_NOTES.md). Both paths give the same result (tests).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

GRANULARITIES = ("token", "block")


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

    impl: "banded" (O(T * max_window)), "dense" (T x T mask), or "auto" (dense when the band spans >= T/2)."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity {granularity!r} not in {GRANULARITIES}")
    if impl not in ("auto", "banded", "dense"):
        raise ValueError(f"impl {impl!r} not in ('auto', 'banded', 'dense')")
    B, T, H, K = q_BxTxHxK.shape
    check_blocked(T, block_size)
    bs = block_size
    nq = T // bs
    nb = band_blocks(T, max_window, bs)
    pad = (nb - 1) * bs
    window = jnp.asarray(window, jnp.int32)
    if impl == "dense" or (impl == "auto" and 2 * nb * bs >= T):
        pos = jnp.arange(T)
        q_pos, k_pos = pos[:, None], pos[None, :]
        allowed = ((k_pos <= q_pos) & _window_allowed(q_pos, k_pos, window, granularity, bs))[None]
        if docs_BxT is not None:
            allowed = allowed & (docs_BxT[:, :, None] == docs_BxT[:, None, :])
        return jax.nn.dot_product_attention(q_BxTxHxK, k_BxTxHxK, v_BxTxHxK, scale=scale,
                                            mask=allowed[:, None])

    def band(x_BxTx___, fill):
        """(B, T, ...) -> (B, nq, nb*bs, ...): for query block i, key blocks i-nb+1 .. i."""
        widths = [(0, 0), (pad, 0)] + [(0, 0)] * (x_BxTx___.ndim - 2)
        x = jnp.pad(x_BxTx___, widths, constant_values=fill)
        x = x.reshape(B, nq + nb - 1, bs, *x_BxTx___.shape[2:])
        x = jnp.stack([x[:, j:j + nq] for j in range(nb)], axis=2)
        return x.reshape(B, nq, nb * bs, *x_BxTx___.shape[2:])

    q_BxQxSxHxK = q_BxTxHxK.reshape(B, nq, bs, H, K)
    k_BxQxNxHxK = band(k_BxTxHxK, 0)
    v_BxQxNxHxK = band(v_BxTxHxK, 0)
    s_BxHxQxSxN = jnp.einsum(
        "bqshk,bqnhk->bhqsn", q_BxQxSxHxK, k_BxQxNxHxK, preferred_element_type=jnp.float32
    ) * scale

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


def dense_attention(
    q_BxTxHxK: jax.Array,
    k_BxTxHxK: jax.Array,
    v_BxTxHxK: jax.Array,
    *,
    scale: float,
    docs_BxT: jax.Array | None = None,
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
    s_BxHxTxT = scale * jnp.einsum("bqhk,bthk->bhqt", q_BxTxHxK, k_BxTxHxK,
                                   preferred_element_type=jnp.float32)
    s_BxHxTxT = jnp.where(jnp.asarray(mask_BxTxT)[:, None], s_BxHxTxT, -jnp.inf)
    p_BxHxTxT = jax.nn.softmax(s_BxHxTxT, axis=-1).astype(v_BxTxHxK.dtype)
    return jnp.einsum("bhqt,bthk->bqhk", p_BxHxTxT, v_BxTxHxK)


# ---- window schedules (PROTOCOL §1.3, §9), pure functions of progress f in [0, 1] ------------------
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
