"""Fault injection: kill -9 the main job at random moments, rerun, and compare every record with an uninterrupted
run (slow: several sweeps through the CLI)."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

FLAGS = [
    "--tiers=1,2",
    "--lr=sqrt",
    "--target_loss=6.5",
    "--max_tokens=12288",
    "--eval_every_tokens=2048",
    "--val_tokens=2048",
    "--checkpoint_every_tokens=4096",
    "--probe_every_evals=1",
    "--pool_sequences=8",
    "--grad_samples=8",
    "--micro_batch=1",
]
# fields that differ between identical runs: timings, the code version, the output path
VOLATILE = {
    "throughput_tokens_per_s",
    "elapsed_train_s",
    "timed_tokens",
    "timed_seconds",
    "git_sha",
    "build_seconds",
    "out",
}


def _cmd(out):
    return [sys.executable, "-m", "experiments.batch_sweep", f"--out={out}", *FLAGS]


def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _records(out):
    """Every record of a sweep directory, timing fields removed; spectra as arrays."""
    recs = {}
    for path in sorted(out.rglob("*")):
        rel = str(path.relative_to(out))
        if not path.is_file() or "checkpoints" in rel or path.name in (".lock", "run.json") or path.suffix == ".png":
            continue
        if path.suffix == ".jsonl":
            recs[rel] = [_strip(json.loads(line)) for line in path.read_text().splitlines()]
        elif path.suffix == ".json":
            recs[rel] = _strip(json.loads(path.read_text()))
        elif path.suffix == ".npz":
            with np.load(path) as z:
                recs[rel] = {k: z[k].tobytes() for k in z.files}
    return recs


@pytest.mark.slow
def test_kill_9_at_random_moments_then_rerun_gives_the_uninterrupted_records(tmp_path):
    ref, run = tmp_path / "ref", tmp_path / "run"
    subprocess.run(_cmd(ref), check=True, capture_output=True, timeout=900)
    rng = random.Random(int(os.environ.get("FAULT_SEED", "0")))
    kills = 0
    for _ in range(5):
        proc = subprocess.Popen(_cmd(run), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(4.0, 25.0))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    done = subprocess.run(_cmd(run), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    assert kills >= 2, "the sweep finished before it could be interrupted; lengthen it"
    a, b = _records(ref), _records(run)
    assert sorted(a) == sorted(b)
    for rel in a:
        assert a[rel] == b[rel], rel


def test_a_full_disk_is_one_line_exit_2_and_leaves_no_debris(tmp_path):
    """The main job on a 20 MB tmpfs: the first checkpoint does not fit. Skipped where tmpfs cannot be mounted."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        flags = [f if not f.startswith("--tiers") else "--tiers=1" for f in FLAGS]
        cmd = [sys.executable, "-m", "experiments.batch_sweep", f"--out={disk / 'out'}", *flags]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 2, proc.stderr[-3000:]
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "no space left on the device while writing" in errors[0]
        assert "Traceback" not in proc.stderr
        assert not [p for p in disk.rglob("*") if "tmp" in p.name], "temporary files left behind"
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)
