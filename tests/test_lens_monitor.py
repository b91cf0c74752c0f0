"""SpectralMonitor inside plain optax loops on models we did not write: cadence, flat scalars, records on disk,
reading back instead of recomputing, refusing other settings, figures; and the runnable example, end to end."""

import pathlib
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest
from flax import nnx
from user_models import TinyLM, lm_loss

import spectral_jax as sj
from spectral_jax.errors import UserError
from spectral_jax.records import read_jsonl

ROOT = pathlib.Path(__file__).resolve().parents[1]
V, T = 64, 16


def _train(monitor, steps=4):
    """A plain optax loop over an NNX model's state; the monitor gets the merged module at every step."""
    model = TinyLM(vocab=V, seq=T)
    graphdef, state = nnx.split(model)
    opt = optax.adam(1e-2)
    opt_state = opt.init(state)
    rng = np.random.default_rng(0)

    @jax.jit
    def step_fn(state, opt_state, windows):
        loss_fn = lambda s: jax.vmap(lambda w: lm_loss(nnx.merge(graphdef, s), w))(windows).mean()  # noqa: E731
        grads = jax.grad(loss_fn)(state)
        updates, opt_state = opt.update(grads, opt_state, state)
        return optax.apply_updates(state, updates), opt_state

    logged = {}
    for step in range(steps + 1):
        scalars = monitor(step, nnx.merge(graphdef, state))
        if scalars:
            logged[step] = scalars
        state, opt_state = step_fn(state, opt_state, rng.integers(0, V, (4, T + 1)).astype(np.int32))
    return logged


def _probes():
    windows = np.random.default_rng(1).integers(0, V, (8, T + 1)).astype(np.int32)
    return [
        sj.ActivationProbe([windows[:4, :-1], windows[4:, :-1]], where=r"^blocks/\d+$"),
        sj.GradientProbe(lm_loss, windows, where="blocks/1/down/kernel", chunk=4),
        sj.WeightProbe(where="down/kernel"),
    ]


def test_monitor_in_an_optax_loop(tmp_path, monkeypatch):
    monitor = sj.SpectralMonitor(_probes(), every=2, out_dir=tmp_path)
    logged = _train(monitor)
    assert sorted(logged) == [0, 2, 4]
    keys = logged[2]
    assert "spectra/activation/blocks/1/alpha_tail" in keys
    assert "spectra/gradient/blocks/1/down/kernel/rankme" in keys
    assert "spectra/weight/blocks/0/down/kernel/stable_rank" in keys
    assert all(isinstance(v, float) and np.isfinite(v) for v in keys.values())
    rows = read_jsonl(tmp_path / "spectra.jsonl")
    assert len(rows) == 3 * (2 + 1 + 2) and {r["step"] for r in rows} == {0, 2, 4}
    raw = monitor.spectra(2)
    assert set(raw) == {
        "activation/blocks/0",
        "activation/blocks/1",
        "gradient/blocks/1/down/kernel",
        "weight/blocks/0/down/kernel",
        "weight/blocks/1/down/kernel",
    }
    assert raw["activation/blocks/0"].shape == (32,) and raw["gradient/blocks/1/down/kernel"].shape == (8,)
    pngs = monitor.save_figures()
    names = {p.name for p in pngs}
    assert names == {"metrics.png", "activation_spectra.png", "gradient_spectra.png", "weight_spectra.png"}

    # the same settings again: recorded steps are read back, not recomputed
    again = sj.SpectralMonitor(_probes(), every=2, out_dir=tmp_path)
    monkeypatch.setattr(sj.GradientProbe, "run", lambda self, model: pytest.fail("recomputed a recorded step"))
    assert again(2, TinyLM(vocab=V, seq=T)) == logged[2]
    assert again(3, None) == {}
    # other settings: refused, nothing written
    with pytest.raises(UserError, match="other monitor settings .*every"):
        sj.SpectralMonitor(_probes(), every=3, out_dir=tmp_path)
    assert len(read_jsonl(tmp_path / "spectra.jsonl")) == len(rows)


def test_monitor_bad_arguments():
    with pytest.raises(UserError, match="at least one probe"):
        sj.SpectralMonitor([], every=2)
    with pytest.raises(UserError, match="positive"):
        sj.SpectralMonitor(_probes(), every=0)
    with pytest.raises(UserError, match="exactly one of where"):
        sj.ActivationProbe([np.zeros((2, 4), np.int32)])
    with pytest.raises(UserError, match="out_dir"):
        sj.SpectralMonitor(_probes()).spectra(0)


def test_example_optax_loop_runs(tmp_path):
    pytest.importorskip("transformers")
    cmd = [sys.executable, str(ROOT / "examples" / "probe_optax_loop.py"), "--steps=4", "--every=2", "--n_layer=1"]
    cmd += ["--n_embd=32", "--seq_len=32", "--probe_sequences=16", f"--out={tmp_path}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "spectra at step 4" in out.stdout and (tmp_path / "metrics.png").is_file()
    kinds = {r["kind"] for r in read_jsonl(tmp_path / "spectra.jsonl")}
    assert kinds == {"activation", "gradient", "weight"}
