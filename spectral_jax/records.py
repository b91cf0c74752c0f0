"""Run records on disk: the package's one atomic writer, JSON / JSONL / NPZ files, and the environment record.

Every file the package writes goes through `atomic_write_bytes` (temp file in the same directory, fsync, rename),
so a reader never sees a partial file, and files are created readable by everyone (0644, like a plain `open`),
not with `mkstemp`'s private 0600. JSONL files are the one exception to whole-file writes: rows are appended, and a
torn last row (a crash mid-append) is dropped on read. `to_jsonable` is the one conversion of dataclasses, numpy
scalars and non-finite floats (-> null) to JSON.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax
import jax
import numpy as np
import optax
import orbax.checkpoint

from spectral_jax import distributed
from spectral_jax.errors import CorruptRecordError, UserError

FILE_MODE = 0o644


def atomic_write_bytes(path: str | os.PathLike, payload: bytes) -> None:
    """Write via a temp file in the same directory + rename, so readers never see a partial file."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fchmod(f.fileno(), FILE_MODE)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def to_jsonable(x: Any) -> Any:
    """Dataclasses -> dicts (without `fields.added_later` fields at their default), tuples -> lists, numpy scalars
    -> Python, NaN/inf -> None (JSON has no NaN)."""
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return {
            f.name: to_jsonable(getattr(x, f.name))
            for f in dataclasses.fields(x)
            if not (f.metadata.get("omit_at_default") and getattr(x, f.name) == f.default)
        }
    if isinstance(x, Mapping):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating):
        x = float(x)
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def json_text(obj: Any, *, indent: int | None = None) -> str:
    """The canonical JSON of `obj` (sorted keys): what files hold and what fingerprints compare."""
    return json.dumps(to_jsonable(obj), indent=indent, sort_keys=True)


def _secondary() -> bool:
    """A process other than 0 of a multi-process run: records, figures and logs are process 0's to write."""
    return not distributed.is_primary()


def write_json(path: str | os.PathLike, obj: Any) -> None:
    if _secondary():
        return
    atomic_write_bytes(path, (json_text(obj, indent=2) + "\n").encode())


def write_text(path: str | os.PathLike, text: str) -> None:
    if _secondary():
        return
    atomic_write_bytes(path, text.encode())


def write_csv(
    path: str | os.PathLike, rows: Sequence[Mapping], columns: Sequence[str] | None = None, *, digits: int | None = None
) -> None:
    """A tidy CSV of `rows` under `columns` (default: the first row's keys; other keys are left out), written
    atomically by process 0: None and non-finite floats as empty cells, floats to `digits` significant digits
    when given (else repr)."""

    def cell(v):
        if isinstance(v, (float, np.floating)):
            return "" if not math.isfinite(v) else (f"{v:.{digits}g}" if digits else v)
        return "" if v is None else v

    columns = list(columns or (rows[0] if rows else []))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: cell(row.get(k)) for k in columns})
    write_text(path, buf.getvalue())


def read_json(path: str | os.PathLike) -> Any:
    """A JSON file's content; a missing or unreadable file is a ValueError that names it."""
    path = pathlib.Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CorruptRecordError(f"{path} is not valid JSON ({err}); delete it to recompute it") from None


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Rows of a JSONL file. A torn final line (a crash mid-append: no newline at the end) is dropped; any other
    line that is not a JSON object is a CorruptRecordError naming the file and the line."""
    path = pathlib.Path(path)
    if not path.is_file():
        return []
    text = path.read_text(errors="replace")
    lines = text.split("\n")
    lines.pop()  # after the final newline: "", or a torn line
    rows = []
    for i, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            row, reason = None, err.msg
        else:
            reason = "not a JSON object"
        if not isinstance(row, dict):
            raise CorruptRecordError(
                f"{path}:{i}: {reason}; the file is corrupt (only a torn last line is tolerated): restore it, "
                "or delete it and rerun into a new --out"
            )
        rows.append(row)
    return rows


def append_jsonl(path: str | os.PathLike, row: Mapping) -> None:
    """Append one row; a torn final line left by a crash is cut off first."""
    if _secondary():
        return
    path = pathlib.Path(path)
    if path.is_file():
        with open(path, "rb+") as f:
            data = f.read()
            if data and not data.endswith(b"\n"):
                f.truncate(data.rfind(b"\n") + 1)
    with open(path, "a") as f:
        f.write(json_text(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def truncate_jsonl(path: str | os.PathLike, keep: Callable[[dict], bool]) -> None:
    """Atomically rewrite a JSONL file with only the rows `keep` accepts (used on resume)."""
    if _secondary():
        return
    path = pathlib.Path(path)
    if path.exists():
        rows = [r for r in read_jsonl(path) if keep(r)]
        atomic_write_bytes(path, "".join(json_text(r) + "\n" for r in rows).encode())


def save_npz(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> None:
    if _secondary():
        return
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    atomic_write_bytes(path, buf.getvalue())


def log_stderr(msg: str) -> None:
    """Default progress sink: one line to stderr, flushed (so it interleaves correctly with absl logs); process 0's
    only in a multi-process run."""
    if _secondary():
        return
    print(msg, file=sys.stderr, flush=True)


def git_sha() -> str:
    """HEAD of the checkout this package runs from, "-dirty" when tracked files changed; "unknown" outside git."""
    here = pathlib.Path(__file__).parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        sha = out.stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return sha + ("-dirty" if dirty.stdout.strip() else "") if sha else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def code_versions() -> dict:
    """The library versions that determine a run's numbers (part of a run's identity; the git SHA is not, so that
    a documentation commit does not invalidate finished runs)."""
    return dict(jax=jax.__version__, flax=flax.__version__, optax=optax.__version__, numpy=np.__version__)


def environment() -> dict:
    """Versions and devices for run.json."""
    return dict(
        git_sha=git_sha(),
        python=platform.python_version(),
        platform=platform.platform(),
        jax=jax.__version__,
        flax=flax.__version__,
        optax=optax.__version__,
        orbax=getattr(orbax.checkpoint, "__version__", "unknown"),
        numpy=np.__version__,
        devices=[str(d) for d in jax.devices()],
        backend=jax.default_backend(),
    )


__all__ = [
    "code_versions",
    "atomic_write_bytes",
    "to_jsonable",
    "json_text",
    "write_csv",
    "write_json",
    "write_text",
    "read_json",
    "read_jsonl",
    "append_jsonl",
    "truncate_jsonl",
    "save_npz",
    "log_stderr",
    "git_sha",
    "environment",
]
