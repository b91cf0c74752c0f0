"""One writer per results directory: an advisory lock file (`<dir>/.lock`) holding the writer's pid and host.

The lock is `fcntl.flock` on that file, so the operating system releases it when the process dies however it dies
(kill -9 included); a lock file left by a dead process is therefore not held, and the next run takes it over and
says so. flock is per host: two hosts writing one network directory are not excluded (see BUILD_NOTES).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pathlib
import socket
import time
from collections.abc import Callable, Iterator

from spectral_jax import distributed
from spectral_jax.errors import UserError

LOCK_NAME = ".lock"


def _holder_text() -> str:
    return f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"


@contextlib.contextmanager
def results_lock(directory: str | os.PathLike, log: Callable[[str], None] | None = None) -> Iterator[pathlib.Path]:
    """Hold `directory`'s lock for the block (creating the directory); UserError naming the holder when another
    live process holds it."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if not distributed.is_primary():  # one run of several processes: process 0 holds the lock for all
        yield directory / LOCK_NAME
        return
    path = directory / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
            raise UserError(
                f"{directory} is being written by another run ({holder}); wait for it to finish, or pass another --out"
            ) from None
        stale = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        if stale and log is not None:
            log(f"{directory}: taking over the lock left by a run that ended without releasing it ({stale})")
        os.ftruncate(fd, 0)
        os.pwrite(fd, (_holder_text() + "\n").encode(), 0)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


__all__ = ["results_lock", "LOCK_NAME"]
