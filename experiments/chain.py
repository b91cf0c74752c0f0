"""The architecture chain: each family at B = 8 to the target, gains per transition, spectral features, taxonomy.

    python -m experiments.chain                                          # every family, tiny preset, CPU
    python -m experiments.chain --families=baseline,rope,muon,untied
    python -m experiments.chain --preset=d12 --data=/data/fineweb10B --families=fixedwin,flexwin --max_tokens=...
"""

from __future__ import annotations

from absl import app, flags, logging

from experiments._cli import define_train_flags, train_overrides, user_errors_exit_2
from spectral_jax.chain import DEFAULT_BATCH, ChainConfig, run_chain
from spectral_jax.efficiency import TaxonomyThresholds

FLAGS = flags.FLAGS
_T = TaxonomyThresholds()
flags.DEFINE_string("families", None, "comma-separated families (default: the whole chain, in chain order)")
flags.DEFINE_string("preset", "tiny", "model/training preset: tiny (CPU), d12, d36, d48")
flags.DEFINE_integer("batch", DEFAULT_BATCH, "trunk sequences per step (families with shorter T run more "
                     "sequences, so every family sees the same tokens per step)")
flags.DEFINE_string("data", "embedded", "'embedded' (default corpus), a directory of .bin shards, or text files")
flags.DEFINE_string("lr", "sqrt", "LR per family as batch_sweep --lr (sqrt | linear | none | float | table.json)")
flags.DEFINE_string("out", None, "results directory (default results/chain/<preset>)")
flags.DEFINE_bool("resume", True, "reuse finished families and resume interrupted ones from their checkpoints")
flags.DEFINE_integer("pool_sequences", None, "sequences in the measurement pool (preset default)")
flags.DEFINE_integer("grad_samples", None, "M, sequences for per-sample gradients (preset default)")
flags.DEFINE_string("gain_target", "train", "loss at which T is read for the gains: train (the training target, "
                    "the paper's), common (the lowest loss every family reached), or a number")
flags.DEFINE_enum("throughput", "interleaved", ["interleaved", "train"], "Q for the throughput gains: every "
                  "family's training step timed side by side after the runs (fair on a shared machine), or the Q "
                  "each run logged")
flags.DEFINE_integer("throughput_rounds", 3, "rounds of the side-by-side timing (2 steps per family per round)")
flags.DEFINE_float("tok_threshold", _T.tok, "|g_tok| beyond this is a token-efficiency change (natural log)")
flags.DEFINE_float("thr_threshold", _T.thr, "|g_thr| beyond this is a throughput change (natural log)")
flags.DEFINE_float("act_alpha_head_threshold", _T.act_alpha_head, "activation shift: |delta alpha_head|")
flags.DEFINE_float("act_head_mass_threshold", _T.act_head_mass, "activation shift: |delta top-10 mass|")
flags.DEFINE_float("act_path_js_threshold", _T.act_path_js, "activation shift: mean matched-loss JS")
flags.DEFINE_float("grad_log_rankme_threshold", _T.grad_log_rankme, "gradient shift: |delta ln RankMe|")
flags.DEFINE_float("grad_alpha_threshold", _T.grad_alpha, "gradient shift: |delta alpha_tail|")
flags.DEFINE_float("grad_head_mass_threshold", _T.grad_head_mass, "gradient shift: |delta top-10 mass|")
flags.DEFINE_float("grad_path_js_threshold", _T.grad_path_js, "gradient shift: mean matched-loss JS")
define_train_flags("target_loss", "max_tokens", "eval_every_tokens", "val_tokens", "probe_every_evals", "seed")


@user_errors_exit_2
def main(argv):
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    overrides = train_overrides()
    thresholds = TaxonomyThresholds(
        tok=FLAGS.tok_threshold, thr=FLAGS.thr_threshold, act_alpha_head=FLAGS.act_alpha_head_threshold,
        act_head_mass=FLAGS.act_head_mass_threshold, act_path_js=FLAGS.act_path_js_threshold,
        grad_log_rankme=FLAGS.grad_log_rankme_threshold, grad_alpha=FLAGS.grad_alpha_threshold,
        grad_head_mass=FLAGS.grad_head_mass_threshold, grad_path_js=FLAGS.grad_path_js_threshold)
    families = None if FLAGS.families is None else tuple(f.strip() for f in FLAGS.families.split(",") if f.strip())
    cfg = ChainConfig(families=families, preset=FLAGS.preset, batch=FLAGS.batch, data=FLAGS.data, lr=FLAGS.lr,
                      out=FLAGS.out, resume=FLAGS.resume, pool_sequences=FLAGS.pool_sequences,
                      grad_samples=FLAGS.grad_samples, thresholds=thresholds, gain_target=FLAGS.gain_target,
                      throughput=FLAGS.throughput, throughput_rounds=FLAGS.throughput_rounds, train_overrides=overrides)
    run_chain(cfg)
    print(f"results in {cfg.out_dir()}")


if __name__ == "__main__":
    app.run(main)
