"""Helpers and defaults of our GPT's probes: token and window checks, chunk sizes, layer resolution. The trace
counter, chunking, placement and ProbeError come from the model-agnostic layer (`spectral_jax.lens.common`) and
are re-exported here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from spectral_jax.errors import UserError
from spectral_jax.lens.common import _TRACES, ProbeError  # noqa: F401  (re-exported)
from spectral_jax.lens.common import chunks as _chunks  # noqa: F401
from spectral_jax.lens.common import placer as _placer  # noqa: F401
from spectral_jax.probes.matrices import _resolve_layer

METHODS: tuple[str, ...] = ("vmap", "capture", "auto")
DEFAULT_METHOD = "auto"
"""capture on probe layers, vmap elsewhere (benchmarks/per_sample_grads.py compares the two)."""
DEFAULT_CHUNK_TOKENS = {"cpu": 2048, "gpu": 8192, "tpu": 8192}
"""Tokens per chunk by platform: default chunk = max(1, tokens // T) sequences (on CPU 2,048 tokens, i.e. 8
sequences at T = 256). The fused head + loss keeps every chunk's logits in the last-level cache, so on CPU
chunks of several sequences beat one sequence per chunk (benchmarks/per_sample_grads.py, --chunk)."""
DEFAULT_GRAD_SAMPLES = 512  # paper / reference M


def split_windows(pool_NxT1) -> tuple[np.ndarray, np.ndarray]:
    """Pool windows (N, T+1) -> inputs x = w[:, :-1] and targets y = w[:, 1:] (int32)."""
    w = np.asarray(pool_NxT1)
    if w.ndim != 2 or w.shape[1] < 2:
        raise UserError(f"pool windows must be (N, T+1) token ids, got shape {w.shape}")
    return w[:, :-1].astype(np.int32), w[:, 1:].astype(np.int32)


def default_chunk(seq_len: int, n: int | None = None, platform: str | None = None) -> int:
    """Sequences per chunk: DEFAULT_CHUNK_TOKENS[platform] worth of tokens (at least 1, at most n);
    platform defaults to jax.default_backend()."""
    tokens = DEFAULT_CHUNK_TOKENS.get(platform or jax.default_backend(), 8192)
    c = max(1, tokens // max(1, int(seq_len)))
    return c if n is None else max(1, min(c, n))


def _check_window(config, window):
    if window is None or config.window in ("none", "fixed"):
        return None
    w = int(window)
    if not 1 <= w <= config.window_max:
        raise UserError(f"window {w} outside [1, window_max={config.window_max}]")
    return jnp.int32(w)


def _check_tokens(config, x, name="inputs") -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise UserError(f"{name} must be (sequences, T) token ids, got shape {x.shape}")
    if x.shape[1] > config.seq_len:
        raise UserError(f"{name} have T={x.shape[1]} > config.seq_len={config.seq_len}")
    return x.astype(np.int32)


def _pad_rows(a: np.ndarray, rows: int, fill: int) -> np.ndarray:
    if a.shape[0] == rows:
        return a
    pad = np.full((rows - a.shape[0],) + a.shape[1:], fill, a.dtype)
    return np.concatenate([a, pad])


def _as_layers(config, layers) -> tuple[int, ...]:
    if isinstance(layers, (int, np.integer)):
        layers = (layers,)
    out = []
    for l in layers:
        r = _resolve_layer(config, l)
        if r not in out:
            out.append(r)
    return tuple(out)
