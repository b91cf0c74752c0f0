"""What every model-agnostic probe shares: ProbeError, the trace counter, chunking, device placement and the
streaming covariance accumulators.

One place for them so every probe pads chunks and places data identically (one compiled program per shape).
"""

from __future__ import annotations

import collections
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from spectral_jax import distributed
from spectral_jax.covariance import CovarianceAccumulator

_TRACES: collections.Counter = collections.Counter()  # traces per device function (tests: compile once)


class ProbeError(ValueError):
    """A probe cannot produce a meaningful spectrum (diverged checkpoint, too few samples, ...)."""


def chunks(n: int, chunk: int):
    """(start, stop) of consecutive chunks of `chunk` rows covering range(n)."""
    for start in range(0, n, chunk):
        yield start, min(n, start + chunk)


def leading_size(tree) -> int:
    """The common leading dimension of every array leaf of `tree` (the number of examples)."""
    sizes = {int(np.shape(x)[0]) for x in jax.tree_util.tree_leaves(tree) if np.ndim(x) >= 1}
    if len(sizes) != 1:
        raise ValueError(
            f"examples must be an array or a pytree of arrays sharing one leading axis, got sizes {sorted(sizes)}"
        )
    return sizes.pop()


def take_rows(tree, start: int, stop: int, rows: int):
    """Rows [start, stop) of every leaf, padded to `rows` by repeating the last row (one shape per chunk, so
    one compiled program; padded rows are computed and dropped)."""
    idx = np.minimum(np.arange(start, start + rows), stop - 1)
    return jax.tree_util.tree_map(lambda x: x[idx] if isinstance(x, np.ndarray) else jnp.take(x, idx, axis=0), tree)


def placer(mesh):
    """(place, replicate): array leaves go on the mesh's first axis when their leading size divides the device
    count (else replicated), model state is replicated unless it already lives on the mesh's devices (a model
    trained on that mesh, replicated or fsdp-split: jit runs on it as it is), so the jitted passes run
    data-parallel."""
    if mesh is None or mesh.devices.size == 1:
        if distributed.multiprocess():  # host values stay host values: jit takes them as replicated inputs
            return (lambda tree: tree), (lambda tree: tree)
        return (lambda tree: jax.tree_util.tree_map(jnp.asarray, tree)), (lambda tree: tree)
    axis = mesh.axis_names[0]
    rows = NamedSharding(mesh, P(axis))
    replicated = NamedSharding(mesh, P())
    devices = set(mesh.devices.flat)

    def put(a):
        ok = np.ndim(a) >= 1 and np.shape(a)[0] % mesh.devices.size == 0
        return distributed.put(a, rows if ok else replicated)

    def replicate_leaf(x):
        if isinstance(x, jax.Array) and x.sharding.device_set == devices:
            return x
        return jax.device_put(x, replicated)

    return (lambda tree: jax.tree_util.tree_map(put, tree)), (lambda tree: jax.tree_util.tree_map(replicate_leaf, tree))


@functools.lru_cache(maxsize=8)
def _template_accumulator(mesh) -> CovarianceAccumulator:
    return CovarianceAccumulator(1, mesh=mesh)


def accumulator(dim: int, mesh) -> CovarianceAccumulator:
    """A CovarianceAccumulator that reuses one jitted fold per mesh.

    CovarianceAccumulator builds a fresh jax.jit per instance, so every probe call would recompile its fold. The
    fold's trace depends only on the mesh and the shapes, so the instances made here share the first
    instance's compiled functions (cache keyed on the mesh)."""
    acc = CovarianceAccumulator(dim, mesh=mesh, allow_nonfinite=True)
    template = _template_accumulator(acc.mesh)
    acc._fold = template._fold
    acc.__dict__["_first_mean"] = template._first_mean
    return acc


def eigenvalues(acc: CovarianceAccumulator, what: str = "activation") -> np.ndarray:
    """Descending float64 eigenvalues; ProbeError when rows were NaN/inf (a diverged model)."""
    if acc.nonfinite_rows:
        raise ProbeError(f"{acc.nonfinite_rows} {what} rows are NaN/inf: the checkpoint diverged; no spectrum written")
    return acc.eigenvalues()
