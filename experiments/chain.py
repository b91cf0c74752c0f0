"""The architecture chain: each family at B = 8 to the target, gains per transition, spectral features, taxonomy.

    python -m experiments.chain                                          # every family, tiny preset, CPU
    python -m experiments.chain --families=baseline,rope,muon,untied
    python -m experiments.chain --preset=d12 --data=/data/fineweb10B --families=fixedwin,flexwin --max_tokens=...

Every field of spectral_jax.chain.ChainConfig (the taxonomy thresholds as --<name>_threshold) and of the preset's
TrainConfig and ProbeConfig is a flag.
"""

from __future__ import annotations

from absl import app, flags

from experiments import _cli
from spectral_jax.chain import ChainConfig, run_chain
from spectral_jax.errors import UserError

_cli.define_flags(ChainConfig)
flags.adopt_module_key_flags(_cli)


@_cli.user_errors_exit_2
def main(argv):
    if len(argv) > 1:
        raise UserError(f"unexpected arguments {argv[1:]}")
    cfg = _cli.config_from_flags(ChainConfig)
    run_chain(cfg)
    _cli.report(f"results in {cfg.out_dir()}")


if __name__ == "__main__":
    app.run(main, flags_parser=_cli.parse_flags)
