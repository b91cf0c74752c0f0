"""Modular-arithmetic toy: stage x batch sweep with successive-halving LR selection, spectra and Fourier probes.

    python -m experiments.toy_modarith                       # CPU default (scaled; see BUILD_NOTES.md "Toy")
    python -m experiments.toy_modarith --quick --out=/tmp/toy_quick
    python -m experiments.toy_modarith --preset=reference    # reference budget: 5000 steps, target 2.0, B 32..512

Writes DIR/summary.json, DIR/runs/*.json (one per stage, batch, seed; reused on a rerun) and the figures
(fig4a/4b/4c/11a/11b/11c, loss curves). Flags left unset keep the preset's value.
"""

from __future__ import annotations

import dataclasses

from absl import app, flags

from experiments._cli import int_list, user_errors_exit_2
from spectral_jax.toy.experiment import PRESETS, run_toy_experiment

FLAGS = flags.FLAGS
flags.DEFINE_string("out", "results/toy_modarith", "results directory")
flags.DEFINE_bool("quick", False, "the reduced preset (under 5 minutes on 2 CPU cores); same as --preset=quick")
flags.DEFINE_enum("preset", "cpu", list(PRESETS), "budget preset: cpu (default), quick, reference")
flags.DEFINE_string("stages", None, "comma-separated stages of baseline,rope,muon,untied")
flags.DEFINE_string("batches", None, "comma-separated batch sizes (sequences per step)")
flags.DEFINE_string("seeds", None, "comma-separated seeds (task data, init and batch order)")
flags.DEFINE_float("target", None, "stop at the first eval with val loss <= target")
flags.DEFINE_integer("max_steps", None, "step budget per run (at the reference batch; see --token_budget)")
flags.DEFINE_integer("eval_every", None, "eval cadence in steps")
flags.DEFINE_integer("val_sequences", None, "validation sequences per eval (0 = the whole val split)")
flags.DEFINE_integer("measure_every", None, "probe snapshot every N evals")
flags.DEFINE_float("lr_base", None, "base LR at the reference batch (AdamW groups; Muon matrices use 50x)")
flags.DEFINE_string("lr_multipliers", None, "comma-separated LR multipliers around each scaling centre")
flags.DEFINE_string("rungs", None, "successive-halving rung budgets as fractions of max_steps, ending at 1")
flags.DEFINE_enum("selection", None, ["first_seed", "every_seed"],
                  "LR selection on the first seed only (later seeds reuse its LR), or on every seed")


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise ValueError(f"expected a comma-separated list of numbers, got {text!r}") from None


@user_errors_exit_2
def main(argv):
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments {argv[1:]}")
    cfg = PRESETS["quick" if FLAGS.quick else FLAGS.preset]
    changes = dict(
        stages=tuple(s for s in FLAGS.stages.split(",") if s) if FLAGS.stages else None,
        batches=int_list(FLAGS.batches) if FLAGS.batches else None,
        seeds=int_list(FLAGS.seeds) if FLAGS.seeds else None,
        target=FLAGS.target, max_steps=FLAGS.max_steps, eval_every=FLAGS.eval_every,
        measure_every=FLAGS.measure_every, lr_base=FLAGS.lr_base,
        lr_multipliers=_floats(FLAGS.lr_multipliers) if FLAGS.lr_multipliers else None,
        rung_fractions=_floats(FLAGS.rungs) if FLAGS.rungs else None, selection=FLAGS.selection,
    )
    changes = {k: v for k, v in changes.items() if v is not None}
    if FLAGS.val_sequences is not None:
        changes["val_sequences"] = FLAGS.val_sequences or None
    cfg = dataclasses.replace(cfg, **changes)
    summary = run_toy_experiment(cfg, FLAGS.out)
    print(f"{summary['n_runs']} runs; summary and figures in {FLAGS.out}")


if __name__ == "__main__":
    app.run(main)
