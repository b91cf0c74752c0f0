"""Successive-halving LR selection per batch tier for one family -> lr_table.json for `batch_sweep --lr=auto`.

    python -m experiments.lr_sweep --family=betterwin --tiers=4,8          # tiny preset, embedded corpus, CPU
    python -m experiments.lr_sweep --family=betterwin --preset=d12 --data=/data/fineweb10B --eta=3

Every field of spectral_jax.lr_sweep.LRSweepConfig and of the preset's TrainConfig is a flag.
"""

from __future__ import annotations

from absl import app, flags

from experiments import _cli
from spectral_jax.errors import UserError
from spectral_jax.lr_sweep import LRSweepConfig, run_lr_sweep

_cli.define_flags(LRSweepConfig, skip=("max_tokens",))  # the rungs are the budgets
flags.adopt_module_key_flags(_cli)


@_cli.user_errors_exit_2
def main(argv):
    if len(argv) > 1:
        raise UserError(f"unexpected arguments {argv[1:]}")
    cfg = _cli.config_from_flags(LRSweepConfig)
    run_lr_sweep(cfg)
    _cli.report(f"results in {cfg.out_dir()}")


if __name__ == "__main__":
    app.run(main, flags_parser=_cli.parse_flags)
