"""Modular-arithmetic toy: stage x batch sweep with successive-halving LR selection, spectra and Fourier probes.

    python -m experiments.toy_modarith                       # CPU default (scaled to 2 CPU cores)
    python -m experiments.toy_modarith --quick --out=/tmp/toy_quick
    python -m experiments.toy_modarith --preset=reference    # reference budget: 5000 steps, target 2.0, B 32..512

Writes DIR/summary.json, DIR/runs/*.json (one per stage, batch, seed; reused on a rerun) and the figures
(fig4a/4b/4c/11a/11b/11c, loss curves). Every field of spectral_jax.toy.experiment.ToyExperimentConfig is a flag;
flags left unset keep the preset's value.
"""

from __future__ import annotations

import dataclasses

from absl import app, flags

from experiments import _cli
from spectral_jax.errors import UserError
from spectral_jax.toy.experiment import PRESETS, ToyOverrides, run_toy_experiment

FLAGS = flags.FLAGS
flags.DEFINE_string("out", "results/toy_modarith", "results directory")
flags.DEFINE_bool("quick", False, "the reduced preset (under 5 minutes on 2 CPU cores); same as --preset=quick")
flags.DEFINE_enum(
    "preset", "cpu", list(PRESETS), "budget preset: cpu (default), quick, reference, faithful, faithful_dh"
)
_cli.define_flags(ToyOverrides)
flags.adopt_module_key_flags(_cli)


@_cli.user_errors_exit_2
def main(argv):
    if len(argv) > 1:
        raise UserError(f"unexpected arguments {argv[1:]}")
    cfg = _cli.config_from_flags(ToyOverrides).apply(PRESETS["quick" if FLAGS.quick else FLAGS.preset])
    if FLAGS.val_sequences == 0:  # 0 = the whole val split
        cfg = dataclasses.replace(cfg, val_sequences=None)
    summary = run_toy_experiment(cfg, FLAGS.out)
    print(f"{summary['n_runs']} runs; summary and figures in {FLAGS.out}")


if __name__ == "__main__":
    app.run(main, flags_parser=_cli.parse_flags)
