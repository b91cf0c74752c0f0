"""The model-agnostic layer on a model we did not write (Hugging Face's Flax GPT-2), side by side in one run.

    python benchmarks/lens.py                                    # GPT-2 small (124M), both parts
    python benchmarks/lens.py --part=grad --n_layer=4 --n_embd=256 --vocab=8192 --seq_len=256

grad     sj.gradient_spectrum of the last block's attention output projection (the paper's W_O) over M sequences
         vs a jitted forward-only pass (logits + per-sequence loss) over the same sequences in the same chunks.
         Requirement: <= 1.3x. Also the compiled chunk program's temporary memory (XLA's memory analysis), which
         depends on the chunk and not on M (one program serves any M), beside the M x P float32 rows kept.
weights  sj.weight_spectra of every matrix of the model (float64 Gram on device + float64 eigvalsh) vs a NumPy
         loop of np.linalg.svd(compute_uv=False) over the same matrices (float32, as stored), and the largest
         relative difference of singular values >= 1e-6 * max against a float64 SVD. Requirement: faster.
Medians of interleaved repeats after one warm-up call each (benchmarks/_timing.py).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _timing import interleaved_medians
from absl import app, flags
from transformers import FlaxGPT2LMHeadModel, GPT2Config

import spectral_jax as sj
from spectral_jax.host import tune_cpu_host
from spectral_jax.lens.common import take_rows
from spectral_jax.lens.gradients import PerExampleGrads
from spectral_jax.lens.paths import flatten

FLAGS = flags.FLAGS
flags.DEFINE_enum("part", "all", ["all", "grad", "weights"], "which measurement")
flags.DEFINE_integer("n_layer", 12, "GPT-2 blocks (12: GPT-2 small)")
flags.DEFINE_integer("n_embd", 768, "width")
flags.DEFINE_integer("vocab", 50257, "vocabulary")
flags.DEFINE_integer("seq_len", 128, "T: tokens per sequence")
flags.DEFINE_integer("samples", 16, "M: sequences")
flags.DEFINE_integer("chunk", 8, "sequences per chunk")
flags.DEFINE_integer("repeats", 5, "timed rounds (median reported)")


def _forward(module, tokens):
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[-1]), tokens.shape)
    return module(tokens, jnp.ones_like(tokens), positions, deterministic=True)


def grad_part(model, params, cfg) -> None:
    T, M, C = FLAGS.seq_len, FLAGS.samples, FLAGS.chunk
    windows = np.random.default_rng(0).integers(0, cfg.vocab_size, (M, T + 1)).astype(np.int32)

    def loss_one(p, w):
        logits = model.module.apply({"params": p}, w[None, :-1], method=_forward).logits
        return optax.softmax_cross_entropy_with_integer_labels(logits, w[None, 1:]).mean()

    @jax.jit
    def forward_chunk(p, w):
        logits = model.module.apply({"params": p}, w[:, :-1], method=_forward).logits
        return optax.softmax_cross_entropy_with_integer_labels(logits, w[:, 1:]).mean(-1)

    def forward():
        return np.concatenate([np.asarray(forward_chunk(params, windows[s : s + C])) for s in range(0, M, C)])

    path = f"transformer/h/{cfg.n_layer - 1}/attn/c_proj/kernel"
    runs = {
        "forward (jitted loss)": forward,
        "sj.gradient_spectrum": lambda: sj.gradient_spectrum(loss_one, params, windows, where=path, chunk=C)[path],
    }
    med, res = interleaved_medians(
        {k: (lambda f=f: jax.block_until_ready(f())) for k, f in runs.items()}, FLAGS.repeats
    )
    engine = PerExampleGrads(loss_one, params, where=path)
    compiled = engine.fn.lower(engine.wrt, engine.others, jnp.asarray(take_rows(windows, 0, C, C))).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes
    P = int(np.prod(np.shape(flatten(params).values[flatten(params).paths.index(path)])))
    ratio = med["sj.gradient_spectrum"] / med["forward (jitted loss)"]
    print(f"grad: GPT-2 L={cfg.n_layer} d={cfg.n_embd} V={cfg.vocab_size}; {path} (P={P}); M={M} x T={T}, chunk {C}")
    for name, t in med.items():
        print(f"  {name:<24} {t:8.4f} s")
    print(f"  gradient_spectrum / forward = {ratio:.3f} (requirement <= 1.3: {'met' if ratio <= 1.3 else 'NOT met'})")
    print(
        f"  compiled chunk program: {temp / 2**20:.1f} MiB temporaries for {C} sequences (the same program for any M); "
        f"rows kept: M x P x 4 B = {M * P * 4 / 2**20:.1f} MiB; top sigma {res['sj.gradient_spectrum'].values[0]:.4g}"
    )


def weights_part(model, params) -> None:
    leaves = flatten(params)
    mats = {leaves.paths[i]: leaves.values[i] for i in leaves.candidates if np.ndim(leaves.values[i]) >= 2}
    host = {k: np.asarray(v) for k, v in mats.items()}

    def numpy_loop():
        return {k: np.linalg.svd(v, compute_uv=False) for k, v in host.items()}

    runs = {"numpy svd loop (float32)": numpy_loop, "sj.weight_spectra": lambda: sj.weight_spectra(params)}
    med, res = interleaved_medians(runs, FLAGS.repeats)
    ours = res["sj.weight_spectra"]
    worst = 0.0
    for k, v in host.items():
        ref = np.linalg.svd(v.astype(np.float64), compute_uv=False)
        keep = ref >= 1e-6 * ref[0]
        worst = max(worst, float(np.max(np.abs(ours[k].values[keep] - ref[keep]) / ref[keep])))
    n_params = sum(int(np.size(v)) for v in jax.tree_util.tree_leaves(params))
    print(
        f"weights: {len(mats)} matrices, {sum(v.size for v in host.values()):,} of the model's {n_params:,} parameters"
    )
    for name, t in med.items():
        print(f"  {name:<26} {t:8.3f} s")
    speed = med["numpy svd loop (float32)"] / med["sj.weight_spectra"]
    print(f"  speed-up over the numpy loop: {speed:.2f}x (requirement > 1: {'met' if speed > 1 else 'NOT met'})")
    print(f"  max rel. diff of singular values >= 1e-6 max vs float64 SVD: {worst:.2e}")


def main(argv):
    del argv
    print(f"host settings as the entry points: {tune_cpu_host()}; devices {jax.devices()}; jax {jax.__version__}")
    cfg = GPT2Config(vocab_size=FLAGS.vocab, n_positions=max(FLAGS.seq_len, 128), n_embd=FLAGS.n_embd)
    cfg.n_layer, cfg.n_head = FLAGS.n_layer, max(1, FLAGS.n_embd // 64)
    t0 = time.perf_counter()
    model = FlaxGPT2LMHeadModel(cfg, seed=0)
    params = model.params
    print(f"model built in {time.perf_counter() - t0:.1f} s")
    if FLAGS.part in ("all", "grad"):
        grad_part(model, params, cfg)
    if FLAGS.part in ("all", "weights"):
        weights_part(model, params)


if __name__ == "__main__":
    app.run(main)
