"""The seeded study (spectral_jax.study, experiments/study.py) on a test-sized seeded sweep with a progress grid:
every point at its exact step, alpha against a float64 NumPy fit, rho and ANOVA against direct computation, and
the files it writes."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from spectral_jax.batch_sweep.early import progress_steps
from spectral_jax.batch_sweep.records import load_sweep
from spectral_jax.batch_sweep.seeds import seed_bootstrap
from spectral_jax.study import analysis
from spectral_jax.study.decisions import decision_row, summarize_decisions
from spectral_jax.study.points import PAST_HEAD, load_seeded_sweep, points, spectrum, statistics, windows
from spectral_jax.study.report import parse_sweeps, write_study


@pytest.fixture(scope="module")
def seeded(seeded_sweep):
    return seeded_sweep[1]


def test_points_sit_at_their_exact_steps(seeded):
    sweep = load_seeded_sweep(seeded)
    assert len(sweep.seeds) == 2 and sweep.batches == [1, 2, 4]
    pts = points(sweep)
    assert {p.series for p in pts} == {"activation/L1", "activation/L3", "gradient/L3.attn_out"}
    for p in pts:
        tier = sweep.tiers[p.seed][p.batch]
        if p.definition in ("fraction", "loss"):
            kind = f"{p.definition}@{p.value:g}"
            assert progress_steps(tier, fractions=(p.value,), losses=(p.value,))[kind] == p.step
        else:
            assert p.tokens == p.value
        assert p.step > 0


def test_statistics_match_a_float64_numpy_fit(seeded):
    sweep = load_seeded_sweep(seeded)
    p = points(sweep)[0]
    v = spectrum(sweep, p)
    wins = windows(sweep, v.size)
    got = statistics(v, wins)
    lam = np.sort(np.asarray(v, np.float64))[::-1]
    lam = lam / lam.sum()
    for lo, hi in wins:
        r = np.arange(lo, hi + 1)
        slope = np.polyfit(np.log(r), np.log(lam[lo - 1 : hi]), 1)[0]
        assert got[f"alpha[{lo},{hi}]"] == pytest.approx(-slope, rel=1e-9)
    q = lam[lam > 0]
    rankme = np.exp(-np.sum(q * np.log(q)))
    assert got["rankme"] == pytest.approx(rankme, rel=1e-9)
    start = int(np.ceil(2 * rankme))
    if lam.size - start + 1 >= 4:
        r = np.arange(start, lam.size + 1)
        assert got[PAST_HEAD] == pytest.approx(-np.polyfit(np.log(r), np.log(lam[start - 1 :]), 1)[0], rel=1e-9)
    else:
        assert np.isnan(got[PAST_HEAD])


def test_rho_and_anova_equal_direct_computation(seeded):
    sweep = load_seeded_sweep(seeded)
    rows = analysis.measurements(sweep, log=lambda m: None)
    rho = analysis.rho_vs_progress(sweep, rows)
    r = next(x for x in rho if x["definition"] == "fraction" and x["statistic"] == "rankme")
    sel = [x for x in rows if all(x[k] == r[k] for k in ("definition", "value", "series", "statistic"))]
    x_SxB = np.full((2, 3), np.nan)
    for m in sel:
        x_SxB[m["seed"], [1, 2, 4].index(m["batch"])] = m["x"]
    direct = seed_bootstrap(sweep.tokens_to_target(), x_SxB, [1, 2, 4])
    assert r["rho"] == pytest.approx(direct["rho_of_means"], nan_ok=True)
    assert r["n_seeds"] == 2 and r["min_step"] == min(m["step"] for m in sel)
    matched = analysis.matched_loss(rows)
    for m in matched:
        sel = [x for x in rows if x["definition"] == "loss" and x["value"] == m["loss"] and x["series"] == m["series"]]
        sel = [x for x in sel if x["statistic"] == m["statistic"] and np.isfinite(x["x"])]
        groups = [[x["x"] for x in sel if x["batch"] == b] for b in sorted({x["batch"] for x in sel})]
        groups = [g for g in groups if len(g) > 1]
        if len(groups) >= 2 and any(np.ptp(g) > 0 for g in groups):
            assert m["anova_F"] == pytest.approx(stats.f_oneway(*groups).statistic, rel=1e-9)


def test_forecast_cells_count_against_the_exact_spearman_null():
    assert analysis._null_share(3, 1.0) == pytest.approx(1 / 6)
    assert analysis._null_share(4, 0.8) == pytest.approx(4 / 24)  # rho 1 (one order) and 0.8 (three of 24)
    rows = [
        dict(definition="tokens", rho=0.9, rho_lo=0.2, n_tiers=4),
        dict(definition="tokens", rho=0.9, rho_lo=-0.1, n_tiers=4),
        dict(definition="tokens", rho=float("nan"), rho_lo=float("nan"), n_tiers=4),
    ]
    got = analysis.forecast_cells(rows)["tokens"]
    assert (got["cells"], got["passing"], got["best"]) == (2, 1, rows[0])


def test_write_study_writes_tables_and_figures(seeded, tmp_path):
    summary = write_study(tmp_path, {"test": str(seeded)}, command="test", log=lambda m: None)
    here = tmp_path / "test"
    for name in ("measurements.csv", "rho_vs_progress.csv", "matched_loss.csv", "tokens_to_target.csv"):
        rows = list(csv.DictReader((here / name).open()))
        assert rows, name
    for d in ("fraction", "tokens", "loss"):
        assert (here / f"rho_vs_progress_{d}.png").read_bytes()[:4] == b"\x89PNG"
    assert (here / "matched_loss_separation.png").stat().st_size > 10_000
    head = list(csv.DictReader((tmp_path / "headline.csv").open()))
    assert {r["definition"] for r in head} == {"fraction", "tokens", "loss"} and summary["scales"]["test"]


def test_bad_sweeps_flag_and_missing_directory_are_user_errors(tmp_path):
    with pytest.raises(ValueError, match="name=directory"):
        parse_sweeps([f"tiny{tmp_path}"])
    with pytest.raises(ValueError, match="no sweep.json"):
        write_study(tmp_path / "o", {"tiny": str(tmp_path)}, log=lambda m: None)
    assert not (tmp_path / "o").exists(), "nothing is written when a source is unreadable"


@pytest.mark.slow
def test_cli_bad_input_exits_2_with_one_line(tmp_path):
    cmd = [sys.executable, "-m", "experiments.study", f"--sweeps=tiny{tmp_path}", f"--out={tmp_path}/o"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 2 and "name=directory" in res.stderr.strip().splitlines()[-1]
    cmd = [sys.executable, "-m", "experiments.study", f"--sweeps=tiny={tmp_path}", f"--out={tmp_path}/o"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 2 and "no sweep.json" in res.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "o" / "summary.json").exists()


def test_decision_rows_against_the_largest_tiers_rule(seeded, tmp_path):
    """A decision that kept B = 1 against the rule "finish the largest": picks, ε_tok and tokens from the reference."""
    ref = seeded / "seed0"
    _, tiers = load_sweep(ref)
    T = {b: t.tokens_to_target() for b, t in tiers.items()}
    early = {str(b): dict(tokens=100 * b, value=float(b)) for b in tiers}
    full = sum(t.result.tokens for t in tiers.values())
    spent = tiers[1].result.tokens + 200 + 400
    decision = dict(definition="tokens", value=512.0, series="activation", statistic="rankme", sign=-1, keep=1)
    best = min((b for b in T if T[b]), key=T.get)
    rec = dict(
        decision=decision, early=early, kept=[1], picked=1, tokens_spent=spent, reference=str(ref),
        full_sweep_tokens=full, tokens_saved_fraction=(full - spent) / full, reference_best=best,
        picked_is_best=best == 1, picked_eps_tok=T[1] / T[best],
    )  # fmt: skip
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "decision.json").write_text(json.dumps(rec))
    row = decision_row(tmp_path / "d")
    assert row["largest_pick"] == 4 and row["largest_is_best"] == (best == 4)
    assert row["largest_eps_tok"] == pytest.approx(T[4] / T[best])
    assert row["largest_tokens_spent"] == tiers[4].result.tokens + 100 + 200
    s = summarize_decisions([row, row])
    assert s["n"] == 2 and s["largest_best"] == 2 * (best == 4) and s["picked_eps_tok_mean"] == rec["picked_eps_tok"]
    with pytest.raises(ValueError, match="holds no decision.json"):
        decision_row(tmp_path)
