"""The cyclic-sequence task and its probe sets (spectral_jax.toy.task)."""

import dataclasses
import functools

import numpy as np
import pytest

from spectral_jax.toy import task

SMALL = task.TaskConfig(n_train=3000, n_val=500, n_test=700, seed=1)
MIXED = task.TaskConfig(
    n_train=2000,
    n_val=10,
    n_test=10,
    mix_min=1,
    mix_max=3,
    component_weight_pareto_alpha=2.0,
    noise="student_t",
    noise_std=1.5,
    noise_df=4.0,
)


@functools.cache
def default_train():
    return task.make_task(task.TaskConfig())["train"]


def test_splits_are_deterministic_and_sequential():
    first, second = task.make_task(SMALL), task.make_task(SMALL)
    for name in ("train", "val", "test"):
        np.testing.assert_array_equal(first[name].x_NxL, second[name].x_NxL)
        np.testing.assert_array_equal(first[name].latents.d_NxM, second[name].latents.d_NxM)
    other = task.make_task(dataclasses.replace(SMALL, seed=2))
    assert not np.array_equal(first["train"].x_NxL, other["train"].x_NxL)
    assert not np.array_equal(first["train"].x_NxL[:500], first["val"].x_NxL)
    rng = np.random.default_rng(SMALL.seed + 303)
    direct_train = task.sample_split(SMALL, SMALL.n_train, rng)
    direct_val = task.sample_split(SMALL, SMALL.n_val, rng)
    np.testing.assert_array_equal(direct_train.x_NxL, first["train"].x_NxL)
    np.testing.assert_array_equal(direct_val.x_NxL, first["val"].x_NxL)


@pytest.mark.parametrize("cfg", [SMALL, MIXED], ids=["single", "mixed_noisy"])
def test_shapes_dtypes_and_token_range(cfg):
    splits = task.make_task(cfg)
    for name, n in (("train", cfg.n_train), ("val", cfg.n_val), ("test", cfg.n_test)):
        split = splits[name]
        assert split.x_NxL.shape == split.y_NxL.shape == (n, cfg.seq_len)
        assert split.x_NxL.dtype == split.y_NxL.dtype == np.int32
        assert split.x_NxL.min() >= 0 and split.x_NxL.max() < cfg.vocab_size
        assert split.y_NxL.min() >= 0 and split.y_NxL.max() < cfg.vocab_size
        np.testing.assert_array_equal(split.y_NxL[:, :-1], split.x_NxL[:, 1:])


def test_single_component_sequences_follow_the_cycle():
    split = task.make_task(SMALL)["train"]
    lat = split.latents
    c, o, d, a = (v[:, 0] for v in (lat.c_NxM, lat.o_NxM, lat.d_NxM, lat.a_NxM))
    k = np.arange(SMALL.seq_len + 1)
    t = o[:, None] + (a[:, None] + d[:, None] * k) % c[:, None]
    np.testing.assert_array_equal(split.x_NxL, t[:, :-1])
    np.testing.assert_array_equal(split.y_NxL, t[:, 1:])
    state = split.x_NxL - o[:, None]
    np.testing.assert_array_equal(split.y_NxL - o[:, None], (state + d[:, None]) % c[:, None])


def test_latent_ranges_and_step_rule():
    lat = default_train().latents
    cfg = task.TaskConfig()
    c, o, d, a, g = (v[:, 0] for v in (lat.c_NxM, lat.o_NxM, lat.d_NxM, lat.a_NxM, lat.g_NxM))
    assert c.min() >= cfg.c_min and c.max() <= cfg.vocab_size
    assert o.min() >= 0 and np.all(o + c <= cfg.vocab_size)
    assert np.all((a >= 0) & (a < c))
    assert np.all((d >= 1) & (d <= c - 1))
    d_min = np.maximum(1, np.floor(cfg.d_min_frac * c))
    free = g == 0
    assert np.all(d[free] >= d_min[free])
    forced = ~free
    assert np.all(c[forced] % g[forced] == 0) and np.all(d[forced] % g[forced] == 0)
    assert np.all(g[forced] ** 2 <= c[forced]) and np.all(g[forced] >= 2)


def test_noncoprime_rule_fires_with_its_probability():
    lat = default_train().latents
    c, g = lat.c_NxM[:, 0], lat.g_NxM[:, 0]
    _, count_C = task.small_factor_table(1024)
    composite = count_C[c] > 0
    assert composite.sum() > 10_000
    assert abs(np.mean(g[composite] > 0) - 0.3) < 0.02
    assert np.all(g[~composite] == 0)


def test_modulus_and_offset_follow_their_power_laws():
    cfg = task.TaskConfig()
    lat = default_train().latents
    c, o = lat.c_NxM[:, 0], lat.o_NxM[:, 0]
    c_C, p_C = task.c_pmf(cfg)
    mean, var = np.sum(p_C * np.log(c_C)), np.sum(p_C * np.log(c_C) ** 2) - np.sum(p_C * np.log(c_C)) ** 2
    assert abs(np.log(c).mean() - mean) < 5 * np.sqrt(var / c.size)
    uniq, inverse = np.unique(c, return_inverse=True)
    log_o = [(p, np.log1p(np.arange(p.size))) for p in (task.o_pmf(cfg, int(u)) for u in uniq)]
    moments = np.array([[np.sum(p * v), np.sum(p * v**2)] for p, v in log_o])
    mean_o = moments[inverse, 0].mean()
    var_o = (moments[inverse, 1] - moments[inverse, 0] ** 2).mean()
    assert abs(np.log1p(o).mean() - mean_o) < 5 * np.sqrt(var_o / o.size)
    assert abs(np.mean(c == 5) - p_C[0]) < 5 * np.sqrt(p_C[0] * (1 - p_C[0]) / c.size)


def test_mixture_latents_and_weights():
    split = task.make_task(dataclasses.replace(MIXED, noise="none"))["train"]
    lat = split.latents
    assert set(np.unique(lat.n_components_N)) == {1, 2, 3}
    used = np.arange(3)[None, :] < lat.n_components_N[:, None]
    assert np.all(lat.c_NxM[~used] == -1) and np.all(lat.w_NxM[~used] == 0.0)
    assert np.all(lat.w_NxM[used] >= 1.0)
    t = task.cyclic_tokens(
        np.where(used, lat.c_NxM, 1),
        np.where(used, lat.o_NxM, 0),
        np.where(used, lat.d_NxM, 0),
        np.where(used, lat.a_NxM, 0),
        MIXED.seq_len + 1,
    )
    mix = np.einsum("nmk,nm->nk", t, lat.w_NxM) / lat.w_NxM.sum(axis=1, keepdims=True)
    np.testing.assert_array_equal(split.x_NxL, np.clip(np.rint(mix[:, :-1]), 0, MIXED.vocab_size - 1))


def test_noise_has_requested_scale():
    base = task.TaskConfig(n_train=4000, n_val=1, n_test=1, c_min=600, o_power=0.0)
    clean = task.make_task(base)["train"].x_NxL
    for kind in ("gaussian", "student_t"):
        noisy_cfg = dataclasses.replace(base, noise=kind, noise_std=2.0, noise_df=5.0)
        noisy = task.make_task(noisy_cfg)["train"].x_NxL
        interior = (clean > 20) & (clean < base.vocab_size - 20)
        assert abs(np.std((noisy - clean)[interior]) - np.sqrt(4.0 + 1 / 12)) < 0.1


@pytest.mark.parametrize("kind", ["clean_band", "matched_band"])
def test_probe_labels_are_the_last_input_state(kind):
    cfg = task.TaskConfig()
    probe = task.probe_split(cfg, 97, 200, kind=kind, n=2000, seed=3)
    L = cfg.seq_len
    np.testing.assert_array_equal(probe.m_N, (probe.a_N + probe.d_N * (L - 1)) % 97)
    np.testing.assert_array_equal(probe.x_NxL, 200 + probe.state_NxL)
    np.testing.assert_array_equal(probe.y_NxL[:, -1], 200 + (probe.m_N + probe.d_N) % 97)
    assert np.all((probe.d_N >= 12) & (probe.d_N <= 96))
    again = task.probe_split(cfg, 97, 200, kind=kind, n=2000, seed=3)
    np.testing.assert_array_equal(again.x_NxL, probe.x_NxL)
    assert not np.array_equal(task.probe_split(cfg, 97, 200, kind=kind, n=2000, seed=4).x_NxL, probe.x_NxL)


def test_matched_probe_mixes_nuisance_components():
    probe = task.probe_split(MIXED, 179, 50, kind="matched_band", n=3000, seed=0)
    assert probe.x_NxL.min() >= 0 and probe.x_NxL.max() < MIXED.vocab_size
    on_band = probe.x_NxL == 50 + probe.state_NxL
    assert 0.05 < on_band.mean() < 0.95
    clean = task.probe_split(MIXED, 179, 50, kind="clean_band", n=300, seed=0)
    np.testing.assert_array_equal(clean.x_NxL, 50 + clean.state_NxL)


def test_invalid_configs_raise():
    with pytest.raises(ValueError):
        task.TaskConfig(noise="laplace")
    with pytest.raises(ValueError):
        task.TaskConfig(noise="student_t", noise_df=2.0)
    with pytest.raises(ValueError):
        task.TaskConfig(mix_min=2, mix_max=1)
    with pytest.raises(ValueError):
        task.probe_split(task.TaskConfig(), 97, 1000)
    with pytest.raises(ValueError):
        task.probe_split(task.TaskConfig(), 97, 0, kind="dirty_band")
