"""Shared plumbing for the absl entry points: one-line errors with exit code 2, the training-override flags."""

from __future__ import annotations

import ctypes
import functools
import sys

from absl import flags

from spectral_jax.train import TrainingDiverged

USER_ERRORS = (ValueError, OSError, KeyError, TrainingDiverged)


# glibc mallopt parameters and the values the entry points set. mallopt takes a C int: a larger Python int is
# silently truncated by ctypes (until 2026-12-04 the trim threshold was 1 << 34, which arrived as 0, so glibc
# returned the heap top to the kernel at every free).
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX, M_ARENA_MAX = -1, -2, -4, -8
INT_MAX = 2**31 - 1
MALLOPT_SETTINGS = (
    (M_MMAP_MAX, 0),  # large blocks from the heap, not from fresh mmaps
    (M_TRIM_THRESHOLD, INT_MAX),  # never give the heap top back
    (M_TOP_PAD, 256 << 20),  # grow the heap 256 MiB at a time
    (M_ARENA_MAX, 1),  # XLA's worker threads share the main heap: their own arenas (64 MiB mmapped heaps) were
                       # unmapped when empty and faulted back in at every step
)


def tune_host_allocator() -> bool:
    """Keep XLA's CPU temporaries in one glibc heap that is never returned to the kernel (MALLOPT_SETTINGS): the
    tiny training step went from ~64,000 page faults and ~170 ms of kernel time to a few hundred faults and
    ~13 ms, 1.18-1.6x faster on 2 cores (BUILD_NOTES.md). Linux/glibc only; a no-op elsewhere. Same effect as
    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647 MALLOC_TOP_PAD_=268435456 MALLOC_ARENA_MAX=1 in the
    environment. Call it before JAX starts its threads."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return all([mallopt(param, value) == 1 for param, value in MALLOPT_SETTINGS])


def user_errors_exit_2(main):
    """Bad input (unknown family, corrupt shard, missing directory, diverged run) -> 'error: ...' and exit 2."""

    @functools.wraps(main)
    def wrapped(argv):
        tune_host_allocator()
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
