"""The training loop's loss read: every step (the host waits for each step) against one step late (train.py).

    python benchmarks/train_loop.py                          # tiny betterwin, B = 4, on CPU
    python benchmarks/train_loop.py --preset=d12 --batch=1   # on a GPU

Both loops run the same TrainStep on the same batches, in alternating rounds in one process (`--rounds` rounds
of `--steps` steps each), and print seconds per step and their ratio. "every step" converts each step's loss to a
Python float before dispatching the next step; "one step late" dispatches step s+1 first and then reads step s's
loss, as `spectral_jax.train` does. On CPU with synchronous dispatch (spectral_jax.host) a dispatch returns when
the step is done, so the two must tie: the ratio shows the late read costs nothing there. On an accelerator, with
asynchronous dispatch, the late read lets the host prepare and dispatch step s+1 (Python, the batch's transfer)
while the device still runs step s, instead of leaving the device idle for that time at every step.
"""

from __future__ import annotations

import time

import numpy as np
from _timing import run_one_step_late
from absl import app, flags
from flax import nnx

from spectral_jax.host import tune_cpu_host
from spectral_jax.models import GPT, make_config
from spectral_jax.optim import group_learning_rates
from spectral_jax.presets import get_preset
from spectral_jax.train_step import Schedules, TrainStep

FLAGS = flags.FLAGS
flags.DEFINE_string("family", "betterwin", "family")
flags.DEFINE_string("preset", "tiny", "preset")
flags.DEFINE_integer("batch", 4, "sequences per step (one micro-batch)")
flags.DEFINE_integer("steps", 6, "steps per round")
flags.DEFINE_integer("rounds", 5, "alternating rounds per loop")


def run_every_step(step_fn, graphdef, state, batches, window) -> tuple:
    for b in batches:
        params, opt_state, loss = step_fn(graphdef, *state, [b], window)
        state = (params, opt_state)
        float(loss)
    return state


def main(argv):
    del argv
    print(f"host settings: {tune_cpu_host()}")
    cfg = make_config(FLAGS.family, FLAGS.preset)
    tc = get_preset(FLAGS.preset).train.replace(batch_size=FLAGS.batch, micro_batch=FLAGS.batch)
    step_fn = TrainStep(cfg, group_learning_rates(cfg, tc.lr), Schedules.build(cfg, tc).step_scale, 1)
    graphdef, params = nnx.split(GPT(cfg, rngs=nnx.Rngs(0)), nnx.Param)
    rng = np.random.default_rng(0)
    batches = [rng.integers(1, cfg.vocab_size, (FLAGS.batch, cfg.seq_len + 1)) for _ in range(FLAGS.steps)]
    loops = {"every step": run_every_step, "one step late": run_one_step_late}
    state = step_fn.init(params)
    state = run_every_step(step_fn, graphdef, state, batches[:2], cfg.max_window)  # compile
    times = {name: [] for name in loops}
    for r in range(FLAGS.rounds):
        for name in list(loops) if r % 2 == 0 else list(loops)[::-1]:
            t0 = time.perf_counter()
            state = loops[name](step_fn, graphdef, state, batches, cfg.max_window)
            times[name].append((time.perf_counter() - t0) / FLAGS.steps)
    med = {name: float(np.median(t)) for name, t in times.items()}
    print(
        f"{FLAGS.family} {FLAGS.preset}, B = {FLAGS.batch} x {cfg.seq_len}, {FLAGS.rounds} rounds x "
        f"{FLAGS.steps} steps per loop"
    )
    print("| loss read | s / step (median of rounds) |\n|---|---|")
    for name, t in med.items():
        print(f"| {name} | {t:.4f} |")
    print(
        f"ratio every-step / one-step-late: {med['every step'] / med['one step late']:.3f} "
        f"(> 1: the late read is faster)"
    )


if __name__ == "__main__":
    app.run(main)
