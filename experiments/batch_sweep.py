"""Main job: one family across batch tiers -> T(B), eps_tok, early alpha_tail, Spearman, figures.

    python -m experiments.batch_sweep --family=betterwin                 # tiny preset, embedded corpus, CPU
    python -m experiments.batch_sweep --family=betterwin --seeds=3       # mean, spread and intervals over seeds
    python -m experiments.batch_sweep --family=betterwin --tokenizer=bytes --lr=sqrt   # UTF-8 byte tokens
    python -m experiments.batch_sweep --family=betterwin --preset=d12 --data=/data/fineweb10B --out=runs/bw
    python -m experiments.batch_sweep --preset=small --seeds=3 --progress_fractions=0.1,0.2,0.4 --layers=2,-1
    python -m experiments.batch_sweep --decide_at=tokens:61440 --decide_by=activation:rankme --decide_keep=2

Every field of spectral_jax.batch_sweep.SweepConfig is a flag, and so is every field of the preset's training
config (TrainConfig) and probe sizes (ProbeConfig); unset ones keep the preset's value.
"""

from __future__ import annotations

from absl import app, flags

from experiments import _cli
from spectral_jax.batch_sweep import SweepConfig, run_batch_sweep
from spectral_jax.errors import UserError

_cli.define_flags(SweepConfig)
flags.adopt_module_key_flags(_cli)


@_cli.user_errors_exit_2
def main(argv):
    if len(argv) > 1:
        raise UserError(f"unexpected arguments {argv[1:]}")
    cfg = _cli.config_from_flags(SweepConfig)
    run_batch_sweep(cfg)
    _cli.report(f"results in {cfg.out_dir()}")


if __name__ == "__main__":
    app.run(main, flags_parser=_cli.parse_flags)
