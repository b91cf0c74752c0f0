"""Matmuls whose autodiff backward XLA CPU runs badly: the weight gradient x^T dy.

Autodiff forms dW = x^T dy as one dot contracting both operands over their leading (token) axis. XLA CPU cannot
hand that layout to YNNPACK: it ran such products through its fallback dot, single-threaded, at 25-43 GFLOP/s on
one core for the tiny tier's block matrices (dy first copied to (out, N)), against 55-94 GFLOP/s, on both cores,
once x^T is materialised first. `xt_dot` is that product; `matmul` is x @ w whose backward uses it. Elsewhere
(GPUs, whose GEMMs take transposed operands) both are plain autodiff math.
"""

from __future__ import annotations

import jax


def xt_dot(x_NxI: jax.Array, dy_NxO: jax.Array) -> jax.Array:
    """x^T @ dy, (I, O), for 2-D operands sharing their leading axis. On CPU the narrower operand is transposed
    and materialised first: x^T @ dy, or (dy^T @ x)^T when dy is narrower (the MLP's output projection, whose
    256-wide x^T copy fused with relu^2 was the slowest transpose of the tiny step). The barriers keep XLA from
    folding the transposes back into the dot, which turns it into the slow transposed-operand product again."""
    if jax.default_backend() != "cpu":
        return x_NxI.T @ dy_NxO
    if dy_NxO.shape[1] < x_NxI.shape[1]:
        dy_OxN = jax.lax.optimization_barrier(dy_NxO.T)
        return jax.lax.optimization_barrier(dy_OxN @ x_NxI).T
    return jax.lax.optimization_barrier(x_NxI.T) @ dy_NxO


@jax.custom_vjp
def matmul(x: jax.Array, w_IxO: jax.Array) -> jax.Array:
    """x @ w over x's last axis (any leading shape), with `xt_dot` as the weight gradient."""
    return jax.lax.dot_general(x, w_IxO, (((x.ndim - 1,), (0,)), ((), ())))


def _matmul_fwd(x, w_IxO):
    return matmul(x, w_IxO), (x, w_IxO)


def _matmul_bwd(residuals, dy):
    x, w_IxO = residuals
    dx = jax.lax.dot_general(dy, w_IxO, (((dy.ndim - 1,), (1,)), ((), ())))
    dw_IxO = xt_dot(x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1]))
    return dx, dw_IxO.astype(w_IxO.dtype)


matmul.defvjp(_matmul_fwd, _matmul_bwd)
