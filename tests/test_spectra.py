"""spectra.py against float64 numpy / scipy references and closed forms."""

import numpy as np
import pytest
import scipy.stats

from spectral_jax import spectra
from spectral_jax.probes import ProbeResult, summarize_probe


def power_law(n=768, a=1.3):
    return np.arange(1, n + 1, dtype=np.float64) ** -a


def test_trace_normalize_sorts_and_sums_to_one():
    p = spectra.trace_normalize([1.0, 3.0, 2.0])
    np.testing.assert_allclose(p, [0.5, 1 / 3, 1 / 6])


def test_alpha_exact_power_law_from_covariance_eigenvalues():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((768, 768)))
    cov = (q * power_law()) @ q.T
    fit = spectra.alpha(np.linalg.eigvalsh(cov), (100, 200))
    assert abs(fit.alpha - 1.30) <= 0.01
    assert fit.r2 > 0.9999 and fit.n_points == 101 and fit.window == (100, 200)


def test_alpha_matches_scipy_linregress():
    rng = np.random.default_rng(1)
    v = power_law(400, 0.9) * np.exp(0.1 * rng.standard_normal(400))
    fit = spectra.alpha(v, (30, 150))
    s = np.sort(v)[::-1] / v.sum()
    ref = scipy.stats.linregress(np.log(np.arange(30, 151)), np.log(s[29:150]))
    assert fit.alpha == pytest.approx(-ref.slope, rel=1e-12)
    assert fit.r2 == pytest.approx(ref.rvalue**2, rel=1e-10)
    assert fit.intercept == pytest.approx(ref.intercept, rel=1e-10)


def test_alpha_bootstrap_interval_contains_estimate():
    rng = np.random.default_rng(2)
    v = power_law(768, 1.1) * np.exp(0.2 * rng.standard_normal(768))
    fit = spectra.alpha(v, (100, 200), bootstrap=500, seed=0)
    lo, hi = fit.ci
    assert lo < fit.alpha < hi and hi - lo < 0.5


@pytest.mark.parametrize(
    "window, match",
    [((100, 900), "past the spectrum's length 768"), ((0, 10), "1 <= lo < hi"), ((20, 20), "1 <= lo < hi")],
)
def test_alpha_bad_window_names_window_and_length(window, match):
    with pytest.raises(ValueError, match=match):
        spectra.alpha(power_law(), window)


def test_alpha_needs_two_positive_points():
    v = np.zeros(50)
    v[:10] = 1.0
    with pytest.raises(ValueError, match=r"window \(20, 40\).*0 positive"):
        spectra.alpha(v, (20, 40))


def test_non_finite_rejected():
    with pytest.raises(ValueError, match="non-finite"):
        spectra.rankme([1.0, np.nan, 0.5])


def test_tail_windows():
    assert spectra.tail_window("d12") == (100, 200)
    assert spectra.tail_window("d36") == (200, 400)
    assert spectra.tail_window("d48") == (400, 800)
    assert spectra.tail_window("tiny") == (8, 17)
    with pytest.raises(ValueError, match="unknown preset"):
        spectra.tail_window("d99")


def test_rank_measures_closed_forms():
    flat = np.ones(64)
    assert spectra.rankme(flat) == pytest.approx(64)
    assert spectra.participation_ratio(flat) == pytest.approx(64)
    assert spectra.stable_rank(flat) == pytest.approx(64)
    assert spectra.hard_rank(flat) == 64
    one = np.zeros(64)
    one[0] = 5.0
    assert spectra.rankme(one) == pytest.approx(1)
    assert spectra.participation_ratio(one) == pytest.approx(1)
    v = power_law(100)
    p = v / v.sum()
    assert spectra.rankme(v) == pytest.approx(np.exp(-np.sum(p * np.log(p))))
    assert spectra.soft_rank(v) == spectra.rankme(v)
    assert spectra.hard_rank(v, 1e-2) == int(np.sum(v >= 1e-2))
    assert spectra.head_mass(v, 10) == pytest.approx(p[:10].sum())


def test_js_divergence():
    p = power_law(300)
    assert spectra.js_divergence(p, p) == pytest.approx(0.0, abs=1e-12)
    q = power_law(200, 0.5)
    a, b = np.sort(p)[::-1][:200], q
    a, b = a / a.sum(), b / b.sum()
    m = (a + b) / 2
    ref = 0.5 * np.sum(a * np.log(a / m)) + 0.5 * np.sum(b * np.log(b / m))
    assert spectra.js_divergence(p, q) == pytest.approx(ref, rel=1e-6)
    assert spectra.js_divergence(p, q) == pytest.approx(spectra.js_divergence(q, p), rel=1e-12)
    assert 0 < spectra.js_divergence(p, q) <= np.log(2)


def test_summarize_and_jnp_twins():
    v = power_law(768)
    s = spectra.summarize(v, tail=(100, 200))
    assert s["alpha_tail"] == pytest.approx(1.3)
    assert {"alpha_head", "alpha_100_200", "alpha_200_400", "rankme"} <= set(s)
    assert "alpha_400_800" not in s  # 800 > 768 eigenvalues: windows that do not fit are left out
    assert float(spectra.alpha_jnp(v.astype(np.float32), (100, 200))) == pytest.approx(1.3, rel=1e-4)
    assert float(spectra.rankme_jnp(v.astype(np.float32))) == pytest.approx(spectra.rankme(v), rel=1e-4)


def test_all_zero_spectrum_is_a_clear_error_and_a_none_summary_with_its_reason():
    """The documented outcome for e.g. the gradients of a zero-initialised matrix: the math functions raise a
    ValueError that says so; the probes' tidy summary gives None for every value and a summary_note."""
    with pytest.raises(ValueError, match="all zeros"):
        spectra.summarize(np.zeros(32), tail=(8, 17))
    with pytest.raises(ValueError, match="all zeros"):
        spectra.trace_normalize(np.zeros(5))
    result = ProbeResult(activation={7: np.zeros(64)}, gradient={}, weight={}, rows=64, grad_samples=0)
    (rec,) = summarize_probe(result, tail=(8, 17))
    assert rec["alpha_tail"] is None and rec["rankme"] is None and "all zeros" in rec["summary_note"]
