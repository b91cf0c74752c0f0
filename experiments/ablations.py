"""Ablations (paper App. D and Figs. 5, 6, 7, 9, 10). The first argument is the subcommand:

    python -m experiments.ablations adam_vs_muon --tiers=4,8 --out=/tmp/abl     # LSWA vs LSWA-Adam (Fig. 7)
    python -m experiments.ablations seed_control --batch=8 --seeds=42,43,44      # seeds vs tiers (Fig. 9)
    python -m experiments.ablations layerwise                                    # rho by probe layer (Fig. 10)
    python -m experiments.ablations probe_matrices                               # W_Q/W_V/W_O/MLP-out (Fig. 6)
    python -m experiments.ablations data_split --data_a=embedded:val --data_b=/data/other_shards   # (Fig. 5)
    python -m experiments.ablations all

Each writes <out>/<ablation>/summary.json and its PNGs, and indexes them in <out>/summary.json. layerwise,
probe_matrices and seed_control share one sweep (<out>/probe_sweep). Every field of
spectral_jax.ablations.AblationConfig and of the preset's TrainConfig and ProbeConfig is a flag.
"""

from __future__ import annotations

from absl import app, flags

from experiments import _cli
from spectral_jax.ablations import RUNNERS, AblationConfig
from spectral_jax.errors import UserError

_cli.define_flags(AblationConfig)
flags.adopt_module_key_flags(_cli)


@_cli.user_errors_exit_2
def main(argv):
    if len(argv) != 2 or argv[1] not in RUNNERS:
        got = " ".join(argv[1:]) or "nothing"
        raise UserError(f"expected one subcommand ({' | '.join(RUNNERS)}), got {got}")
    cfg = _cli.config_from_flags(AblationConfig)
    RUNNERS[argv[1]](cfg)
    _cli.report(f"results in {cfg.path()}")


if __name__ == "__main__":
    app.run(main, flags_parser=_cli.parse_flags)
