"""Main job: one family across batch tiers -> T(B), eps_tok, early alpha_tail, Spearman, figures.

    python -m experiments.batch_sweep --family=betterwin                 # tiny preset, embedded corpus, CPU
    python -m experiments.batch_sweep --family=betterwin --preset=d12 --data=/data/fineweb10B --out=runs/bw
"""

from __future__ import annotations

from absl import app, flags, logging

from experiments._cli import define_train_flags, train_overrides, int_list, user_errors_exit_2
from spectral_jax.runs import DEFAULT_TIERS, SweepConfig, run_batch_sweep

FLAGS = flags.FLAGS
flags.DEFINE_string("family", "betterwin", "family of the chain (spectral_jax.models.FAMILIES)")
flags.DEFINE_string("tiers", ",".join(map(str, DEFAULT_TIERS)), "batch tiers B (sequences per step)")
flags.DEFINE_string("preset", "tiny", "model/training preset: tiny (CPU), d12, d36, d48")
flags.DEFINE_string("data", "embedded", "'embedded' (default corpus), a directory of .bin shards, or text files")
flags.DEFINE_string("lr", "sqrt", "LR rule per tier: sqrt | linear | none (scaling of the family anchors with "
                    "B/B0), a float multiplier, a JSON table {family: {B: multiplier or {group: lr}}}, or auto (the "
                    "successive-halving table of experiments.lr_sweep, see --lr_table)")
flags.DEFINE_string("lr_table", None, "--lr=auto: the LR table written by experiments.lr_sweep (default "
                    "results/lr_sweep/<family>_<preset>/lr_table.json)")
flags.DEFINE_string("out", None, "results directory (default results/batch_sweep/<family>_<preset>)")
flags.DEFINE_bool("resume", True, "reuse finished tiers and resume interrupted ones from their checkpoints")
flags.DEFINE_string("layers", "-1", "probe layers for activation spectra (block indices; -1 = deepest)")
flags.DEFINE_string("matrices", "final_attn_out", "gradient-probe matrices: final_attn_out, attn_out, attn_q, "
                    "attn_v, mlp_out (comma-separated)")
flags.DEFINE_integer("pool_sequences", None, "sequences in the measurement pool (preset default)")
flags.DEFINE_integer("grad_samples", None, "M, sequences for per-sample gradients (preset default)")
flags.DEFINE_float("early_fraction", 0.2, "early checkpoint as a fraction of each tier's T(B)")
define_train_flags("target_loss", "max_tokens", "eval_every_tokens", "micro_batch", "seed")


@user_errors_exit_2
def main(argv):
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint file at INFO
    overrides = train_overrides()
    cfg = SweepConfig(
        family=FLAGS.family, preset=FLAGS.preset, tiers=int_list(FLAGS.tiers), data=FLAGS.data, lr=FLAGS.lr,
        lr_table=FLAGS.lr_table,
        out=FLAGS.out, resume=FLAGS.resume, layers=int_list(FLAGS.layers),
        matrices=tuple(m for m in FLAGS.matrices.split(",") if m), pool_sequences=FLAGS.pool_sequences,
        grad_samples=FLAGS.grad_samples, early_fraction=FLAGS.early_fraction, train_overrides=overrides)
    run_batch_sweep(cfg)
    print(f"results in {cfg.out_dir()}")


if __name__ == "__main__":
    app.run(main)
