"""The probed matrices: names, where each lives in the model, and the key-path helpers that reach it.

Kept apart from the probes so that every probe (and `spectral_jax.chain`, which only needs ALIASES) resolves
a matrix name the same way, without importing the device code.

Matrices (docs/method.md §2). Names used across the project, all kernels in Flax (in, out) layout:
  "attn_out"  W_O = blocks[l].attn.c_proj.kernel                     (d, d)
  "attn_q"    W_Q = blocks[l].attn.c_q.kernel, or columns [0, d) of the fused attn.c_attn kernel
  "attn_v"    W_V = blocks[l].attn.c_v.kernel, or columns [2d, 3d) of the fused attn.c_attn kernel
  "mlp_out"   blocks[l].mlp.c_proj.kernel                             (4d, d)
  "final_attn_out"  = "attn_out" of the last block (the paper's probe).
`layer` picks the block (default: the last; negative indices count from the end). Keys of result dicts
are "L{layer}.{name}" (e.g. "L7.attn_out"); `resolve_matrix` also accepts such a key as the matrix name.
"""

from __future__ import annotations

import dataclasses
import re

import jax

from spectral_jax.errors import UserError
from spectral_jax.lens.gradients import Columns, Target

MATRICES: tuple[str, ...] = ("attn_out", "attn_q", "attn_v", "mlp_out")
ALIASES: dict[str, tuple[str, int]] = {"final_attn_out": ("attn_out", -1)}

_KEY_RE = re.compile(r"^L(-?\d+)\.(\w+)$")


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

    @property
    def target(self) -> Target:
        """This matrix for the model-agnostic layer: its key, its kernel's path and the column view."""
        view = None if self.columns is None else Columns(*self.columns)
        return Target(self.key, "/".join(str(k) for k in self.kernel_path), view)


def _resolve_layer(config, layer: int | None) -> int:
    L = config.n_layer
    if layer is None:
        return L - 1
    try:
        layer = int(layer)
    except (TypeError, ValueError):
        raise UserError(f"layer must be an int in [-{L}, {L}), got {layer!r}") from None
    if not -L <= layer < L:
        raise UserError(
            f"layer {layer} outside the model's blocks: valid layers are 0..{L - 1} (or -{L}..-1 from the end)"
        )
    return layer % L


def resolve_matrix(config, matrix: str = "final_attn_out", layer: int | None = None) -> MatrixSpec:
    """Validate a matrix name (+ layer) against `config` and return its MatrixSpec.

    `matrix` is one of MATRICES, an alias in ALIASES ("final_attn_out"), or a key "L{l}.{name}".
    """
    if not isinstance(matrix, str):
        raise UserError(f"matrix must be a string, got {matrix!r}")
    valid = f"{list(ALIASES) + list(MATRICES)} or a key like 'L{config.n_layer - 1}.attn_out'"
    name = matrix
    if matrix in ALIASES:
        name, fixed = ALIASES[matrix]
        fixed %= config.n_layer
        if layer is not None and _resolve_layer(config, layer) != fixed:
            raise UserError(f"matrix {matrix!r} is fixed to block {fixed}; use matrix={name!r} with layer={layer}")
        layer = fixed
    elif (m := _KEY_RE.match(matrix)) is not None:
        key_layer, name = int(m.group(1)), m.group(2)
        if layer is not None and _resolve_layer(config, layer) != _resolve_layer(config, key_layer):
            raise UserError(f"matrix key {matrix!r} names block {key_layer} but layer={layer}")
        layer = key_layer
    if name not in MATRICES:
        raise UserError(f"unknown matrix {matrix!r}; valid choices: {valid}")
    l = _resolve_layer(config, layer)
    d = config.d_model
    blk = ("blocks", l)
    if name == "mlp_out":
        hidden = config.mlp_ratio * d
        return MatrixSpec(
            l,
            name,
            blk + ("mlp", "c_proj", "kernel"),
            None,
            blk + ("mlp", "c_proj_in"),
            blk + ("mlp", "c_proj_out"),
            (hidden, d),
        )
    if config.no_attn_layer is not None and l == config.no_attn_layer:
        raise UserError(
            f"block {l} has no attention (config.no_attn_layer={config.no_attn_layer}), so "
            f"{matrix!r} does not exist there; pick another layer or matrix 'mlp_out'"
        )
    attn = blk + ("attn",)
    if name == "attn_out":
        return MatrixSpec(
            l, name, attn + ("c_proj", "kernel"), None, attn + ("c_proj_in",), attn + ("c_proj_out",), (d, d)
        )
    col = {"attn_q": 0, "attn_v": 2}[name]
    if config.fused_qkv:
        return MatrixSpec(
            l,
            name,
            attn + ("c_attn", "kernel"),
            (col * d, (col + 1) * d),
            attn + ("attn_in",),
            attn + ("c_attn_out",),
            (d, d),
        )
    proj = {"attn_q": "c_q", "attn_v": "c_v"}[name]
    return MatrixSpec(l, name, attn + (proj, "kernel"), None, attn + ("attn_in",), attn + (f"{proj}_out",), (d, d))


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
    return w if spec.columns is None else w[:, spec.columns[0] : spec.columns[1]]
