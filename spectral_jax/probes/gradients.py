"""Per-sample gradient probes and the gradient spectrum: the jitted device functions and their host drivers.

Per-sample gradients. One sample = one sequence; its loss is the training loss of that sequence alone,
`model.loss(tokens[None], targets[None], window=window)` (mean token CE through the fused head + loss that
training uses, soft-cap / FP8 head included). Row m of G (M x P, float32) is the flattened gradient of sample
m's loss w.r.t. the matrix.
Two methods, both evaluated in chunks of `chunk` sequences by `lens.gradients.run_chunks` (memory bounded; the
last chunk is padded by repeating its last sequence, whose rows are dropped, so every chunk has one shape and
compiles once):
  "vmap"     the model-agnostic `spectral_jax.lens` engine: jax.vmap(jax.grad(loss)) over sequences,
             differentiating ONLY the chosen kernels, so the backward stops at the earliest kernel's block.
  "capture"  one batched backward per chunk through nnx.capture: the matrix's input a (nnx.Intermediate)
             and the gradient g of the summed per-sequence losses w.r.t. its output (nnx.Perturbation)
             give G[b] = a[b]^T g[b]. Only blocks in `config.probe_layers` sow/perturb, so other layers
             raise (set probe_layers, or use "vmap"). Differentiates only the requested perturbations.
Both give the same G to float32 round-off (tests/test_probes.py). "auto" (the default, `DEFAULT_METHOD`)
= capture where the layer is a probe layer, vmap otherwise. Capture stays because it is measurably faster on
our GPT (6-11 % at T = 256 and 512 on CPU, benchmarks/per_sample_grads.py, docs/benchmarks.md).

Gradient spectrum. `lens.gradients.singular_values_gram`: sigma = sqrt(clip(eigvalsh(G G^T), 0)), the M x M Gram
accumulated in float64 on device, the eigen-solve in float64 on the host. Never a thin SVD of the M x P matrix.

The device functions can also return the block outputs of requested layers from the same pass, which is how
`run_probes` fuses the activation spectrum into the gradient pass.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from spectral_jax.lens.common import placer
from spectral_jax.lens.gradients import PerExampleGrads, finite_rows, run_chunks, singular_values_gram
from spectral_jax.models.gpt import rms_norm
from spectral_jax.models.head import mean_nll_per_sequence
from spectral_jax.probes.common import (
    _TRACES,
    DEFAULT_METHOD,
    METHODS,
    ProbeError,
    _check_tokens,
    _check_window,
    default_chunk,
)
from spectral_jax.probes.matrices import MatrixSpec, _get, _nest, resolve_matrix


# ---- device functions (built once per static signature, compiled once per shape) ------------------
@functools.lru_cache(maxsize=64)
def _forward_loss_fn(graphdef, has_window: bool):
    """jit(state, x, y, window) -> per-sequence mean CE (the forward the benchmark compares against)."""

    def fn(state, x_BxT, y_BxT, window):
        _TRACES["forward"] += 1
        model = nnx.merge(graphdef, state)
        return mean_nll_per_sequence(*model.token_nll(x_BxT, y_BxT, window=window if has_window else None))

    return jax.jit(fn)


@dataclasses.dataclass(frozen=True)
class _SequenceLoss:
    """loss_fn(model, (x_T, y_T), window) of one sequence for the lens engine: the training loss of that sequence
    alone, plus rms_norm(block output) of `act_layers` from the same forward as aux. Frozen, so equal settings
    share one compiled engine."""

    act_layers: tuple[int, ...] = ()
    has_window: bool = False

    def __call__(self, model, example, window):
        x_T, y_T = example
        win = window if self.has_window else None
        if not self.act_layers:
            return model.loss(x_T[None], y_T[None], window=win)
        loss, acts = nnx.capture(model.loss, nnx.Intermediate)(x_T[None], y_T[None], window=win)
        return loss, tuple(rms_norm(acts["blocks"][l]["block_out"][0][0]) for l in self.act_layers)


@functools.lru_cache(maxsize=64)
def _capture_grad_fn(
    graphdef, specs: tuple[MatrixSpec, ...], act_layers: tuple[int, ...], has_window: bool, compute_dtype: str
):
    """jit(state, x, y, window) -> (G per spec (C, P), per-sequence losses, finite flags, acts).

    One forward + one batched backward: grad of sum_b loss_b w.r.t. zero perturbations of the probed
    outputs only, so the backward stops at the earliest probed matrix; G[b] = a[b]^T g[b]."""
    out_paths = tuple(dict.fromkeys(s.out_path for s in specs))
    dtype = jnp.dtype(compute_dtype)

    def fn(state, x_CxT, y_CxT, window, out_dims):
        _TRACES["capture"] += 1
        C, T = x_CxT.shape

        def total_loss(perturb):
            model = nnx.merge(graphdef, state)
            init = _nest({p: nnx.Perturbation(v) for p, v in perturb.items()})
            nll, acts = nnx.capture(model.token_nll, nnx.Intermediate, init=init)(
                x_CxT, y_CxT, window=window if has_window else None
            )
            losses = mean_nll_per_sequence(*nll)
            return losses.sum(), (losses, acts)

        zeros = {p: jnp.zeros((C, T, n), dtype) for p, n in zip(out_paths, out_dims)}
        g_out, (losses, acts) = jax.grad(total_loss, has_aux=True)(zeros)
        G = []
        for s in specs:
            a = _get(acts, s.in_path)[0]
            g = g_out[s.out_path]
            if s.columns is not None:
                g = g[..., s.columns[0] : s.columns[1]]
            G.append(jnp.einsum("btd,bte->bde", a, g, preferred_element_type=jnp.float32).reshape(C, -1))
        outs = tuple(rms_norm(acts["blocks"][l]["block_out"][0]) for l in act_layers)
        return tuple(G), losses, finite_rows(losses, G), outs

    return jax.jit(fn, static_argnums=(4,)), out_paths


# ---- per-sample gradients -------------------------------------------------------------------------
def _pick_method(config, specs, method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    probe = set(config.resolved_probe_layers())
    off = sorted({s.layer for s in specs} - probe)
    if method == "auto":
        return "vmap" if off else "capture"
    if method == "capture" and off:
        raise ValueError(
            f"method='capture' needs the probed block(s) {off} in config.probe_layers "
            f"(now {config.probe_layers}, i.e. blocks {sorted(probe)}): rebuild the model with "
            f"probe_layers including {off}, or use method='vmap'"
        )
    return method


class _GradPass:
    """Per-sample gradients (+ block outputs of `act_layers`) of a fixed set of matrices, chunk by chunk: the lens
    engine for "vmap", the capture device function for "capture"."""

    def __init__(self, model, specs, act_layers, method, window, mesh):
        config = model.config
        self.specs, self.act_layers = specs, act_layers
        self.method = _pick_method(config, specs, method)
        self.window = _check_window(config, window)
        has_window = self.window is not None
        if self.method == "vmap":
            loss = _SequenceLoss(tuple(act_layers), has_window)
            targets = [s.target for s in specs]
            self.engine = PerExampleGrads(loss, model, targets, has_aux=bool(act_layers), mesh=mesh, what="sequence")
            return
        self.place, replicate = placer(mesh)
        graphdef, state = nnx.split(model)
        self.fn, out_paths = _capture_grad_fn(graphdef, specs, act_layers, has_window, config.compute_dtype)
        flat = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
        by_out = {s.out_path: flat[s.kernel_path].shape[1] for s in specs}
        self.state = replicate(state)
        self.out_dims = tuple(by_out[p] for p in out_paths)

    def run(self, x, y, chunk: int, on_acts=None) -> list[list]:
        """Per spec, the (valid rows) G chunks of all sequences; `on_acts(acts, n)` gets each chunk's block outputs
        (n valid rows). A non-finite loss or gradient is a ProbeError naming the sequence."""
        if self.method == "vmap":
            return self.engine.run((x, y), chunk, self.window, on_aux=on_acts)

        def step(examples, window):
            x_CxT, y_CxT = examples
            return self.fn(self.state, self.place(x_CxT), self.place(y_CxT), window, self.out_dims)

        return run_chunks(step, len(self.specs), (x, y), chunk, self.window, on_aux=on_acts, what="sequence")


def per_sample_grads(
    model,
    inputs_MxT,
    targets_MxT,
    matrix: str = "final_attn_out",
    *,
    layer: int | None = None,
    chunk: int | None = None,
    window=None,
    method: str = DEFAULT_METHOD,
    mesh=None,
) -> jax.Array:
    """Per-sequence gradients G (M, P) float32 of the training loss w.r.t. one matrix (row m = sequence m's
    gradient flattened in (in, out) layout). `method` "vmap" | "capture" | "auto" (module docstring);
    "capture" raises for a block outside config.probe_layers. Raises ProbeError on a non-finite loss or
    gradient."""
    config = model.config
    spec = resolve_matrix(config, matrix, layer)
    x = _check_tokens(config, inputs_MxT)
    y = _check_tokens(config, targets_MxT, "targets")
    if x.shape != y.shape:
        raise ValueError(f"inputs {x.shape} and targets {y.shape} differ in shape")
    if x.shape[0] < 1:
        raise ProbeError("no sequences given")
    chunk = int(chunk) if chunk else default_chunk(x.shape[1], x.shape[0])
    (G,) = _GradPass(model, (spec,), (), method, window, mesh).run(x, y, chunk)
    return G[0] if len(G) == 1 else jnp.concatenate(G)


def _singular_values_from_chunks(chunks: list) -> np.ndarray:
    G = chunks[0] if len(chunks) == 1 else jnp.concatenate(chunks)
    return singular_values_gram(G)


def gradient_singular_values(
    model,
    inputs_MxT,
    targets_MxT,
    matrix: str = "final_attn_out",
    *,
    layer: int | None = None,
    chunk: int | None = None,
    window=None,
    method: str = DEFAULT_METHOD,
    mesh=None,
) -> np.ndarray:
    """Singular values (descending, length min(M, P)) of the per-sample gradient matrix of `matrix`.

    Raises ProbeError if M < 2 or any per-sample loss / gradient is non-finite."""
    M = np.shape(inputs_MxT)[0] if np.ndim(inputs_MxT) == 2 else 0
    if M < 2:
        raise ProbeError(f"need at least 2 sequences for a gradient spectrum, got M={M}")
    G = per_sample_grads(
        model, inputs_MxT, targets_MxT, matrix, layer=layer, chunk=chunk, window=window, method=method, mesh=mesh
    )
    return singular_values_gram(G)
