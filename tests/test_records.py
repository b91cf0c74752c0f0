"""Results files: JSONL tolerates only a torn final line; anything else is a one-line error naming file and line."""

import os
import signal
import subprocess
import sys

import pytest

from spectral_jax.batch_sweep import SweepConfig, run_batch_sweep
from spectral_jax.errors import CorruptRecordError, UserError
from spectral_jax.lock import LOCK_NAME, results_lock
from spectral_jax.records import append_jsonl, read_jsonl, write_csv


def test_csv_cells(tmp_path):
    rows = [dict(a=1, b=float("nan"), c=0.123456789, extra="left out"), dict(a=None, b=2.0, c=float("inf"))]
    write_csv(tmp_path / "t.csv", rows, ("a", "b", "c"), digits=3)
    assert (tmp_path / "t.csv").read_text() == "a,b,c\n1,,0.123\n,2,\n"
    write_csv(tmp_path / "t.csv", rows[:1])  # columns from the first row; repr floats
    assert (tmp_path / "t.csv").read_text() == "a,b,c,extra\n1,,0.123456789,left out\n"
    assert not list(tmp_path.glob(".*tmp")), "written atomically"


def test_a_torn_final_line_is_dropped_and_cut_before_the_next_append(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 0}\n{"step": 3}\n{"ste')
    assert read_jsonl(path) == [{"step": 0}, {"step": 3}]
    append_jsonl(path, {"step": 6})
    assert path.read_text() == '{"step": 0}\n{"step": 3}\n{"step": 6}\n'
    # a complete-looking last line without its newline is also a torn append
    path.write_text('{"step": 0}\n{"step": 3}')
    assert read_jsonl(path) == [{"step": 0}]
    assert read_jsonl(tmp_path / "missing.jsonl") == []


@pytest.mark.parametrize("bad", ["garbage", "3", "[1, 2]", '{"step": 1'])
def test_a_bad_line_before_the_last_is_an_error_naming_file_and_line(tmp_path, bad):
    path = tmp_path / "probes.jsonl"
    path.write_text(f'{{"step": 0}}\n{bad}\n{{"step": 6}}\n')
    with pytest.raises(CorruptRecordError, match=r"probes\.jsonl:2: .*corrupt") as err:
        read_jsonl(path)
    assert isinstance(err.value, UserError) and isinstance(err.value, ValueError) and "\n" not in str(err.value)


def test_one_writer_per_results_directory(tmp_path):
    """A second run on a directory that a live process holds refuses with the holder named; a lock file left by a
    process that died (kill -9) is taken over with a message."""
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(UserError, match=rf"{out} is being written by another run \(pid {holder.pid} on "):
        run_batch_sweep(SweepConfig(out=str(out), lr="sqrt"), log=lambda m: None)
    holder.send_signal(signal.SIGKILL)
    holder.communicate()
    logs = []
    with results_lock(out, logs.append):
        assert (out / LOCK_NAME).read_text().startswith(f"pid {os.getpid()} on ")
    assert (
        len(logs) == 1
        and f"taking over the lock left by a run that ended without releasing it (pid {holder.pid}" in logs[0]
    )
    with results_lock(out, logs.append):  # released cleanly last time: no message
        pass
    assert len(logs) == 1


HOLD = """
import sys, time
from spectral_jax.lock import results_lock
with results_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""
