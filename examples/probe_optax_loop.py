"""A plain optax training loop on a model we did not write (Hugging Face's Flax GPT-2), watched by SpectralMonitor.

    python examples/probe_optax_loop.py                       # 200 steps, probes every 50, into /tmp/gpt2_spectra
    python examples/probe_optax_loop.py --steps=20 --every=10 --out=/tmp/x

The monitor is the only spectral-jax code in the loop: at every probe step it measures the block outputs'
covariance spectra, the per-example gradient spectrum of the last block's attention output projection and
the weight spectra of every attention / MLP matrix, appends the summary rows to <out>/spectra.jsonl, and returns
flat scalars for whatever logger the loop uses (here: print). Text: the package's embedded corpus, GPT-2 tokens.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from absl import app, flags
from transformers import FlaxGPT2LMHeadModel, GPT2Config

import spectral_jax as sj
from spectral_jax.data import embedded_corpus

FLAGS = flags.FLAGS
flags.DEFINE_integer("steps", 200, "optimizer steps")
flags.DEFINE_integer("every", 50, "probe every this many steps")
flags.DEFINE_integer("batch", 8, "sequences per step")
flags.DEFINE_integer("seq_len", 64, "tokens per sequence")
flags.DEFINE_integer("n_layer", 2, "GPT-2 blocks")
flags.DEFINE_integer("n_embd", 64, "GPT-2 width")
flags.DEFINE_integer("probe_sequences", 32, "sequences of the fixed probe set")
flags.DEFINE_float("lr", 1e-3, "AdamW learning rate")
flags.DEFINE_string("out", "/tmp/gpt2_spectra", "monitor directory (records, raw spectra, figures)")


def forward(module, tokens):
    """GPT-2's linen module on (B, T) tokens: every position attended, positions 0..T-1, no dropout."""
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[-1]), tokens.shape)
    return module(tokens, jnp.ones_like(tokens), positions, deterministic=True)


def main(argv):
    del argv
    T = FLAGS.seq_len
    config = GPT2Config(n_positions=T, n_embd=FLAGS.n_embd, n_layer=FLAGS.n_layer, n_head=max(1, FLAGS.n_embd // 32))
    model = FlaxGPT2LMHeadModel(config, seed=0)
    module, params = model.module, model.params
    data = embedded_corpus()
    train = iter(data.train_dataset(T, FLAGS.batch, seed=0))
    probe_windows = data.measurement_pool(T, FLAGS.probe_sequences, val_tokens=0)

    def loss_batch(p, windows):
        logits = module.apply({"params": p}, windows[:, :-1], method=forward).logits
        return optax.softmax_cross_entropy_with_integer_labels(logits, windows[:, 1:]).mean()

    def loss_one(p, window):  # the per-example loss the gradient probe differentiates
        return loss_batch(p, window[None])

    opt = optax.adamw(FLAGS.lr)
    opt_state = opt.init(params)

    @jax.jit
    def train_step(p, s, windows):
        loss, grads = jax.value_and_grad(loss_batch)(p, windows)
        updates, s = opt.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    last = config.n_layer - 1
    inputs = probe_windows[:, :-1]
    batches = [inputs[i : i + 8] for i in range(0, len(inputs), 8)]
    monitor = sj.SpectralMonitor(
        [
            sj.ActivationProbe(batches, where=r"h/\d+$", module=module, call=forward),
            sj.GradientProbe(loss_one, probe_windows, where=f"h/{last}/attn/c_proj/kernel"),
            sj.WeightProbe(where=r"c_attn|c_proj|c_fc"),
        ],
        every=FLAGS.every,
        out_dir=FLAGS.out,
    )
    for step in range(FLAGS.steps + 1):
        scalars = monitor(step, params)  # {} between probe steps
        if scalars:
            act = {k: round(v, 3) for k, v in scalars.items() if k.startswith("spectra/activation") and "alpha" in k}
            print(f"step {step}: {act}", flush=True)
        if step < FLAGS.steps:
            params, opt_state, loss = train_step(params, opt_state, next(train))
            if step % FLAGS.every == 0:
                print(f"step {step}: train loss {float(loss):.3f}", flush=True)
    for path in monitor.save_figures():
        print(f"wrote {path}")
    rows = [r for r in monitor.records() if r["step"] == FLAGS.steps]
    print(f"{len(rows)} spectra at step {FLAGS.steps}; records in {FLAGS.out}/spectra.jsonl")
    for r in rows:
        alpha = r["alpha_tail"]
        print(f"  {r['kind']:<10} {r['path']:<40} alpha_tail {'n/a' if alpha is None else f'{alpha:.3f}'}")


if __name__ == "__main__":
    app.run(main)
