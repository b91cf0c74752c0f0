"""Per-example gradient spectra of any JAX model (docs/method.md §2).

`gradient_spectrum(loss_fn, params, examples, where=...)`: `loss_fn(params, example)` is the user's loss of ONE
example; `params` any pytree (an NNX module or state, a linen params dict, an equinox module). Per-example
gradients of ONLY the selected leaves come from `jax.vmap(jax.grad(...))` in chunks of `chunk` examples (the
rest of the tree is a constant, so the backward stops at the earliest selected leaf and device memory scales
with the chunk, not with the number of examples). Row m of G (M x P float32) is example m's gradient of a
leaf, flattened. Its singular values come from the M x M Gram accumulated in float64 on device (float32
entries, exact float64 products) and a float64 eigvalsh on the host: never a thin SVD of M x P.

`PerExampleGrads` is the engine; it also returns the loss function's aux output of the same forward (our GPT's
fused probe feeds block outputs from it into the activation covariance).
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from spectral_jax.distributed import to_host
from spectral_jax.errors import UserError
from spectral_jax.lens.common import _TRACES, ProbeError, chunks, leading_size, placer, take_rows
from spectral_jax.lens.paths import Where, flatten, is_array, select
from spectral_jax.lens.spectrum import Spectrum

DEFAULT_CHUNK = 32  # examples per vmapped pass when the caller gives none


@dataclasses.dataclass(frozen=True)
class Columns:
    """A view of a fused (in, out) kernel: columns [lo, hi) (e.g. W_Q inside a fused qkv kernel)."""

    lo: int
    hi: int

    def __call__(self, w):
        return w[..., self.lo : self.hi]


@dataclasses.dataclass(frozen=True)
class Target:
    """One probed matrix: the result key `name`, the leaf it lives in, and an optional view of that leaf."""

    name: str
    path: str
    view: Callable | None = None


_GRAM_BLOCK = 1 << 18  # columns of G converted to float64 at a time (bounds the extra device memory)


@jax.jit
def _gram64(G_MxP):
    """G G^T accumulated in float64 (call under jax.enable_x64): products of float32 entries are exact in
    float64, so the only error is float64 summation, ~1e-16 * sigma_1^2 instead of float32's ~1e-7."""
    gram = None
    for start in range(0, G_MxP.shape[1], _GRAM_BLOCK):
        block = G_MxP[:, start : start + _GRAM_BLOCK].astype(jnp.float64)
        part = jax.lax.dot_general(
            block,
            block,
            (((1,), (1,)), ((), ())),
            precision=jax.lax.Precision.HIGHEST,
            preferred_element_type=jnp.float64,
        )
        gram = part if gram is None else gram + part
    return gram


def gram64(A_MxP) -> np.ndarray:
    """A A^T as a float64 host array, accumulated in float64 on device (`_gram64`)."""
    with jax.enable_x64(True):
        return to_host(_gram64(A_MxP)).astype(np.float64)


def singular_values_from_gram(gram) -> np.ndarray:
    """sqrt of the clipped float64 eigenvalues (eigvalsh) of the symmetrised Gram A A^T: A's singular values,
    descending."""
    gram = 0.5 * (gram + gram.T)
    return np.sqrt(np.clip(np.linalg.eigvalsh(gram)[::-1], 0.0, None))


def singular_values_gram(G_MxP) -> np.ndarray:
    """Singular values of G (M, P), descending, length min(M, P): the float64 Gram on device, float64 eigvalsh
    on the host, sqrt of the clipped eigenvalues.

    Why float64: the Gram squares the condition number, so a float32 Gram (~1e-7 * sigma_1^2 absolute error on
    the eigenvalues) gives sigma_j a relative error ~1e-7 (sigma_1 / sigma_j)^2. Measured against a float64 SVD
    on synthetic G: sigma_j = j^-1, 512 x 4096: max relative error 4.4e-4 with a float32 Gram, 1.1e-12
    accumulated in float64; sigma_j = j^-3, 128 x 4096 (range 2e6): 12.8 (i.e. garbage) vs 7.7e-6."""
    G = jnp.asarray(G_MxP, jnp.float32)
    M, Pn = G.shape
    if M < 2:
        raise ProbeError(f"need at least 2 per-sample gradients for a spectrum, got M={M}")
    return singular_values_from_gram(gram64(G))[: min(M, Pn)]


_FNS: collections.OrderedDict = collections.OrderedDict()  # compiled engines, most recent last
_MAX_FNS = 32


def _engine_fn(loss_fn, leaves, wrt, views, has_aux):
    """jit(wrt leaves, other array leaves, examples, *args) -> (G per target, losses, finite, aux), cached on
    everything that defines the trace (so a monitor called every N steps compiles once)."""
    static = tuple((i, v) for i, v in enumerate(leaves.values) if not is_array(v))
    key = (loss_fn, leaves.treedef, leaves.graphdef, tuple((i, id(v)) for i, v in static), wrt, views, has_aux)
    try:
        hash(key)
    except TypeError:
        key = None
    arrays = tuple(i for i, v in enumerate(leaves.values) if is_array(v) and i not in wrt)
    if key is not None and key in _FNS:
        _FNS.move_to_end(key)
        return _FNS[key][0], arrays
    slots = {i: v for i, v in static}

    def fn(wrt_vals, other_vals, examples, *args):
        _TRACES["per_example_grads"] += 1

        def one(w, example):
            values = dict(slots)
            values.update(zip(wrt, w))
            values.update(zip(arrays, other_vals))
            out = loss_fn(leaves.rebuild([values[i] for i in range(len(leaves.values))]), example, *args)
            loss, aux = out if has_aux else (out, ())
            if jnp.shape(loss) != ():
                raise UserError(
                    f"loss_fn(params, example) must return one scalar per example, got shape {jnp.shape(loss)}"
                )
            return loss, aux

        (losses, aux), grads = jax.vmap(jax.value_and_grad(one, has_aux=True), in_axes=(None, 0))(wrt_vals, examples)
        C = losses.shape[0]
        G = []
        for slot, view in views:
            g = grads[slot] if view is None else jax.vmap(view)(grads[slot])
            G.append(g.reshape(C, -1).astype(jnp.float32))
        return tuple(G), losses, finite_rows(losses, G), aux

    jitted = jax.jit(fn)
    if key is not None:
        _FNS[key] = (jitted, static)  # holds the static leaves, so their ids stay valid while cached
        while len(_FNS) > _MAX_FNS:
            _FNS.popitem(last=False)
    return jitted, arrays


def finite_rows(losses_C, G):
    """Per row: the loss and every gradient entry are finite."""
    ok = jnp.isfinite(losses_C)
    for g in G:
        ok = ok & jnp.all(jnp.isfinite(g), axis=1)
    return ok


def run_chunks(step, n_targets: int, examples, chunk: int, *args, on_aux=None, what: str = "example") -> list[list]:
    """All chunks of `examples` through `step(chunk_examples, *args) -> (G per target, losses, finite, aux)`, the
    last one padded by repeating its last example; per target, the list of (valid rows) G chunks, and `on_aux(aux,
    n)` with each chunk's n valid rows. Finite flags are read once at the end, so chunks are dispatched without
    waiting; a non-finite row is a ProbeError naming the example."""
    M = leading_size(examples)
    out, oks = [[] for _ in range(n_targets)], []
    for start, stop in chunks(M, chunk):
        n = stop - start
        G, _, ok, aux = step(take_rows(examples, start, stop, chunk), *args)
        oks.append(ok[:n])
        for lst, g in zip(out, G):
            lst.append(g if n == chunk else g[:n])
        if on_aux is not None:
            on_aux(aux, n)
    bad = np.flatnonzero(~to_host(jnp.concatenate(oks)))
    if bad.size:
        i = int(bad[0])
        raise ProbeError(f"non-finite loss or gradient for {what} {i}: the model diverged; no spectrum written")
    return out


class PerExampleGrads:
    """Per-example gradients of selected leaves, one vmapped pass per chunk of examples.

    grads = PerExampleGrads(loss_fn, params, targets)   # targets: list of Target, or where= a selection
    G, losses, ok, aux = grads(examples_chunk, *args)     # G: one (C, P) float32 array per target
    """

    def __init__(
        self, loss_fn: Callable, params, targets=None, *, where: Where = None, has_aux=False, mesh=None, what="example"
    ):
        self.leaves, self.what = flatten(params), what
        paths = [self.leaves.paths[i] for i in self.leaves.candidates]
        if targets is None:
            values = [self.leaves.values[i] for i in self.leaves.candidates]
            targets = [Target(paths[j], paths[j]) for j in select(paths, values, where, "gradient_spectrum")]
        index = {p: i for i, p in zip(self.leaves.candidates, paths)}
        missing = [t.path for t in targets if t.path not in index]
        if missing:
            raise UserError(f"no differentiable leaf at {missing}; available: {', '.join(paths[:40])}")
        self.targets = tuple(targets)
        wrt = tuple(dict.fromkeys(index[t.path] for t in targets))
        views = tuple((wrt.index(index[t.path]), t.view) for t in targets)
        self.fn, arrays = _engine_fn(loss_fn, self.leaves, wrt, views, has_aux)
        self.place, replicate = placer(mesh)
        self.wrt = replicate([self.leaves.values[i] for i in wrt])
        self.others = replicate([self.leaves.values[i] for i in arrays])

    def __call__(self, examples, *args):
        return self.fn(self.wrt, self.others, self.place(examples), *args)

    def run(self, examples, chunk: int, *args, on_aux=None) -> list[list]:
        """Every chunk of `examples` (`run_chunks`): per target, the list of (valid rows) G chunks."""
        return run_chunks(self, len(self.targets), examples, chunk, *args, on_aux=on_aux, what=self.what)


def gradient_spectrum(loss_fn: Callable, params, examples, *, where: Where, chunk: int | None = None, mesh=None):
    """Singular values of the per-example gradient matrix of every leaf of `params` selected by `where`.

    Args:
      loss_fn: loss_fn(params, example) -> scalar loss of ONE example (`params` comes back as the kind of object
        given: an NNX module, a pytree, an equinox module).
      params: the model's parameters (any pytree, or an NNX module / Hugging Face Flax model).
      examples: an array or pytree of arrays whose leading axis indexes the M examples.
      where: regex searched in each leaf's '/'-joined path, or a predicate (path, leaf) -> bool.
      chunk: examples per vmapped pass (default min(M, 32)); memory scales with it.
      mesh: each chunk is split over this mesh's first axis (chunk divisible by its size).
    Returns:
      {path: Spectrum} of singular values, descending, length min(M, leaf size).
    Raises:
      ValueError listing the available paths when `where` matches none; ProbeError on M < 2 or NaN/inf.
    """
    M = leading_size(examples)
    if M < 2:
        raise ProbeError(f"need at least 2 examples for a gradient spectrum, got {M}")
    engine = PerExampleGrads(loss_fn, params, where=where, mesh=mesh)
    chunk = min(M, int(chunk) if chunk else DEFAULT_CHUNK)
    if chunk < 1:
        raise UserError(f"chunk must be positive, got {chunk}")
    G = engine.run(examples, chunk)
    shapes = {engine.leaves.paths[i]: np.shape(engine.leaves.values[i]) for i in engine.leaves.candidates}
    return {
        t.name: Spectrum(
            "gradient", t.name, singular_values_gram(g[0] if len(g) == 1 else jnp.concatenate(g)), M, shapes[t.path]
        )
        for t, g in zip(engine.targets, G)
    }
