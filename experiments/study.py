"""The seeded study's tables and figures from finished runs (docs/results.md "the study").

    python -m experiments.study --sweeps=tiny=/work/runs/study_tiny,small=/work/runs/study_small \
        --toy=/work/runs/toy_faithful --toy_dh=/work/runs/toy_faithful_dh \
        --decisions=/work/runs/decide_tiny/seed0,/work/runs/decide_tiny/seed3 --out=docs/results/study

The runs come from `experiments.batch_sweep --seeds=3 --progress_fractions=... --progress_losses=...` (one per
scale) and `experiments.toy_modarith --preset=faithful` / `--preset=faithful_dh`; README and docs/results.md give
the exact commands. This entry point only reads their records.
"""

from __future__ import annotations

import sys

from absl import app, flags

from experiments import _cli
from spectral_jax.errors import UserError
from spectral_jax.study.report import parse_sweeps, write_study

FLAGS = flags.FLAGS
flags.DEFINE_list("sweeps", [], "name=directory of each seeded batch sweep (a scale), e.g. tiny=results/x")
flags.DEFINE_string("toy", None, "toy experiment for Fig. 4a (five batch sizes), e.g. --preset=faithful's --out")
flags.DEFINE_string("toy_dh", None, "toy experiment for ΔH_peak (four stages), e.g. --preset=faithful_dh's --out")
flags.DEFINE_list("decisions", [], "early-decision run directories (batch_sweep --decide_at --out=...) to tabulate")
flags.DEFINE_string("out", "docs/results/study", "where the tables and figures go")
flags.adopt_module_key_flags(_cli)


@_cli.user_errors_exit_2
def main(argv):
    if len(argv) > 1:
        raise UserError(f"unexpected arguments {argv[1:]}")
    sweeps = parse_sweeps(FLAGS.sweeps)
    if not sweeps and not FLAGS.toy and not FLAGS.toy_dh and not FLAGS.decisions:
        raise UserError("nothing to do: pass --sweeps=name=dir,..., --toy / --toy_dh and/or --decisions")
    command = "python -m experiments.study " + " ".join(sys.argv[1:])
    write_study(
        FLAGS.out, sweeps, toy_progress=FLAGS.toy, toy_dh=FLAGS.toy_dh, decision_runs=FLAGS.decisions, command=command
    )
    _cli.report(f"study tables and figures in {FLAGS.out}")


if __name__ == "__main__":
    app.run(main, flags_parser=_cli.parse_flags)
