"""Entry-point plumbing: user errors are one line and exit 2, bugs keep their traceback, bad flags exit 2."""

import errno
import subprocess
import sys

import pytest

from experiments._cli import user_errors_exit_2
from spectral_jax.errors import CorruptRecordError, UserError
from spectral_jax.train import TrainingDiverged


def _run(exc):
    @user_errors_exit_2
    def main(argv):
        raise exc

    return main


@pytest.mark.parametrize(
    "exc",
    [
        UserError("bad --tiers"),
        CorruptRecordError("x.jsonl:2: corrupt"),
        TrainingDiverged("loss is nan"),
        FileNotFoundError("no such directory"),
        OSError(errno.ENOSPC, "No space left on device", "/full/disk/file"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(exc, capsys):
    with pytest.raises(SystemExit) as stop:
        _run(exc)(["prog"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        assert "no space left on the device while writing /full/disk/file" in err[0]


@pytest.mark.parametrize("exc", [ValueError("an internal bug"), KeyError("step"), OSError(errno.EIO, "I/O error")])
def test_anything_else_is_a_bug_and_keeps_its_traceback(exc):
    with pytest.raises(type(exc)):
        _run(exc)(["prog"])


def test_a_bad_flag_is_one_line_and_exit_2():
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.batch_sweep", "--nosuchflag"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    err = [line for line in proc.stderr.splitlines() if line.strip()]
    assert err == ["error: Unknown command line flag 'nosuchflag'; see --help"]
