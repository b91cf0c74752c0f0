"""Rebuild summary.json and the figures of a results directory from its saved records alone.

python -m experiments.report --results=results/batch_sweep/betterwin_tiny
python -m experiments.report --results=results/chain/tiny          # a chain directory (chain.json)
python -m experiments.report --results=results/batch_sweep/betterwin_tiny_seeds   # a --seeds=N sweep
"""

from __future__ import annotations

import pathlib

from absl import app, flags

from experiments import _cli
from experiments._cli import user_errors_exit_2
from spectral_jax.batch_sweep import format_seeds_table, format_table, summarize_seeds, summarize_sweep
from spectral_jax.chain import format_chain_table, summarize_chain
from spectral_jax.errors import UserError
from spectral_jax.records import read_json

FLAGS = flags.FLAGS
flags.DEFINE_string("results", None, "a batch-sweep or chain results directory", required=True)
flags.DEFINE_float("early_fraction", None, "override the early-checkpoint fraction of T(B) (batch sweeps)")
flags.DEFINE_string(
    "gain_target", None, "chains: loss at which T is read (train | common | a number; default: as the chain was run)"
)


@user_errors_exit_2
def main(argv):
    if len(argv) > 1:
        raise UserError(f"unexpected arguments {argv[1:]}")
    if (pathlib.Path(FLAGS.results) / "chain.json").is_file():
        print(format_chain_table(summarize_chain(FLAGS.results, gain_target=FLAGS.gain_target)))
        return
    sweep = pathlib.Path(FLAGS.results) / "sweep.json"
    if sweep.is_file() and "seed_dirs" in read_json(sweep):
        if FLAGS.early_fraction is not None:
            raise UserError("--early_fraction applies to one seed's directory; pass --results=<dir>/seed<k>")
        print(format_seeds_table(summarize_seeds(FLAGS.results)))
        return
    summary = summarize_sweep(FLAGS.results, early_fraction=FLAGS.early_fraction)
    print(format_table(summary))


if __name__ == "__main__":
    app.run(main, flags_parser=_cli.parse_flags)
