"""Streaming covariance == float64 np.cov; precision on heavy-tailed offset data; sharded == 1 device."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from spectral_jax import spectra
from spectral_jax.covariance import CovarianceAccumulator, CovStats, covariance_eigenvalues


def correlated(n, d, seed=0, offset=0.0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) + offset).astype(np.float32)


@pytest.mark.parametrize("chunk", [1, 7, 1000, 5000])
def test_streaming_equals_np_cov(chunk):
    x = correlated(5000, 24, offset=30.0)
    acc = CovarianceAccumulator(24)
    for a in range(0, len(x), chunk):
        acc.update(x[a : a + chunk])
    ref = np.cov(x.astype(np.float64), rowvar=False)
    assert acc.count == 5000
    np.testing.assert_allclose(acc.covariance(), ref, rtol=0, atol=1e-6 * np.abs(ref).max())
    np.testing.assert_allclose(acc.mean(), x.astype(np.float64).mean(0), rtol=1e-6)


def test_accepts_batch_seq_dim_and_one_shot_helper():
    x = correlated(2 * 3 * 50, 8).reshape(2, 3, 50, 8)
    ev = covariance_eigenvalues(x)
    ref = np.linalg.eigvalsh(np.cov(x.reshape(-1, 8).astype(np.float64), rowvar=False))[::-1]
    np.testing.assert_allclose(ev, ref, rtol=1e-5)
    assert np.all(np.diff(ev) <= 0)


def test_gaussian_known_covariance():
    """Random Gaussian data of known covariance: eigenvalues within sampling error of the truth and within
    float32 round-off of np.linalg.eigvalsh of the sample covariance."""
    rng = np.random.default_rng(3)
    d, n = 32, 200_000
    true_ev = np.linspace(1.0, 10.0, d)[::-1]
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    x = (rng.standard_normal((n, d)) * np.sqrt(true_ev)) @ q.T
    ev = covariance_eigenvalues(x.astype(np.float32))
    ref = np.linalg.eigvalsh(np.cov(x.astype(np.float32).astype(np.float64), rowvar=False))[::-1]
    np.testing.assert_allclose(ev, ref, rtol=1e-5)
    np.testing.assert_allclose(ev, true_ev, rtol=0.05)


@pytest.mark.parametrize("n", [pytest.param(1_000_000, marks=pytest.mark.slow), 262_144])
def test_tail_precision_heavy_tailed_offset_by_768(n):
    """N = 1M (slow) or 262,144 rows, d = 768, Student-t-like rows with a power-law covariance and a large common
    offset: every eigenvalue up to rank 200 (end of d12's tail window) within 1e-4 relative of float64 np.cov.
    A float32 Gram of uncentred data fails the same check (so the test can tell the difference)."""
    d, chunk = 768, 65_536
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    mix_DxD = (q * np.arange(1, d + 1) ** -0.65).T.astype(np.float32)  # cov eigenvalues ~ j^-1.3
    offset_D = (50.0 + 10.0 * rng.standard_normal(d)).astype(np.float32)
    x = np.empty((n, d), np.float32)
    for a in range(0, n, chunk):
        m = min(chunk, n - a)
        scale = np.sqrt(5.0 / rng.chisquare(5.0, size=(m, 1))).astype(np.float32)  # t_5 row scales
        x[a : a + m] = (rng.standard_normal((m, d), dtype=np.float32) * scale) @ mix_DxD + offset_D

    acc = CovarianceAccumulator(d)
    for a in range(0, n, chunk):
        acc.update(x[a : a + chunk])
    ev = acc.eigenvalues()

    mean = x.mean(0, dtype=np.float64)
    cov = np.zeros((d, d))
    for a in range(0, n, chunk):
        xc = x[a : a + chunk].astype(np.float64) - mean
        cov += xc.T @ xc
    ref = np.linalg.eigvalsh(cov / (n - 1))[::-1]
    hi = spectra.tail_window("d12")[1]
    rel = np.abs(ev - ref) / ref
    assert rel[:hi].max() <= 1e-4, rel[:hi].max()

    sub = x[:100_000]
    g = sub.T @ sub
    mu = sub.mean(0)
    naive = np.linalg.eigvalsh(((g - len(sub) * np.outer(mu, mu)) / (len(sub) - 1)).astype(np.float64))[::-1]
    ref_sub = np.linalg.eigvalsh(np.cov(sub.astype(np.float64), rowvar=False))[::-1]
    assert (np.abs(naive - ref_sub) / ref_sub)[:hi].max() > 1e-2


def test_nonfinite_rows_raise_unless_allowed():
    x = correlated(100, 4)
    x[5, 1] = np.inf
    acc = CovarianceAccumulator(4).update(x)
    assert acc.count == 99 and acc.nonfinite_rows == 1
    with pytest.raises(ValueError, match="1 activation rows were NaN/inf"):
        acc.covariance()
    ok = CovarianceAccumulator(4, allow_nonfinite=True).update(x)
    np.testing.assert_allclose(ok.covariance(), np.cov(np.delete(x, 5, 0).astype(np.float64), rowvar=False), rtol=1e-5)


def test_errors():
    with pytest.raises(ValueError, match="too few rows for a covariance: got 1"):
        CovarianceAccumulator(4).update(np.ones((1, 4), np.float32)).covariance()
    with pytest.raises(ValueError, match="do not end in dim 4"):
        CovarianceAccumulator(4).update(np.ones((3, 5), np.float32))


def test_merge_and_load_stats_are_exact():
    x = correlated(3000, 16, offset=-7.0)
    a = CovarianceAccumulator(16).update(x[:1100])
    b = CovarianceAccumulator(16).update(x[1100:])
    a.merge(b)
    ref = np.cov(x.astype(np.float64), rowvar=False)
    np.testing.assert_allclose(a.covariance(), ref, atol=1e-6 * np.abs(ref).max())
    c = CovarianceAccumulator(16).load_stats(a.stats())
    c.update(x[:10])
    ref2 = np.cov(np.concatenate([x, x[:10]]).astype(np.float64), rowvar=False)
    np.testing.assert_allclose(c.covariance(), ref2, atol=1e-6 * np.abs(ref2).max())
    s = CovStats(0, np.zeros(16), np.zeros((16, 16))).merge(a.stats())
    assert s.count == 3000


def test_sharded_four_devices_equals_one_device():
    code = textwrap.dedent("""
        import jax, numpy as np
        from spectral_jax.covariance import CovarianceAccumulator, default_mesh
        assert jax.device_count() == 4, jax.devices()
        rng = np.random.default_rng(0)
        q, _ = np.linalg.qr(rng.standard_normal((32, 32)))
        x = ((rng.standard_normal((10_003, 32)) * np.linspace(1, 4, 32)) @ q + 40).astype(np.float32)
        four = CovarianceAccumulator(32, mesh=default_mesh())
        one = CovarianceAccumulator(32, mesh=default_mesh(jax.devices()[:1]))
        for a in range(0, len(x), 999):   # 999 rows: padding exercised on 4 devices
            four.update(x[a:a + 999]); one.update(x[a:a + 999])
        assert four.n_devices == 4 and one.n_devices == 1 and four.count == one.count == 10_003
        assert sorted(int(c) for c in jax.device_get(four._state[0])) != [0, 0, 0, 10_003]
        ref = np.linalg.eigvalsh(np.cov(x.astype(np.float64), rowvar=False))[::-1]
        e4, e1 = four.eigenvalues(), one.eigenvalues()
        np.testing.assert_allclose(e4, e1, rtol=1e-5)
        np.testing.assert_allclose(e4, ref, rtol=1e-5)
        print("OK", np.abs(e4 - e1).max() / e1.min())
    """)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "OK" in out.stdout


def test_a_covariance_that_overflows_float32_is_a_clear_error():
    """Activations of a blown-up model: the float32 accumulator overflows; say so instead of LinAlgError."""
    x = np.full((64, 8), 3e19, np.float32)
    x[::2] *= -1
    with pytest.raises(ValueError, match="covariance overflowed"):
        covariance_eigenvalues(x)
