"""Successive-halving LR selection per batch tier for one family -> lr_table.json for `batch_sweep --lr=auto`.

    python -m experiments.lr_sweep --family=betterwin --tiers=4,8          # tiny preset, embedded corpus, CPU
    python -m experiments.lr_sweep --family=betterwin --preset=d12 --data=/data/fineweb10B --eta=3
"""

from __future__ import annotations

from absl import app, flags, logging

from experiments._cli import define_train_flags, train_overrides, int_list, user_errors_exit_2
from spectral_jax.lr_select import DEFAULT_ETA, DEFAULT_TIERS, LRSweepConfig, run_lr_sweep

FLAGS = flags.FLAGS
flags.DEFINE_string("family", "betterwin", "family of the chain (spectral_jax.models.FAMILIES)")
flags.DEFINE_string("tiers", ",".join(map(str, DEFAULT_TIERS)), "batch tiers B (sequences per step)")
flags.DEFINE_string("preset", "tiny", "model/training preset: tiny (CPU), d12, d36, d48")
flags.DEFINE_string("data", "embedded", "'embedded' (default corpus), a directory of .bin shards, or text files")
flags.DEFINE_string("rungs", None, "token budgets of the halving rungs, comma-separated (default: the reference's "
                    "50M,150M,500M scaled to the preset; tiny: 20480,61440,196608)")
flags.DEFINE_float("eta", DEFAULT_ETA, "keep the best 1/eta of the candidates at each rung (the reference used 3)")
flags.DEFINE_string("out", None, "results directory (default results/lr_sweep/<family>_<preset>)")
flags.DEFINE_bool("resume", True, "reuse finished rungs and continue interrupted candidates from checkpoints; "
                  "--noresume starts the requested tiers over")
define_train_flags("target_loss", "eval_every_tokens", "val_tokens", "micro_batch", "seed")


@user_errors_exit_2
def main(argv):
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint file at INFO
    overrides = train_overrides()
    cfg = LRSweepConfig(
        family=FLAGS.family, preset=FLAGS.preset, tiers=int_list(FLAGS.tiers), data=FLAGS.data,
        rungs=int_list(FLAGS.rungs) if FLAGS.rungs else None, eta=FLAGS.eta, out=FLAGS.out, resume=FLAGS.resume,
        train_overrides=overrides)
    run_lr_sweep(cfg)
    print(f"results in {cfg.out_dir()}")


if __name__ == "__main__":
    app.run(main)
