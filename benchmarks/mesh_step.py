"""One device through the mesh code: training step time against the single-device step, side by side in one run.

    python benchmarks/mesh_step.py                    # tiny betterwin, B = 4, on CPU
    python benchmarks/mesh_step.py --preset=d12 --batch=1

Three TrainSteps on the same batches, in alternating rounds in one process (`--rounds` rounds of `--steps` steps,
the loss read one step late as `spectral_jax.train` does):
  before     TrainStep(mesh=None), the single-device step
  default    TrainStep(mesh=make_mesh("")), what train() builds with the default --mesh on one device
  sharded    the same 1-device mesh forced through the sharded path (NamedSharding placement, pinned outputs)
Requirement: default / before <= 1.03 (the default path must not tax the common case).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from _timing import run_one_step_late
from absl import app, flags
from flax import nnx

from spectral_jax.host import tune_cpu_host
from spectral_jax.mesh import make_mesh
from spectral_jax.models import GPT, make_config
from spectral_jax.optim import group_learning_rates
from spectral_jax.presets import get_preset
from spectral_jax.train_step import Schedules, TrainStep

FLAGS = flags.FLAGS
flags.DEFINE_string("family", "betterwin", "family")
flags.DEFINE_string("preset", "tiny", "preset")
flags.DEFINE_integer("batch", 4, "sequences per step (one micro-batch)")
flags.DEFINE_integer("steps", 6, "steps per round")
flags.DEFINE_integer("rounds", 7, "alternating rounds")


def main(argv):
    del argv
    print(f"host settings: {tune_cpu_host()}")
    cfg = make_config(FLAGS.family, FLAGS.preset)
    tc = get_preset(FLAGS.preset).train.replace(batch_size=FLAGS.batch, micro_batch=FLAGS.batch)
    lrs, scale = group_learning_rates(cfg, tc.lr), Schedules.build(cfg, tc).step_scale
    graphdef, params = nnx.split(GPT(cfg, rngs=nnx.Rngs(0)), nnx.Param)
    mesh = make_mesh("")
    forced = TrainStep(cfg, lrs, scale, 1)
    forced.mesh = mesh  # what a multi-device mesh runs, on this one device
    steps = {"before": TrainStep(cfg, lrs, scale, 1), "default": TrainStep(cfg, lrs, scale, 1, mesh=mesh)}
    steps["sharded"] = forced
    rng = np.random.default_rng(0)
    batches = [rng.integers(1, cfg.vocab_size, (FLAGS.batch, cfg.seq_len + 1)) for _ in range(FLAGS.steps)]
    states = {}
    for name, fn in steps.items():
        fresh = jax.tree.map(jnp.copy, params)  # each step donates its own buffers
        states[name] = run_one_step_late(fn, graphdef, fn.init(fresh), batches[:2], cfg.max_window)  # compile
    times = {name: [] for name in steps}
    order = list(steps)
    for r in range(FLAGS.rounds):
        for name in order[r % 3 :] + order[: r % 3]:
            t0 = time.perf_counter()
            states[name] = run_one_step_late(steps[name], graphdef, states[name], batches, cfg.max_window)
            times[name].append((time.perf_counter() - t0) / FLAGS.steps)
    med = {name: float(np.median(t)) for name, t in times.items()}
    print(
        f"{FLAGS.family} {FLAGS.preset}, B = {FLAGS.batch} x {cfg.seq_len}, {FLAGS.rounds} rounds x {FLAGS.steps} steps"
    )
    print("| step | s / step (median of rounds) | / before |\n|---|---|---|")
    for name, t in med.items():
        print(f"| {name} | {t:.4f} | {t / med['before']:.3f} |")
    ratio = med["default"] / med["before"]
    print(f"default / before = {ratio:.3f} (requirement <= 1.03: {'met' if ratio <= 1.03 else 'NOT met'})")


if __name__ == "__main__":
    app.run(main)
