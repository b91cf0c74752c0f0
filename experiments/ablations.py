"""Ablations (paper App. D and Figs. 5, 6, 7, 9, 10). The first argument is the subcommand:

    python -m experiments.ablations adam_vs_muon --tiers=4,8 --out=/tmp/abl     # LSWA vs LSWA-Adam (Fig. 7)
    python -m experiments.ablations seed_control --batch=8 --seeds=42,43,44      # seeds vs tiers (Fig. 9)
    python -m experiments.ablations layerwise                                    # rho by probe layer (Fig. 10)
    python -m experiments.ablations probe_matrices                               # W_Q/W_V/W_O/MLP-out (Fig. 6)
    python -m experiments.ablations data_split --data_a=embedded:val --data_b=/data/other_shards   # (Fig. 5)
    python -m experiments.ablations all

Each writes <out>/<ablation>/summary.json and its PNGs, and indexes them in <out>/summary.json. layerwise,
probe_matrices and seed_control share one sweep (<out>/probe_sweep).
"""

from __future__ import annotations

from absl import app, flags, logging

from experiments._cli import define_train_flags, train_overrides, int_list, user_errors_exit_2
from spectral_jax.ablations import RUNNERS, AblationConfig
from spectral_jax.runs import DEFAULT_TIERS

FLAGS = flags.FLAGS
flags.DEFINE_string("out", None, "results directory (default results/ablations/<preset>)")
flags.DEFINE_string("preset", "tiny", "model/training preset: tiny (CPU), d12, d36, d48")
flags.DEFINE_string("family", "betterwin", "family for seed_control / layerwise / probe_matrices (and the "
                    "fresh model of data_split); adam_vs_muon always compares lswa with lswa_adam")
flags.DEFINE_string("data", "embedded", "training data: 'embedded', a directory of .bin shards, or text files")
flags.DEFINE_string("tiers", ",".join(map(str, DEFAULT_TIERS)), "batch tiers B (sequences per step)")
flags.DEFINE_string("lr", "sqrt", "LR rule per tier (as experiments.batch_sweep --lr)")
flags.DEFINE_bool("resume", True, "reuse finished tiers and resume interrupted ones")
flags.DEFINE_integer("batch", 8, "seed_control: the tier B trained with every seed; data_split under 'all': the "
                     "probe-sweep tier whose checkpoint is measured")
flags.DEFINE_string("seeds", "42,43,44", "seed_control: model init seeds")
flags.DEFINE_bool("vary_data_seed", False, "seed_control: also use seed s as the train-stream shuffle seed")
flags.DEFINE_string("data_a", "embedded:val", "data_split source A: '<--data spec>[:pool|val|train]' (split "
                    "default pool)")
flags.DEFINE_string("data_b", "embedded:pool", "data_split source B, same syntax")
flags.DEFINE_string("model", None, "data_split: a trained tier directory (e.g. <sweep>/tier_B8) whose newest "
                    "checkpoint is measured; default a freshly initialised --family model (seed --seed)")
flags.DEFINE_integer("split_sequences", None, "data_split: sequences per sample (default: the preset's pool size)")
flags.DEFINE_integer("pool_sequences", None, "sequences in the measurement pool (preset default)")
flags.DEFINE_integer("grad_samples", None, "M, sequences for per-sample gradients (preset default)")
flags.DEFINE_float("early_fraction", 0.2, "early checkpoint as a fraction of each tier's T(B)")
define_train_flags("target_loss", "max_tokens", "eval_every_tokens", "val_tokens", "probe_every_evals", "micro_batch", "seed")


@user_errors_exit_2
def main(argv):
    if len(argv) != 2 or argv[1] not in RUNNERS:
        got = " ".join(argv[1:]) or "nothing"
        raise ValueError(f"expected one subcommand ({' | '.join(RUNNERS)}), got {got}")
    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint file at INFO
    overrides = train_overrides()
    cfg = AblationConfig(
        out=FLAGS.out or f"results/ablations/{FLAGS.preset}", preset=FLAGS.preset, family=FLAGS.family,
        tiers=int_list(FLAGS.tiers), data=FLAGS.data, lr=FLAGS.lr, resume=FLAGS.resume,
        pool_sequences=FLAGS.pool_sequences, grad_samples=FLAGS.grad_samples, early_fraction=FLAGS.early_fraction,
        train_overrides=overrides, batch=FLAGS.batch, seeds=int_list(FLAGS.seeds),
        vary_data_seed=FLAGS.vary_data_seed, data_a=FLAGS.data_a, data_b=FLAGS.data_b, model_dir=FLAGS.model,
        split_sequences=FLAGS.split_sequences)
    RUNNERS[argv[1]](cfg)
    print(f"results in {cfg.out}")


if __name__ == "__main__":
    app.run(main)
