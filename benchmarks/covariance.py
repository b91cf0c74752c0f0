"""Covariance probe benchmarks: update throughput vs the matmul rate, memory vs N, cost vs a model forward.

    python benchmarks/covariance.py                 # all three tables
    python benchmarks/covariance.py --skip_memory   # throughput + forward ratio only

1. Throughput: CovarianceAccumulator.update on (R, d) float32 rows versus a jitted jnp.dot(Y^T, Y) on the
   same shapes and precision (HIGHEST), measured interleaved in this run; ratio = update / matmul GFLOP/s,
   counting 2 R d^2 flops for both.
2. Memory: peak RSS of a fresh process that folds N rows (one reused 65,536-row chunk) for N = 1M and 8M.
3. Probe cost: one covariance update over the activations of T tokens versus the d12 model forward that
   produces them (the prefix-tier shape, T = 1,024 at batch 1), both timed here.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
from _timing import median_time
from absl import app, flags
from flax import nnx

from spectral_jax.covariance import CovarianceAccumulator
from spectral_jax.models import GPT, make_config

FLAGS = flags.FLAGS
flags.DEFINE_integer("rows", 65_536, "rows per update chunk")
flags.DEFINE_integer("repeats", 5, "timed repetitions per measurement (median reported)")
flags.DEFINE_bool("skip_memory", False, "skip the peak-RSS subprocess runs")
flags.DEFINE_bool("skip_forward", False, "skip the model-forward comparison")
flags.DEFINE_integer("memory_rows", 0, "internal: run the memory child for this many rows and exit")


def throughput_table(rows: int, repeats: int) -> list[dict]:
    out = []
    for d in (768, 1280, 1600):
        y = jax.device_put(np.random.default_rng(0).standard_normal((rows, d), dtype=np.float32) + 3.0)
        gram = jax.jit(lambda a: jnp.dot(a.T, a, precision=jax.lax.Precision.HIGHEST))
        acc = CovarianceAccumulator(d)

        def run_update():
            acc.update(y)
            jax.block_until_ready(acc._state)

        t_mm, t_up = [], []
        for _ in range(repeats):  # interleave so load changes hit both sides alike
            t_mm.append(median_time(lambda: gram(y).block_until_ready(), 1))
            t_up.append(median_time(run_update, 1))
        flops = 2.0 * rows * d * d
        mm, up = flops / np.median(t_mm) / 1e9, flops / np.median(t_up) / 1e9
        out.append(
            {
                "d": d,
                "rows": rows,
                "matmul_gflops": round(mm, 1),
                "update_gflops": round(up, 1),
                "ratio": round(up / mm, 3),
            }
        )
    return out


def memory_child(n_rows: int, rows: int) -> None:
    d = 768
    chunk = jax.device_put(np.random.default_rng(0).standard_normal((rows, d), dtype=np.float32))
    acc = CovarianceAccumulator(d)
    done = 0
    while done < n_rows:
        acc.update(chunk)
        done += rows
    ev = acc.eigenvalues()
    print(
        json.dumps(
            {
                "rows": acc.count,
                "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "top_eigenvalue": float(ev[0]),
            }
        )
    )


def memory_table(rows: int) -> list[dict]:
    out = []
    for n in (1_000_000, 8_000_000):
        res = subprocess.run(
            [sys.executable, __file__, f"--memory_rows={n}", f"--rows={rows}"],
            capture_output=True,
            text=True,
            check=True,
        )
        out.append(json.loads(res.stdout.strip().splitlines()[-1]))
    return out


def forward_ratio(repeats: int) -> dict:

    cfg = make_config("unet", "d12")
    model = GPT(cfg, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 50257, (1, 1024)), jnp.int32)
    fwd = jax.jit(lambda s, t: nnx.merge(graphdef, s)(t))
    t_fwd = median_time(lambda: fwd(state, tokens).block_until_ready(), repeats)
    acts = jax.device_put(np.random.default_rng(1).standard_normal((1024, cfg.d_model), dtype=np.float32))
    acc = CovarianceAccumulator(cfg.d_model)

    def run_update():
        acc.update(acts)
        jax.block_until_ready(acc._state)

    t_cov = median_time(run_update, repeats)
    return {
        "model": "unet d12 (162.2M params)",
        "tokens": 1024,
        "forward_s": round(t_fwd, 4),
        "covariance_update_s": round(t_cov, 5),
        "ratio": round(t_cov / t_fwd, 4),
    }


def main(argv):
    del argv
    if FLAGS.memory_rows:
        memory_child(FLAGS.memory_rows, FLAGS.rows)
        return
    print(f"devices: {jax.devices()}  jax {jax.__version__}")
    print("\n1. update throughput vs matmul (float32, precision HIGHEST)")
    print(f"{'d':>6} {'rows':>8} {'matmul GFLOP/s':>15} {'update GFLOP/s':>15} {'ratio':>7}")
    for r in throughput_table(FLAGS.rows, FLAGS.repeats):
        print(f"{r['d']:>6} {r['rows']:>8} {r['matmul_gflops']:>15} {r['update_gflops']:>15} {r['ratio']:>7}")
    if not FLAGS.skip_memory:
        print("\n2. peak RSS vs rows folded (d = 768)")
        for r in memory_table(FLAGS.rows):
            print(f"  N = {r['rows']:>10,d} rows: peak RSS {r['peak_rss_mib']:.0f} MiB")
    if not FLAGS.skip_forward:
        print("\n3. covariance probe cost vs the model forward that produces its activations")
        r = forward_ratio(FLAGS.repeats)
        print(
            f"  {r['model']}, T={r['tokens']}: forward {r['forward_s']} s, covariance update "
            f"{r['covariance_update_s']} s, ratio {r['ratio']}"
        )


if __name__ == "__main__":
    app.run(main)
