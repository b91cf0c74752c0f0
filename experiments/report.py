"""Rebuild summary.json and the figures of a results directory from its saved records alone.

    python -m experiments.report --results=results/batch_sweep/betterwin_tiny
"""

from __future__ import annotations

from absl import app, flags, logging

from experiments._cli import user_errors_exit_2
from spectral_jax.runs import format_table, summarize_sweep

FLAGS = flags.FLAGS
flags.DEFINE_string("results", None, "a batch-sweep results directory", required=True)
flags.DEFINE_float("early_fraction", None, "override the early-checkpoint fraction of T(B)")


@user_errors_exit_2
def main(argv):
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint file at INFO
    summary = summarize_sweep(FLAGS.results, early_fraction=FLAGS.early_fraction)
    print(format_table(summary))


if __name__ == "__main__":
    app.run(main)
