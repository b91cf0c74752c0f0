"""Probes: per-sample gradients (vmap, capture, chunked) against a per-sequence loop, Gram-eigh singular values
against a float64 SVD, activation spectra against a by-hand covariance, the fused run_probes, bad inputs.

Most tests share one trunk-family model (betterwin: U-Net skips, value embeddings, document masks and a
run-time attention window, passed as a traced int32); the baseline family covers the fused qkv kernel.
Small models (2 blocks, 512-token vocabulary, T = 32) keep XLA compile time, which dominates on CPU, low;
the W_O kernels and the untied head are zero-initialised in these families, so they are perturbed at random
(zero head -> zero gradients).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from spectral_jax import probes, spectra
from spectral_jax.models import GPT, make_config
from spectral_jax.models.gpt import cross_entropy, rms_norm

SMALL = dict(n_layer=2, vocab_size=512, eot_id=0)
T = 32
N = 12
WINDOW = 8  # tokens (tiny window_min); documents here span up to 16 tokens, so the window matters


def _perturbed(cfg, seed=1):
    """GPT with random W_O, MLP output and head kernels, built in one jitted call (eager init is slow)."""

    def build():
        model = GPT(cfg, rngs=nnx.Rngs(seed))
        for layer, block in enumerate(model.blocks):
            if block.attn is not None:
                k = block.attn.c_proj.kernel
                k[...] = 0.05 * jax.random.normal(jax.random.key(layer), k.shape)
            k = block.mlp.c_proj.kernel
            k[...] = k[...] + 0.02 * jax.random.normal(jax.random.key(10 + layer), k.shape)
        if hasattr(model, "lm_head"):
            model.lm_head.kernel[...] = 0.05 * jax.random.normal(jax.random.key(9), model.lm_head.kernel.shape)
        return nnx.state(model)

    graphdef = nnx.graphdef(nnx.eval_shape(lambda: GPT(cfg, rngs=nnx.Rngs(seed))))
    return nnx.merge(graphdef, jax.jit(build)())


def _pool(cfg, n=N, length=T, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.integers(1, cfg.vocab_size, (n, length + 1)).astype(np.int32)
    w[:, [5, length // 2]] = cfg.eot_id
    return w


def _loop_grads(model, x, y, paths, window=None):
    """The reference procedure: a Python loop of a jitted per-sequence jax.grad w.r.t. the given kernels.
    Also returns rms_norm(block output) of every block (float64, from nnx.capture in the same forward)."""
    graphdef, wrt, rest = nnx.split(model, lambda p, _: tuple(p) in paths, ...)

    def loss(w, x1, y1):
        logits, acts = nnx.capture(nnx.merge(graphdef, w, rest), nnx.Intermediate)(x1[None], window=window)
        outs = [rms_norm(acts["blocks"][l]["block_out"][0][0]) for l in range(len(model.blocks))]
        return cross_entropy(logits, y1[None]), outs

    grad_one = jax.jit(jax.grad(loss, has_aux=True))
    rows, outs = {p: [] for p in paths}, []
    for i in range(x.shape[0]):
        grads, block_outs = grad_one(wrt, x[i], y[i])
        flat = dict(nnx.to_flat_state(grads))
        for p in paths:
            rows[p].append(np.asarray(flat[p][...]))
        outs.append([np.asarray(o, np.float64) for o in block_outs])
    return {p: np.stack(r) for p, r in rows.items()}, [np.stack(o) for o in zip(*outs)]


@pytest.fixture(scope="module")
def trunk():
    cfg = make_config("betterwin", "tiny", **SMALL)
    model = _perturbed(cfg)
    pool = _pool(cfg)
    x, y = probes.split_windows(pool)
    paths = {
        "L0.attn_out": ("blocks", 0, "attn", "c_proj", "kernel"),
        "L1.attn_out": ("blocks", 1, "attn", "c_proj", "kernel"),
        "L1.attn_v": ("blocks", 1, "attn", "c_v", "kernel"),
    }
    ref, block_outs = _loop_grads(model, x, y, set(paths.values()), window=jnp.int32(WINDOW))
    G_vmap = np.asarray(probes.per_sample_grads(model, x, y, "final_attn_out", window=WINDOW, method="vmap"))
    cov_eigs = {l: np.linalg.eigvalsh(np.cov(o.reshape(-1, 64), rowvar=False))[::-1] for l, o in enumerate(block_outs)}
    return dict(
        cfg=cfg,
        model=model,
        pool=pool,
        x=x,
        y=y,
        G_vmap=G_vmap,
        cov_eigs=cov_eigs,
        ref={k: ref[p].reshape(N, -1) for k, p in paths.items()},
    )


def test_split_windows():
    w = np.arange(12).reshape(2, 6)
    x, y = probes.split_windows(w)
    np.testing.assert_array_equal(x, w[:, :-1])
    np.testing.assert_array_equal(y, w[:, 1:])
    assert x.dtype == np.int32


def test_vmap_matches_per_sequence_loop(trunk):
    assert trunk["G_vmap"].shape == (N, 64 * 64) and trunk["G_vmap"].dtype == np.float32
    assert np.abs(trunk["ref"]["L1.attn_out"]).max() > 0
    np.testing.assert_allclose(trunk["G_vmap"], trunk["ref"]["L1.attn_out"], rtol=1e-5, atol=1e-8)


def test_capture_and_chunking_match_vmap_and_compile_once(trunk):
    m, x, y = trunk["model"], trunk["x"], trunk["y"]
    # capture in chunks of 4 (12 = 4 + 4 + 4) against vmap in one chunk of 12
    G_cap = probes.per_sample_grads(m, x, y, window=WINDOW, method="capture", chunk=4)
    np.testing.assert_allclose(G_cap, trunk["G_vmap"], rtol=1e-5, atol=1e-8)
    G_pad = probes.per_sample_grads(m, x[:10], y[:10], window=WINDOW, method="capture", chunk=4)  # 4+4+2
    np.testing.assert_allclose(G_pad, G_cap[:10], rtol=1e-6, atol=1e-9)
    before = dict(probes._TRACES)
    G_wide = probes.per_sample_grads(m, x, y, window=2 * WINDOW, method="capture", chunk=4)
    probes.per_sample_grads(m, x, y, window=WINDOW, method="vmap")
    assert dict(probes._TRACES) == before, "same shapes (any window) must not retrace"
    assert np.abs(np.asarray(G_wide) - np.asarray(G_cap)).max() > 1e-3 * np.abs(np.asarray(G_cap)).max()


def test_capture_only_on_probe_layers(trunk):
    m, x, y = trunk["model"], trunk["x"], trunk["y"]
    with pytest.raises(ValueError, match="probe_layers"):
        probes.per_sample_grads(m, x, y, "attn_out", layer=0, method="capture")
    # vmap works for any layer: block 0's W_O is checked in test_run_probes_matches_separate_probes


def test_gram_singular_values_match_float64_svd(trunk):
    G = trunk["G_vmap"]
    sv = probes.singular_values_gram(G)
    ref = np.linalg.svd(G.astype(np.float64), compute_uv=False)
    assert sv.shape == (N,) and np.all(np.diff(sv) <= 0)
    keep = ref >= 1e-3 * ref[0]
    assert keep.sum() == N
    np.testing.assert_allclose(sv[keep], ref[keep], rtol=1e-4)
    sv2 = probes.gradient_singular_values(trunk["model"], trunk["x"], trunk["y"], window=WINDOW, method="vmap")
    np.testing.assert_allclose(sv2, sv, rtol=1e-6)


def test_gram_keeps_small_singular_values():
    """A power-law spectrum over four decades: the float64-accumulated Gram keeps every sigma to 1e-4,
    where a float32 Gram (what the Gram trick gives naively) is off by far more."""
    rng = np.random.default_rng(0)
    M, P_ = 64, 4096
    U, _ = np.linalg.qr(rng.standard_normal((M, M)))
    V, _ = np.linalg.qr(rng.standard_normal((P_, M)))
    G = ((U * np.arange(1, M + 1) ** -2.2) @ V.T).astype(np.float32)
    ref = np.linalg.svd(G.astype(np.float64), compute_uv=False)
    assert ref[-1] < 1e-3 * ref[0]
    np.testing.assert_allclose(probes.singular_values_gram(G), ref, rtol=1e-4)
    gram32 = np.asarray(jnp.dot(G, G.T, precision="highest"), np.float64)
    naive = np.sqrt(np.clip(np.linalg.eigvalsh(gram32)[::-1], 0, None))
    assert np.max(np.abs(naive - ref) / ref) > 1e-3


def test_activation_spectrum_matches_numpy_covariance(trunk):
    m, x, expected = trunk["model"], trunk["x"], trunk["cov_eigs"]
    both = probes.activation_spectrum(m, (x[i : i + 4] for i in range(0, N, 4)), layer=(0, -1), window=WINDOW)
    assert sorted(both) == [0, 1]
    for l in (0, 1):
        assert both[l].shape == (64,) and np.all(np.diff(both[l]) <= 0)
        np.testing.assert_allclose(both[l][:32], expected[l][:32], rtol=1e-4)
    ev = probes.activation_spectrum(m, x, layer=-1, window=WINDOW)  # an int layer gives one array
    np.testing.assert_allclose(ev, both[1], rtol=1e-5)


def test_run_probes_matches_separate_probes(trunk):
    m, pool, expected = trunk["model"], trunk["pool"], trunk["cov_eigs"]
    res = probes.run_probes(
        m,
        pool,
        layers=(0, -1),
        matrices=("final_attn_out", "L0.attn_out", "attn_v"),
        grad_samples=6,
        chunk=4,
        window=WINDOW,
    )
    assert res.method == "vmap"  # block 0 is not a probe layer: vmap with the activations as aux
    assert res.rows == N * T and res.grad_samples == 6
    assert set(res.gradient) == {"L1.attn_out", "L0.attn_out", "L1.attn_v"} and set(res.activation) == {0, 1}
    for l in (0, 1):
        np.testing.assert_allclose(res.activation[l][:32], expected[l][:32], rtol=1e-4)
    for key, ref in trunk["ref"].items():
        np.testing.assert_allclose(
            res.gradient[key], np.linalg.svd(ref[:6].astype(np.float64), compute_uv=False), rtol=1e-4
        )
    for l in (0, 1):
        w = np.asarray(m.blocks[l].attn.c_proj.kernel[...], np.float64)
        np.testing.assert_allclose(res.weight[f"L{l}.attn_out"], np.linalg.svd(w, compute_uv=False), rtol=1e-10)

    fused = probes.run_probes(
        m, pool, layers=(0, -1), matrices=("final_attn_out", "attn_v"), grad_samples=6, chunk=4, window=WINDOW
    )
    assert fused.method == "capture"  # one forward + one backward per chunk for both matrices and layers
    for key in ("L1.attn_out", "L1.attn_v"):
        np.testing.assert_allclose(fused.gradient[key], res.gradient[key], rtol=1e-5)
    for l in (0, 1):
        np.testing.assert_allclose(fused.activation[l], res.activation[l], rtol=1e-5)

    records = probes.summarize_probe(res, tail=(8, 17))
    assert [r["kind"] for r in records] == ["activation"] * 2 + ["gradient"] * 3 + ["weight"] * 3
    for r in records:
        assert {
            "kind",
            "layer",
            "matrix",
            "n",
            "alpha_tail",
            "alpha_tail_r2",
            "rankme",
            "stable_rank",
            "participation_ratio",
            "head_mass10",
        } <= set(r)
        assert r["n"] == (6 if r["kind"] == "gradient" else 64)
        if r["kind"] == "gradient":  # 6 values: the [8, 17] tail and the [1, 10] head do not fit
            assert r["alpha_tail"] is None and "alpha_head" not in r
        else:
            assert np.isfinite(r["alpha_tail"]) and np.isfinite(r["alpha_head"]) and 0 < r["alpha_tail_r2"] <= 1
            values = (
                res.activation[r["layer"]] if r["kind"] == "activation" else res.weight[f"L{r['layer']}.{r['matrix']}"]
            )
            assert r["alpha_tail"] == pytest.approx(spectra.alpha(values, (8, 17)).alpha)
        assert np.isfinite(r["rankme"]) and (r["matrix"] is None) == (r["kind"] == "activation")


def test_fused_qkv_slices_match_loop():
    cfg = make_config("baseline", "tiny", **SMALL)
    model = _perturbed(cfg)
    pool = _pool(cfg, n=6)
    x, y = probes.split_windows(pool)
    c_attn = ("blocks", 1, "attn", "c_attn", "kernel")
    ref = _loop_grads(model, x, y, {c_attn})[0][c_attn]
    res = probes.run_probes(model, pool, layers=(), matrices=("attn_q", "attn_v"))
    assert res.method == "capture" and res.grad_samples == 6 and res.activation == {}
    kernel = np.asarray(model.blocks[1].attn.c_attn.kernel[...], np.float64)
    for name, cols in (("attn_q", slice(0, 64)), ("attn_v", slice(128, 192))):
        G = ref[:, :, cols].reshape(6, -1).astype(np.float64)
        np.testing.assert_allclose(res.gradient[f"L1.{name}"], np.linalg.svd(G, compute_uv=False), rtol=1e-4)
        np.testing.assert_allclose(
            res.weight[f"L1.{name}"], np.linalg.svd(kernel[:, cols], compute_uv=False), rtol=1e-10
        )
    assert probes.resolve_matrix(cfg, "attn_q").columns == (0, 64)


def test_bad_inputs_name_the_problem(trunk):
    m, x, y = trunk["model"], trunk["x"], trunk["y"]
    with pytest.raises(ValueError, match=r"unknown matrix 'attn_k'.*valid choices.*final_attn_out"):
        probes.per_sample_grads(m, x, y, "attn_k")
    with pytest.raises(ValueError, match=r"layer 2 outside .* 0\.\.1"):
        probes.per_sample_grads(m, x, y, "attn_out", layer=2)
    with pytest.raises(ValueError, match="layer -3 outside"):
        probes.weight_singular_values(m, "mlp_out", layer=-3)
    with pytest.raises(ValueError, match="fixed to block 1"):
        probes.resolve_matrix(trunk["cfg"], "final_attn_out", layer=0)
    with pytest.raises(ValueError, match="window 999 outside"):
        probes.per_sample_grads(m, x, y, window=999)
    with pytest.raises(probes.ProbeError, match="at least 2"):
        probes.gradient_singular_values(m, x[:1], y[:1])
    with pytest.raises(probes.ProbeError, match="grad_samples >= 2"):
        probes.run_probes(m, trunk["pool"], grad_samples=1)
    sparse = make_config("sparsev", "tiny", n_layer=4, vocab_size=512, eot_id=0)
    with pytest.raises(ValueError, match="has no attention"):
        probes.resolve_matrix(sparse, "attn_out", layer=sparse.no_attn_layer)

    broken = nnx.clone(m)
    broken.lm_head.kernel[...] = broken.lm_head.kernel[...].at[0, 0].set(jnp.nan)
    with pytest.raises(probes.ProbeError, match="non-finite .* sequence 0: the .*diverged"):
        probes.gradient_singular_values(broken, x, y, window=WINDOW, method="vmap")
    broken.lm_head.kernel[...] = m.lm_head.kernel[...]
    broken.blocks[0].mlp.c_fc.kernel[...] = jnp.full_like(m.blocks[0].mlp.c_fc.kernel[...], jnp.inf)
    with pytest.raises(probes.ProbeError, match="NaN/inf"):
        probes.activation_spectrum(broken, x, window=WINDOW)


def test_a_rank_deficient_spectrum_gets_no_tail_fit_and_says_why():
    """10 rows of 64-wide activations: 9 nonzero eigenvalues; windows past rank 9 would fit float32 round-off."""
    x = np.random.default_rng(0).normal(size=(10, 64)).astype(np.float32)
    ev = np.linalg.eigvalsh(np.cov(x.T).astype(np.float32))[::-1]
    out = probes._safe_summary(ev, (8, 17), (1, 10), ((2, 8), (8, 17)))
    assert out["alpha_tail"] is None and out["alpha_8_17"] is None and out["alpha_2_8"] is not None
    assert out["summary_note"].startswith("numerical rank 9 of 64")
    wide = np.random.default_rng(1).normal(size=(500, 64))
    full = probes._safe_summary(np.linalg.eigvalsh(np.cov(wide.T))[::-1], (8, 17), None, ())
    assert full["alpha_tail"] is not None and "summary_note" not in full
