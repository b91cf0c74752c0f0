"""Rotary position embedding: the standard and truncated frequency sets, (cos, sin) tables, the half-split
rotation (docs/method.md §8)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

# Rotary tables of at most this many (position, frequency) entries are computed with NumPy while the model is
# traced and enter the program as constants: computed in the graph, XLA CPU fused the cos/sin into every element
# of each rotary fusion; longer tables (d12: 65,536 x 64) stay in the graph rather than embed tens of MB of
# constants in every program.
ROTARY_CONSTANT_ENTRIES = 1 << 20


def rotary_frequencies(head_dim: int, pos: str, base: float) -> np.ndarray:
    """head_dim/2 float32 inverse frequencies: base^(-2i/hd), or truncated (1/1024)^linspace(0,1,hd/4) ++ zeros."""
    if pos == "rope":
        return (base ** (-np.arange(0, head_dim, 2, dtype=np.float32) / head_dim)).astype(np.float32)
    quarter = head_dim // 4
    return np.concatenate([(1.0 / 1024) ** np.linspace(0.0, 1.0, quarter), np.zeros(quarter)]).astype(np.float32)


def rotary_tables(seq_len: int, inv_freq_F) -> tuple:
    """(cos, sin) of theta = position * inv_freq, each (seq_len, F) float32; theta is a float32 product as in
    the graph. NumPy constants for concrete frequencies up to ROTARY_CONSTANT_ENTRIES entries, else jnp."""
    if seq_len * np.shape(inv_freq_F)[-1] <= ROTARY_CONSTANT_ENTRIES:
        try:
            freq_F = np.asarray(inv_freq_F, np.float32)
        except jax.errors.TracerArrayConversionError:
            freq_F = None
        if freq_F is not None:
            return _constant_rotary_tables(seq_len, freq_F.tobytes())
    theta_TxF = jnp.arange(seq_len, dtype=jnp.float32)[:, None] * jnp.asarray(inv_freq_F, jnp.float32)[None, :]
    return jnp.cos(theta_TxF), jnp.sin(theta_TxF)


@functools.lru_cache(maxsize=32)
def _constant_rotary_tables(seq_len: int, freq_bytes: bytes) -> tuple[np.ndarray, np.ndarray]:
    """rotary_tables' NumPy pair, one read-only pair per (length, frequencies): every layer's q and k then close
    over the same two arrays, which a trace holds as two constants (not two per call: d36 would carry 1 GB)."""
    freq_F = np.frombuffer(freq_bytes, np.float32)
    theta_TxF = (np.arange(seq_len, dtype=np.float32)[:, None] * freq_F[None, :]).astype(np.float64)
    tables = np.cos(theta_TxF).astype(np.float32), np.sin(theta_TxF).astype(np.float32)
    for table in tables:
        table.flags.writeable = False
    return tables


def apply_rotary(x_BxTxHxK: jax.Array, inv_freq_F, sign: float) -> jax.Array:
    """Half-split rotation by sign*theta in float32 (sign -1 is TruncRoPE's convention)."""
    cos_TxF, sin_TxF = rotary_tables(x_BxTxHxK.shape[1], inv_freq_F)
    # indexed after jnp.asarray: a NumPy view would be a new constant at every call
    cos, sin = jnp.asarray(cos_TxF)[None, :, None, :], sign * jnp.asarray(sin_TxF)[None, :, None, :]
    x1, x2 = jnp.split(x_BxTxHxK.astype(jnp.float32), 2, axis=-1)
    y = jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
    return y.astype(x_BxTxHxK.dtype)
