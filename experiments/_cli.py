"""Shared plumbing for the absl entry points: one-line errors with exit code 2."""

from __future__ import annotations

import functools
import sys

from spectral_jax.train import TrainingDiverged

USER_ERRORS = (ValueError, OSError, KeyError, TrainingDiverged)


def user_errors_exit_2(main):
    """Bad input (unknown family, corrupt shard, missing directory, diverged run) -> 'error: ...' and exit 2."""

    @functools.wraps(main)
    def wrapped(argv):
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
