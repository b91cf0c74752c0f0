"""Seeds: the bootstrap over seeds against a direct enumeration, and a seeded sweep end to end on a small preset."""

import itertools
import json

import numpy as np
import pytest
from scipy import stats

from spectral_jax.batch_sweep import SweepConfig, format_seeds_table, run_batch_sweep, seed_configs, summarize_seeds
from spectral_jax.batch_sweep.seeds import seed_bootstrap
from tests.test_presets import SMALL


def _rho(alpha, T):
    eps = np.asarray(T) / np.min(T)
    return stats.spearmanr(alpha, eps).statistic


def test_bootstrap_interval_is_the_percentiles_over_resampled_seeds():
    """Two seeds: every resample is (0,0), (0,1), (1,0) or (1,1); the interval's ends are among their rhos."""
    T = np.array([[100.0, 120.0, 150.0, 200.0], [100.0, 90.0, 160.0, 150.0]])
    alpha = np.array([[1.0, 2.0, 3.0, 4.0], [4.0, 1.0, 2.0, 3.0]])
    out = seed_bootstrap(T, alpha, [1, 2, 4, 8], draws=4000)
    assert out["rho_of_means"] == pytest.approx(_rho(alpha.mean(0), T.mean(0)))
    draws = itertools.product((0, 1), repeat=2)
    possible = {round(_rho(alpha[list(i)].mean(0), T[list(i)].mean(0)), 12) for i in draws}
    lo, hi = out["ci95"]
    assert round(lo, 12) == min(possible) and round(hi, 12) == max(possible)
    assert out["rho_vs_batch_of_means"] == pytest.approx(stats.spearmanr(alpha.mean(0), [1, 2, 4, 8]).statistic)
    # identical seeds: no spread, the interval collapses onto rho
    same = seed_bootstrap(np.repeat(T[:1], 3, 0), np.repeat(alpha[:1], 3, 0), [1, 2, 4, 8])
    assert same["rho_of_means"] == pytest.approx(1.0) and same["ci95"] == pytest.approx([1.0, 1.0])


def test_seed_configs_offset_init_and_data_order(tmp_path):
    cfg = SweepConfig(out=str(tmp_path), seeds=3)
    runs = seed_configs(cfg)
    assert [d.name for d, _ in runs] == ["seed0", "seed1", "seed2"]
    base = cfg.train_config()
    assert [(t.seed, t.data_seed) for _, t in runs] == [(base.seed + k, base.data_seed + k) for k in range(3)]
    assert seed_configs(SweepConfig(out=str(tmp_path)))[0][0] == tmp_path
    with pytest.raises(ValueError, match="--seeds must be >= 1"):
        seed_configs(SweepConfig(out=str(tmp_path), seeds=0))


@pytest.fixture(scope="module")
def seeded(seeded_sweep):
    return seeded_sweep


def test_seeded_sweep_summarises_mean_spread_and_intervals(seeded):
    cfg, out, summary = seeded
    for k in range(2):
        run = json.loads((out / f"seed{k}" / "tier_B2" / "run.json").read_text())
        assert (run["train"]["seed"], run["train"]["data_seed"]) == (SMALL.train.seed + k, SMALL.train.data_seed + k)
        assert (out / f"seed{k}" / "summary.json").is_file()
    assert summary["kind"] == "seeded_batch_sweep" and summary["seeds"] == ["seed0", "seed1"]
    per_seed = [json.loads((out / f"seed{k}" / "summary.json").read_text()) for k in range(2)]
    for j, tier in enumerate(summary["tiers"]):
        T = [s["tiers"][j]["tokens_to_target_interpolated"] for s in per_seed]
        stat = tier["tokens_to_target_interpolated"]
        assert stat["values"] == pytest.approx(T) and stat["mean"] == pytest.approx(np.mean(T))
        assert stat["sd"] == pytest.approx(np.std(T, ddof=1))
    assert per_seed[0]["tiers"][0]["final_val_loss"] != per_seed[1]["tiers"][0]["final_val_loss"]
    for kind, e in summary["early_points"].items():
        assert all(t["early"][kind]["alpha_tail"]["n"] == 2 for t in summary["tiers"]), kind
        assert e["rho_per_seed"] == [s["early_points"][kind]["rho"] for s in per_seed]
        assert {"rho_of_means", "ci95", "rho_vs_batch_of_means", "ci95_vs_batch"} <= set(e)
    for name in ("seeds_tokens_to_target.png", "seeds_early_alpha_vs_eps_tok.png"):
        assert (out / name).stat().st_size > 10_000
    table = format_seeds_table(summary)
    assert "mean +- sd over seeds" in table and "rho vs B" in table


def test_seeded_summary_rebuilds_from_records_and_through_report(seeded):
    cfg, out, summary = seeded
    again = summarize_seeds(out, log=lambda m: None)
    assert json.dumps(again, sort_keys=True) == json.dumps(summary, sort_keys=True)
    # a rerun reuses every finished tier of every seed
    logs = []
    run_batch_sweep(cfg, log=logs.append)
    assert sum("already finished" in m for m in logs) == 6
