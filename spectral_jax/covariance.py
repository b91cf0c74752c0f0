"""Streaming, mesh-sharded covariance of activations, exact to float64 reference on the tail.

Why this design (measurements in docs/benchmarks.md): activations carry a large common offset, so a float32 Gram
of uncentred data loses the tail eigenvalues entirely (relative error ~10^2 at rank 200, N = 1M, d = 768).
We therefore
1. shift every row by a fixed pivot (the mean of the first chunk) so values are O(spread), not O(offset);
2. centre each chunk on its own mean and form its Gram Y_c^T Y_c in float32 on device (HIGHEST precision,
   so GPUs do not fall back to TF32);
3. fold chunks together with the exact Chan merge
       M2 <- M2 + G_c + (n n_c / (n + n_c)) delta delta^T,   mean <- mean + (n_c / (n + n_c)) delta,
   delta = mean_c - mean, accumulating M2 as a compensated (hi, lo) float32 pair (Kahan/TwoSum), which
   keeps float64-like accuracy on devices with slow or no float64;
4. keep one such state per device of a data mesh (shard_map): each device folds only its own rows, and the
   per-device states are reduced with the same exact merge at finalisation, on the host in float64.
Covariance = M2 / (N - 1) (unbiased, as the reference); eigenvalues by float64 `eigvalsh` on the host
(default) or float32 `eigh` on device. Memory is O(d^2) per device, independent of the number of rows.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from spectral_jax import distributed
from spectral_jax.errors import UserError

_AXIS = "data"


@dataclasses.dataclass(frozen=True)
class CovStats:
    """Sufficient statistics in float64 on the host: row count, mean, centred sum of outer products."""

    count: int
    mean: np.ndarray  # (d,)
    m2: np.ndarray  # (d, d)

    def merge(self, other: CovStats) -> CovStats:
        """Exact Chan merge of two disjoint row sets."""
        if other.count == 0:
            return self
        if self.count == 0:
            return other
        n = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / n)
        m2 = self.m2 + other.m2 + np.outer(delta, delta) * (self.count * other.count / n)
        return CovStats(n, mean, m2)


def default_mesh(devices=None) -> jax.sharding.Mesh:
    """A 1-D data mesh over `devices` (default: all local devices)."""
    devices = list(devices) if devices is not None else jax.local_devices()
    return jax.sharding.Mesh(np.asarray(devices), (_AXIS,))


def _two_sum(hi, lo, x):
    s = hi + x
    z = s - hi
    err = (hi - (s - z)) + (x - z)
    return s, lo + err


def _fold_local(pivot_D, y_RxD, valid_R, count, mean_D, m2_hi_DxD, m2_lo_DxD, nonfinite):
    """One device's Chan update with its local rows (leading state axis of size 1)."""
    finite_R = jnp.all(jnp.isfinite(y_RxD), axis=-1)
    nonfinite = nonfinite + jnp.sum(valid_R & ~finite_R).astype(jnp.int32)
    keep_R = valid_R & finite_R
    y_RxD = jnp.where(keep_R[:, None], y_RxD.astype(jnp.float32) - pivot_D, 0.0)
    n_c = jnp.sum(keep_R).astype(jnp.int32)
    mean_c_D = jnp.sum(y_RxD, axis=0) / jnp.maximum(n_c, 1).astype(jnp.float32)
    yc_RxD = jnp.where(keep_R[:, None], y_RxD - mean_c_D, 0.0)
    gram_DxD = jax.lax.dot_general(
        yc_RxD,
        yc_RxD,
        (((0,), (0,)), ((), ())),
        precision=jax.lax.Precision.HIGHEST,
        preferred_element_type=jnp.float32,
    )
    n_old = count[0]
    total = n_old + n_c
    inv_total = 1.0 / jnp.maximum(total, 1).astype(jnp.float32)
    delta_D = mean_c_D - mean_D[0]
    w_merge = n_old.astype(jnp.float32) * n_c.astype(jnp.float32) * inv_total
    incr_DxD = gram_DxD + w_merge * jnp.outer(delta_D, delta_D)
    hi, lo = _two_sum(m2_hi_DxD[0], m2_lo_DxD[0], incr_DxD)
    mean_D = mean_D[0] + delta_D * (n_c.astype(jnp.float32) * inv_total)
    return (total[None], mean_D[None], hi[None], lo[None], nonfinite)


class CovarianceAccumulator:
    """Streaming covariance of d-dimensional rows, sharded over a data mesh.

    acc = CovarianceAccumulator(768, mesh=None)   # mesh=None: every local device
    acc.update(acts_BxTxD)                         # any leading shape; rows are split over devices
    acc.count, acc.covariance(), acc.eigenvalues()

    Rows with NaN/inf are never folded in; they are counted and `covariance()` raises unless the
    accumulator was built with `allow_nonfinite=True` (the reference silently skips such batches).
    """

    def __init__(self, dim: int, mesh: jax.sharding.Mesh | None = None, *, allow_nonfinite: bool = False):
        if dim < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        self.dim = int(dim)
        self.mesh = mesh if mesh is not None else default_mesh()
        if len(self.mesh.axis_names) != 1:
            raise ValueError(f"expected a 1-D data mesh, got axes {self.mesh.axis_names}")
        self._axis = self.mesh.axis_names[0]
        self.n_devices = int(self.mesh.devices.size)
        self.allow_nonfinite = allow_nonfinite
        self._pivot: jax.Array | None = None
        self._rows_sharding = NamedSharding(self.mesh, P(self._axis, None))
        self._state = self._zero_state()
        self._fold = self._build_fold()

    # -- device state -------------------------------------------------------------------------------
    def _zero_state(self):
        k, d = self.n_devices, self.dim
        shard = lambda *spec: NamedSharding(self.mesh, P(self._axis, *spec))  # noqa: E731
        return (
            jax.device_put(np.zeros((k,), np.int32), shard()),
            jax.device_put(np.zeros((k, d), np.float32), shard(None)),
            jax.device_put(np.zeros((k, d, d), np.float32), shard(None, None)),
            jax.device_put(np.zeros((k, d, d), np.float32), shard(None, None)),
            jax.device_put(np.zeros((k,), np.int32), shard()),
        )

    def _build_fold(self):
        a = self._axis
        fold = jax.shard_map(
            _fold_local,
            mesh=self.mesh,
            in_specs=(P(), P(a, None), P(a), P(a), P(a, None), P(a, None, None), P(a, None, None), P(a)),
            out_specs=(P(a), P(a, None), P(a, None, None), P(a, None, None), P(a)),
        )
        return jax.jit(fold, donate_argnums=(3, 4, 5, 6, 7))

    @functools.cached_property
    def _first_mean(self):
        @jax.jit
        def first_mean(y_RxD, valid_R):
            keep = valid_R & jnp.all(jnp.isfinite(y_RxD), axis=-1)
            s = jnp.sum(jnp.where(keep[:, None], y_RxD.astype(jnp.float32), 0.0), axis=0)
            return s / jnp.maximum(jnp.sum(keep), 1).astype(jnp.float32)

        return first_mean

    def _shard_rows(self, acts) -> tuple[jax.Array, jax.Array]:
        """(rows, d) padded to a multiple of the device count, with a validity mask, sharded over `data`."""
        acts = acts if isinstance(acts, (jax.Array, np.ndarray)) else np.asarray(acts)
        if isinstance(acts, jax.Array) and not acts.is_fully_addressable:
            acts = distributed.to_host(acts)  # several processes: jax cannot reshard it in place
        if acts.ndim < 1 or acts.shape[-1] != self.dim:
            raise ValueError(f"activations of shape {tuple(acts.shape)} do not end in dim {self.dim}")
        rows = int(np.prod(acts.shape[:-1]))
        y_RxD = acts.reshape(rows, self.dim)
        pad = (-rows) % self.n_devices
        valid_R = np.ones(rows + pad, dtype=bool)
        if pad:
            y_RxD = jnp.concatenate([jnp.asarray(y_RxD), jnp.zeros((pad, self.dim), y_RxD.dtype)])
            valid_R[rows:] = False
        y_RxD = jax.device_put(y_RxD, self._rows_sharding)
        valid_R = jax.device_put(valid_R, NamedSharding(self.mesh, P(self._axis)))
        return y_RxD, valid_R

    # -- public API -----------------------------------------------------------------------------------
    def update(self, acts) -> CovarianceAccumulator:
        """Fold a chunk of activations (..., d) into the running statistics (jitted, sharded)."""
        y_RxD, valid_R = self._shard_rows(acts)
        if y_RxD.shape[0] == 0:
            return self
        if self._pivot is None:
            self._pivot = jax.device_put(self._first_mean(y_RxD, valid_R), NamedSharding(self.mesh, P()))
        self._state = self._fold(self._pivot, y_RxD, valid_R, *self._state)
        return self

    @property
    def count(self) -> int:
        """Rows folded in so far (non-finite rows excluded)."""
        return int(np.sum(distributed.to_host(self._state[0]).astype(np.int64)))

    @property
    def nonfinite_rows(self) -> int:
        return int(np.sum(distributed.to_host(self._state[4]).astype(np.int64)))

    def stats(self) -> CovStats:
        """Float64 host statistics: per-device states merged exactly (in absolute coordinates)."""
        counts, means, hi, lo, _ = (distributed.to_host(s) for s in self._state)
        pivot = np.zeros(self.dim) if self._pivot is None else np.asarray(self._pivot, np.float64)
        out = CovStats(0, np.zeros(self.dim), np.zeros((self.dim, self.dim)))
        for k in range(self.n_devices):
            m2 = hi[k].astype(np.float64) + lo[k].astype(np.float64)
            out = out.merge(CovStats(int(counts[k]), pivot + means[k].astype(np.float64), m2))
        return out

    def load_stats(self, stats: CovStats) -> CovarianceAccumulator:
        """Replace the state by `stats` (e.g. restored from disk, or merged from another accumulator)."""
        if stats.mean.shape != (self.dim,) or stats.m2.shape != (self.dim, self.dim):
            raise ValueError(f"stats of dim {stats.mean.shape} do not match accumulator dim {self.dim}")
        self._pivot = jax.device_put(stats.mean.astype(np.float32), NamedSharding(self.mesh, P()))
        counts = np.zeros((self.n_devices,), np.int32)
        counts[0] = stats.count
        means = np.zeros((self.n_devices, self.dim), np.float32)
        means[0] = stats.mean - np.asarray(self._pivot, np.float64)
        hi = np.zeros((self.n_devices, self.dim, self.dim), np.float32)
        lo = np.zeros_like(hi)
        hi[0] = stats.m2.astype(np.float32)
        lo[0] = (stats.m2 - hi[0].astype(np.float64)).astype(np.float32)
        shardings = [s.sharding for s in self._state]
        self._state = tuple(
            jax.device_put(a, sh)
            for a, sh in zip((counts, means, hi, lo, np.zeros((self.n_devices,), np.int32)), shardings)
        )
        return self

    def merge(self, other: CovarianceAccumulator) -> CovarianceAccumulator:
        """Fold another accumulator's rows into this one (exact)."""
        if other.dim != self.dim:
            raise ValueError(f"cannot merge dim {other.dim} into dim {self.dim}")
        nonfinite = self.nonfinite_rows + other.nonfinite_rows
        self.load_stats(self.stats().merge(other.stats()))
        self._state = self._state[:4] + (self._state[4].at[0].set(nonfinite),)
        return self

    def mean(self) -> np.ndarray:
        return self.stats().mean

    def covariance(self) -> np.ndarray:
        """Centred covariance M2 / (N - 1) in float64."""
        bad = self.nonfinite_rows
        if bad and not self.allow_nonfinite:
            raise ValueError(
                f"{bad} activation rows were NaN/inf and were not folded in; the model "
                "diverged or the checkpoint is corrupt (pass allow_nonfinite=True to skip them)"
            )
        s = self.stats()
        if s.count < 2:
            raise ValueError(
                f"too few rows for a covariance: got {s.count}, need at least 2 "
                f"(and at least {self.dim + 1} for a full-rank {self.dim}x{self.dim} estimate); "
                "feed more tokens"
            )
        cov = s.m2 / (s.count - 1)
        if not np.all(np.isfinite(cov)):
            raise UserError(
                f"the {self.dim}x{self.dim} covariance overflowed (activations too large for the float32 "
                "accumulator, max |mean| " + f"{np.max(np.abs(s.mean)):.3g}); the model's activations have blown up: "
                "check its training (a diverging run) or the checkpoint"
            )
        return cov

    def eigenvalues(self, *, on_device: bool = False) -> np.ndarray:
        """Covariance eigenvalues, descending. Host float64 eigvalsh by default (the reference's solver);
        on_device=True runs float32 `eigh` on the default device (faster, ~1e-7 * lambda_1 absolute error)."""
        cov = self.covariance()
        if on_device:
            ev = np.asarray(jnp.linalg.eigvalsh(jnp.asarray(cov, jnp.float32)), np.float64)
        else:
            ev = np.linalg.eigvalsh(cov)
        return ev[::-1].copy()


def covariance_eigenvalues(acts_NxD, mesh: jax.sharding.Mesh | None = None) -> np.ndarray:
    """One-shot helper: descending eigenvalues of the covariance of the rows of `acts` (..., d)."""
    acts_NxD = acts_NxD if isinstance(acts_NxD, jax.Array) else np.asarray(acts_NxD)
    return CovarianceAccumulator(acts_NxD.shape[-1], mesh=mesh).update(acts_NxD).eigenvalues()
