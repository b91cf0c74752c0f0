"""Fourier feature-learning probes (spectral_jax.toy.fourier): math checks against numpy."""

import numpy as np
import pytest

from spectral_jax.toy import fourier, task


def orthogonal(D, seed):
    Q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((D, D)))
    return Q


def pure_mode(c0, r, D=16, seed=0):
    m = np.arange(c0)
    Q = orthogonal(D, seed)
    return np.cos(2 * np.pi * r * m / c0)[:, None] * Q[0] + np.sin(2 * np.pi * r * m / c0)[:, None] * Q[1]


def test_conditional_means_match_a_loop():
    rng = np.random.default_rng(0)
    c0, h, m = 11, rng.standard_normal((500, 6)), rng.integers(0, 11, 500)
    H, counts = fourier.conditional_means(h, m, c0, center=False)
    for label in range(c0):
        np.testing.assert_allclose(H[label], h[m == label].mean(axis=0), atol=1e-12)
        assert counts[label] == np.sum(m == label)
    Hc, _ = fourier.conditional_means(h, m, c0)
    np.testing.assert_allclose(Hc, H - H.mean(axis=0), atol=1e-12)
    with pytest.raises(ValueError):
        fourier.conditional_means(h, m + 1, c0)


def test_fourier_energy_matches_the_dft_sum():
    rng = np.random.default_rng(1)
    c0, H = 13, rng.standard_normal((13, 5))
    m = np.arange(c0)
    dft = np.exp(-2j * np.pi * np.outer(m, m) / c0)
    np.testing.assert_allclose(fourier.fourier_energy(H), (np.abs(dft @ H) ** 2).sum(axis=1), rtol=1e-12)


@pytest.mark.parametrize("c0,r", [(97, 5), (179, 1), (64, 20)])
def test_pure_mode_probe(c0, r):
    probe = fourier.fourier_probe(pure_mode(c0, r))
    assert probe.dominant_freq == r
    assert probe.h_peak == pytest.approx(0.5, abs=1e-12)
    assert probe.h_peak_pair == pytest.approx(1.0, abs=1e-12)
    assert probe.pos_mass == pytest.approx(0.5, abs=1e-12)
    assert probe.dc_mass == pytest.approx(0.0, abs=1e-12)
    assert probe.gini == pytest.approx((c0 - 2) / c0, abs=1e-12)
    assert probe.pc1_peak_mass == pytest.approx(0.5, abs=1e-9)
    assert probe.pc1_peak_mass_pair == pytest.approx(1.0, abs=1e-9)
    assert probe.pc_dominant_freq_K[0] == probe.pc_dominant_freq_K[1] == r
    np.testing.assert_allclose(probe.evr_K[:3], [0.5, 0.5, 0.0], atol=1e-12)


def test_nyquist_mode_has_full_peak():
    c0 = 16
    H = np.cos(np.pi * np.arange(c0))[:, None] * np.ones((1, 4))
    probe = fourier.fourier_probe(H)
    assert probe.dominant_freq == 8
    assert probe.h_peak == pytest.approx(1.0) and probe.h_peak_pair == pytest.approx(1.0)
    assert probe.gini == pytest.approx((c0 - 1) / c0)


def test_noise_is_diffuse():
    H = np.random.default_rng(2).standard_normal((97, 128))
    H -= H.mean(axis=0)
    probe = fourier.fourier_probe(H)
    assert probe.h_peak < 0.03 and probe.h_peak_pair < 0.06
    assert probe.gini < 0.15
    assert probe.pc1_peak_mass_pair < 0.3
    assert probe.pos_mass == pytest.approx(0.5, abs=1e-9)


def test_gini_extremes():
    assert fourier.gini(np.ones(10)) == pytest.approx(0.0, abs=1e-12)
    assert fourier.gini(np.eye(10)[3]) == pytest.approx(0.9)
    assert fourier.gini(np.zeros(5)) == 0.0
    x = np.random.default_rng(3).random(50)
    pairs = np.abs(x[:, None] - x[None, :]).sum() / (2 * x.size * x.sum())
    assert fourier.gini(x) == pytest.approx(pairs, abs=1e-12)


def test_task_frequency_set():
    np.testing.assert_array_equal(fourier.task_frequency_set(97), [1, 96])
    np.testing.assert_array_equal(fourier.task_frequency_set(97, center=3, half_width=1), [2, 3, 4, 93, 94, 95])
    np.testing.assert_array_equal(fourier.task_frequency_set(10, center=1, half_width=2), [1, 2, 3, 7, 8, 9])
    np.testing.assert_array_equal(fourier.task_frequency_set(10, center=5), [5])


def test_band_concentration_of_task_aligned_and_misaligned_representations():
    c0 = 61
    S = fourier.task_frequency_set(c0)
    assert fourier.fourier_probe(pure_mode(c0, 1)).h_s == pytest.approx(1.0, abs=1e-12)
    assert fourier.fourier_probe(pure_mode(c0, 7)).h_s == pytest.approx(0.0, abs=1e-12)
    mixed = np.sqrt(0.7) * pure_mode(c0, 1, seed=0) + np.sqrt(0.3) * pure_mode(c0, 7, seed=0)[:, ::-1]
    assert fourier.fourier_probe(mixed, task_freqs=S).h_s == pytest.approx(0.7, abs=1e-12)
    wide = fourier.task_frequency_set(c0, center=1, half_width=6)
    assert fourier.fourier_probe(mixed, task_freqs=wide).h_s == pytest.approx(1.0, abs=1e-12)
    assert fourier.band_concentration(np.zeros(5), [1]) == 0.0


def test_probe_is_invariant_to_feature_rotation():
    rng = np.random.default_rng(4)
    c0, D = 97, 32
    H = pure_mode(c0, 3, D) + 0.3 * rng.standard_normal((c0, D))
    H -= H.mean(axis=0)
    a, b = fourier.fourier_probe(H), fourier.fourier_probe(H @ orthogonal(D, 5))
    np.testing.assert_allclose(a.energy_C, b.energy_C, atol=1e-12)
    for field in ("h_peak", "h_peak_pair", "gini", "pos_mass", "h_s"):
        assert getattr(a, field) == pytest.approx(getattr(b, field), abs=1e-12)
    np.testing.assert_allclose(a.pc_peak_mass_K, b.pc_peak_mass_K, atol=1e-9)
    np.testing.assert_allclose(a.evr_K, b.evr_K, atol=1e-12)
    assert a.dominant_freq == b.dominant_freq == 3


def test_probe_bands():
    bands = fourier.PROBE_BANDS
    assert len(bands) == 8 and len(set(bands)) == 8
    assert (97, 200) in bands and (179, 50) in bands
    assert len({c0 for c0, _ in bands}) == 8 and len({o0 for _, o0 in bands}) == 8
    assert all(c0 >= 5 and o0 >= 0 and o0 + c0 <= 1024 for c0, o0 in bands)


def test_band_sweep_recovers_a_clock_representation_keyed_on_the_last_token():
    cfg = task.TaskConfig()
    bands = ((13, 0), (97, 200))
    table = np.zeros((cfg.vocab_size, 3))
    for c0, o0 in bands:
        angle = 2 * np.pi * np.arange(c0) / c0
        table[o0 : o0 + c0] = np.stack([np.cos(angle), np.sin(angle), np.ones(c0)], axis=1)
    noise = np.random.default_rng(6)

    def hidden_fn(x_NxL):
        return table[x_NxL[:, -1]] + 0.1 * noise.standard_normal((x_NxL.shape[0], 3))

    results = fourier.band_sweep(hidden_fn, cfg, bands=bands, kind="clean_band", n=3000, k=2)
    for band in bands:
        probe = results[band]
        assert probe.dominant_freq == 1
        assert probe.h_peak_pair > 0.97 and probe.h_s > 0.97
        assert probe.record()["H_S"] == probe.h_s
