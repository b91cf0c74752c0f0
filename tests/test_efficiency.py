"""efficiency.py: T(B), eps_tok, gains, checkpoint selection, matched loss, min-max, Spearman vs scipy,
early prediction, across-family pooling and Spearman vs progress."""

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from spectral_jax import efficiency as eff


# ---- T(B), eps_tok, gains ------------------------------------------------------------------------------
def test_tokens_to_target_first_crossing_after_step_zero():
    evals = [
        dict(step=2, tokens=20, val_loss=3.2),
        dict(step=0, tokens=0, val_loss=3.0),  # out of order
        dict(step=1, tokens=10, val_loss=float("nan")),
        dict(step=3, tokens=30, val_loss=3.1),
    ]
    assert eff.tokens_to_target(evals, 3.2) == 20  # <= counts; step 0 (3.0) ignored; NaN skipped
    assert eff.tokens_to_target(evals, 3.15) == 30
    assert eff.tokens_to_target(evals, 1.0) is None
    assert eff.tokens_to_target([], 3.0) is None


def test_token_efficiency():
    assert eff.token_efficiency({1: 200, 2: 100, 4: 300, 8: None}) == {1: 2.0, 2: 1.0, 4: 3.0, 8: None}
    assert eff.token_efficiency({1: None, 2: None}) == {1: None, 2: None}
    with pytest.raises(ValueError, match="positive"):
        eff.token_efficiency({1: 0, 2: 10})


def test_gains():
    assert eff.token_gain(200, 100) == 1.0 and eff.token_gain(100, 200) == -0.5
    assert eff.throughput_gain(100, 150) == 0.5
    assert eff.log_token_gain(200, 100) == pytest.approx(math.log(2))
    assert eff.log_throughput_gain(100, 50) == pytest.approx(-math.log(2))
    g = eff.gains(300, 100, 10, 5)
    assert g == pytest.approx(dict(tok_gain=2.0, thr_gain=-0.5, g_tok=math.log(3), g_thr=-math.log(2)))
    for bad in (None, 0, -1, float("nan")):
        with pytest.raises(ValueError):
            eff.token_gain(bad, 100)


# ---- selection and matched loss ------------------------------------------------------------------------
def test_selection_nearest_ties_to_the_earlier():
    recs = [dict(tokens=t, step=t // 10) for t in (0, 10, 20, 40)]
    assert eff.select_at_tokens(recs, 15)["tokens"] == 10  # tie 10 vs 20 -> earlier
    assert eff.select_at_tokens(list(reversed(recs)), 15)["tokens"] == 10  # independent of order
    assert eff.select_at_tokens(recs, 31)["tokens"] == 40
    assert eff.select_at_fraction(recs, 100)["tokens"] == 20  # default 20 %
    assert eff.select_at_fraction(recs, 100, 0.35)["tokens"] == 40
    with pytest.raises(ValueError):
        eff.select_at_tokens([], 3)
    with pytest.raises(ValueError):
        eff.select_at_fraction(recs, None)


def test_common_loss_targets_worked_example():
    curves = {"a": [5.0, 4.0, 3.0, 2.5], "b": [6.0, 4.5, 3.5, float("nan")]}
    # overlap = [max(2.5, 3.5), min(5, 6)] = [3.5, 5]; pooled in range sorted: 3.5, 4, 4.5, 5
    assert eff.common_loss_targets(curves, n=3) == pytest.approx([3.5, 4.25, 5.0])
    # n = 5: quantile positions 0, .75, 1.5, 2.25, 3 on the sorted pool (linear interpolation)
    assert eff.common_loss_targets(curves) == pytest.approx([3.5, 3.875, 4.25, 4.625, 5.0])
    # pooled 1 x7, 2 x2: quantiles 1, 1, 1, 1, 2 -> de-duplicated
    assert eff.common_loss_targets({"a": [1.0] * 6 + [2.0], "b": [1.0, 2.0]}, n=5) == [1.0, 2.0]
    with pytest.raises(ValueError, match="do not overlap"):
        eff.common_loss_targets({"a": [5, 4], "b": [3, 2]})
    with pytest.raises(ValueError, match="do not overlap"):
        eff.common_loss_targets({"a": [5, 4], "b": [4, 3]})  # touching at one value, as the reference


def test_matched_loss_rows_nearest_not_below():
    rows = [dict(val_loss=v, step=i) for i, v in enumerate([5.0, 4.0, 3.0, 2.5])] + [dict(val_loss=None, step=9)]
    # 3.5: |4-3.5| = |3-3.5| -> the first (step 1, ABOVE the target); 4.25 -> 4.0; 5 -> 5.0; 0 -> 2.5
    assert [r["step"] for r in eff.matched_loss_rows(rows, [3.5, 4.25, 5.0, 0.0])] == [1, 1, 0, 3]
    with pytest.raises(ValueError):
        eff.matched_loss_rows([dict(val_loss=None)], [1.0])


def test_minmax():
    assert eff.minmax_normalize({1: 2.0, 2: 4.0, 3: 3.0, 4: None}) == {1: 0.0, 2: 1.0, 3: 0.5, 4: None}
    flat = eff.minmax_normalize({1: 2.0, 2: 2.0, 3: 2.0})
    assert all(math.isnan(v) for v in flat.values())
    assert math.isnan(eff.spearman(list(flat.values()), [1, 2, 3]).rho)


# ---- Spearman ------------------------------------------------------------------------------------------
def _rank_corr(x, yy, axis=-1):
    """Pearson of scipy's average ranks, vectorised over the rows of yy."""
    rx = stats.rankdata(x) - (len(x) + 1) / 2
    ry = stats.rankdata(yy, axis=axis)
    ry = ry - ry.mean(axis=axis, keepdims=True)
    return (ry @ rx) / np.sqrt((rx @ rx) * np.sum(ry * ry, axis=axis))


def _brute_p(x, y):
    """Exact two-sided permutation p: enumerate every permutation of y."""
    null = _rank_corr(x, np.asarray(list(itertools.permutations(y))))
    return np.mean(np.abs(null) >= abs(_rank_corr(x, np.asarray(y))) - 1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_spearman_rho_and_t_pvalue_match_scipy(seed):
    rng = np.random.default_rng(seed)
    for n in (3, 5, 8, 10, 13, 40):
        x = rng.normal(size=n)
        y = 0.5 * x + rng.normal(size=n)
        x[1] = x[0]  # ties in x
        y[-1] = y[-2]  # ties in y
        if n > 3:
            y[-3] = y[-2]
        ours = eff.spearman(x, y)
        ref = stats.spearmanr(x, y)
        assert ours.n == n and ours.rho == pytest.approx(ref.statistic, abs=1e-12)
        if n > 9:
            assert ours.p_value == pytest.approx(ref.pvalue, rel=1e-9)


def test_spearman_exact_pvalue():
    rng = np.random.default_rng(7)
    for n in (4, 5, 6, 7):
        x, y = rng.normal(size=n), rng.normal(size=n)
        y_tied, x_tied = np.round(y * 2) / 2, x.copy()  # ties in y, and in both (asymmetric null)
        x_tied[1] = x_tied[0]
        for xx in (x, x_tied):
            assert eff.spearman(xx, y_tied).p_value == pytest.approx(_brute_p(xx, y_tied), abs=1e-12)
        ref = stats.permutation_test(  # scipy's exact test; same as ours when the null is symmetric (no ties)
            (y,),
            lambda yy, axis: _rank_corr(x, yy, axis),
            permutation_type="pairings",
            n_resamples=np.inf,
            vectorized=True,
        )
        assert eff.spearman(x, y).p_value == pytest.approx(ref.pvalue, abs=1e-12)
    assert eff.spearman([1, 2, 3], [1, 2, 3]).p_value == pytest.approx(2 / 6)
    assert eff.spearman([1, 2, 3, 4], [4, 3, 2, 1]).p_value == pytest.approx(2 / 24)
    assert eff.spearman(range(9), range(9)).p_value == pytest.approx(2 / math.factorial(9))
    r = eff.spearman(range(10), range(10))
    assert r.rho == pytest.approx(1.0, abs=1e-15) and r.p_value < 1e-50  # scipy's t-approximation above n = 9


def test_spearman_nan_cases():
    for x, y in [([1, 2], [1, 2]), ([1, 1, 1], [1, 2, 3]), ([1, 2, 3], [5, 5, 5])]:
        r = eff.spearman(x, y)
        assert math.isnan(r.rho) and math.isnan(r.p_value)
    r = eff.spearman([1, 2, None, 4], [1, 2, 3, float("nan")])
    assert r.n == 2 and math.isnan(r.rho)
    with pytest.raises(ValueError):
        eff.spearman([1, 2, 3], [1, 2])


# ---- early prediction ----------------------------------------------------------------------------------
TIERS = {1: 100, 2: 120, 4: 160, 8: 240, 16: 400}  # T(B); eps = T / 100


def _family(alpha_of_eps, scale=1.0):
    """Probe records every 10 tokens for tiers 1..16 (+ tier 32 never reaching the target), two layers."""
    runs = {}
    for b, T in TIERS.items():
        recs = []
        for s in range(T // 10 + 1):
            for layer in (3, 7):
                recs.append(
                    dict(
                        step=s,
                        tokens=10 * s,
                        val_loss=5.0 - s / 10,
                        kind="activation",
                        layer=layer,
                        matrix=None,
                        alpha_tail=scale * alpha_of_eps(T / 100) + 0.01 * s,
                        alpha_2_8=float(b),
                        alpha_30_40=None,
                    )
                )
        recs.append(dict(step=1, tokens=10, kind="gradient", layer=7, matrix="attn_out", alpha_tail=-1.0))
        runs[b] = dict(tokens_to_target=T, records=recs)
    runs[32] = dict(tokens_to_target=None, records=runs[16]["records"])
    return runs


def test_early_prediction_monotone_family_gives_rho_one():
    out = eff.early_prediction(_family(lambda e: 1.0 + e), fraction=0.2, layer=7)
    assert out["spearman_within"] == pytest.approx(1.0) and out["n"] == 5
    assert out["p_value"] == pytest.approx(2 / 120)  # exact, n = 5
    rows = {r["batch"]: r for r in out["tiers"]}
    assert list(rows) == [1, 2, 4, 8, 16, 32]
    assert rows[4]["early_tokens"] == 30 and rows[4]["early_step"] == 3 and rows[4]["eps_tok"] == 1.6  # 0.2*160=32
    assert rows[2]["early_tokens"] == 20  # 0.2*120 = 24 -> 20
    assert rows[1]["early_alpha_tail"] == pytest.approx(2.0 + 0.02)
    assert rows[1]["early_alpha_tail_normalized"] == 0.0 and rows[16]["early_alpha_tail_normalized"] == 1.0
    assert rows[32]["eps_tok"] is None and rows[32]["early_alpha_tail"] is None
    assert rows[32]["early_alpha_tail_normalized"] is None
    rev = eff.early_prediction(_family(lambda e: 5.0 - e), layer=7)
    assert rev["spearman_within"] == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="layer="):
        eff.early_prediction(_family(lambda e: e))  # two activation layers: ambiguous
    grad = eff.early_prediction(_family(lambda e: e), kind="gradient", layer=7, matrix="attn_out")
    assert math.isnan(grad["spearman_within"])  # constant gradient alpha: zero rank variance


def test_early_prediction_at_matched_tokens():
    out = eff.early_prediction(_family(lambda e: 1.0 + e), at_tokens=20, layer=7)
    rows = {r["batch"]: r for r in out["tiers"]}
    assert {r["early_tokens"] for r in rows.values()} == {20}
    assert rows[32]["early_alpha_tail"] is not None and rows[32]["eps_tok"] is None  # read, but not ranked
    assert out["n"] == 5 and out["spearman_within"] == pytest.approx(1.0) and out["at_tokens"] == 20


def test_spearman_across_pools_normalised_points():
    a = eff.early_prediction(_family(lambda e: 1.0 + e), layer=7)["tiers"]
    b = eff.early_prediction(_family(lambda e: 1.0 + e, scale=10.0), layer=7)["tiers"]  # other alpha scale
    c = eff.early_prediction(_family(lambda e: 5.0 - e), layer=7)["tiers"]
    same = eff.spearman_across({"a": a, "a2": a})
    assert same["rho"] == pytest.approx(1.0) and same["n"] == 10 and same["mean_within"] == pytest.approx(1.0)
    abc = eff.spearman_across({"a": a, "b": b, "c": c})
    assert abc["within"] == pytest.approx({"a": 1.0, "b": 1.0, "c": -1.0})
    assert abc["mean_within"] == pytest.approx(1 / 3) and abc["n"] == 15
    x = [r["early_alpha_tail_normalized"] for fam in (a, b, c) for r in fam if r["eps_tok"] is not None]
    y = [r["eps_tok"] for fam in (a, b, c) for r in fam if r["eps_tok"] is not None]
    assert abc["rho"] == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert abc["p_value"] == pytest.approx(stats.spearmanr(x, y).pvalue, rel=1e-9)


def test_spearman_vs_progress_rows():
    runs = _family(lambda e: 1.0 + e)
    rows = eff.spearman_vs_progress(
        runs,
        windows=[(2, 8), (8, 17), (30, 40)],
        fractions=[0.2, 0.5],
        layer=7,
        spectra=lambda b, rec: np.arange(40, 0, -1.0) ** -float(b),
    )
    assert len(rows) == 6 and [r["fraction"] for r in rows] == [0.2] * 3 + [0.5] * 3
    assert set(rows[0]) == {"fraction", "window", "rho", "p_value", "n"}
    by = {(r["fraction"], tuple(r["window"])): r for r in rows}
    assert by[(0.2, (2, 8))]["rho"] == pytest.approx(1.0)  # stored alpha_2_8 = batch, increasing with eps
    assert by[(0.5, (8, 17))]["rho"] == pytest.approx(1.0)  # fitted from the power law j^-B
    assert by[(0.5, (8, 17))]["n"] == 5
    assert by[(0.2, (30, 40))]["n"] == 0 and math.isnan(by[(0.2, (30, 40))]["rho"])  # stored None: dropped
    with pytest.raises(KeyError, match="alpha_8_17"):
        eff.spearman_vs_progress(runs, windows=[(8, 17)], fractions=[0.2], layer=7)


def test_interpolated_tokens_to_target_lies_between_the_evals_around_the_crossing():
    evals = [
        dict(step=0, tokens=0, val_loss=9.0),
        dict(step=1, tokens=100, val_loss=5.0),
        dict(step=2, tokens=200, val_loss=3.0),
        dict(step=3, tokens=300, val_loss=2.0),
    ]
    assert eff.tokens_to_target(evals, 4.0) == 200
    assert eff.tokens_to_target_interpolated(evals, 4.0) == pytest.approx(150.0)  # halfway from 5.0 to 3.0
    assert eff.tokens_to_target_interpolated(evals, 5.0) == 100.0  # reached exactly at an eval
    assert eff.tokens_to_target_interpolated(evals[:1] + [dict(step=1, tokens=100, val_loss=1.0)], 9.5) == 100.0
    assert eff.tokens_to_target_interpolated(evals, 1.0) is None


def test_step_zero_is_never_an_early_point():
    """Every tier starts from the same initial model: step 0 must not be chosen, however near it lies."""
    recs = [
        dict(step=0, tokens=0, val_loss=9.0, alpha_tail=5.0),
        dict(step=4, tokens=400, val_loss=6.0, alpha_tail=1.0),
        dict(step=8, tokens=800, val_loss=4.0, alpha_tail=2.0),
    ]
    runs = {1: dict(tokens_to_target=1000, records=recs), 2: dict(tokens_to_target=2000, records=recs)}
    early = eff.early_prediction(runs, fraction=0.05)  # 50 / 100 tokens: nearest would be step 0
    assert [r["early_step"] for r in early["tiers"]] == [4, 4]
    assert eff.early_prediction(runs, at_tokens=0)["tiers"][0]["early_step"] == 4
    rows = eff.spearman_vs_progress(runs, windows=[(1, 2)], fractions=[0.01], spectra=lambda b, r: np.ones(3))
    assert rows[0]["n"] == 2
    assert eff.select_first_below(recs, 9.5)["step"] == 4 and eff.select_first_below(recs, 1.0) is None
    assert eff.after_start(recs) == recs[1:]
