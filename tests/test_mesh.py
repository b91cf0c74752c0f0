"""Training on a device mesh: the spec, the sharding rules, and 4 CPU devices (data:4, data:2,fsdp:2) giving the
1-device run's evals, T(B) and probe spectra."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from spectral_jax.data import load_shard_dir, write_dataset
from spectral_jax.errors import UserError
from spectral_jax.mesh import fsdp_axis, parse_mesh
from spectral_jax.train_config import TrainConfig


def test_mesh_spec():
    assert parse_mesh("") == {} and parse_mesh("data:4") == {"data": 4}
    assert parse_mesh(" data:2 , fsdp:4 ") == {"data": 2, "fsdp": 4}
    for bad in ("model:2", "data:0", "data", "data:2,data:2", "data:x"):
        with pytest.raises(UserError, match="expected comma-separated axis:size"):
            parse_mesh(bad)
    with pytest.raises(UserError, match="--mesh='tensor:2'"):
        TrainConfig(mesh="tensor:2")


def test_fsdp_takes_the_largest_divisible_axis():
    assert fsdp_axis((768, 3072), 4) == 1 and fsdp_axis((3072, 768), 4) == 0
    assert fsdp_axis((50257, 768), 4) == 1  # the vocabulary is odd: the width splits
    assert fsdp_axis((6,), 4) is None and fsdp_axis((), 4) is None and fsdp_axis((768, 768), 1) is None


SCRIPT = textwrap.dedent("""
    import dataclasses, json, sys, numpy as np, jax
    from spectral_jax.batch_sweep import ProbeCallback
    from spectral_jax.data import load_shard_dir, write_dataset
    from spectral_jax.models import make_config
    from spectral_jax.records import read_jsonl
    from spectral_jax.train import train
    from spectral_jax.train_config import TrainConfig
    assert jax.device_count() == 4, jax.devices()
    root, out = sys.argv[1], sys.argv[2]
    rng = np.random.default_rng(0)
    starts, steps, lengths = rng.integers(1, 255, 300), rng.integers(1, 4, 300), rng.integers(50, 300, 300)
    docs = [np.concatenate([[0], 1 + (a + b * np.arange(n)) % 255]) for a, b, n in zip(starts, steps, lengths)]
    tokens = np.concatenate(docs).astype(np.uint16)
    write_dataset(root, {"train": tokens[:-16000], "val": tokens[-16000:-8000], "pool": tokens[-8000:]},
                  {"eot_id": 0, "vocab_size": 256})
    data = load_shard_dir(root)
    config = make_config("unet", "tiny", n_layer=2, vocab_size=256, eot_id=0, seq_len=64)
    pool = data.measurement_pool(64, 8, val_tokens=0)
    f32 = config.replace(optim=dataclasses.replace(config.optim, ns_dtype="float32"))
    results = {}
    for mesh, micro, ns in (("data:1", 8, "bf16"), ("data:1", 4, "bf16"), ("data:4", 8, "bf16"),
                            ("data:2,fsdp:2", 8, "bf16"), ("data:1", 2, "f32"), ("data:4", 8, "f32"),
                            ("data:2,fsdp:2", 8, "f32")):
        tc = TrainConfig(batch_size=8, micro_batch=micro, target_loss=4.0, max_tokens=64 * 8 * 12,
                         eval_every_tokens=64 * 8 * 3, val_tokens=64 * 8, eval_batch=4,
                         checkpoint_every_tokens=64 * 8 * 6, schedule_scale=0.05, log_every_seconds=1e9, mesh=mesh)
        probe = ProbeCallback(pool, layers=(-1,), matrices=("final_attn_out",), grad_samples=8, chunk=4,
                              tail=(2, 8), bank=())
        name = (mesh if micro == 8 else f"{mesh} micro{micro}") + ("" if ns == "bf16" else " f32")
        d = f"{out}/{name.replace(':', '').replace(',', '_').replace(' ', '_')}"
        r = train(config if ns == "bf16" else f32, tc, data, d, callbacks=[probe], log=lambda m: None)
        vals = [row["val_loss"] for row in read_jsonl(f"{d}/metrics.jsonl")]
        spectra = {}
        import glob
        for f in sorted(glob.glob(f"{d}/spectra/*.npz")):
            z = np.load(f)
            spectra.update({f"{f.split('/')[-1]}:{k}": z[k].tolist() for k in z.files})
        results[name] = dict(tokens=r["tokens_to_target"], vals=vals, spectra=spectra, status=r["status"])
    print("JSON" + json.dumps(results))
""")


def test_sharded_training_equals_one_device(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "-c", SCRIPT, str(tmp_path / "data"), str(tmp_path / "runs")]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=pathlib.Path(__file__).parent)
    assert out.returncode == 0, out.stderr[-4000:]
    res = json.loads(out.stdout.split("JSON", 1)[1])
    for name, r in res.items():
        assert r["status"] == "reached" and len(r["vals"]) >= 3 and len(r["spectra"]) >= 9, name

    def drift(r, step0: bool, one: dict):
        """(largest relative difference of the val losses, of the probe spectra) from the 1-device run `one`; spectra at
        step 0 only, or else after training, where W_O's weight spectrum (three Muon updates of a zero matrix) is
        too ill-conditioned to compare and is left out."""
        vals = float(np.max(np.abs(np.asarray(r["vals"]) - one["vals"]) / np.asarray(one["vals"])))
        spec = 0.0
        for k, v in one["spectra"].items():
            v = np.asarray(v)
            if k.startswith("step_0000000") != step0 or v.max() <= 0 or (not step0 and "weight/" in k):
                continue
            keep = v >= 1e-6 * v.max()
            spec = max(spec, float(np.max(np.abs(np.asarray(r["spectra"][k])[keep] - v[keep]) / v[keep])))
        return vals, spec

    # Each device of data:4 (and of data:2,fsdp:2) takes 2 rows of every batch: the 1-device run of the same
    # arithmetic is the same tier with 2-row micro-batches. With float32 Newton-Schulz it is the mesh runs' result
    # to float32 rounding: the same T(B), every eval and every probe spectrum within 1e-5.
    one = res["data:1 micro2 f32"]
    for mesh in ("data:4 f32", "data:2,fsdp:2 f32"):
        r = res[mesh]
        assert r["tokens"] == one["tokens"] and set(r["spectra"]) == set(one["spectra"]), mesh
        d = max(drift(r, True, one)[1], *drift(r, False, one))
        print("largest relative difference (val losses, spectra), float32 Newton-Schulz:", mesh, d)
        assert d <= 1e-5, (mesh, d)
    # The default bf16 Newton-Schulz rounds its input to 8 bits: a float32 difference that flips one rounding
    # becomes a 2^-8 relative one, so any change of summation order drifts. Against the plain 1-device run (one
    # 8-row micro-batch) the mesh runs drift no more than 4-row gradient accumulation on one device does.
    one = res["data:1"]
    accum = drift(res["data:1 micro4"], False, one)
    print("drift (val loss, spectra after training): gradient accumulation", accum)
    for mesh in ("data:4", "data:2,fsdp:2"):
        r = res[mesh]
        assert r["tokens"] == one["tokens"] and set(r["spectra"]) == set(one["spectra"]), mesh
        np.testing.assert_allclose(r["vals"][0], one["vals"][0], rtol=1e-6)  # step 0: the forward alone
        assert drift(r, True, one)[1] <= 1e-5, mesh  # the probes of the same model under the mesh
        d = drift(r, False, one)
        print("drift (val loss, spectra after training):", mesh, d)
        assert d[0] <= max(1e-5, 3 * accum[0]) and d[1] <= max(1e-4, 3 * accum[1]), (mesh, d, accum)


def test_a_process_reads_only_its_rows_of_each_batch(tmp_path):
    tokens = (np.arange(20_000) % 250 + 1).astype(np.uint16)
    write_dataset(tmp_path, {"train": tokens, "val": tokens[:3000]}, {"eot_id": 0, "vocab_size": 256})
    data = load_shard_dir(tmp_path)
    whole = data.train_dataset(16, 8, seed=3)
    part = data.train_dataset(16, 8, seed=3, rows=(2, 6))
    for k in (0, 1, 57):
        np.testing.assert_array_equal(part[k], whole[k][2:6])
    with pytest.raises(UserError, match="not a slice"):
        data.train_dataset(16, 8, rows=(6, 10))
