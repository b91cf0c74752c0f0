"""Activation covariance spectra and weight spectra: the forward-only device function and its host driver.

Activation spectrum (docs/method.md §1.1). The residual stream after block l (`block_out`, U-Net skips
included), through the parameter-free `rms_norm`, every token of every sequence one row, folded into the
lens's `CovarianceStreams` (one streaming covariance per layer, sharded over `mesh`); eigenvalues descending,
float64 host eigvalsh. The jitted forward returns only the requested block outputs, so XLA drops the blocks after
the deepest requested layer and the LM head.

Weight spectrum. Singular values of the probed kernel itself (no data), through `lens.weights` (float64 Gram +
eigvalsh, the same as for any model).

`run_probes` reuses the forward pass here for the pool sequences that get no per-sample gradient.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence

import jax
import numpy as np
from flax import nnx

from spectral_jax.lens.activations import CovarianceStreams
from spectral_jax.lens.weights import weight_spectra
from spectral_jax.models.gpt import rms_norm
from spectral_jax.probes.common import _TRACES, _as_layers, _check_tokens, _check_window, _placer
from spectral_jax.probes.matrices import resolve_matrix


# ---- device functions (built once per static signature, compiled once per shape) ------------------
@functools.lru_cache(maxsize=64)
def _activation_fn(graphdef, layers: tuple[int, ...], has_window: bool):
    """jit(state, x, window) -> tuple of rms_norm(block_out[l]) for l in layers."""

    def fn(state, x_BxT, window):
        _TRACES["activation"] += 1
        model = nnx.merge(graphdef, state)
        _, acts = nnx.capture(model, nnx.Intermediate)(x_BxT, window=window if has_window else None)
        return tuple(rms_norm(acts["blocks"][l]["block_out"][0]) for l in layers)

    return jax.jit(fn)


# ---- activation and weight spectra -------------------------------------------------------------------
def _iter_batches(batches) -> Iterable:
    if isinstance(batches, (np.ndarray, jax.Array)):
        return [batches] if batches.ndim == 2 else batches
    return batches


class _ActivationPass:
    def __init__(self, model, layers, window, mesh):
        graphdef, state = nnx.split(model)
        self.window = _check_window(model.config, window)
        self.fn = _activation_fn(graphdef, layers, self.window is not None)
        self.place, replicate = _placer(mesh)
        self.state = replicate(state)

    def __call__(self, x_BxT):
        return self.fn(self.state, self.place(x_BxT), self.window)


def activation_spectrum(model, batches, layer: int | Sequence[int] = -1, *, window=None, mesh=None):
    """Covariance eigenvalues (descending) of rms_norm(block output of `layer`), every token a row.

    `batches`: an iterable of int32 INPUT token arrays (B, T) (or one such array); pool windows (N, T+1)
    must be split first (`split_windows(pool)[0]`). `layer` an int (returns an array) or a tuple of ints
    (returns {resolved layer: eigenvalues}); one forward serves all layers. Raises ProbeError on NaN/inf.
    """
    config = model.config
    single = isinstance(layer, (int, np.integer))
    layers = _as_layers(config, layer)
    if not layers:
        raise ValueError("no layers requested")
    run = _ActivationPass(model, layers, window, mesh)
    streams = CovarianceStreams(dict.fromkeys(layers, config.d_model), mesh)
    for x in _iter_batches(batches):
        streams.fold(dict(zip(layers, run(_check_tokens(config, x)))))
    out = {l: s.values for l, s in streams.spectra().items()}
    return out[layers[0]] if single else out


def weight_singular_values(model, matrix: str = "final_attn_out", *, layer: int | None = None) -> np.ndarray:
    """Singular values (descending) of the matrix's kernel (column slice for fused q/v): `lens.weight_spectra`."""
    spec = resolve_matrix(model.config, matrix, layer)
    return weight_spectra(model, targets=[spec.target])[spec.key].values
