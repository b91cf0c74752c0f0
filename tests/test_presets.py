"""Presets: one object per size, looked up by name everywhere; a new preset is one register_preset call."""

import dataclasses
import json

import pytest

from spectral_jax import spectra
from spectral_jax.batch_sweep import SweepConfig, run_batch_sweep
from spectral_jax.chain import ChainConfig
from spectral_jax.models import make_config
from spectral_jax.presets import (
    ModelDims,
    Preset,
    ProbeConfig,
    ProbeOverrides,
    get_preset,
    preset_names,
    register_preset,
    unregister_preset,
)
from spectral_jax.train_config import TrainOverrides

SMALL = Preset(
    "small_test",
    ModelDims(
        4,
        2,
        32,
        prefix_seq_len=64,
        trunk_seq_len=128,
        attn_block_size=16,
        window_min=8,
        window_max=64,
        window_quantum=8,
        fixed_window=64,
        compute_dtype="float32",
        fp8_grad_scale=float(2**16),
        vocab_size=8192,
        eot_id=0,
    ),
    get_preset("tiny").train.replace(
        target_loss=8.5,
        max_tokens=2_048,
        eval_every_tokens=512,
        val_tokens=512,
        checkpoint_every_tokens=1 << 30,
        probe_every_evals=1,
    ),
    ProbeConfig(pool_sequences=8, grad_samples=8, chunk=8),
    local_windows=((2, 8), (8, 17)),
    batch_tiers=(2, 4),
)


@pytest.fixture
def small():
    """SMALL registered for one test. Under xdist the seeded-sweep session fixture (conftest) may already hold it
    registered on this worker; it is then left registered for that fixture's later users."""
    held = SMALL.name in preset_names()
    register_preset(SMALL, replace=held)
    yield SMALL
    if not held:
        unregister_preset(SMALL.name)


def test_builtin_presets_and_derived_windows():
    assert preset_names()[:5] == ("tiny", "small", "d12", "d36", "d48")
    tiny = get_preset("tiny")
    assert tiny.tail_window == spectra.scaled_tail_window(64) == (8, 17)
    assert [get_preset(p).tail_window for p in ("d12", "d36", "d48")] == [(100, 200), (200, 400), (400, 800)]
    assert make_config("betterwin", "tiny").seq_len == tiny.model.trunk_seq_len
    with pytest.raises(ValueError, match="unknown preset 'nope'; choose one of"):
        get_preset("nope")
    with pytest.raises(ValueError, match="already exists"):
        register_preset(tiny)


def test_overrides_change_only_the_fields_they_set():
    tiny = get_preset("tiny")
    changed = TrainOverrides(target_loss=4.0, seed=7).apply(tiny.train)
    assert changed == dataclasses.replace(tiny.train, target_loss=4.0, seed=7)
    assert ProbeOverrides().apply(tiny.probe) == tiny.probe
    assert SweepConfig(train=TrainOverrides(max_tokens=10)).train_config().max_tokens == 10


def test_a_new_preset_is_one_object_and_every_layer_reads_it(small, tmp_path):
    """Registering SMALL is the whole change: model dims, training budget, probe sizes, windows and tiers all
    come from it, through the same library calls the entry points make."""
    cfg = make_config("betterwin", "small_test")
    assert (cfg.n_layer, cfg.d_model, cfg.seq_len, cfg.window_max) == (4, 64, 128, 64)
    assert spectra.tail_window("small_test") == spectra.scaled_tail_window(64)
    sweep = SweepConfig(
        preset="small_test", tiers=(2,), lr="sqrt", out=str(tmp_path), train=TrainOverrides(micro_batch=2)
    )
    assert sweep.train_config().max_tokens == 2_048 and sweep.probe_config().grad_samples == 8
    summary = run_batch_sweep(sweep, log=lambda m: None)
    record = json.loads((tmp_path / "sweep.json").read_text())
    assert record["model"]["n_layer"] == 4 and record["probe"] == dict(pool_sequences=8, grad_samples=8, chunk=8)
    assert record["local_windows"] == [[2, 8], [8, 17]] and record["tail_window"] == [8, 17]
    assert summary["preset"] == "small_test" and summary["tiers"][0]["steps"] <= 2_048 // (2 * 128)
    assert (tmp_path / "tier_B2" / "spectra").is_dir()


def test_the_tiny_sweep_regime_gives_every_tier_30_steps_before_its_early_points():
    """What the main job's defaults promise, checked on the preset itself: the fixed-tokens point is >= 30 steps
    of the largest tier, and evals and checkpoints fall on whole steps of every tier (a common token cadence)."""
    for tokenizer in ("gpt2", "bytes"):
        cfg = SweepConfig(tokenizer=tokenizer)
        tc, T = cfg.train_config(), make_config(cfg.family, cfg.preset, **cfg.model_changes()).seq_len
        assert cfg.tiers == (1, 2, 3, 4, 6, 8) and T == 256
        assert cfg.early_defaults()[0] >= 30 * max(cfg.tiers) * T
        for b in cfg.tiers:
            assert tc.eval_every_tokens % (b * T) == 0 and tc.checkpoint_every_tokens % (b * T) == 0
    gpt2, raw = SweepConfig().train_config(), SweepConfig(tokenizer="bytes").train_config()
    assert gpt2.target_loss == 2.85 and raw.target_loss < gpt2.target_loss
    assert SweepConfig(tokenizer="bytes").out_dir().name == "betterwin_tiny_bytes"
    assert SweepConfig(train=TrainOverrides(target_loss=3.0)).train_config().target_loss == 3.0
    # the chain and ablations keep the preset's own training config
    assert ChainConfig().train_config() == get_preset("tiny").train
