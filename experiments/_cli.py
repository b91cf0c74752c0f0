"""Plumbing shared by the absl entry points: flags generated from config dataclasses, and one-line user errors.

`define_flags(Config)` defines one absl flag per field of a frozen config dataclass (nested config dataclasses,
such as the preset overrides, are flattened into top-level flags), with the field's default and the help text
declared beside it (`spectral_jax.fields.option`); `config_from_flags(Config)` builds the config back from the
parsed flags. Adding a field to a config is one line, and it appears under the entry point's `--help` once the
entry point adopts this module's flags as its key flags (`flags.adopt_module_key_flags(_cli)`).
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import logging as pylogging
import os
import sys
import types
import typing
from typing import Any

import jax
from absl import flags, logging

from spectral_jax import distributed
from spectral_jax.errors import UserError
from spectral_jax.fields import Overrides, flag_name, help_of, is_flag
from spectral_jax.host import tune_cpu_host
from spectral_jax.train import TrainingDiverged

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "coordinator_address", None, "several processes: host:port of process 0 (or JAX_COORDINATOR_ADDRESS)"
)
flags.DEFINE_integer("num_processes", None, "several processes: how many (or JAX_NUM_PROCESSES)")
flags.DEFINE_integer(
    "process_id", None, "several processes: this one's index, 0 writes the results (or JAX_PROCESS_ID)"
)
# what a user can fix: one `error:` line and exit code 2; any other exception is a bug and keeps its traceback
USER_ERRORS = (UserError, TrainingDiverged, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def _fail(msg: str) -> None:
    print(f"error: {' '.join(msg.split())}", file=sys.stderr, flush=True)
    sys.exit(2)


def report(line: str) -> None:
    """The entry point's last line on stdout: process 0's only, in a multi-process run."""
    if distributed.is_primary():
        print(line, flush=True)


def _stop_process(err: Exception) -> None:
    """One process of several failed (most often: another one died and a collective broke): one line, and exit
    now, without waiting on the distributed runtime's shutdown barrier for peers that may be gone."""
    print(
        f"error: process {jax.process_index()} of {jax.process_count()} stopped on {type(err).__name__}: "
        f"{' '.join(str(err).split())[:300]} -- if another process of this run died, rerun all of them: the run "
        "resumes from its last checkpoint",
        file=sys.stderr,
        flush=True,
    )
    os._exit(3)


def user_errors_exit_2(main):
    """Bad input (unknown family, corrupt shard or record, missing directory, diverged run, a full disk) -> one
    'error: ...' line and exit 2; anything else is a bug and keeps its traceback. Also the entry points' common
    set-up: absl logs at WARNING (orbax logs every checkpoint file at INFO, JAX every backend it probes) and the CPU
    host settings (spectral_jax.host)."""

    @functools.wraps(main)
    def wrapped(argv):
        logging.set_verbosity(logging.WARNING)
        try:
            # before anything touches a JAX backend (tune_cpu_host does)
            parsed = FLAGS.is_parsed()  # a test may call the wrapped main without parsing flags
            distributed.initialize(
                *(getattr(FLAGS, n) if parsed else None for n in ("coordinator_address", "num_processes", "process_id"))
            )
            tune_cpu_host()
            return main(argv)
        except USER_ERRORS as err:
            _fail(str(err) or type(err).__name__)
        except Exception as err:
            if isinstance(err, OSError) and err.errno == errno.ENOSPC:
                where = err.filename or "the results"
                sys.unraisablehook = lambda unraisable: None  # orbax's abandoned writers would report at exit
                pylogging.getLogger("asyncio").setLevel(pylogging.CRITICAL)
                _fail(f"no space left on the device while writing {where}: free space or pass another --out")
            if distributed.multiprocess():
                _stop_process(err)
            raise

    return wrapped


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a bad flag as one 'error:' line and exit code 2 (absl alone exits 1 with usage)."""
    try:
        return FLAGS(argv)
    except flags.Error as err:
        _fail(f"{err}; see --help")


def int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise UserError(f"expected a comma-separated list of integers, got {text!r}") from None


def float_list(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise UserError(f"expected a comma-separated list of numbers, got {text!r}") from None


def str_list(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


_LISTS = {int: int_list, float: float_list, str: str_list}


def _kind(tp: Any) -> tuple[Any, bool]:
    """(the field's base type, whether None is allowed): int, float, str, bool, a dataclass, or
    ("list", element type) for tuple[T, ...]; None for types no flag can hold (mappings)."""
    optional = False
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        if len(args) != 1:
            return None, optional
        tp = args[0]
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        return (("list", args[0]) if len(args) == 2 and args[1] is Ellipsis and args[0] in _LISTS else None), optional
    if tp in (int, float, str, bool) or dataclasses.is_dataclass(tp):
        return tp, optional
    return None, optional


def _fields(cls: type) -> list[tuple[dataclasses.Field, Any]]:
    """(field, resolved type) of every flag field; an override record resolves against its source config."""
    hints = typing.get_type_hints(getattr(cls, "source", cls))
    return [(f, hints[f.name]) for f in dataclasses.fields(cls) if is_flag(f)]


def _default_text(value: Any) -> Any:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return value


def _nested(f: dataclasses.Field, base: type, fmt: str) -> tuple[type, str]:
    """The nested config's class and its flags' name pattern (a parent's `name` such as "{}_threshold")."""
    cls = base if f.default is dataclasses.MISSING else type(f.default)
    return cls, fmt.format(f.metadata["name"]) if f.metadata.get("name") else fmt


def define_flags(cls: type, *, skip: tuple[str, ...] = (), _fmt: str = "{}") -> None:
    """One absl flag per flag field of `cls` (and of its nested config dataclasses), unless named in `skip`."""
    for f, tp in _fields(cls):
        base, _ = _kind(tp)
        if base is None:
            continue
        if dataclasses.is_dataclass(base):
            nested, fmt = _nested(f, base, _fmt)
            define_flags(nested, skip=skip, _fmt=fmt)
            continue
        name = _fmt.format(flag_name(f))
        if name in skip:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        text = help_of(f) + (" (default: the preset's)" if issubclass(cls, Overrides) else "")
        if base is bool:
            flags.DEFINE_bool(name, default, text)
        elif base is int:
            flags.DEFINE_integer(name, default, text)
        elif base is float:
            flags.DEFINE_float(name, default, text)
        else:
            flags.DEFINE_string(name, _default_text(default), text)


def config_from_flags(cls: type, *, _fmt: str = "{}", **fixed: Any) -> Any:
    """An instance of `cls` from the parsed flags that `define_flags(cls)` defined; `fixed` fields win."""
    values: dict[str, Any] = {}
    for f, tp in _fields(cls):
        base, optional = _kind(tp)
        if f.name in fixed or base is None:
            continue
        if dataclasses.is_dataclass(base):
            nested, fmt = _nested(f, base, _fmt)
            values[f.name] = config_from_flags(nested, _fmt=fmt)
            continue
        name = _fmt.format(flag_name(f))
        if name not in FLAGS:
            continue
        value = FLAGS[name].value
        if isinstance(base, tuple) and isinstance(value, str):
            value = _LISTS[base[1]](value)
        if value is None and not optional and f.default is not dataclasses.MISSING:
            value = f.default
        values[f.name] = value
    return cls(**values, **fixed)
