"""Per-sample gradient probes and the gradient spectrum: the jitted device functions and their host drivers.

Per-sample gradients. One sample = one sequence; its loss is the training loss of that sequence alone,
`model.loss(tokens[None], targets[None], window=window)` (mean token CE through the fused head + loss that
training uses, soft-cap / FP8 head included). Row m of G (M x P, float32) is the flattened gradient of sample
m's loss w.r.t. the matrix.
Two methods, both evaluated in chunks of `chunk` sequences (memory bounded; the last chunk is padded
with ignored targets so every chunk has one shape and compiles once):
  "vmap"     jax.vmap(jax.grad(loss)) over sequences, differentiating ONLY the chosen kernel (the model is
             nnx.split into that kernel and the rest), so the backward stops at the kernel's block.
  "capture"  one batched backward per chunk through nnx.capture: the matrix's input a (nnx.Intermediate)
             and the gradient g of the summed per-sequence losses w.r.t. its output (nnx.Perturbation)
             give G[b] = a[b]^T g[b]. Only blocks in `config.probe_layers` sow/perturb, so other layers
             raise (set probe_layers, or use "vmap"). Differentiates only the requested perturbations.
Both give the same G to float32 round-off (tests/test_probes.py). "auto" (the default, `DEFAULT_METHOD`)
= capture where the layer is a probe layer, vmap otherwise (benchmarks/per_sample_grads.py compares them).

Gradient spectrum. sigma = sqrt(clip(eigvalsh(G G^T), 0)), descending: the M x M Gram on device, accumulated
in float64 from the float32 G (a float32 Gram loses the small singular values, see `singular_values_gram`),
the eigen-solve in float64 on the host. Never a thin SVD of the M x P matrix.

The device functions can also return the block outputs of requested layers from the same pass, which is how
`run_probes` fuses the activation spectrum into the gradient pass.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from spectral_jax.models.gpt import rms_norm
from spectral_jax.models.head import mean_nll, mean_nll_per_sequence
from spectral_jax.probes.common import (
    _TRACES,
    DEFAULT_METHOD,
    METHODS,
    ProbeError,
    _check_tokens,
    _check_window,
    _chunks,
    _pad_rows,
    _placer,
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


def _finite_rows(losses_C, grads):
    ok = jnp.isfinite(losses_C)
    for g in grads:
        ok = ok & jnp.all(jnp.isfinite(g), axis=1)
    return ok


@functools.lru_cache(maxsize=64)
def _vmap_grad_fn(graphdef, specs: tuple[MatrixSpec, ...], act_layers: tuple[int, ...], has_window: bool):
    """jit(wrt, rest, x, y, window) -> (G per spec (C, P), per-sequence losses, finite flags, acts).

    jax.vmap(jax.value_and_grad(per-sequence loss)) w.r.t. the probed kernels only; block outputs of
    `act_layers` come out of the same forward as aux."""
    kernel_paths = tuple(dict.fromkeys(s.kernel_path for s in specs))

    def fn(wrt, rest, x_CxT, y_CxT, window):
        _TRACES["vmap"] += 1

        def sequence_loss(wrt, x_T, y_T):
            model = nnx.merge(graphdef, wrt, rest)
            win = window if has_window else None
            if act_layers:
                nll, acts = nnx.capture(model.token_nll, nnx.Intermediate)(x_T[None], y_T[None], window=win)
                outs = tuple(rms_norm(acts["blocks"][l]["block_out"][0][0]) for l in act_layers)
            else:
                nll, outs = model.token_nll(x_T[None], y_T[None], window=win), ()
            return mean_nll(*nll), outs

        (losses, acts), grads = jax.vmap(jax.value_and_grad(sequence_loss, has_aux=True), in_axes=(None, 0, 0))(
            wrt, x_CxT, y_CxT
        )
        C = x_CxT.shape[0]
        flat = dict(nnx.to_flat_state(grads))
        G = []
        for s in specs:
            g = flat[s.kernel_path][...]
            if s.columns is not None:
                g = g[:, :, s.columns[0] : s.columns[1]]
            G.append(g.reshape(C, -1).astype(jnp.float32))
        return tuple(G), losses, _finite_rows(losses, G), acts

    return jax.jit(fn), kernel_paths


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
        return tuple(G), losses, _finite_rows(losses, G), outs

    return jax.jit(fn, static_argnums=(4,)), out_paths


_GRAM_BLOCK = 1 << 18  # columns of G converted to float64 at a time (bounds the extra device memory)


@jax.jit
def _gram64(G_MxP):
    """G G^T accumulated in float64 (call under jax.enable_x64): products of float32 entries are exact in
    float64, so the only error is float64 summation, ~1e-16 * sigma_1^2 instead of float32's ~1e-7."""
    P_ = G_MxP.shape[1]
    gram = None
    for start in range(0, P_, _GRAM_BLOCK):
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
    """Runs the per-chunk gradient (+ activation) device function for a fixed set of matrices."""

    def __init__(self, model, specs, act_layers, method, window, mesh):
        config = model.config
        self.specs, self.act_layers = specs, act_layers
        self.method = _pick_method(config, specs, method)
        self.window = _check_window(config, window)
        has_window = self.window is not None
        self.place, replicate = _placer(mesh)
        if self.method == "vmap":
            paths = set(dict.fromkeys(s.kernel_path for s in specs))
            graphdef, wrt, rest = nnx.split(model, lambda path, _: tuple(path) in paths, ...)
            self.fn, _ = _vmap_grad_fn(graphdef, specs, act_layers, has_window)
            self.args = (replicate(wrt), replicate(rest))
            self.extra = ()
        else:
            graphdef, state = nnx.split(model)
            self.fn, out_paths = _capture_grad_fn(graphdef, specs, act_layers, has_window, config.compute_dtype)
            flat = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
            by_out = {s.out_path: flat[s.kernel_path].shape[1] for s in specs}
            self.args = (replicate(state),)
            self.extra = (tuple(by_out[p] for p in out_paths),)

    def __call__(self, x_CxT, y_CxT):
        return self.fn(*self.args, self.place(x_CxT), self.place(y_CxT), self.window, *self.extra)


def _raise_nonfinite(ok, offset: int, n_valid: int, what: str = "gradient"):
    ok = np.asarray(ok)[:n_valid]
    if not ok.all():
        i = offset + int(np.flatnonzero(~ok)[0])
        raise ProbeError(f"non-finite loss or {what} for sequence {i}: the checkpoint diverged; no spectrum written")


def _run_grad_chunks(run: _GradPass, x, y, chunk, on_acts=None):
    """All chunks of (x, y) through `run`; returns per-spec lists of (valid rows) G chunks. The finite
    flags are read once at the end, so chunks are dispatched without waiting for each other."""
    M = x.shape[0]
    out, oks = [[] for _ in run.specs], []
    for start, stop in _chunks(M, chunk):
        n = stop - start
        xc = _pad_rows(x[start:stop], chunk, 0)
        yc = _pad_rows(y[start:stop], chunk, -1)  # ignored targets: zero loss, zero gradient
        G, _, ok, acts = run(xc, yc)
        oks.append(ok[:n])
        for lst, g in zip(out, G):
            lst.append(g if n == chunk else g[:n])
        if on_acts is not None:
            on_acts(acts, n, chunk)
    _raise_nonfinite(jnp.concatenate(oks), 0, M)
    return out


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
    run = _GradPass(model, (spec,), (), method, window, mesh)
    (G,) = _run_grad_chunks(run, x, y, chunk)
    return G[0] if len(G) == 1 else jnp.concatenate(G)


def _singular_values_from_chunks(chunks: list) -> np.ndarray:
    G = chunks[0] if len(chunks) == 1 else jnp.concatenate(chunks)
    return singular_values_gram(G)


def singular_values_gram(G_MxP) -> np.ndarray:
    """Singular values of G (M, P) via the Gram trick: G G^T accumulated in float64 on device (float32
    entries, exact float64 products), float64 eigvalsh on the host, sqrt of the clipped eigenvalues,
    descending (length min(M, P)).

    Why float64: the Gram squares the condition number, so a float32 Gram (~1e-7 * sigma_1^2 absolute error
    on the eigenvalues) gives sigma_j a relative error ~1e-7 (sigma_1 / sigma_j)^2. Measured against a
    float64 SVD on synthetic G: sigma_j = j^-1, 512 x 4096: max relative error 4.4e-4 with a float32 Gram,
    1.1e-12 accumulated in float64; sigma_j = j^-3, 128 x 4096 (range 2e6): 12.8 (i.e. garbage) vs 7.7e-6.
    The float64 accumulation costs one M x M x P float64 matmul (G is converted in blocks of _GRAM_BLOCK
    columns)."""
    G = jnp.asarray(G_MxP, jnp.float32)
    M, Pn = G.shape
    if M < 2:
        raise ProbeError(f"need at least 2 per-sample gradients for a spectrum, got M={M}")
    with jax.enable_x64(True):
        gram = np.asarray(_gram64(G), np.float64)
    gram = 0.5 * (gram + gram.T)
    ev = np.linalg.eigvalsh(gram)[::-1][: min(M, Pn)]
    return np.sqrt(np.clip(ev, 0.0, None))


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
