"""Analytic Fourier models (spectral_jax.toy.theory): closed forms against direct simulation."""

import numpy as np
import pytest

from spectral_jax.toy import fourier, theory


def random_kernel(n, seed):
    raw = np.random.default_rng(seed).random(n) + 0.2
    return 0.5 * (raw + raw[(-np.arange(n)) % n])


def test_circulant_diagonalised_by_the_dft():
    n = 12
    k = random_kernel(n, 0)
    C = theory.circulant(k)
    np.testing.assert_allclose(C, C.T, atol=1e-12)
    np.testing.assert_allclose(np.sort(np.linalg.eigvalsh(C)), np.sort(k), atol=1e-12)
    np.testing.assert_allclose(theory.circulant_eigenvalues(C), k, atol=1e-12)
    x = np.random.default_rng(1).standard_normal(n)
    S = theory.circulant(theory.shift_eigenvalues(n, 5))
    np.testing.assert_allclose(S @ x, np.roll(x, -5), atol=1e-12)
    with pytest.raises(ValueError):
        theory.circulant(np.arange(n) + 1j)


def test_linear_flow_simulation_matches_the_modewise_closed_form():
    n, lr = 16, 0.7
    k = random_kernel(n, 2)
    w_star = theory.shift_eigenvalues(n, 3)
    w0 = np.fft.fft(0.1 * np.random.default_rng(3).standard_normal(n))
    t = [0.3, 1.5, 6.0]
    sigma = theory.circulant(k)
    W_sim = theory.simulate_linear_flow(sigma, theory.circulant(w_star), theory.circulant(w0), t, lr=lr)
    w_closed = theory.linear_mode_solution(lr * k, w_star, w0, t)
    for i in range(len(t)):
        np.testing.assert_allclose(W_sim[i], theory.circulant(w_closed[i]), atol=1e-9)
        act = np.linalg.eigvalsh(W_sim[i] @ sigma @ W_sim[i].T)
        np.testing.assert_allclose(act, np.sort(theory.activation_moments(k, w_closed[i])), atol=1e-9)
        grad = (W_sim[i] - theory.circulant(w_star)) @ sigma
        np.testing.assert_allclose(
            np.linalg.eigvalsh(grad @ grad.T), np.sort(theory.gradient_moments(k, w_closed[i], w_star)), atol=1e-9
        )
    assert np.abs(w_closed[-1] - w_star).max() < np.abs(w0 - w_star).max()


@pytest.mark.parametrize("batch", [1, 4])
def test_minibatch_gradient_second_moment_monte_carlo(batch):
    n, n_samples, noise_var = 8, 160_000, 0.5
    rng = np.random.default_rng(batch)
    k = random_kernel(n, 4)
    w_star, w = theory.shift_eigenvalues(n, 1), np.fft.fft(0.3 * rng.standard_normal(n))
    x = rng.standard_normal((n_samples, n)) @ theory.circulant(np.sqrt(k)).T
    residual = x @ theory.circulant(w - w_star).T - np.sqrt(noise_var) * rng.standard_normal((n_samples, n))
    g = np.fft.fft(residual, axis=1) * np.conj(np.fft.fft(x, axis=1)) / n
    g_batch = g.reshape(-1, batch, n).mean(axis=1)
    measured = np.mean(np.abs(g_batch) ** 2, axis=0)
    predicted = theory.gradient_moments(k, w[None], w_star, batch, noise_var)[0]
    np.testing.assert_allclose(measured, predicted, rtol=0.05)
    np.testing.assert_allclose(g.mean(axis=0), k * (w - w_star), atol=0.02)


def test_rank_decay_exponent_of_exact_power_law():
    values = np.arange(1, 301, dtype=float) ** -1.7
    assert theory.rank_decay_exponent(values[::-1], (10, 100)) == pytest.approx(1.7, abs=1e-10)


@pytest.mark.parametrize("p,q", [(1.0, 0.5), (1.5, 0.25)])
def test_power_law_tail_exponent_is_p_plus_two_q(p, q):
    n, window = 256, (16, 128)
    k, rates = theory.power_law_kernel(n, p), theory.power_law_rates(n, q)
    spectrum = theory.early_activation_spectrum(k, rates, t=0.05 / rates.max())
    assert theory.rank_decay_exponent(spectrum, window) == pytest.approx(p + 2 * q, abs=0.05)
    late_w = theory.linear_mode_solution(rates, theory.shift_eigenvalues(n, 1), np.zeros(n), [200.0])
    late = theory.activation_moments(k, late_w)[0]
    assert abs(theory.rank_decay_exponent(late, window) - (p + 2 * q)) > 0.1


def test_batch_mode_exponent_and_its_tail_prediction():
    n, p, noise_var, window = 256, 1.0, 1.0, (16, 128)
    k = theory.power_law_kernel(n, p)
    batches = [1, 4, 16, 64, 256, 4096]
    q = np.array([theory.batch_mode_exponent(k, b, noise_var, window) for b in batches])
    assert np.all(np.diff(q) < 0)
    assert q[0] == pytest.approx(p / 2, abs=0.05) and q[-1] < 0.01
    for batch, q_b in zip((4, 64), (q[1], q[3])):
        rates = theory.adaptive_mode_rates(k, batch, noise_var)
        spectrum = theory.early_activation_spectrum(k, rates, t=0.05 / rates.max())
        assert theory.rank_decay_exponent(spectrum, window) == pytest.approx(p + 2 * q_b, abs=0.05)


@pytest.mark.parametrize("y", [1.5, 0.3, 0.0, -0.4])
def test_factor_flow_balanced_init_follows_the_sigmoid(y):
    y_R = np.array([y, 1.0])
    f0_R = np.array([1e-3, 0.02])
    k_R = np.array([0.8, 1.3])
    t = np.linspace(0.5, 20.0, 12)
    a, b = theory.simulate_factor_flow(y_R, np.sqrt(f0_R), np.sqrt(f0_R), t, k_R=k_R, lr=0.9)
    np.testing.assert_allclose(a * b, theory.factor_sigmoid(y_R, f0_R, t, k_R=k_R, lr=0.9), atol=1e-8)


def test_band_concentration_is_non_decreasing_along_the_flow():
    n = 32
    rng = np.random.default_rng(7)
    S = fourier.task_frequency_set(n, center=3, half_width=1)
    a0, b0 = 0.02 + 0.03 * rng.random(n), 0.02 + 0.03 * rng.random(n)
    f0 = a0 * b0
    y = theory.band_teacher(n, S, on=1.0, off=0.0)
    y[~np.isin(np.arange(n), S)] = 0.5 * f0[~np.isin(np.arange(n), S)]
    k = 0.5 + rng.random(n)
    t = np.linspace(0.0, 40.0, 801)
    a, b = theory.simulate_factor_flow(y, a0, b0, t, k_R=k, dt=0.01)
    h_s = theory.factor_band_concentration(a * b, S, k_R=k)
    assert np.all(np.diff(h_s) >= -1e-12)
    assert h_s[0] < 0.3 and h_s[-1] > 0.999


def test_band_concentration_overshoots_when_off_band_targets_exceed_the_init():
    n = 16
    S = fourier.task_frequency_set(n)
    y = theory.band_teacher(n, S, on=1.0, off=0.2)
    f0 = np.full(n, 1e-4)
    t = np.linspace(0.0, 60.0, 601)
    h_s = theory.factor_band_concentration(theory.factor_sigmoid(y, f0, t), S)
    final = 2.0 / (2.0 + 14 * 0.04)
    assert h_s[-1] == pytest.approx(final, abs=1e-3)
    assert h_s.max() > final + 0.2
    assert np.any(np.diff(h_s) < -1e-6)
