"""Training-step model-FLOP utilisation at a preset, against this machine's matmul rate in the same run.

    python benchmarks/train_step.py                       # tiny betterwin on CPU
    python benchmarks/train_step.py --preset=d12 --batch=1 --family=betterwin   # on a GPU

Model FLOPs per token = 6 * N_matmul + 12 * L * d * ctx (PaLM appendix B convention): N_matmul counts the
block matrices and the LM head (embedding lookups are not matmuls); ctx is the mean number of keys a query
attends under the current window (causal, window-limited). The reference rate is the best of float32 (or
the compute dtype) square matmuls of a few sizes, timed in the same process just before the step.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

from _timing import median_time
from spectral_jax.models import GPT, make_config
from spectral_jax.train import Schedules, TrainStep, group_learning_rates, train_config

FLAGS = flags.FLAGS
flags.DEFINE_string("family", "betterwin", "family")
flags.DEFINE_string("preset", "tiny", "tier")
flags.DEFINE_integer("batch", 4, "sequences per step (one micro-batch)")
flags.DEFINE_integer("window", None, "attention window in tokens (default: the family's window_max)")
flags.DEFINE_integer("repeats", 5, "timed steps")


def matmul_rate(dtype, repeats: int) -> tuple[float, int]:
    best = (0.0, 0)
    for n in (512, 1024, 2048):
        a = jnp.ones((n, n), dtype)
        f = jax.jit(lambda x, y: x @ y)
        dt = median_time(lambda: f(a, a).block_until_ready(), repeats)
        best = max(best, (2 * n ** 3 / dt, n))
    return best


def model_flops_per_token(cfg, params, window: int) -> float:
    n_matmul = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        names = [str(getattr(p, "key", getattr(p, "name", p))) for p in path]
        if leaf.ndim == 2 and ("blocks" in names or "lm_head" in names):
            n_matmul += leaf.size
    if cfg.tied_head:
        n_matmul += cfg.vocab_size * cfg.d_model
    T = cfg.seq_len
    w = T if cfg.window == "none" else (cfg.fixed_window if cfg.window == "fixed" else window)
    ctx = np.mean(np.minimum(np.arange(1, T + 1), w))
    n_attn = cfg.n_layer - (cfg.no_attn_layer is not None)
    return 6 * n_matmul + 12 * n_attn * cfg.d_model * ctx


def main(argv):
    del argv
    cfg = make_config(FLAGS.family, FLAGS.preset)
    window = FLAGS.window or cfg.max_window
    dtype = jnp.bfloat16 if cfg.compute_dtype == "bfloat16" else jnp.float32
    peak, n = matmul_rate(dtype, FLAGS.repeats)
    tc = train_config(FLAGS.preset, batch_size=FLAGS.batch, micro_batch=FLAGS.batch)
    step_fn = TrainStep(cfg, group_learning_rates(cfg, tc.lr), Schedules.build(cfg, tc).step_scale, 1)
    graphdef, params = nnx.split(GPT(cfg, rngs=nnx.Rngs(0)), nnx.Param)
    tokens_Bx_T1 = np.random.default_rng(0).integers(1, cfg.vocab_size, (FLAGS.batch, cfg.seq_len + 1))
    state = step_fn.init(params)

    def step():
        nonlocal state
        params, opt_state, loss = step_fn(graphdef, *state, [tokens_Bx_T1], window)
        state = (params, opt_state)
        float(loss)

    dt = median_time(step, FLAGS.repeats)
    params = state[0]
    tokens = FLAGS.batch * cfg.seq_len
    fpt = model_flops_per_token(cfg, params, window)
    rate = fpt * tokens / dt
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), {FLAGS.family} {FLAGS.preset}, "
          f"batch {FLAGS.batch} x {cfg.seq_len}, window {window}")
    print("| quantity | value |\n|---|---|")
    print(f"| matmul rate ({np.dtype(dtype).name}, best of 512/1024/2048, n={n}) | {peak / 1e9:,.1f} GFLOP/s |")
    print(f"| train step (forward + backward + optimizer) | {dt * 1e3:,.1f} ms, {tokens / dt:,.0f} tokens/s |")
    print(f"| model FLOPs per token (6 N_matmul + attention) | {fpt / 1e6:,.2f} MFLOP |")
    print(f"| model FLOP rate | {rate / 1e9:,.1f} GFLOP/s |")
    print(f"| MFU vs matmul rate | {rate / peak:.1%} |")


if __name__ == "__main__":
    app.run(main)
