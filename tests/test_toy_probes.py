"""Toy probes (spectral_jax.toy.probes): per-sample gradient SVD vs a loop, proxy rows, spectra, records."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from spectral_jax.models.gpt import cross_entropy
from spectral_jax.toy import task
from spectral_jax.toy.model import build_toy_model, hidden_and_logits
from spectral_jax.toy.probes import (
    ToyProbeConfig,
    ToyProber,
    centred_eigenvalues,
    last_states,
    per_sample_gradient_singular_values,
)
from spectral_jax.toy.train import ToyTrainConfig, train_toy


@pytest.fixture(scope="module")
def splits():
    return task.make_task(task.TaskConfig(n_train=256, n_val=32, n_test=8))


@pytest.fixture(scope="module")
def trained(splits):
    """A RoPE model after a few steps (zero-initialised W_O has moved, so its gradients are generic)."""
    run = train_toy(ToyTrainConfig(stage="rope", batch_size=8, lr=3e-3, max_steps=6, eval_every=3, target=0.0), splits)
    return run.model


def test_per_sample_gradient_svd_equals_a_loop_and_thin_svd(trained, splits):
    x, y = splits["train"].x_NxL[:6], splits["train"].y_NxL[:6]
    graphdef, params = nnx.split(trained, nnx.Param)

    def loss(p, xi, yi):
        return cross_entropy(nnx.merge(graphdef, p)(xi[None]), yi[None])

    rows = []
    for i in range(6):  # one sequence at a time, the reference's loop
        g = jax.grad(loss)(params, jnp.asarray(x[i]), jnp.asarray(y[i]))
        rows.append(np.asarray(g["blocks"][1]["attn"]["c_proj"]["kernel"][...], np.float64).ravel())
    G = np.stack(rows)
    assert np.linalg.norm(G) > 0
    expected = np.linalg.svd(G, compute_uv=False)
    got = per_sample_gradient_singular_values(trained, x, y, "final_attn_out")
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-7 * expected[0])


def test_proxy_rows_and_chunked_last_states(trained, splits):
    x, y = splits["train"].x_NxL[:7], splits["train"].y_NxL[:7]
    h, g = last_states(trained, x, y, chunk=3)
    h_all, logits = hidden_and_logits(trained, x)
    h_last = np.asarray(h_all)[:, -1]
    np.testing.assert_allclose(h, h_last, atol=1e-5)
    p = jax.nn.softmax(np.asarray(logits)[:, -1], axis=-1)
    p_true = np.asarray(p)[np.arange(7), y[:, -1]]
    np.testing.assert_allclose(g, (p_true - 1)[:, None] * h_last, atol=1e-5)
    h7, _ = last_states(trained, x, y, chunk=7, with_grad=False)
    np.testing.assert_allclose(h7, h, atol=1e-6)


def test_centred_eigenvalues_match_numpy_covariance():
    a = np.random.default_rng(0).standard_normal((300, 12)) @ np.diag(np.arange(1, 13.0)) + 5.0
    np.testing.assert_allclose(centred_eigenvalues(a), np.linalg.eigvalsh(np.cov(a, rowvar=False))[::-1], rtol=1e-10)
    with pytest.raises(ValueError):
        centred_eigenvalues(a[:1])


def test_prober_record_and_cache(splits):
    cfg = ToyProbeConfig(
        n_samples=64, n_probe=128, sweep_bands=((13, 0), (31, 400)), n_sweep=64, grad_samples=4, chunk=64
    )
    prober = ToyProber(task.TaskConfig(), splits, cfg)
    model = build_toy_model("untied", seed=0)
    rec = prober(model, level="full")
    for key in (
        "alpha_10_40",
        "alpha_head",
        "alpha_tail",
        "rankme",
        "grad_rankme",
        "act_eigenvalues",
        "fourier",
        "band_sweep",
        "psg_singular_values",
    ):
        assert key in rec, key
    assert len(rec["act_eigenvalues"]) == 128 and set(rec["band_sweep"]) == {"13:0", "31:400"}
    band = rec["fourier"]["97:200"]
    assert len(band["energy"]) == 97 and 0 <= band["H_S"] <= 1 and 0 < band["H_peak"] <= 0.5 + 1e-12
    # the untied head is zero at init: every per-sample gradient vanishes, summaries are None, not an error
    assert rec["psg_rankme"] is None and max(rec["psg_singular_values"]) == 0.0
    again = prober(build_toy_model("untied", seed=0), level="full")  # same parameters -> cached record
    assert again == rec and again is not rec
    other = prober(build_toy_model("untied", seed=1), level="spectra")
    assert other["rankme"] != rec["rankme"] and "fourier" not in other
    assert "fourier" in prober(model, level="fourier") and "band_sweep" not in prober(model, level="fourier")
    with pytest.raises(ValueError):
        prober(model, level="everything")
    with pytest.raises(ValueError):
        ToyProbeConfig(grad_samples=1)
