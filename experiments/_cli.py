"""Shared plumbing for the absl entry points: CPU host settings (spectral_jax.host), one-line errors with exit code 2,
the training-override flags."""

from __future__ import annotations

import functools
import sys

from absl import flags

from spectral_jax.host import tune_cpu_host
from spectral_jax.train import TrainingDiverged

USER_ERRORS = (ValueError, OSError, KeyError, TrainingDiverged)


def user_errors_exit_2(main):
    """Bad input (unknown family, corrupt shard, missing directory, diverged run) -> 'error: ...' and exit 2."""

    @functools.wraps(main)
    def wrapped(argv):
        tune_cpu_host()
        try:
            return main(argv)
        except USER_ERRORS as err:
            msg = " ".join(str(err).split()) or type(err).__name__
            print(f"error: {msg}", file=sys.stderr, flush=True)
            sys.exit(2)

    return wrapped


def int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise ValueError(f"expected a comma-separated list of integers, got {text!r}") from None


# TrainConfig fields an entry point may override by flag; None keeps the preset's value.
TRAIN_FLAGS = {
    "target_loss": (flags.DEFINE_float, "stop at the first eval at or below this val loss (preset default)"),
    "max_tokens": (flags.DEFINE_integer, "token budget per run (preset default)"),
    "eval_every_tokens": (flags.DEFINE_integer, "eval cadence in training tokens (preset default)"),
    "val_tokens": (flags.DEFINE_integer, "validation tokens per eval (preset default)"),
    "probe_every_evals": (flags.DEFINE_integer, "probe spectra at every k-th eval (preset default)"),
    "micro_batch": (flags.DEFINE_integer, "sequences per forward/backward (default: fit to the preset)"),
    "seed": (flags.DEFINE_integer, "model init seed (default 42)"),
}
_defined: list[str] = []


def define_train_flags(*names: str) -> None:
    """Define the named TRAIN_FLAGS (default None) for this entry point; `train_overrides` reads them back."""
    caller = sys._getframe(1).f_globals["__name__"]  # listed under the entry point's own --help, as absl names it
    caller = sys.argv[0] if caller == "__main__" else caller
    for name in names:
        define, help_text = TRAIN_FLAGS[name]
        define(name, None, help_text, module_name=caller)
        _defined.append(name)


def train_overrides() -> dict:
    """{TrainConfig field: value} for every training flag defined here that the user set."""
    return {name: getattr(flags.FLAGS, name) for name in _defined if getattr(flags.FLAGS, name) is not None}
