"""Activation covariance spectra of any model (docs/method.md §1.1, §1.4).

`activation_spectrum(fn, batches)`: `fn(batch)` returns hidden states (..., D), or a dict / pytree of them; every
leading index is one row of a streaming float32 covariance (`CovarianceAccumulator`, sharded over `mesh`), the
eigenvalues come from a float64 host eigvalsh, descending.

`activation_spectra(model, batches, where=...)`: the outputs of every submodule whose path matches `where`,
captured by the framework's own mechanism, no edit to the model: Flax NNX `nnx.capture(..., method_outputs=
nnx.Intermediate)` (values the model sows with `nnx.Intermediate` are found too), Flax linen
`capture_intermediates`. A module output's path is the module's path, plus `/<method>` for a method other than
`__call__`, plus the output's own key path when it is a tuple / dict of several arrays (the root module's own
output is `__call__`). A module called several times contributes the rows of every call.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterable

import jax
import numpy as np
from flax import nnx

from spectral_jax.errors import UserError
from spectral_jax.lens.common import _TRACES, accumulator, eigenvalues, placer
from spectral_jax.lens.paths import Where, path_str, select
from spectral_jax.lens.spectrum import Spectrum


class CovarianceStreams:
    """One streaming covariance per key; `fold({key: array or list of arrays})`, then `spectra()`."""

    def __init__(self, dims: dict[str, int], mesh=None):
        self.accs = {k: accumulator(d, mesh) for k, d in dims.items()}

    def fold(self, outputs: dict, rows: int | None = None) -> None:
        """Fold each key's arrays; `rows` keeps only the first rows of the leading axis (drops chunk padding)."""
        for key, arrays in outputs.items():
            for a in arrays if isinstance(arrays, (list, tuple)) else [arrays]:
                self.accs[key].update(a if rows is None or rows == a.shape[0] else a[:rows])

    @property
    def count(self) -> int:
        return next(iter(self.accs.values())).count if self.accs else 0

    def spectra(self) -> dict[str, Spectrum]:
        return {
            key: Spectrum("activation", key, eigenvalues(acc), samples=acc.count, shape=(acc.dim,))
            for key, acc in self.accs.items()
        }


def _peek(batches) -> tuple[object, Iterable]:
    if isinstance(batches, (np.ndarray, jax.Array)):
        batches = [batches]
    it = iter(batches)
    try:
        first = next(it)
    except StopIteration:
        raise UserError("no batches given: pass an iterable of at least one batch") from None
    return first, itertools.chain([first], it)


def _hidden_leaves(tree, what: str) -> dict:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    if not flat:
        raise UserError(f"{what} returned no arrays")
    out = {}
    for keys, leaf in flat:
        if np.ndim(leaf) < 1:
            raise UserError(
                f"{what} returned a scalar at {path_str(keys) or 'its output'}; return (..., D) hidden states"
            )
        out[path_str(keys) or "output"] = leaf
    return out


def activation_spectrum(fn: Callable, batches, *, mesh=None, jit: bool = True):
    """Covariance eigenvalues of the hidden states `fn(batch)` over every batch.

    Args:
      fn: batch -> (..., D) array, or a dict / pytree of such arrays (one spectrum each); jitted here unless
        `jit=False` (pass that for a function that is already jitted, e.g. by nnx.jit).
      batches: an iterable of batches (any pytree `fn` accepts), or one array.
      mesh: rows of the covariance are sharded over this mesh's first axis (default: every local device).
    Returns:
      A `Spectrum` (path "output") when `fn` returns one array, else {path: Spectrum}.
    Raises:
      ProbeError when any row is NaN/inf.
    """
    _, batches = _peek(batches)
    run = jax.jit(fn) if jit else fn
    place, _ = placer(mesh)
    streams, single = None, False
    for batch in batches:
        out = run(place(batch))
        leaves = _hidden_leaves(out, "fn")
        if streams is None:
            single = isinstance(out, (jax.Array, np.ndarray))
            streams = CovarianceStreams({k: a.shape[-1] for k, a in leaves.items()}, mesh)
        streams.fold(leaves)
    result = streams.spectra()
    return result["output"] if single else result


# ---- module outputs -----------------------------------------------------------------------------------------
def _calls(tree, prefix=()):
    """(path, method, calls) of every captured value: a tuple of per-call outputs found in a nested mapping."""
    items = tree.items() if hasattr(tree, "items") else []
    for k, v in items:
        if isinstance(v, tuple):
            yield prefix, str(k), v
        elif hasattr(v, "items"):
            yield from _calls(v, prefix + (k,))


def captured_outputs(captured) -> dict[str, list]:
    """{path: [array per call]} of every floating (rows, ..., D) output in a capture state (module docstring)."""
    out: dict[str, list] = {}
    for prefix, method, calls in _calls(captured):
        base = path_str(prefix)
        name = base if method == "__call__" else (f"{base}/{method}" if base else method)
        for call in calls:
            flat = jax.tree_util.tree_flatten_with_path(call)[0]
            leaves = [(k, x) for k, x in flat if np.ndim(x) >= 2 and np.issubdtype(np.dtype(x.dtype), np.floating)]
            for keys, x in leaves:
                sub = path_str(keys) if len(leaves) > 1 else ""
                key = "/".join(p for p in (name, sub) if p) or "__call__"
                out.setdefault(key, []).append(x)
    return out


def _nnx_capture_fn(graphdef, call):
    def fn(state, batch):
        model = nnx.merge(graphdef, state)
        _, captured = nnx.capture(call, nnx.Intermediate, method_outputs=nnx.Intermediate)(model, batch)
        return captured_outputs(captured.to_pure_dict())

    return fn


def _linen_capture_fn(module, call):
    def fn(variables, batch):
        _, state = module.apply(variables, batch, method=call, capture_intermediates=True, mutable=["intermediates"])
        return captured_outputs(state["intermediates"])

    return fn


@functools.lru_cache(maxsize=32)
def _selected(fn, keys: tuple[str, ...]):
    def run(params, batch):
        _TRACES["module_outputs"] += 1
        outs = fn(params, batch)
        return {k: outs[k] for k in keys}

    return jax.jit(run)


def _default_call(model, batch):
    return model(batch)


def _module_fn(model, variables, call):
    """(capture fn(params, batch) -> {path: [arrays]}, params) for an NNX module, a linen module + variables, or a
    Hugging Face Flax model (`.module` + `.params`)."""
    call = call or _default_call
    if isinstance(model, nnx.Module):
        graphdef, state = nnx.split(model)
        return _nnx_capture_fn(graphdef, call), state
    if hasattr(model, "module") and hasattr(model, "params"):  # Hugging Face Flax models
        model, variables = model.module, variables or {"params": model.params}
    from flax import linen  # noqa: PLC0415 (only linen users pay for the import)

    if isinstance(model, linen.Module):
        if variables is None:
            raise UserError("a Flax linen module needs its variables: activation_spectra(module, ..., variables=...)")
        return _linen_capture_fn(model, call), variables
    raise UserError(
        f"activation_spectra captures Flax NNX or linen modules, got {type(model).__name__}; for any other model "
        "pass a function returning its hidden states to activation_spectrum(fn, batches)"
    )


def activation_spectra(model, batches, *, where: Where, call: Callable | None = None, variables=None, mesh=None):
    """Covariance spectra of the outputs of every submodule of `model` whose path matches `where`.

    Args:
      model: a Flax NNX module, a Flax linen module (with `variables`), or a Hugging Face Flax model.
      batches: an iterable of batches, or one array.
      where: regex searched in each output's path (e.g. r"layers/\\d+$"), or a predicate (path, shape) -> bool.
      call: `call(model, batch)` runs the model (default `model(batch)`); for linen it is the `method` of apply.
      variables: a linen module's variables ({"params": ...}).
      mesh: rows are sharded over this mesh's first axis.
    Returns:
      {path: Spectrum}, one per matching output, ordered by path with numbers compared as numbers (h/2 before h/10).
    Raises:
      ValueError listing the available paths when `where` matches none; ProbeError on NaN/inf.
    """
    first, batches = _peek(batches)
    fn, params = _module_fn(model, variables, call)
    shapes = jax.eval_shape(fn, params, first)
    paths = list(shapes)
    chosen = [paths[i] for i in select(paths, [shapes[p][0] for p in paths], where, "activation_spectra")]
    place, replicate = placer(mesh)
    params = replicate(params)
    run = _selected(_Hashable(fn), tuple(chosen))
    streams = CovarianceStreams({p: shapes[p][0].shape[-1] for p in chosen}, mesh)
    for batch in batches:
        streams.fold(run(params, place(batch)))
    return streams.spectra()


def _hashable(x):
    try:
        hash(x)
    except TypeError:
        return ("id", id(x))  # alive as long as the cache entry that holds the function holds it
    return x


class _Hashable:
    """A capture function keyed by what defines it (its code and its closure: the graphdef or linen module, and
    the call), so repeated calls on the same model reuse one compiled program. Unhashable closure values (a
    linen module holding a config object) count by identity."""

    def __init__(self, fn):
        self.fn = fn
        self.key = (fn.__code__, tuple(_hashable(c.cell_contents) for c in (fn.__closure__ or ())))

    def __call__(self, *args):
        return self.fn(*args)

    def __hash__(self):
        return hash(self.key)

    def __eq__(self, other):
        return isinstance(other, _Hashable) and self.key == other.key
