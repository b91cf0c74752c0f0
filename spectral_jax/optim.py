"""Optimizers of the modded-nanogpt chain: Muon as an optax transformation, Adam groups, schedules.

OptimConfig is the optimizer recipe a family carries (docs/method.md §3.4); make_optimizer builds it.

Muon step (reference, every LM copy), with m the momentum and g the gradient of a hidden matrix:
    buf <- m·buf + g                      (a plain sum, no EMA, no bias correction)
    u   <- g + m·buf  (nesterov)  | buf
    u   <- NS5(u)                         (in bfloat16, Frobenius-normalised, 5 quintic iterations)
    u   <- u · sqrt(max(1, fan_out/fan_in))
    p   <- p − lr·u                       (no weight decay)
Flax kernels are (in, out) while the reference's torch weights are (out, in), so the reference factor
sqrt(max(1, rows/cols)) on (out, in) is sqrt(max(1, shape[-1]/shape[-2])) here: an MLP up-projection
768→3072 gets ×2, the down-projection 3072→768 gets ×1.

Differences from optax.contrib.muon (0.2.8), all resolved here towards the reference:
- momentum: contrib keeps an EMA μ = β·μ + (1−β)·g with bias correction and Nesterov-mixes
  β·μ̂ + (1−β)·ĝ; the reference sums buf = m·buf + g and uses g + m·buf. NS is scale-invariant, so the
  two differ only through the buf:g ratio, β(1−β^t)/(1−β^{t+1}) vs m, i.e. in the first tens of steps.
- momentum warmup: contrib's β is a constant (a schedule needs inject_hyperparams, and bias correction
  with a varying β is ill-defined); ours takes β as a schedule of the step count (0.85 → 0.95).
- precision: contrib runs NS in the input dtype (float32) with coefficients cast to it; ours casts to
  bfloat16 like the reference, accumulates matmuls in float32 and keeps the coefficients and the width
  factor in float32 (torch's opmath), rounding to bfloat16 where torch does. NS eps 1e-7 (contrib 1e-8).
- which parameters: contrib sends every 2-D leaf (embeddings, value embeddings, lm_head) to Muon; ours
  only the "matrix" group (see param_labels).
- Adam side: contrib uses one NAdamW (b2 = 0.999, nesterov inherited, one lr); ours uses separate
  Adam groups embed / head / scalar with their own lr and betas (b2 = 0.95), eps 1e-8, no weight decay.
- width factor: identical (contrib's scale_by_shape with (reduction=0, output=1) = Flax (in, out)).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from spectral_jax.errors import UserError
from spectral_jax.fields import added_later

GROUPS = ("embed", "head", "matrix", "scalar")
NS_COEFFS = (3.4445, -4.7750, 2.0315)
NS_DTYPES = ("bfloat16", "float32")
ScalarOrSchedule = float | Callable[[jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Optimizer recipe of one family. Learning rates are the x1 anchors at the reference batch.

    kind: "adamw" = one AdamW over every parameter (Baseline, RoPE);
          "muon"  = Muon on hidden-block matrices + Adam groups for embed / head / scalars;
          "adam"  = the LSWA-Adam control: Adam on the hidden matrices instead of Muon.
    Step counts (warmups, num_iterations) are optimizer steps at `reference_batch` sequences; training
    rescales them token-for-token to other batch tiers.
    """

    kind: str = "adamw"
    lr: float = 6e-4  # single-group AdamW (kind == "adamw")
    weight_decay: float = 0.0  # AdamW decoupled weight decay (kind == "adamw")
    lr_embed: float = 0.6
    lr_head: float = 0.008
    lr_matrix: float = 0.04  # Muon lr (kind "muon") or matrix Adam lr (kind "adam")
    lr_scalar: float = 0.04
    betas: tuple[float, float] = (0.9, 0.95)  # AdamW (kind "adamw") and the head group
    betas_embed: tuple[float, float] = (0.9, 0.95)
    betas_scalar: tuple[float, float] = (0.9, 0.95)
    betas_matrix: tuple[float, float] = (0.9, 0.95)  # kind "adam" only
    eps: float = 1e-8
    momentum: float = 0.95  # Muon momentum after warmup
    momentum_start: float = 0.95  # 0.85 from ValueMix on
    momentum_warmup_steps: int = 0
    nesterov: bool = True
    ns_steps: int = 5
    # Newton-Schulz precision: "bfloat16" as the reference; "float32" where two runs must agree to float32
    # rounding (a bf16 rounding that flips amplifies summation-order differences, docs/method.md §8)
    ns_dtype: str = added_later("bfloat16")
    grad_clip: float | None = 1.0  # global-norm clip over all params; None for Baseline
    schedule: str = "warmdown"  # "cosine" (to 0 over num_iterations) | "warmdown" | "constant"
    num_iterations: int = 10_000
    warmdown_frac: float = 0.1
    reference_batch: int = 8  # sequences per optimizer step the step counts above refer to

    def __post_init__(self):
        if self.ns_dtype not in NS_DTYPES:
            raise UserError(f"OptimConfig.ns_dtype={self.ns_dtype!r} is not one of {NS_DTYPES}")


# ----------------------------------------------------------------------------------------------------
# Newton–Schulz and Muon


def _to(x_f32: jax.Array, dtype) -> jax.Array:
    """Round a float32 value to `dtype` with an explicit reduce_precision, then cast (now exact). XLA may drop a
    plain f32 -> bf16 -> f32 convert pair inside a fusion (excess precision); reduce_precision is never dropped,
    so every op below rounds exactly where the bf16 torch reference rounds, on CPU and GPU alike."""
    if dtype == jnp.bfloat16:
        x_f32 = jax.lax.reduce_precision(x_f32, exponent_bits=8, mantissa_bits=7)
    return x_f32.astype(dtype)


def _round(x: jax.Array, s: float, dtype) -> jax.Array:
    """s·x computed in float32 and rounded once to dtype (torch's opmath for a bf16 tensor × scalar)."""
    return _to(s * x.astype(jnp.float32), dtype)


def _add(x: jax.Array, y: jax.Array) -> jax.Array:
    """x + y in float32, rounded once to x.dtype (torch's bf16 add)."""
    return _to(x.astype(jnp.float32) + y.astype(jnp.float32), x.dtype)


def _matmul(x: jax.Array, y: jax.Array) -> jax.Array:
    """x @ y with float32 accumulation, result in x.dtype (as a bf16 cuBLAS matmul)."""
    return _to(jnp.matmul(x, y, preferred_element_type=jnp.float32), x.dtype)


def newton_schulz(
    G: jax.Array, steps: int = 5, coeffs: tuple[float, float, float] = NS_COEFFS, eps: float = 1e-7, dtype=jnp.bfloat16
) -> jax.Array:
    """Approximate polar factor of G (over its last two axes; leading axes are a batch) by quintic NS.

    X = G / (‖G‖_F + eps) in `dtype`, transposed to wide if rows > cols; then `steps` times
        A = X Xᵀ,  B = A X,  X = a·X + b·B + (c·A) B   =  (a + b·XXᵀ + c·(XXᵀ)²) X,
    rounding where the reference's bf16 torch code rounds: Python parses its `c * A @ B` as (c*A) @ B.
    with (a, b, c) = (3.4445, −4.7750, 2.0315). The singular values of the result lie in ~[0.68, 1.13]
    (not 1: the coefficients maximise the slope at 0). Returns an array of `dtype` and G's shape.
    """
    if G.ndim < 2:
        raise ValueError(f"newton_schulz needs a matrix (or a stack of them), got shape {G.shape}")
    a, b, c = coeffs
    X = G.astype(dtype)
    norm = jnp.sqrt(jnp.sum(jnp.square(X.astype(jnp.float32)), axis=(-2, -1), keepdims=True))
    denom = _to(_to(norm, dtype).astype(jnp.float32) + eps, dtype)
    X = _to(X.astype(jnp.float32) / denom.astype(jnp.float32), dtype)
    tall = G.shape[-2] > G.shape[-1]
    if tall:
        X = jnp.swapaxes(X, -1, -2)
    for _ in range(steps):
        A = _matmul(X, jnp.swapaxes(X, -1, -2))
        B = _matmul(A, X)
        X = _add(_add(_round(X, a, dtype), _round(B, b, dtype)), _matmul(_round(A, c, dtype), B))  # (c*A) @ B
    return jnp.swapaxes(X, -1, -2) if tall else X


def muon_scale(shape: tuple[int, ...]) -> float:
    """Width factor sqrt(max(1, fan_out/fan_in)) of a Flax kernel (..., in, out) = reference (out, in)."""
    return math.sqrt(max(1.0, shape[-1] / shape[-2]))


class ScaleByMuonState(NamedTuple):
    """Step count (drives the momentum schedule) and the momentum buffer, one per parameter."""

    count: jax.Array
    buf: optax.Updates


def _as_schedule(value: ScalarOrSchedule) -> Callable[[jax.Array], jax.Array]:
    return value if callable(value) else (lambda count: jnp.asarray(value, jnp.float32))


def scale_by_muon(
    momentum: ScalarOrSchedule = 0.95,
    nesterov: bool = True,
    ns_steps: int = 5,
    ns_coeffs: tuple[float, float, float] = NS_COEFFS,
    eps: float = 1e-7,
    ns_dtype=jnp.bfloat16,
) -> optax.GradientTransformation:
    """Muon direction without the learning rate: u = NS5(g + m·buf) · sqrt(max(1, fan_out/fan_in)).

    buf = m·buf + g is a plain sum; m = momentum(count) when momentum is a schedule. Every leaf must have
    ndim >= 2 (kernels (..., in, out); leading axes are orthogonalised independently). The direction is
    rounded to ns_dtype after the width factor, as the reference's bf16 update, then cast to g's dtype.
    """
    momentum_fn = _as_schedule(momentum)

    def init_fn(params):
        for x in jax.tree.leaves(params):
            if jnp.ndim(x) < 2:
                raise ValueError(f"Muon is for matrices; got a parameter of shape {jnp.shape(x)}")
        return ScaleByMuonState(jnp.zeros([], jnp.int32), jax.tree.map(jnp.zeros_like, params))

    def update_fn(updates, state, params=None):
        del params
        m = momentum_fn(state.count)
        buf = jax.tree.map(lambda b, g: m * b + g, state.buf, updates)
        u = jax.tree.map(lambda b, g: g + m * b, buf, updates) if nesterov else buf

        def direction(u_, g):
            x = newton_schulz(u_, ns_steps, ns_coeffs, eps, ns_dtype)
            return _round(x, muon_scale(g.shape), ns_dtype).astype(g.dtype)

        updates = jax.tree.map(direction, u, updates)
        return updates, ScaleByMuonState(optax.safe_increment(state.count), buf)

    return optax.GradientTransformation(init_fn, update_fn)


def muon(
    learning_rate: ScalarOrSchedule,
    momentum: ScalarOrSchedule = 0.95,
    nesterov: bool = True,
    ns_steps: int = 5,
    ns_coeffs: tuple[float, float, float] = NS_COEFFS,
    eps: float = 1e-7,
    ns_dtype=jnp.bfloat16,
) -> optax.GradientTransformation:
    """Reference Muon for matrices: update = −lr · NS5(g + m·buf) · sqrt(max(1, fan_out/fan_in)).

    learning_rate and momentum are floats or optax schedules of the step count. No weight decay.
    """
    return optax.chain(
        scale_by_muon(momentum, nesterov, ns_steps, ns_coeffs, eps, ns_dtype),
        optax.scale_by_learning_rate(learning_rate),
    )


# ----------------------------------------------------------------------------------------------------
# Parameter groups


def _key_name(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def path_str(path: tuple) -> str:
    """'blocks.0.attn.c_q.kernel' from a jax key path (DictKey / GetAttrKey / SequenceKey ...)."""
    return ".".join(_key_name(k) for k in path)


def param_group(path: tuple, x: Any) -> str:
    """Group of one parameter by its path (the model's naming convention) and rank.

    "embed": a key containing "value_embeds" or "vte", or equal to "embed" / "pos_embed";
    "head": a key containing "lm_head"; else "matrix" if ndim >= 2; else "scalar".
    A tied head is embed.attend, so a tied family's embedding is in "embed".
    """
    names = [_key_name(k) for k in path]
    if any("value_embeds" in n or "vte" in n or n in ("embed", "pos_embed") for n in names):
        return "embed"
    if any("lm_head" in n for n in names):
        return "head"
    return "matrix" if len(np.shape(x)) >= 2 else "scalar"


def _is_variable(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


def param_labels(params: Any) -> Any:
    """Same-structure tree of group names for a pytree / nnx.State of arrays or nnx.Variables.

    With Variables (what nnx.Optimizer passes to init) each Variable gets one label, a prefix of the
    parameter tree, which is what optax.partition accepts.
    """
    return jax.tree_util.tree_map_with_path(param_group, params, is_leaf=_is_variable)


def describe_groups(params: Any) -> dict[str, list[str]]:
    """group -> dotted parameter paths, for printing which parameter goes where."""
    out: dict[str, list[str]] = {}
    for path, x in jax.tree_util.tree_leaves_with_path(params, is_leaf=_is_variable):
        out.setdefault(param_group(path, x), []).append(path_str(path))
    return {g: out[g] for g in GROUPS if g in out}


# ----------------------------------------------------------------------------------------------------
# Schedules


def scaled_steps(steps: int, step_scale: float) -> int:
    """Token-normalised step count at another batch: round(steps · reference_batch / B)."""
    return int(round(steps * step_scale))


def schedule_steps(config: Any, *, step_scale: float = 1.0) -> dict[str, int]:
    """The schedules' step counts at one batch size: N = scaled num_iterations (at least 1), the warmdown
    W_d = round(warmdown_frac·N) and the momentum warmup W_m, each token-normalised by step_scale."""
    optim = _optim_config(config)
    n = max(1, scaled_steps(optim.num_iterations, step_scale))
    return {
        "num_iterations": n,
        "warmdown": int(round(optim.warmdown_frac * n)),
        "momentum_warmup": scaled_steps(optim.momentum_warmup_steps, step_scale),
    }


def lr_multiplier(
    config: OptimConfig, *, step_scale: float = 1.0, steps: Mapping[str, Any] | None = None
) -> optax.Schedule:
    """LR multiplier of the step count, in [0, 1]; N = scaled num_iterations.

    "warmdown": 1 until N − W_d, then (N − step)/W_d, 0 from N on (W_d = round(warmdown_frac·N));
    "cosine":   ½(1 + cos(π·min(step, N)/N)), peak → 0 over N;   "constant": 1.
    steps: `schedule_steps` counts to use instead of step_scale's; they may be traced int32 scalars, so that one
    compiled update serves every batch size of a sweep (the values are the same as with Python ints).
    """
    steps = schedule_steps(config, step_scale=step_scale) if steps is None else steps
    n, w_d = steps["num_iterations"], steps["warmdown"]
    if config.schedule == "constant":
        return lambda count: jnp.ones([], jnp.float32)
    if config.schedule == "cosine":
        return lambda count: 0.5 * (1 + jnp.cos(jnp.pi * jnp.minimum(count, n) / n))
    if config.schedule == "warmdown":
        return lambda count: jnp.where(
            w_d > 0, jnp.clip((n - count) / jnp.maximum(w_d, 1), 0.0, 1.0), jnp.where(count < n, 1.0, 0.0)
        )
    raise ValueError(f"unknown schedule {config.schedule!r}")


def momentum_schedule(
    config: OptimConfig, *, step_scale: float = 1.0, steps: Mapping[str, Any] | None = None
) -> optax.Schedule:
    """Muon momentum m(step) = momentum_start + min(step/W_m, 1)·(momentum − momentum_start); `momentum` when
    W_m <= 0. steps: as for `lr_multiplier`."""
    steps = schedule_steps(config, step_scale=step_scale) if steps is None else steps
    w_m = steps["momentum_warmup"]
    lo, hi = config.momentum_start, config.momentum
    return lambda count: jnp.where(
        w_m > 0, lo + jnp.minimum(count / jnp.maximum(w_m, 1), 1.0) * (hi - lo), jnp.float32(hi)
    )


# ----------------------------------------------------------------------------------------------------
# Optimizer


def _optim_config(config: Any) -> OptimConfig:
    optim = config if isinstance(config, OptimConfig) else getattr(config, "optim", None)
    if not isinstance(optim, OptimConfig):
        raise TypeError(f"expected an OptimConfig or an object with .optim, got {type(config).__name__}")
    return optim


def group_learning_rates(config: Any, lrs: Mapping[str, float] | float | None = None) -> dict[str, float]:
    """Peak LR per group ("lr" for kind adamw) after overrides: a mapping replaces, a float multiplies."""
    optim = _optim_config(config)
    if optim.kind == "adamw":
        peaks = {"lr": optim.lr}
    elif optim.kind in ("muon", "adam"):
        peaks = {"embed": optim.lr_embed, "head": optim.lr_head, "matrix": optim.lr_matrix, "scalar": optim.lr_scalar}
    else:
        raise ValueError(f"unknown optimizer kind {optim.kind!r}")
    if lrs is None:
        return peaks
    if isinstance(lrs, Mapping):
        unknown = set(lrs) - set(peaks)
        if unknown:
            raise ValueError(f"unknown LR groups {sorted(unknown)} for kind {optim.kind!r}; expected {sorted(peaks)}")
        return {**peaks, **{k: float(v) for k, v in lrs.items()}}
    return {k: v * float(lrs) for k, v in peaks.items()}


def make_optimizer(
    config: Any,
    lrs: Mapping[str, float] | float | None = None,
    *,
    step_scale: float = 1.0,
    steps: Mapping[str, Any] | None = None,
) -> optax.GradientTransformation:
    """The family's optimizer (docs/method.md §3.4): [global-norm clip over all params] then

    "adamw": AdamW(lr, betas, eps, weight_decay) on every parameter;
    "muon":  Muon on "matrix", Adam on "embed" / "head" / "scalar" (per-group lr and betas, no decay);
    "adam":  Adam on all four groups, the matrix group with lr_matrix and betas_matrix.
    Every group's lr is peak·lr_multiplier(step). config: an OptimConfig or an object with `.optim`.
    lrs: peak LRs by group overriding the config, or one float multiplying every group.
    step_scale: reference_batch / B; multiplies every step count (warmups, num_iterations).
    steps: the `schedule_steps` counts instead of step_scale's (traced in the training update, see
    `lr_multiplier`).
    """
    optim = _optim_config(config)
    peaks = group_learning_rates(optim, lrs)
    steps = schedule_steps(optim, step_scale=step_scale) if steps is None else steps
    mult = lr_multiplier(optim, steps=steps)

    def lr(group: str) -> optax.Schedule:
        peak = peaks[group]
        return lambda count: peak * mult(count)

    def adam(group: str, betas: tuple[float, float]) -> optax.GradientTransformation:
        return optax.adam(lr(group), b1=betas[0], b2=betas[1], eps=optim.eps)

    if optim.kind == "adamw":
        b1, b2 = optim.betas
        tx = optax.adamw(lr("lr"), b1=b1, b2=b2, eps=optim.eps, weight_decay=optim.weight_decay)
    else:
        if optim.kind == "muon":
            matrix = muon(
                lr("matrix"),
                momentum_schedule(optim, steps=steps),
                nesterov=optim.nesterov,
                ns_steps=optim.ns_steps,
                ns_dtype=jnp.dtype(optim.ns_dtype),
            )
        else:
            matrix = adam("matrix", optim.betas_matrix)
        tx = optax.partition(
            {
                "embed": adam("embed", optim.betas_embed),
                "head": adam("head", optim.betas),
                "matrix": matrix,
                "scalar": adam("scalar", optim.betas_scalar),
            },
            param_labels,
        )
    if optim.grad_clip is not None:
        tx = optax.chain(optax.clip_by_global_norm(optim.grad_clip), tx)
    return tx
