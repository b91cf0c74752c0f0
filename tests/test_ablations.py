"""Every ablation end to end at reduced budgets: summary keys, figures, the data-split JS checks, CLI errors.

One probe sweep (tiers 1, 2, 4) serves layerwise, probe_matrices and seed_control (module-scoped fixture); the
Adam-vs-Muon sweeps run tiers 1, 2. Budgets are the batch-sweep test's, with a higher target (7.5). The sweep-based
tests are `slow` (about 4 CPU-minutes together); the default suite runs the entry point end to end through the
data_split subcommand and its error path."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from spectral_jax import ablations
from spectral_jax.ablations import AblationConfig
from spectral_jax.data import load_data, write_dataset
from spectral_jax.presets import ProbeOverrides
from spectral_jax.train_config import TrainOverrides

PNG = b"\x89PNG\r\n\x1a\n"
TRAIN = TrainOverrides(
    target_loss=7.5,
    max_tokens=12_288,
    eval_every_tokens=2_048,
    val_tokens=2_048,
    probe_every_evals=1,
    checkpoint_every_tokens=1 << 30,
    micro_batch=1,
)


def quiet(_msg):
    pass


def _cfg(out, **kw):
    base = dict(
        out=str(out),
        tiers=(1, 2, 4),
        batch=1,
        seeds=(42, 43),
        probe=ProbeOverrides(pool_sequences=8, grad_samples=8),
        split_sequences=4,
        train=TRAIN,
    )
    return AblationConfig(**{**base, **kw})


def _pngs(directory, summary):
    assert summary["figures"], "every ablation writes at least one figure"
    for name in summary["figures"]:
        assert (directory / name).read_bytes()[:8] == PNG, name


def _finite(v):
    return v is not None and math.isfinite(v)


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return tmp_path_factory.mktemp("ablations")


@pytest.fixture(scope="module")
def layerwise(out):
    return ablations.layerwise(_cfg(out), log=quiet)


@pytest.mark.slow
def test_layerwise_rho_per_block(out, layerwise):
    s = json.loads((out / "layerwise" / "summary.json").read_text())
    assert s["ablation"] == "layerwise" and [r["layer"] for r in s["layers"]] == list(range(8))
    sweep = json.loads((out / "probe_sweep" / "summary.json").read_text())
    assert all(t["status"] == "reached" for t in sweep["tiers"]), "every tier must reach the reduced target"
    for row in s["layers"]:
        assert row["n"] == 3 and set(row["early_alpha_tail"]) == {"1", "2", "4"}
        assert all(_finite(v) and v > 0 for v in row["early_alpha_tail"].values())
        assert row["rho"] is None or -1 <= row["rho"] <= 1
    # the deepest layer's row is the batch sweep's own early prediction (same records, same rule)
    assert s["layers"][-1]["rho"] == sweep["spearman_within"]
    assert [r["early_alpha_tail"] for r in sweep["tiers"]] == list(s["layers"][-1]["early_alpha_tail"].values())
    _pngs(out / "layerwise", s)
    index = json.loads((out / "summary.json").read_text())
    assert index["ablations"]["layerwise"]["summary"] == "layerwise/summary.json"


@pytest.mark.slow
def test_probe_matrices_reuse_the_sweep_and_cover_four_matrices(out, layerwise):
    results = out / "probe_sweep" / "tier_B1" / "result.json"
    mtime = results.stat().st_mtime_ns
    s = ablations.probe_matrices(_cfg(out), log=quiet)
    assert results.stat().st_mtime_ns == mtime, "the shared sweep must not be retrained"
    assert [m["matrix"] for m in s["matrices"]] == ["attn_out", "attn_q", "attn_v", "mlp_out"]
    assert s["note"] and "grad_samples 8" in s["note"]  # M = 8 < 17: gradient alpha_tail is undefined
    for m in s["matrices"]:
        assert set(m) >= {"alpha_tail", "rankme", "matched_loss", "layer"} and m["layer"] == 7
        assert m["alpha_tail"]["n"] == 0
        assert len(m["matched_loss"]) == 3
        assert all(_finite(r["rankme"]) and 1 <= r["rankme"] <= 8 for r in m["matched_loss"])
    wo = s["matrices"][0]["rankme"]
    assert all(_finite(v) for v in wo["early"].values()) and wo["n"] == 3
    assert sorted(s["figures"]) == [f"gradient_spectra_{m}.png" for m in ("attn_out", "attn_q", "attn_v", "mlp_out")]
    _pngs(out / "probe_matrices", s)


@pytest.mark.slow
def test_seed_control_compares_seed_spread_with_tier_separation(out, layerwise):
    s = ablations.seed_control(_cfg(out), log=quiet)
    assert [r["seed"] for r in s["per_seed"]] == [42, 43]
    assert s["per_seed"][0]["dir"].endswith("probe_sweep/tier_B1"), "seed 42 at B=1 is the sweep's own run"
    assert (out / "seed_control" / "seed_43" / "tier_B1" / "result.json").is_file()
    vals = [r["early_alpha_tail"] for r in s["per_seed"]]
    assert all(_finite(v) for v in vals) and vals[0] != vals[1], "another init seed gives another spectrum"
    stats = s["early_alpha_tail"]
    assert stats["seed_std"] == pytest.approx(np.std(vals, ddof=1))
    tier_vals = [t["early_alpha_tail"] for t in s["tiers"]]
    assert stats["tier_range"] == pytest.approx(max(tier_vals) - min(tier_vals))
    assert stats["std_ratio_seed_over_tier"] == pytest.approx(stats["seed_std"] / stats["tier_std"])
    assert s["matched_loss_js"], "seed and tier runs share a loss range"
    for row in s["matched_loss_js"]:
        assert len(row["seed_js"]) == 1 and len(row["tier_js"]) == 3
        assert all(v >= 0 for v in row["seed_js"] + row["tier_js"])
    assert _finite(s["js_ratio_seed_over_tier"])
    _pngs(out / "seed_control", s)


def _foreign_source(directory):
    """A shard directory of uniformly random GPT-2 ids, tokenised 'like' the embedded corpus."""

    meta = {k: v for k, v in load_data().metadata.items() if k in ("tokenizer", "vocab_sha256", "eot_id", "vocab_file")}
    rng = np.random.default_rng(0)
    write_dataset(
        directory,
        {s: rng.integers(0, 50257, 30_000).astype(np.uint16) for s in ("train", "val", "pool")},
        dict(meta, source="random"),
    )
    return str(directory)


@pytest.mark.slow
def test_data_split_js_is_zero_on_itself_and_large_on_another_source(out, layerwise, tmp_path):
    tier = out / "probe_sweep" / "tier_B2"
    same = ablations.data_split_js(
        _cfg(tmp_path / "same", data_a="embedded:pool", data_b="embedded:pool", model_dir=str(tier)), log=quiet
    )
    assert same["model"]["kind"] == "checkpoint" and same["model"]["step"] > 0
    assert same["js_a_vs_b"] < 1e-9 and same["js_floor_a"] > 1e-6
    other = ablations.data_split_js(
        _cfg(tmp_path / "other", data_a="embedded:pool", data_b=_foreign_source(tmp_path / "random") + ":val"),
        log=quiet,
    )
    assert other["model"]["kind"] == "init"
    assert other["js_a_vs_b"] > 3 * max(other["js_floor_a"], other["js_floor_b"])
    assert len(other["layers"]) == 8
    _pngs(tmp_path / "other" / "data_split", other)
    with pytest.raises(FileNotFoundError, match="not a trained run directory"):
        ablations.data_split_js(_cfg(tmp_path / "bad", model_dir=str(tmp_path)), log=quiet)


@pytest.mark.slow
def test_adam_vs_muon(tmp_path):
    s = ablations.adam_vs_muon(_cfg(tmp_path, tiers=(1, 2)), log=quiet)
    assert set(s["families"]) == {"lswa", "lswa_adam"}
    for fam in s["families"].values():
        assert [r["batch"] for r in fam["tiers"]] == [1, 2]
        assert all(r["status"] == "reached" and r["tokens_to_target"] > 0 for r in fam["tiers"])
        assert min(r["eps_tok"] for r in fam["tiers"]) == 1.0
    for row in s["token_ratio"]:
        assert row["ratio_adam_over_muon"] == pytest.approx(row["tokens_adam"] / row["tokens_muon"])
    assert set(s["spearman_across"]["within"]) == {"lswa", "lswa_adam"}
    assert (tmp_path / "adam_vs_muon" / "lswa" / "summary.json").is_file()
    assert "tokens_vs_batch.png" in s["figures"]
    _pngs(tmp_path / "adam_vs_muon", s)


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "experiments.ablations", *args], capture_output=True, text=True, timeout=300
    )


def test_cli_unknown_subcommand_exits_2(tmp_path):
    proc = _cli("nope", f"--out={tmp_path}")
    assert proc.returncode == 2
    err = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "nope" in err[0] and "adam_vs_muon" in err[0]
    assert not any(tmp_path.iterdir())


def test_cli_data_split_writes_summary_and_figure(tmp_path):
    proc = _cli("data_split", f"--out={tmp_path}", "--split_sequences=2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    index = json.loads((tmp_path / "summary.json").read_text())
    s = json.loads((tmp_path / "data_split" / "summary.json").read_text())
    assert s["data_a"] == "embedded:val" and s["data_b"] == "embedded:pool" and s["model"]["kind"] == "init"
    assert index["ablations"]["data_split"]["js_a_vs_b"] == s["js_a_vs_b"] > 0
    assert (tmp_path / "data_split" / "spectra_a_vs_b.png").read_bytes()[:8] == PNG
