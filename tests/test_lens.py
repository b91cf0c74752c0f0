"""The model-agnostic layer on models this project did not write: a user's Flax NNX transformer, Hugging Face's Flax
GPT-2 (linen), equinox's MLP and a plain params dict. Per-example gradients against a per-example loop,
spectra against float64 NumPy, bad selections, degenerate spectra, the summary table.
"""

import os
import pathlib
import re
import subprocess
import sys
import textwrap

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from user_models import TinyLM, lm_loss, mlp_hidden, mlp_loss, mlp_params

import spectral_jax as sj
from spectral_jax.lens.common import _TRACES
from spectral_jax.lens.gradients import PerExampleGrads

V, T, M = 64, 16, 12


def _windows(n=M, seed=0):
    return np.random.default_rng(seed).integers(0, V, (n, T + 1)).astype(np.int32)


def _cov_eigs(rows_NxD):
    rows = np.asarray(rows_NxD, np.float64).reshape(-1, rows_NxD.shape[-1])
    return np.linalg.eigvalsh(np.cov(rows, rowvar=False))[::-1]


def _svd64(G):
    return np.linalg.svd(np.asarray(G, np.float64), compute_uv=False)


def _loop_grads(loss_fn, params, examples, pick, grad=None):
    """The reference: one jax.grad per example, the selected leaf's gradient flattened."""
    n = jax.tree_util.tree_leaves(examples)[0].shape[0]
    grad = grad or jax.jit(jax.grad(loss_fn))
    rows = [np.asarray(pick(grad(params, jax.tree_util.tree_map(lambda a: a[i], examples)))).ravel() for i in range(n)]
    return np.stack(rows)


@pytest.fixture(scope="module")
def nnx_model():
    return TinyLM(vocab=V, seq=T)


def test_nnx_gradients_equal_a_per_example_loop_in_any_chunking(nnx_model):
    w = _windows()
    path = "blocks/1/down/kernel"
    engine = PerExampleGrads(lm_loss, nnx_model, where=f"^{path}$")
    G = np.concatenate(engine.run(w, 5)[0])  # 5 + 5 + 2 (padded)
    graphdef, state = nnx.split(nnx_model)
    ref = _loop_grads(
        lambda s, x: lm_loss(nnx.merge(graphdef, s), x), state, w, lambda g: g["blocks"][1]["down"]["kernel"][...]
    )
    np.testing.assert_allclose(G, ref, rtol=2e-5, atol=1e-7)
    spectra = sj.gradient_spectrum(lm_loss, nnx_model, w, where=path, chunk=4)
    s = spectra[path]
    assert (s.kind, s.samples, s.shape, len(s)) == ("gradient", M, (128, 32), M)
    np.testing.assert_allclose(s.values, _svd64(ref), rtol=1e-5, atol=1e-9 * s.values[0])


def test_nnx_compiles_once_per_chunk_shape_whatever_the_number_of_examples(nnx_model):
    sj.gradient_spectrum(lm_loss, nnx_model, _windows(8), where="blocks/0/up/kernel", chunk=4)
    before = _TRACES["per_example_grads"]
    sj.gradient_spectrum(lm_loss, nnx_model, _windows(24, seed=1), where="blocks/0/up/kernel", chunk=4)
    assert _TRACES["per_example_grads"] == before, "a second call with more examples must reuse the compiled chunk"


def test_nnx_activation_spectra_by_capture_match_numpy(nnx_model):
    w = _windows()[:, :-1]
    spectra = sj.activation_spectra(nnx_model, [w[:5], w[5:]], where=r"^blocks/\d+$")
    assert list(spectra) == ["blocks/0", "blocks/1"]
    outs = nnx_model.hidden_states(jnp.asarray(w))
    for i, key in enumerate(spectra):
        s = spectra[key]
        assert (s.kind, s.samples, s.shape) == ("activation", M * T, (32,))
        ref = _cov_eigs(np.asarray(outs[i]))
        np.testing.assert_allclose(s.values, ref, rtol=1e-4, atol=1e-6 * ref[0])
    # a method other than __call__ is found under its name; a predicate works as `where`
    by_method = sj.activation_spectra(nnx_model, w, where=lambda path, leaf: path == "hidden_states/1")
    np.testing.assert_allclose(by_method["hidden_states/1"].values, spectra["blocks/1"].values, rtol=1e-5)


def test_fn_activation_spectrum_of_any_function(nnx_model):
    w = _windows()[:, :-1]
    s = sj.activation_spectrum(lambda x: nnx_model.hidden_states(x)[-1], [w[:6], w[6:]])  # jitted by the probe
    assert isinstance(s, sj.Spectrum) and s.path == "output"
    ref = _cov_eigs(np.asarray(nnx_model.hidden_states(w)[-1]))
    np.testing.assert_allclose(s.values, ref, rtol=1e-4, atol=1e-6 * ref[0])
    fn = nnx.jit(lambda m, x: {"first": m.hidden_states(x)[0], "last": m.hidden_states(x)[-1]})
    both = sj.activation_spectrum(lambda x: fn(nnx_model, x), w, jit=False)  # already jitted
    assert set(both) == {"first", "last"}
    np.testing.assert_allclose(both["last"].values, s.values, rtol=1e-5)


def test_weight_spectra_match_numpy_and_skip_with_reasons(nnx_model):
    spectra = sj.weight_spectra(nnx_model, where="kernel|embedding")
    assert "blocks/0/up/kernel" in spectra and "blocks/0/up/bias" not in spectra
    k = np.asarray(nnx_model.blocks[0].up.kernel[...])
    np.testing.assert_allclose(spectra["blocks/0/up/kernel"].values, _svd64(k), rtol=1e-9)
    q = spectra["blocks/0/attn/query/kernel"]  # (d, heads, head_dim): rank 3
    assert q.shape == (32 * 2, 16) and "reshaped" in q.note
    params = {"conv": jnp.ones((3, 3, 4, 8)), "zero": jnp.zeros((5, 7)), "bias": jnp.ones(7)}
    out = sj.weight_spectra(params)
    assert set(out) == {"conv", "zero"}
    assert out["conv"].shape == (36, 8) and "rank-4" in out["conv"].note
    assert "all zero" in out["zero"].note and not out["zero"].values.any()
    with pytest.raises(sj.ProbeError, match="bad has NaN"):
        sj.weight_spectra({"bad": jnp.full((3, 3), jnp.nan)})
    row = out["zero"].summary()
    assert np.isnan(row["alpha_tail"]) and "all zero" in row["warning"]


def test_a_where_that_matches_nothing_lists_the_paths(nnx_model):
    with pytest.raises(ValueError, match="matches none of .*blocks/0/up/kernel"):
        sj.gradient_spectrum(lm_loss, nnx_model, _windows(), where="no_such_layer")
    with pytest.raises(ValueError, match="matches none of .*blocks/1"):
        sj.activation_spectra(nnx_model, _windows()[:, :-1], where="nothing")
    with pytest.raises(ValueError, match="not a regex"):
        sj.weight_spectra(nnx_model, where="(")
    with pytest.raises(ValueError, match="one scalar per example"):
        sj.gradient_spectrum(lambda m, w: m(w[None, :-1]), nnx_model, _windows(), where="head")


@pytest.fixture(scope="module")
def hf_gpt2():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(vocab_size=V, n_positions=T, n_embd=32, n_layer=2, n_head=2)
    return transformers.FlaxGPT2LMHeadModel(cfg, seed=0)


def _hf_call(module, tokens):
    pos = jnp.broadcast_to(jnp.arange(tokens.shape[-1]), tokens.shape)
    return module(tokens, jnp.ones_like(tokens), pos, deterministic=True)


def test_linen_hugging_face_gpt2(hf_gpt2):
    w = _windows()

    def loss(params, window):
        out = hf_gpt2.module.apply({"params": params}, window[None, :-1], method=_hf_call)
        return optax.softmax_cross_entropy_with_integer_labels(out.logits, window[None, 1:]).mean()

    path = "transformer/h/1/attn/c_proj/kernel"
    g = sj.gradient_spectrum(loss, hf_gpt2.params, w, where=path, chunk=5)[path]
    ref = _loop_grads(loss, hf_gpt2.params, w, lambda p: p["transformer"]["h"]["1"]["attn"]["c_proj"]["kernel"])
    np.testing.assert_allclose(g.values, _svd64(ref), rtol=1e-5, atol=1e-9 * g.values[0])

    acts = sj.activation_spectra(hf_gpt2, [w[:6, :-1], w[6:, :-1]], where=r"h/\d+$", call=_hf_call)
    assert list(acts) == ["transformer/h/0", "transformer/h/1"]
    _, state = hf_gpt2.module.apply(
        {"params": hf_gpt2.params}, w[:, :-1], method=_hf_call, capture_intermediates=True, mutable=["intermediates"]
    )
    block1 = state["intermediates"]["transformer"]["h"]["1"]["__call__"][0][0]
    np.testing.assert_allclose(acts["transformer/h/1"].values, _cov_eigs(np.asarray(block1)), rtol=1e-4, atol=1e-9)

    weights = sj.weight_spectra(hf_gpt2, where="c_fc")
    kernel = hf_gpt2.params["transformer"]["h"]["0"]["mlp"]["c_fc"]["kernel"]
    np.testing.assert_allclose(weights["transformer/h/0/mlp/c_fc/kernel"].values, _svd64(kernel), rtol=1e-9)
    table = sj.analyze(acts, weights, as_frame=False)
    assert len(table) == 4 and {r["kind"] for r in table} == {"activation", "weight"}


def test_equinox_mlp():
    model = eqx.nn.MLP(12, 5, 24, 2, key=jax.random.key(0))
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((M, 12)).astype(np.float32), rng.integers(0, 5, M)

    def loss(m, ex):
        return optax.softmax_cross_entropy_with_integer_labels(m(ex[0]), ex[1])

    g = sj.gradient_spectrum(loss, model, (x, y), where=r"layers/1/weight")
    grad = eqx.filter_jit(eqx.filter_grad(loss))
    ref = _loop_grads(loss, model, (x, y), lambda gm: gm.layers[1].weight, grad=grad)
    np.testing.assert_allclose(g["layers/1/weight"].values, _svd64(ref), rtol=1e-5, atol=1e-9)
    weights = sj.weight_spectra(model)
    assert list(weights) == ["layers/0/weight", "layers/1/weight", "layers/2/weight"]
    np.testing.assert_allclose(weights["layers/2/weight"].values, _svd64(model.layers[2].weight), rtol=1e-9)
    a = sj.activation_spectrum(jax.vmap(model.layers[0]), [x[:6], x[6:]])
    ref = _cov_eigs(np.asarray(jax.vmap(model.layers[0])(x)))
    np.testing.assert_allclose(a.values, ref, rtol=1e-4, atol=1e-6 * ref[0])  # rank 11 of 24: float32 floor


def test_plain_function_with_a_params_dict():
    params = mlp_params(jax.random.key(2))
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((M, 12)).astype(np.float32), rng.integers(0, 5, M)
    out = sj.gradient_spectrum(mlp_loss, params, (x, y), where=r"/w$", chunk=5)
    assert list(out) == ["layer0/w", "layer1/w"]
    ref = _loop_grads(mlp_loss, params, (x, y), lambda g: g["layer0"]["w"])
    np.testing.assert_allclose(out["layer0/w"].values, _svd64(ref), rtol=1e-5, atol=1e-9)
    assert list(sj.weight_spectra(params)) == ["layer0/w", "layer1/w"]
    a = sj.activation_spectrum(lambda b: mlp_hidden(params, b), x)
    ref = _cov_eigs(np.asarray(mlp_hidden(params, x)))
    np.testing.assert_allclose(a.values, ref, rtol=1e-4, atol=1e-6 * ref[0])


def test_summary_rows_and_degenerate_spectra(tmp_path):
    j = np.arange(1, 201, dtype=np.float64)
    s = sj.Spectrum("activation", "x", j**-1.5, samples=1000, shape=(200,))
    row = s.summary()
    assert row["tail_window"] == "26-52"  # d12's [100, 200] of 768, scaled to 200 values
    assert row["alpha_tail"] == pytest.approx(1.5) and row["alpha_tail_r2"] == pytest.approx(1.0)
    assert row["alpha_tail_ci_low"] <= 1.5 + 1e-9 <= row["alpha_tail_ci_high"] + 2e-9
    assert row["alpha_26_52"] == pytest.approx(1.5) and row["alpha_52_104"] == pytest.approx(1.5)
    assert row["soft_rank"] == row["rankme"] and row["warning"] == ""
    short = sj.Spectrum("gradient", "y", np.array([2.0, 1.0]), samples=2, shape=(4, 4)).summary()
    assert np.isnan(short["alpha_tail"]) and "too short" in short["warning"]
    zero = sj.Spectrum("gradient", "z", np.zeros(50), samples=50, shape=(50, 8)).summary()
    assert np.isnan(zero["rankme"]) and "all zeros" in zero["warning"]
    rows = sj.analyze([s], {"z": sj.Spectrum("gradient", "z", np.zeros(50), 50, (50, 8))}, as_frame=False)
    rows.to_csv(tmp_path / "t.csv")
    lines = (tmp_path / "t.csv").read_text().splitlines()
    assert lines[0].startswith("kind,path,quantity,n,samples,shape,tail_window") and lines[0].endswith(",warning")
    assert len(lines) == 3
    pd = pytest.importorskip("pandas")
    frame = sj.analyze(s)
    assert isinstance(frame, pd.DataFrame) and frame.loc[0, "alpha_tail"] == pytest.approx(1.5)


def test_readme_probe_your_model_snippet_runs_as_written():
    pytest.importorskip("transformers")
    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    code = re.search(r"## Probe your own model.*?```python\n(.*?)```", readme, re.S).group(1)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    table = namespace["table"]
    assert len(table) == 2 + 1 + 8  # 2 blocks; W_O; c_attn, attn c_proj, c_fc, mlp c_proj per block
    assert set(table["kind"]) == {"activation", "gradient", "weight"}
    assert table["alpha_tail"].notna().all()


def test_sharded_over_four_devices_equals_one_device():
    """Chunks split over a 4-device mesh give the same gradient and activation spectra as one device."""
    code = textwrap.dedent("""
        import jax, numpy as np
        from jax.sharding import Mesh
        import spectral_jax as sj
        from user_models import TinyLM, lm_loss
        assert jax.device_count() == 4, jax.devices()
        model = TinyLM(vocab=64, seq=16)
        w = np.random.default_rng(0).integers(0, 64, (12, 17)).astype(np.int32)
        mesh = Mesh(np.array(jax.devices()), ("data",))
        path = "blocks/1/down/kernel"
        g4 = sj.gradient_spectrum(lm_loss, model, w, where=path, chunk=8, mesh=mesh)[path].values
        g1 = sj.gradient_spectrum(lm_loss, model, w, where=path, chunk=8)[path].values
        np.testing.assert_allclose(g4, g1, rtol=1e-5, atol=1e-7 * g1[0])
        a4 = sj.activation_spectra(model, [w[:8, :-1], w[8:, :-1]], where="blocks/1$", mesh=mesh)["blocks/1"]
        a1 = sj.activation_spectra(model, [w[:8, :-1], w[8:, :-1]], where="blocks/1$")["blocks/1"]
        np.testing.assert_allclose(a4.values, a1.values, rtol=1e-4, atol=1e-6 * a1.values[0])
        print("OK")
    """)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join([str(pathlib.Path(__file__).parent), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "OK" in out.stdout


def test_results_follow_the_model_order_numbers_as_numbers():
    params = {"h": {str(i): {"w": np.eye(3, 4, dtype=np.float32) * (i + 1)} for i in range(12)}}
    assert list(sj.weight_spectra(params)) == [f"h/{i}/w" for i in range(12)]
