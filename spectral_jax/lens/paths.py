"""Leaves of any model by '/'-joined path, and the `where` selection every model-agnostic probe shares.

A path joins a leaf's keys with '/': dict keys, sequence indices and attribute names, e.g.
`blocks/11/attn/c_proj/kernel` (Flax NNX), `params/transformer/h/0/mlp/c_fc/kernel` (linen),
`layers/2/weight` (equinox). NNX `Variable` wrappers add no key (their `.value` is the leaf).

`where` is a regex searched in the path (`re.search`: anchor it with ^...$ for an exact path) or a predicate
`(path, leaf) -> bool`. A `where` that selects nothing is a ValueError listing the paths there are.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

import jax
import numpy as np
from flax import nnx

from spectral_jax.errors import UserError

Where = str | re.Pattern | Callable[[str, object], bool] | None


def _key_name(key) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def path_str(keys) -> str:
    """'/'-joined names of a jax key path (or of an NNX path tuple)."""
    return "/".join(_key_name(k) if not isinstance(k, (str, int)) else str(k) for k in keys)


def _is_variable(x) -> bool:
    return isinstance(x, nnx.Variable)


def is_array(x) -> bool:
    return isinstance(x, (jax.Array, np.ndarray)) or isinstance(x, jax.ShapeDtypeStruct)


@dataclasses.dataclass(frozen=True)
class Leaves:
    """A pytree flattened for probing: the leaves, their paths, and how to rebuild the tree.

    For an NNX module the tree is its state (`nnx.split`); `rebuild` merges it back into a module, so a
    user's function always receives the kind of object it was given."""

    paths: tuple[str, ...]
    values: tuple  # raw leaves, in treedef order
    treedef: object
    candidates: tuple[int, ...]  # indices of the leaves a probe may select (floating arrays; NNX: Params)
    graphdef: object = None  # NNX modules only

    def rebuild(self, values):
        tree = jax.tree_util.tree_unflatten(self.treedef, list(values))
        return tree if self.graphdef is None else nnx.merge(self.graphdef, tree)


def _unwrap_model(params):
    """Framework wrappers with a few-line adapter: Hugging Face Flax models (`.module` + `.params`) give their
    params dict."""
    if hasattr(params, "params") and hasattr(params, "module") and not isinstance(params, nnx.Module):
        return params.params
    return params


def flatten(params) -> Leaves:
    """Leaves of an NNX module (its `nnx.Param`s are the candidates), an `nnx.State`, a linen params dict, an
    equinox module or any pytree of arrays."""
    params = _unwrap_model(params)
    graphdef = None
    tree = params
    if isinstance(params, nnx.Module):
        graphdef, tree = nnx.split(params)
    flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_variable)[0]
    paths, wrapped = [path_str(k) for k, _ in flat], [leaf for _, leaf in flat]
    values, treedef = jax.tree_util.tree_flatten(tree)
    if len(values) != len(paths):  # a Variable with more than one child: name leaves by their raw key paths
        flat = jax.tree_util.tree_flatten_with_path(tree)[0]
        paths, wrapped = [path_str(k) for k, _ in flat], [v for _, v in flat]
    candidates = []
    for i, (w, v) in enumerate(zip(wrapped, values)):
        if _is_variable(w) and not isinstance(w, nnx.Param):
            continue
        if is_array(v) and np.issubdtype(np.dtype(v.dtype), np.inexact):
            candidates.append(i)
    return Leaves(tuple(paths), tuple(values), treedef, tuple(candidates), graphdef)


def natural_key(path: str) -> tuple:
    """Sort key of a path with its numbers compared as numbers (h/2 before h/10), so results follow the model."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in path.split("/"))


def _listing(paths, limit: int = 40) -> str:
    shown = list(paths[:limit])
    more = f", ... ({len(paths) - limit} more)" if len(paths) > limit else ""
    return ", ".join(shown) + more


def matcher(where: Where, what: str) -> Callable[[str, object], bool]:
    """`where` as a predicate (path, leaf) -> bool; a bad regex is a ValueError naming it."""
    if where is None:
        return lambda path, leaf: True
    if callable(where) and not isinstance(where, re.Pattern):
        return where
    try:
        pattern = where if isinstance(where, re.Pattern) else re.compile(where)
    except (re.error, TypeError) as err:
        raise UserError(f"{what}: where={where!r} is not a regex or a predicate (path, leaf) -> bool: {err}") from None
    return lambda path, leaf: pattern.search(path) is not None


def select(paths, leaves, where: Where, what: str) -> list[int]:
    """Indices i with where(paths[i], leaves[i]), in natural path order (`natural_key`); none is a ValueError listing
    the available paths."""
    match = matcher(where, what)
    chosen = sorted(
        (i for i, (p, leaf) in enumerate(zip(paths, leaves)) if match(p, leaf)), key=lambda i: natural_key(paths[i])
    )
    if not chosen:
        raise UserError(
            f"{what}: where={where!r} matches none of the {len(paths)} available paths: "
            f"{_listing(sorted(paths, key=natural_key))}"
        )
    return chosen
