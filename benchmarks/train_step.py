"""Training-step model-FLOP utilisation at a preset, against this machine's matmul rate in the same run.

    python benchmarks/train_step.py                       # tiny betterwin on CPU
    python benchmarks/train_step.py --preset=d12 --batch=1 --family=betterwin   # on a GPU

Model FLOPs per token = 6 * N_matmul + 12 * L * d * ctx (PaLM appendix B convention): N_matmul counts the
block matrices and the LM head (embedding lookups are not matmuls); ctx is the mean number of keys a query
attends under the current window (causal, window-limited). The reference rate is a float32 (or compute dtype)
square matmul at the fastest of a few sizes (512 / 1,024 / 2,048 on CPU; 2,048 / 4,096 / 8,192 on accelerators,
whose peak needs the large ones), timed in the same rounds as the step (each round: the best of five
matmuls, then three steps of which the last two count), so that both see the same machine: on a shared VM the
speed drifts by tens of percent within a minute, and a rate taken before the steps can belong to another phase.
Printed: medians over rounds, and the median of the per-round MFU.

Side by side in the same run (medians, interleaved): the model's forward + backward with the fused chunked
head + loss (`GPT.loss`, what training runs) against the same pass through materialised (B, T, V) logits
(`cross_entropy(model(x))`); `GPT.loss` at half, one and twice the default loss chunk; and one attention
layer's forward + backward under each kernel of `attention.banded_attention` (chunked / dense / banded) at
the model's shapes.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from _timing import interleaved_medians, median_time
from absl import app, flags
from flax import nnx

from spectral_jax.host import tune_cpu_host
from spectral_jax.models import GPT, attention, make_config
from spectral_jax.models.gpt import cross_entropy
from spectral_jax.models.head import default_chunk
from spectral_jax.optim import group_learning_rates
from spectral_jax.presets import get_preset
from spectral_jax.train_step import Schedules, TrainStep

FLAGS = flags.FLAGS
flags.DEFINE_string("family", "betterwin", "family")
flags.DEFINE_string("preset", "tiny", "tier")
flags.DEFINE_integer("batch", 4, "sequences per step (one micro-batch)")
flags.DEFINE_integer("window", None, "attention window in tokens (default: the family's window_max)")
flags.DEFINE_integer("repeats", 5, "timed steps")
flags.DEFINE_bool("tune_heap", True, "glibc heap tuning as the entry points do (spectral_jax.host)")
flags.DEFINE_bool("sync_dispatch", True, "synchronous CPU dispatch as the entry points do (spectral_jax.host)")
flags.DEFINE_bool("components", True, "also time the fused head and the attention kernels side by side")


def matmul_sizes() -> tuple[int, ...]:
    """Square sizes the reference matmul is timed at: accelerators reach their peak only at the large ones."""
    return (512, 1024, 2048) if jax.default_backend() == "cpu" else (2048, 4096, 8192)


def matmul_rate(dtype, repeats: int) -> tuple[float, int]:
    best = (0.0, 0)
    for n in matmul_sizes():
        a = jnp.ones((n, n), dtype)
        f = jax.jit(lambda x, y: x @ y)
        dt = median_time(lambda: f(a, a).block_until_ready(), repeats)
        best = max(best, (2 * n**3 / dt, n))
    return best


def interleaved_step_and_matmul(step, dtype, n: int, rounds: int) -> tuple[float, float, list[float]]:
    """(median step seconds, median matmul FLOP/s, per-round 1 / (step seconds * matmul FLOP/s)): each round
    times five n x n matmuls back to back and keeps the fastest (the first after a step runs on cold caches and
    sleeping threads; the best keeps the reference rate conservative), then three steps back to back and keeps
    the median of the last two (training runs steps back to back; the first after the matmuls starts cold)."""
    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda x, y: x @ y)
    f(a, a).block_until_ready()
    step()
    steps, mms, per_round = [], [], []
    for _ in range(rounds):
        ts = []
        for _ in range(5):
            t0 = time.perf_counter()
            f(a, a).block_until_ready()
            ts.append(time.perf_counter() - t0)
        st = []
        for _ in range(3):
            t0 = time.perf_counter()
            step()
            st.append(time.perf_counter() - t0)
        steps.append(float(np.median(st[1:])))
        mms.append(2 * n**3 / min(ts))
        per_round.append(1.0 / (steps[-1] * mms[-1]))
    return float(np.median(steps)), float(np.median(mms)), per_round


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


def components(cfg, graphdef, params, tokens_Bx_T1, window: int, repeats: int) -> None:
    x, y = jnp.asarray(tokens_Bx_T1[:, :-1]), jnp.asarray(tokens_Bx_T1[:, 1:])
    default = min(default_chunk(cfg.vocab_size), x.size)
    chunks = sorted({max(8, default // 2), default, min(2 * default, x.size)})
    fns = {}
    for c in chunks:  # the default chunk is what training runs
        f = jax.jit(jax.value_and_grad(lambda p, c=c: nnx.merge(graphdef, p).loss(x, y, window=window, chunk=c)))
        fns[c] = lambda f=f: jax.block_until_ready(f(params))
    dense = jax.jit(jax.value_and_grad(lambda p: cross_entropy(nnx.merge(graphdef, p)(x, window=window), y)))
    fns["dense"] = lambda: jax.block_until_ready(dense(params))
    t, _ = interleaved_medians(fns, repeats)
    print("\n| forward + backward (whole model) | ms |\n|---|---|")
    print(f"| fused chunked head + loss (GPT.loss) | {t[default] * 1e3:,.1f} |")
    print(f"| materialised (B, T, V) logits | {t['dense'] * 1e3:,.1f} |")
    print(f"| ratio materialised / fused | {t['dense'] / t[default]:.2f} |")
    print(f"\n| GPT.loss forward + backward by loss chunk (tokens) | ms | vs default ({default}) |\n|---|---|---|")
    for c in chunks:
        print(f"| {c} | {t[c] * 1e3:,.1f} | {t[c] / t[default]:.2f} |")
    if cfg.window == "none":
        return
    B, T = x.shape
    keys = jax.random.split(jax.random.key(0), 3)
    q, k, v = (jax.random.normal(key, (B, T, cfg.n_head, cfg.head_dim), jnp.float32) for key in keys)
    gran = "token" if cfg.window in ("fixed", "token") else "block"
    fns = {}
    for impl in ("chunked", "dense", "banded"):
        f = jax.jit(
            jax.value_and_grad(
                lambda q, k, v, impl=impl: jnp.sum(
                    jnp.sin(
                        attention.banded_attention(
                            q,
                            k,
                            v,
                            window=window,
                            max_window=cfg.max_window,
                            block_size=cfg.attn_block_size,
                            granularity=gran,
                            scale=cfg.scale,
                            impl=impl,
                        )
                    )
                ),
                (0, 1, 2),
            )
        )
        fns[impl] = lambda f=f: jax.block_until_ready(f(q, k, v))
    t, _ = interleaved_medians(fns, repeats)
    print(f"\n| one attention layer, forward + backward (B {B}, T {T}, window {window}) | ms | vs chunked |")
    print("|---|---|---|")
    for impl, dt in t.items():
        print(f"| {impl} | {dt * 1e3:,.2f} | {dt / t['chunked']:.2f} |")
    print(
        f"(attention impl 'auto' on {jax.default_backend()}: "
        f"{'chunked' if jax.default_backend() == 'cpu' else 'dense or chunked by band width'})"
    )


def main(argv):
    del argv
    print(
        f"host settings (spectral_jax.host.tune_cpu_host): "
        f"{tune_cpu_host(heap=FLAGS.tune_heap, sync_dispatch=FLAGS.sync_dispatch)}"
    )
    cfg = make_config(FLAGS.family, FLAGS.preset)
    window = FLAGS.window or cfg.max_window
    dtype = jnp.bfloat16 if cfg.compute_dtype == "bfloat16" else jnp.float32
    _, n = matmul_rate(dtype, 3)
    tc = get_preset(FLAGS.preset).train.replace(batch_size=FLAGS.batch, micro_batch=FLAGS.batch)
    step_fn = TrainStep(cfg, group_learning_rates(cfg, tc.lr), Schedules.build(cfg, tc).step_scale, 1)
    graphdef, params = nnx.split(GPT(cfg, rngs=nnx.Rngs(0)), nnx.Param)
    tokens_Bx_T1 = np.random.default_rng(0).integers(1, cfg.vocab_size, (FLAGS.batch, cfg.seq_len + 1))
    state = step_fn.init(params)

    def step():
        nonlocal state
        params, opt_state, loss = step_fn(graphdef, *state, [tokens_Bx_T1], window)
        state = (params, opt_state)
        float(loss)

    dt, peak, mfu_rounds = interleaved_step_and_matmul(step, dtype, n, FLAGS.repeats)
    params = state[0]
    tokens = FLAGS.batch * cfg.seq_len
    fpt = model_flops_per_token(cfg, params, window)
    rate = fpt * tokens / dt
    print(
        f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), {FLAGS.family} {FLAGS.preset}, "
        f"batch {FLAGS.batch} x {cfg.seq_len}, window {window}"
    )
    print("| quantity | value |\n|---|---|")
    print(
        f"| matmul rate ({np.dtype(dtype).name}, n={n}: fastest of {'/'.join(map(str, matmul_sizes()))}; best "
        f"of 5 per round, median of "
        f"{FLAGS.repeats} rounds interleaved with the steps) | {peak / 1e9:,.1f} GFLOP/s |"
    )
    print(
        f"| train step (forward + backward + optimizer; 2 per round, median of {FLAGS.repeats} rounds) | "
        f"{dt * 1e3:,.1f} ms, {tokens / dt:,.0f} tokens/s |"
    )
    print(f"| model FLOPs per token (6 N_matmul + attention) | {fpt / 1e6:,.2f} MFLOP |")
    print(f"| model FLOP rate | {rate / 1e9:,.1f} GFLOP/s |")
    print(f"| MFU vs matmul rate (medians) | {rate / peak:.1%} |")
    mfu = np.asarray(mfu_rounds) * fpt * tokens
    print(f"| MFU per round: median (min - max) | {np.median(mfu):.1%} ({mfu.min():.1%} - {mfu.max():.1%}) |")
    if FLAGS.components:
        components(cfg, graphdef, params, tokens_Bx_T1, window, FLAGS.repeats)


if __name__ == "__main__":
    app.run(main)
