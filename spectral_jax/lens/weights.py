"""Weight spectra of any JAX model: singular values of every matrix-shaped parameter leaf.

A leaf of rank >= 2 is a matrix; rank > 2 is reshaped to (prod(leading), last) (a convolution kernel
(kh, kw, in, out) -> (kh*kw*in, out); a stacked (layers, in, out) kernel -> (layers*in, out)), and the Spectrum's
note says so. All-zero leaves (zero-initialised projections) are not decomposed: their Spectrum is zeros with a
note. Singular values: the float64 Gram of the smaller side on device (exact products of float32 entries) and a
float64 eigvalsh on the host, sqrt of the clipped eigenvalues, which is several times faster than a
values-only SVD (docs/benchmarks.md) with relative error ~1e-16 (sigma_1 / sigma_j)^2.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import jax.numpy as jnp
import numpy as np

from spectral_jax.errors import UserError
from spectral_jax.lens.common import ProbeError
from spectral_jax.lens.gradients import gram64, singular_values_from_gram
from spectral_jax.lens.paths import Where, flatten, select
from spectral_jax.lens.spectrum import Spectrum


def _gram(W) -> np.ndarray:
    """The float64 Gram of W's smaller side (`lens.gradients.gram64`)."""
    m, n = np.shape(W)
    return gram64(W if m <= n else W.T)


def matrix_singular_values(W) -> np.ndarray:
    """Singular values (descending, length min(m, n)) of a 2-D matrix by the float64 Gram + eigvalsh."""
    if np.ndim(W) != 2:
        raise ValueError(f"expected a matrix, got shape {np.shape(W)}")
    return singular_values_from_gram(_gram(W))


def _matrix(path: str, value, view: Callable | None):
    """(2-D matrix, note) of a leaf: its view, or the reshape of a higher-rank leaf."""
    w = value if view is None else view(value)
    shape = tuple(np.shape(w))
    if len(shape) == 2:
        return w, None
    rows = int(np.prod(shape[:-1]))
    return jnp.reshape(w, (rows, shape[-1])), f"rank-{len(shape)} leaf {shape} reshaped to ({rows}, {shape[-1]})"


def weight_spectra(params, *, where: Where = None, progress: bool | Callable[[str], None] = False, targets=None):
    """Singular values of every matrix-shaped (rank >= 2) floating leaf of `params` that `where` selects.

    Args:
      params: an NNX module (its `nnx.Param`s), an `nnx.State`, a linen params dict, an equinox module, a Hugging
        Face Flax model, or any pytree.
      where: regex searched in each leaf's '/'-joined path, or a predicate (path, leaf) -> bool (default: all).
      progress: True prints one line per matrix to stderr; a callable receives that line instead.
      targets: (internal) a list of `lens.gradients.Target` naming leaves and views directly.
    Returns:
      {path: Spectrum}, ordered by path (numbers as numbers); rank-1 leaves (biases, norms) are not matrices and
      are left out.
    Raises:
      ValueError listing the matrix paths when `where` matches none.
    """
    leaves = flatten(params)
    index = {leaves.paths[i]: i for i in leaves.candidates if np.ndim(leaves.values[i]) >= 2}
    if targets is None:
        paths = list(index)
        if not paths:
            raise UserError("weight_spectra: no matrix-shaped (rank >= 2) floating leaves in params")
        chosen = select(paths, [leaves.values[index[p]] for p in paths], where, "weight_spectra")
        targets = [(paths[j], paths[j], None) for j in chosen]
    else:
        targets = [(t.name, t.path, t.view) for t in targets]
    say = progress if callable(progress) else (lambda msg: print(msg, file=sys.stderr, flush=True))
    out = {}
    for k, (name, path, view) in enumerate(targets, 1):
        if path not in index:
            raise UserError(f"weight_spectra: no matrix leaf at {path!r}; matrices: {', '.join(list(index)[:40])}")
        W, note = _matrix(path, leaves.values[index[path]], view)
        m, n = W.shape
        gram = _gram(W)
        total = float(np.trace(gram))  # the sum of squares
        if not np.isfinite(total):
            raise ProbeError(f"weight_spectra: {name} has NaN/inf entries (a diverged model?); no spectrum")
        if total == 0:
            values = np.zeros(min(m, n))
            note = "; ".join(x for x in (note, "all zero (zero-initialised?): not decomposed") if x)
        else:
            values = singular_values_from_gram(gram)
        if progress:
            say(f"weight_spectra [{k}/{len(targets)}] {name} ({m} x {n})")
        out[name] = Spectrum("weight", name, values, samples=m, shape=(m, n), note=note)
    return out
