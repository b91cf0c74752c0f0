"""Model-facing spectral probes: activation covariance spectra, per-sample gradient spectra, weight spectra.

Every probe is a jitted device part (forward / backward through NNX's own capture, never a forked model)
plus a host part (float64 eigen-solvers and fits).

Matrices (docs/method.md §2). Names used across the project, all kernels in Flax (in, out) layout:
  "attn_out"  W_O = blocks[l].attn.c_proj.kernel                     (d, d)
  "attn_q"    W_Q = blocks[l].attn.c_q.kernel, or columns [0, d) of the fused attn.c_attn kernel
  "attn_v"    W_V = blocks[l].attn.c_v.kernel, or columns [2d, 3d) of the fused attn.c_attn kernel
  "mlp_out"   blocks[l].mlp.c_proj.kernel                             (4d, d)
  "final_attn_out"  = "attn_out" of the last block (the paper's probe).
`layer` picks the block (default: the last; negative indices count from the end). Keys of result dicts
are "L{layer}.{name}" (e.g. "L7.attn_out"); `resolve_matrix` also accepts such a key as the matrix name.

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
= capture where the layer is a probe layer (the faster on CPU, benchmarks/per_sample_grads.py), vmap
otherwise.

Gradient spectrum. sigma = sqrt(clip(eigvalsh(G G^T), 0)), descending: the M x M Gram on device, accumulated
in float64 from the float32 G (a float32 Gram loses the small singular values, see `singular_values_gram`),
the eigen-solve in float64 on the host. Never a thin SVD of the M x P matrix.

Activation spectrum (docs/method.md §1.1). The residual stream after block l (`block_out`, U-Net skips
included), through the parameter-free `rms_norm`, every token of every sequence one row, folded into a
streaming `CovarianceAccumulator` (sharded over `mesh`); eigenvalues descending, float64 host eigvalsh.
The jitted forward returns only the requested block outputs, so XLA drops the blocks after the deepest
requested layer and the LM head.

`run_probes` is the fused entry point used in training: the first `grad_samples` pool sequences go through
ONE pass per chunk that yields both the block outputs (fed to the covariance) and the per-sample gradients
of every requested matrix (capture: one forward + one backward down to the earliest requested matrix; vmap:
the block outputs come out of the same vmapped forward as `has_aux`), the rest of the pool through a
forward-only pass.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import re
from collections.abc import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from spectral_jax import spectra
from spectral_jax.covariance import CovarianceAccumulator
from spectral_jax.models.gpt import rms_norm
from spectral_jax.models.head import mean_nll, mean_nll_per_sequence

MATRICES: tuple[str, ...] = ("attn_out", "attn_q", "attn_v", "mlp_out")
ALIASES: dict[str, tuple[str, int]] = {"final_attn_out": ("attn_out", -1)}
METHODS: tuple[str, ...] = ("vmap", "capture", "auto")
DEFAULT_METHOD = "auto"
"""capture on probe layers, vmap elsewhere. On CPU the two are within a few per cent, capture ahead in most
runs (betterwin tiny, M=32, chunk 1, 2 shared cores, interleaved medians: T=256 capture 1.32 s vs vmap
1.34 s; T=512 2.67 s vs 2.77 s; benchmarks/per_sample_grads.py)."""
DEFAULT_CHUNK_TOKENS = {"cpu": 2048, "gpu": 8192, "tpu": 8192}
"""Tokens per chunk by platform: default chunk = max(1, tokens // T) sequences. On CPU, 2,048 tokens (8
sequences at T = 256): benchmarks/per_sample_grads.py, betterwin tiny, M = 32, T = 256, V = 8,192 on 2 cores,
chunks of 1 / 2 / 4 / 8 / 16 / 32 sequences took 0.80 / 0.80 / 0.55 / 0.46 / 0.52 / 0.57 s with the fused
head + loss (2026-12-01). Before the fused loss one sequence was fastest (its (T, V) logits stayed in the
last-level cache); the fused loss keeps every chunk's logits in cache, so wider chunks now win."""
DEFAULT_GRAD_SAMPLES = 512  # paper / reference M

_TRACES: collections.Counter = collections.Counter()  # traces per device function (tests: compile once)
_KEY_RE = re.compile(r"^L(-?\d+)\.(\w+)$")


class ProbeError(ValueError):
    """A probe cannot produce a meaningful spectrum (diverged checkpoint, too few samples, ...)."""


# ---- matrices -----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class MatrixSpec:
    """Where one probed matrix lives in the model and how its input / output are captured."""

    layer: int  # resolved block index, 0 <= layer < n_layer
    name: str  # one of MATRICES
    kernel_path: tuple  # nnx path of the kernel Param
    columns: tuple[int, int] | None  # column slice of a fused kernel (in, out) layout, else None
    in_path: tuple  # path of the sown input (nnx.Intermediate) under the capture state
    out_path: tuple  # path of the perturbed output (nnx.Perturbation)
    shape: tuple[int, int]  # (in, out) of the probed matrix (after the column slice)

    @property
    def key(self) -> str:
        return f"L{self.layer}.{self.name}"

    @property
    def size(self) -> int:
        return self.shape[0] * self.shape[1]


def _resolve_layer(config, layer: int | None) -> int:
    L = config.n_layer
    if layer is None:
        return L - 1
    try:
        layer = int(layer)
    except (TypeError, ValueError):
        raise ValueError(f"layer must be an int in [-{L}, {L}), got {layer!r}") from None
    if not -L <= layer < L:
        raise ValueError(f"layer {layer} outside the model's blocks: valid layers are 0..{L - 1} "
                         f"(or -{L}..-1 from the end)")
    return layer % L


def resolve_matrix(config, matrix: str = "final_attn_out", layer: int | None = None) -> MatrixSpec:
    """Validate a matrix name (+ layer) against `config` and return its MatrixSpec.

    `matrix` is one of MATRICES, an alias in ALIASES ("final_attn_out"), or a key "L{l}.{name}".
    """
    if not isinstance(matrix, str):
        raise ValueError(f"matrix must be a string, got {matrix!r}")
    valid = f"{list(ALIASES) + list(MATRICES)} or a key like 'L{config.n_layer - 1}.attn_out'"
    name = matrix
    if matrix in ALIASES:
        name, fixed = ALIASES[matrix]
        fixed %= config.n_layer
        if layer is not None and _resolve_layer(config, layer) != fixed:
            raise ValueError(f"matrix {matrix!r} is fixed to block {fixed}; use matrix={name!r} "
                             f"with layer={layer}")
        layer = fixed
    elif (m := _KEY_RE.match(matrix)) is not None:
        key_layer, name = int(m.group(1)), m.group(2)
        if layer is not None and _resolve_layer(config, layer) != _resolve_layer(config, key_layer):
            raise ValueError(f"matrix key {matrix!r} names block {key_layer} but layer={layer}")
        layer = key_layer
    if name not in MATRICES:
        raise ValueError(f"unknown matrix {matrix!r}; valid choices: {valid}")
    l = _resolve_layer(config, layer)
    d = config.d_model
    blk = ("blocks", l)
    if name == "mlp_out":
        hidden = config.mlp_ratio * d
        return MatrixSpec(l, name, blk + ("mlp", "c_proj", "kernel"), None, blk + ("mlp", "c_proj_in"),
                          blk + ("mlp", "c_proj_out"), (hidden, d))
    if config.no_attn_layer is not None and l == config.no_attn_layer:
        raise ValueError(f"block {l} has no attention (config.no_attn_layer={config.no_attn_layer}), so "
                         f"{matrix!r} does not exist there; pick another layer or matrix 'mlp_out'")
    attn = blk + ("attn",)
    if name == "attn_out":
        return MatrixSpec(l, name, attn + ("c_proj", "kernel"), None, attn + ("c_proj_in",),
                          attn + ("c_proj_out",), (d, d))
    col = {"attn_q": 0, "attn_v": 2}[name]
    if config.fused_qkv:
        return MatrixSpec(l, name, attn + ("c_attn", "kernel"), (col * d, (col + 1) * d), attn + ("attn_in",),
                          attn + ("c_attn_out",), (d, d))
    proj = {"attn_q": "c_q", "attn_v": "c_v"}[name]
    return MatrixSpec(l, name, attn + (proj, "kernel"), None, attn + ("attn_in",), attn + (f"{proj}_out",),
                      (d, d))


def _resolve_matrices(config, matrices, grad_layers) -> tuple[MatrixSpec, ...]:
    """run_probes' matrix list: aliases and keys as given, bare names at every layer of `grad_layers`."""
    if isinstance(matrices, str):
        matrices = (matrices,)
    specs: dict[str, MatrixSpec] = {}
    for m in matrices:
        if isinstance(m, tuple):  # (layer, name)
            todo = [resolve_matrix(config, m[1], m[0])]
        elif m in MATRICES:
            todo = [resolve_matrix(config, m, l) for l in grad_layers]
        else:
            todo = [resolve_matrix(config, m)]
        for s in todo:
            specs.setdefault(s.key, s)
    return tuple(specs.values())


def _get(tree, path):
    for p in path:
        tree = tree[p]
    return tree


def _nest(items: dict[tuple, object]) -> dict:
    out: dict = {}
    for path, value in items.items():
        node = out
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = value
    return out


def _kernel(model, spec: MatrixSpec) -> jax.Array:
    node = model
    for p in spec.kernel_path:
        node = node[p] if isinstance(p, int) else getattr(node, p)
    w = node[...]
    return w if spec.columns is None else w[:, spec.columns[0]:spec.columns[1]]


# ---- shared helpers -----------------------------------------------------------------------------
def split_windows(pool_NxT1) -> tuple[np.ndarray, np.ndarray]:
    """Pool windows (N, T+1) -> inputs x = w[:, :-1] and targets y = w[:, 1:] (int32)."""
    w = np.asarray(pool_NxT1)
    if w.ndim != 2 or w.shape[1] < 2:
        raise ValueError(f"pool windows must be (N, T+1) token ids, got shape {w.shape}")
    return w[:, :-1].astype(np.int32), w[:, 1:].astype(np.int32)


def default_chunk(seq_len: int, n: int | None = None, platform: str | None = None) -> int:
    """Sequences per chunk: DEFAULT_CHUNK_TOKENS[platform] worth of tokens (at least 1, at most n);
    platform defaults to jax.default_backend()."""
    tokens = DEFAULT_CHUNK_TOKENS.get(platform or jax.default_backend(), 8192)
    c = max(1, tokens // max(1, int(seq_len)))
    return c if n is None else max(1, min(c, n))


def _check_window(config, window):
    if window is None or config.window in ("none", "fixed"):
        return None
    w = int(window)
    if not 1 <= w <= config.window_max:
        raise ValueError(f"window {w} outside [1, window_max={config.window_max}]")
    return jnp.int32(w)


def _check_tokens(config, x, name="inputs") -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be (sequences, T) token ids, got shape {x.shape}")
    if x.shape[1] > config.seq_len:
        raise ValueError(f"{name} have T={x.shape[1]} > config.seq_len={config.seq_len}")
    return x.astype(np.int32)


def _pad_rows(a: np.ndarray, rows: int, fill: int) -> np.ndarray:
    if a.shape[0] == rows:
        return a
    pad = np.full((rows - a.shape[0],) + a.shape[1:], fill, a.dtype)
    return np.concatenate([a, pad])


def _placer(mesh):
    """(place, replicate): chunks go on the mesh's data axis when their size divides the device count
    (else replicated), model state is replicated, so the jitted passes run data-parallel."""
    if mesh is None or mesh.devices.size == 1:
        return jnp.asarray, (lambda tree: tree)
    axis = mesh.axis_names[0]
    rows = NamedSharding(mesh, P(axis))
    replicated = NamedSharding(mesh, P())

    def place(a):
        return jax.device_put(a, rows) if a.shape[0] % mesh.devices.size == 0 else jax.device_put(a, replicated)

    return place, (lambda tree: jax.device_put(tree, replicated))


def _as_layers(config, layers) -> tuple[int, ...]:
    if isinstance(layers, (int, np.integer)):
        layers = (layers,)
    out = []
    for l in layers:
        r = _resolve_layer(config, l)
        if r not in out:
            out.append(r)
    return tuple(out)


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

        (losses, acts), grads = jax.vmap(jax.value_and_grad(sequence_loss, has_aux=True),
                                         in_axes=(None, 0, 0))(wrt, x_CxT, y_CxT)
        C = x_CxT.shape[0]
        flat = dict(nnx.to_flat_state(grads))
        G = []
        for s in specs:
            g = flat[s.kernel_path][...]
            if s.columns is not None:
                g = g[:, :, s.columns[0]:s.columns[1]]
            G.append(g.reshape(C, -1).astype(jnp.float32))
        return tuple(G), losses, _finite_rows(losses, G), acts

    return jax.jit(fn), kernel_paths


@functools.lru_cache(maxsize=64)
def _capture_grad_fn(graphdef, specs: tuple[MatrixSpec, ...], act_layers: tuple[int, ...], has_window: bool,
                     compute_dtype: str):
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
                x_CxT, y_CxT, window=window if has_window else None)
            losses = mean_nll_per_sequence(*nll)
            return losses.sum(), (losses, acts)

        zeros = {p: jnp.zeros((C, T, n), dtype) for p, n in zip(out_paths, out_dims)}
        g_out, (losses, acts) = jax.grad(total_loss, has_aux=True)(zeros)
        G = []
        for s in specs:
            a = _get(acts, s.in_path)[0]
            g = g_out[s.out_path]
            if s.columns is not None:
                g = g[..., s.columns[0]:s.columns[1]]
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
        block = G_MxP[:, start:start + _GRAM_BLOCK].astype(jnp.float64)
        part = jax.lax.dot_general(block, block, (((1,), (1,)), ((), ())),
                                   precision=jax.lax.Precision.HIGHEST, preferred_element_type=jnp.float64)
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
        raise ValueError(f"method='capture' needs the probed block(s) {off} in config.probe_layers "
                         f"(now {config.probe_layers}, i.e. blocks {sorted(probe)}): rebuild the model with "
                         f"probe_layers including {off}, or use method='vmap'")
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
            self.fn, out_paths = _capture_grad_fn(graphdef, specs, act_layers, has_window,
                                                  config.compute_dtype)
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
        raise ProbeError(f"non-finite loss or {what} for sequence {i}: the checkpoint diverged; "
                         "no spectrum written")


def _chunks(n: int, chunk: int):
    for start in range(0, n, chunk):
        yield start, min(n, start + chunk)


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


def per_sample_grads(model, inputs_MxT, targets_MxT, matrix: str = "final_attn_out", *,
                     layer: int | None = None, chunk: int | None = None, window=None,
                     method: str = DEFAULT_METHOD, mesh=None) -> jax.Array:
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
    The float64 accumulation costs one M x M x P float64 matmul (CPU: 0.08 s vs 0.015 s in float32 for
    512 x 4096; G is converted in blocks of _GRAM_BLOCK columns)."""
    G = jnp.asarray(G_MxP, jnp.float32)
    M, Pn = G.shape
    if M < 2:
        raise ProbeError(f"need at least 2 per-sample gradients for a spectrum, got M={M}")
    with jax.enable_x64(True):
        gram = np.asarray(_gram64(G), np.float64)
    gram = 0.5 * (gram + gram.T)
    ev = np.linalg.eigvalsh(gram)[::-1][:min(M, Pn)]
    return np.sqrt(np.clip(ev, 0.0, None))


def gradient_singular_values(model, inputs_MxT, targets_MxT, matrix: str = "final_attn_out", *,
                             layer: int | None = None, chunk: int | None = None, window=None,
                             method: str = DEFAULT_METHOD, mesh=None) -> np.ndarray:
    """Singular values (descending, length min(M, P)) of the per-sample gradient matrix of `matrix`.

    Raises ProbeError if M < 2 or any per-sample loss / gradient is non-finite."""
    M = np.shape(inputs_MxT)[0] if np.ndim(inputs_MxT) == 2 else 0
    if M < 2:
        raise ProbeError(f"need at least 2 sequences for a gradient spectrum, got M={M}")
    G = per_sample_grads(model, inputs_MxT, targets_MxT, matrix, layer=layer, chunk=chunk, window=window,
                         method=method, mesh=mesh)
    return singular_values_gram(G)


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


@functools.lru_cache(maxsize=8)
def _template_accumulator(mesh) -> CovarianceAccumulator:
    return CovarianceAccumulator(1, mesh=mesh)


def _accumulator(dim: int, mesh) -> CovarianceAccumulator:
    """A CovarianceAccumulator that reuses one jitted fold per mesh.

    CovarianceAccumulator builds a fresh jax.jit per instance, so every probe call would recompile its
    fold (0.6-0.9 s per layer on CPU). The fold's trace depends only on the mesh and the shapes, so the
    instances made here share the first instance's compiled functions (cache keyed on the mesh)."""
    acc = CovarianceAccumulator(dim, mesh=mesh, allow_nonfinite=True)
    template = _template_accumulator(acc.mesh)
    acc._fold = template._fold
    acc.__dict__["_first_mean"] = template._first_mean
    return acc


def _eigenvalues(acc: CovarianceAccumulator) -> np.ndarray:
    if acc.nonfinite_rows:
        raise ProbeError(f"{acc.nonfinite_rows} activation rows are NaN/inf: the checkpoint diverged; "
                         "no spectrum written")
    return acc.eigenvalues()


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
    accs = {l: _accumulator(config.d_model, mesh) for l in layers}
    for x in _iter_batches(batches):
        acts = run(_check_tokens(config, x))
        for l, a in zip(layers, acts):
            accs[l].update(a)
    out = {l: _eigenvalues(acc) for l, acc in accs.items()}
    return out[layers[0]] if single else out


def weight_singular_values(model, matrix: str = "final_attn_out", *, layer: int | None = None) -> np.ndarray:
    """Singular values (descending) of the matrix's kernel (column slice for fused q/v), float64 on host."""
    spec = resolve_matrix(model.config, matrix, layer)
    w = np.asarray(_kernel(model, spec), np.float64)
    return np.linalg.svd(w, compute_uv=False)


# ---- the fused probe used in training ------------------------------------------------------------------
@dataclasses.dataclass
class ProbeResult:
    """Spectra of one probe run. Keys: activation by resolved layer; gradient / weight by 'L{l}.{matrix}'."""

    activation: dict[int, np.ndarray]
    gradient: dict[str, np.ndarray]
    weight: dict[str, np.ndarray]
    rows: int  # token rows in each covariance
    grad_samples: int  # sequences M in each per-sample gradient matrix
    method: str | None = None  # per-sample gradient method used


def run_probes(model, pool_NxT1, *, layers=(-1,), matrices=("final_attn_out",), grad_samples: int | None = None,
               grad_layers=(-1,), chunk: int | None = None, window=None, mesh=None,
               method: str = "auto") -> ProbeResult:
    """Activation spectra at `layers` over every pool sequence, per-sample gradient spectra of `matrices`
    over the first `grad_samples` (default min(512, N)) sequences, and weight spectra of `matrices`.

    pool_NxT1: (N, T+1) windows, x = w[:, :-1], y = w[:, 1:]. `matrices`: aliases / keys as in
    `resolve_matrix`, bare names (e.g. "mlp_out") are taken at every block of `grad_layers`.
    The first grad_samples sequences go through ONE capture pass per chunk that yields both the block
    outputs and the per-sample gradients (method "auto": capture when every probed block is a probe layer,
    vmap with the activations as aux otherwise); the rest get a forward-only pass that stops at the deepest
    requested layer. Raises ProbeError on NaN/inf or grad_samples < 2.
    """
    config = model.config
    x, y = split_windows(pool_NxT1)
    x, y = _check_tokens(config, x), _check_tokens(config, y, "targets")
    N, T = x.shape
    act_layers = _as_layers(config, layers)
    specs = _resolve_matrices(config, matrices, grad_layers)
    M = min(DEFAULT_GRAD_SAMPLES, N) if grad_samples is None else int(grad_samples)
    if not specs:
        M = 0
    elif M < 2:
        raise ProbeError(f"need grad_samples >= 2 for a gradient spectrum, got {M}")
    elif M > N:
        raise ProbeError(f"grad_samples={M} exceeds the pool's {N} sequences")
    if N < 1 or (act_layers and N * T < 2):
        raise ProbeError(f"pool of {N} sequences is too small")
    chunk = int(chunk) if chunk else default_chunk(T)
    accs = {l: _accumulator(config.d_model, mesh) for l in act_layers}

    def fold(acts, n, c):
        for l, a in zip(act_layers, acts):
            accs[l].update(a if n == c else a[:n])

    gradient, used = {}, None
    if M:
        grad_chunk = min(chunk, M)
        run = _GradPass(model, specs, act_layers, method, window, mesh)
        used = run.method
        G = _run_grad_chunks(run, x[:M], y[:M], grad_chunk, on_acts=fold)
        gradient = {s.key: _singular_values_from_chunks(g) for s, g in zip(specs, G)}
    if act_layers and N > M:
        fwd = _ActivationPass(model, act_layers, window, mesh)
        rest = x[M:]
        for start, stop in _chunks(rest.shape[0], chunk):
            fold(fwd(_pad_rows(rest[start:stop], chunk, 0)), stop - start, chunk)
    activation = {l: _eigenvalues(acc) for l, acc in accs.items()}
    weight = {s.key: weight_singular_values(model, s.key) for s in specs}
    rows = next(iter(accs.values())).count if accs else 0
    return ProbeResult(activation, gradient, weight, rows=rows, grad_samples=M, method=used)


# ---- tidy summaries ------------------------------------------------------------------------------------
def _safe_summary(values, tail, head, bank) -> dict:
    """spectra.summarize, tolerant of short / degenerate spectra: a tail window that does not fit gives
    alpha_tail = None, head / bank windows that do not fit are omitted, fits that fail (fewer than two
    positive values) and all-zero spectra give None instead of raising."""
    for w in (tail, head):
        if w is not None and not 1 <= int(w[0]) < int(w[1]):
            raise ValueError(f"rank window {w} must satisfy 1 <= lo < hi (1-indexed, inclusive)")
    v = np.sort(np.clip(np.asarray(values, np.float64), 0.0, None))[::-1]
    n = v.size
    if n == 0:
        raise ValueError("empty spectrum")
    windows = [("alpha_tail", tail)] if tail is not None else []
    if head is not None and head[1] <= n:
        windows.append(("alpha_head", tuple(head)))
    windows += [(f"alpha_{w[0]}_{w[1]}", w) for w in spectra.window_bank(n, bank)]
    out: dict = {}
    for name, w in windows:
        fit = None
        if w[1] <= n:
            try:
                fit = spectra.alpha(v, w)
            except ValueError:
                fit = None
        out[name] = None if fit is None else fit.alpha
        out[f"{name}_r2"] = None if fit is None else fit.r2
    rest_keys = spectra.summarize(np.ones(n), tail=None, head=(1, n + 1), bank=())
    try:
        rest = spectra.summarize(v, tail=None, head=(1, n + 1), bank=())
    except ValueError:
        rest = dict.fromkeys(rest_keys)
    out.update(rest)
    return out


def summarize_probe(result: ProbeResult, *, tail, head=spectra.HEAD_WINDOW,
                    bank=spectra.WINDOW_BANK) -> list[dict]:
    """Tidy records, one per spectrum: {"kind", "layer", "matrix", "n", alpha_tail(_r2), alpha_head(_r2),
    alpha_{lo}_{hi}(_r2) for bank windows that fit, rankme, hard_rank, stable_rank, participation_ratio,
    head_mass10}. A tail window longer than the spectrum gives alpha_tail None (gradient spectra with
    M < tail hi)."""
    records = []
    for layer, v in sorted(result.activation.items()):
        records.append({"kind": "activation", "layer": int(layer), "matrix": None, "n": int(len(v)),
                        **_safe_summary(v, tail, head, bank)})
    for kind, table in (("gradient", result.gradient), ("weight", result.weight)):
        for key, v in table.items():
            m = _KEY_RE.match(key)
            layer, name = (int(m.group(1)), m.group(2)) if m else (None, key)
            records.append({"kind": kind, "layer": layer, "matrix": name, "n": int(len(v)),
                            **_safe_summary(v, tail, head, bank)})
    return records


__all__ = [
    "ALIASES", "DEFAULT_METHOD", "MATRICES", "METHODS", "MatrixSpec", "ProbeError", "ProbeResult",
    "activation_spectrum", "default_chunk", "gradient_singular_values", "per_sample_grads", "resolve_matrix",
    "run_probes", "singular_values_gram", "split_windows", "summarize_probe", "weight_singular_values",
]
