"""The NNX GPT: every family trains at tier tiny, probes capture, FP8 head, no retracing, long-context shapes.

XLA's per-program compile time dominates on CPU, so the per-family training test shrinks tier tiny to 2 layers
(one U-Net encoder and decoder block) and a 512-token vocabulary (EOT id 0), and compiles all 18 loops (each
with its family's own optimizer) as one program. The full tiny tier (8 layers: sparse None layers, middle
no-attention layer, LSWA short layers, FP8 head) runs forward and backward for lswa and is shape-checked for
several other families.
"""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest
from flax import nnx

from spectral_jax.models import FAMILIES, GPT, abstract_model, attention, make_config
from spectral_jax.models import rotary as rotary_module
from spectral_jax.models.gpt import (
    _apply,
    _joint_linear,
    apply_rotary,
    cross_entropy,
    cross_entropy_per_sequence,
    fp8_matmul,
    logit_head,
    rms_norm,
    rotary_frequencies,
)
from spectral_jax.optim import make_optimizer

SMALL = dict(n_layer=4, vocab_size=512, eot_id=0)
TRAIN = dict(n_layer=2, vocab_size=512, eot_id=0)


def _batch(cfg, batch, length, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, cfg.vocab_size, (batch, length + 1))
    tokens[:, [5, length // 3, 2 * length // 3 + 1]] = cfg.eot_id
    return jnp.asarray(tokens[:, :-1], jnp.int32), jnp.asarray(tokens[:, 1:], jnp.int32)


def _adam_loop(graphdef, params, x, y, window, steps, tx):
    """Forward logits at init, then `steps` optimizer steps on one batch; returns (logits0, losses, finite)."""
    logits0 = nnx.merge(graphdef, params)(x, window=window)
    loss_fn = lambda p: cross_entropy(nnx.merge(graphdef, p)(x, window=window), y)

    def step(i, carry):
        p, opt_state, losses = carry
        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, opt_state = tx.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state, losses.at[i].set(loss)

    p, _, losses = jax.lax.fori_loop(0, steps, step, (params, tx.init(params), jnp.zeros(steps)))
    finite = jnp.all(jnp.asarray([jnp.all(jnp.isfinite(v)) for v in jax.tree.leaves(p)]))
    return logits0, losses, finite


@pytest.fixture(scope="module")
def trained_families():
    """All families' training loops in ONE compiled program (XLA's per-program cost dominates on CPU), each
    with its own optimizer (make_optimizer: Muon + Adam groups, AdamW, LSWA-Adam) at its anchor LRs."""
    models = {}
    for family in FAMILIES:
        cfg = make_config(family, "tiny", **TRAIN)
        graphdef, params = nnx.split(GPT(cfg, rngs=nnx.Rngs(0)), nnx.Param)
        models[family] = (graphdef, params, attention.scheduled_window(cfg, 0.1), make_optimizer(cfg))
    x, y = _batch(make_config("baseline", "tiny", **TRAIN), 2, 64)

    @jax.jit
    def run_all(params, x, y):
        return {f: _adam_loop(g, params[f], x, y, jnp.int32(w), 50, tx) for f, (g, _, w, tx) in models.items()}

    results = run_all({f: p for f, (_, p, _, _) in models.items()}, x, y)
    return jax.tree.map(np.asarray, results)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_trains_at_tiny(family, trained_families):
    logits0, losses, finite = trained_families[family]
    assert logits0.shape == (2, 64, 512) and logits0.dtype == np.float32
    assert np.all(np.isfinite(logits0)), "forward at init"
    assert np.isfinite(losses[1]), "first optimizer step"
    assert finite and np.all(np.isfinite(losses))
    assert losses[-1] < losses[0] - 0.3, f"loss did not fall: {losses[0]:.3f} -> {losses[-1]:.3f}"


def test_full_tiny_tier_forward_and_gradient():
    cfg = make_config("lswa", "tiny")
    graphdef, params = nnx.split(GPT(cfg, rngs=nnx.Rngs(0)), nnx.Param)
    x, y = _batch(cfg, 1, 64)

    @jax.jit
    def loss_and_grad(params, x, y):
        return jax.value_and_grad(lambda p: cross_entropy(nnx.merge(graphdef, p)(x), y))(params)

    loss, grads = loss_and_grad(params, x, y)
    assert abs(float(loss) - np.log(cfg.vocab_size)) < 0.5  # zero-init head: near-uniform prediction
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    assert float(jnp.abs(grads["lm_head"]["kernel"][...]).max()) > 0


@pytest.mark.parametrize("family", ["baseline", "unet", "betterwin", "sublr"])
def test_full_tiny_tier_shapes(family):
    cfg = make_config(family, "tiny")
    graphdef, state = nnx.split(abstract_model(cfg))
    tokens = jax.ShapeDtypeStruct((2, cfg.seq_len), jnp.int32)
    out = jax.eval_shape(lambda s, t: nnx.merge(graphdef, s)(t), state, tokens)
    assert out.shape == (2, cfg.seq_len, cfg.vocab_size) and out.dtype == jnp.float32


def test_d12_betterwin_at_65536_tokens_shape_only():
    cfg = make_config("betterwin", "d12")
    graphdef, state = nnx.split(abstract_model(cfg))
    tokens = jax.ShapeDtypeStruct((1, 65_536), jnp.int32)
    window = jax.ShapeDtypeStruct((), jnp.int32)
    out = jax.eval_shape(lambda s, t, w: nnx.merge(graphdef, s)(t, window=w), state, tokens, window)
    assert out.shape == (1, 65_536, 50_304) and out.dtype == jnp.float32


def _saved_residual_gib(cfg, T: int) -> float:
    """GiB the training loss's VJP keeps for the backward of one T-token sequence (eval_shape: no allocation)."""
    graphdef, params = nnx.split(abstract_model(cfg), nnx.Param)
    tokens = jax.ShapeDtypeStruct((1, T), jnp.int32)
    vjp = lambda p, x: jax.vjp(lambda p: nnx.merge(graphdef, p).loss(x, x, window=cfg.window_max), p)[1]
    return sum(l.size * l.dtype.itemsize for l in jax.tree.leaves(jax.eval_shape(vjp, params, tokens))) / 2**30


def test_d12_betterwin_training_step_fits_an_accelerator(monkeypatch):
    """On accelerators "auto" attention must keep d12 BetterWin's backward residuals at T = 65,536 well inside one
    GPU (40 GiB; the banded kernel kept 162 GiB, more than an H200's 139)."""
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    cfg = make_config("betterwin", "d12")
    assert _saved_residual_gib(cfg, 65_536) < 48


def test_lswa_layer_windows():
    cfg = make_config("lswa", "tiny")
    model = abstract_model(cfg)
    window = attention.scheduled_window(cfg, 0.1)  # ceil(216 * 0.1 / 16) = 2 blocks
    assert window == 32
    assert [int(w) for w in model._layer_windows(jnp.int32(window))] == [32, 16, 16, 16, 16, 16, 16, 32]
    assert [int(w) for w in model._layer_windows(None)] == [224, 112, 112, 112, 112, 112, 112, 224]
    assert model._layer_windows(jnp.int32(16))[1] == 16  # short never drops below one block


def test_jitted_train_step_never_retraces():
    cfg = make_config("lswa", "tiny", **{**SMALL, "n_layer": 2})
    model = GPT(cfg, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
    graph_before = nnx.graphdef(model)
    traces = []

    @nnx.jit
    def train_step(model, optimizer, x, y, window):
        traces.append(1)
        loss, grads = nnx.value_and_grad(lambda m: cross_entropy(m(x, window=window), y))(model)
        optimizer.update(model, grads)
        return loss

    x, y = _batch(cfg, 2, 32)
    for f in (0.0, 0.5, 1.0):
        train_step(model, optimizer, x, y, jnp.int32(attention.scheduled_window(cfg, f)))
    assert len(traces) == 1
    assert nnx.graphdef(model) == graph_before


def test_capture_gives_block_outputs_and_w_o_per_sample_gradients():
    cfg = make_config("unet", "tiny", **{**SMALL, "n_layer": 2})
    model = GPT(cfg, rngs=nnx.Rngs(1))
    for layer, block in enumerate(model.blocks):  # zero-init W_O and head would give zero gradients
        shape = block.attn.c_proj.kernel.shape
        block.attn.c_proj.kernel[...] = 0.05 * jax.random.normal(jax.random.key(layer), shape)
    model.lm_head.kernel[...] = 0.05 * jax.random.normal(jax.random.key(9), model.lm_head.kernel.shape)
    x, y = _batch(cfg, 3, 32, seed=4)
    L = cfg.n_layer
    graphdef, state = nnx.split(model)

    @jax.jit
    def probe(state, x, y):
        m = nnx.merge(graphdef, state)
        _, zeros = nnx.capture(m, nnx.Perturbation)(x)

        def loss_fn(m, perturb):
            logits, acts = nnx.capture(m, nnx.Intermediate, init=perturb)(x)
            return cross_entropy(logits, y), (logits, acts)

        (_, g), (logits, acts) = nnx.grad(loss_fn, argnums=(0, 1), has_aux=True)(m, zeros)
        a_BxTxD = acts["blocks"][L - 1]["attn"]["c_proj_in"][0]
        g_BxTxD = g["blocks"][L - 1]["attn"]["c_proj_out"][...]
        grads_BxDxD = x.shape[0] * jnp.einsum("btd,bte->bde", a_BxTxD, g_BxTxD)
        outs = [acts["blocks"][i]["block_out"][0] for i in range(L)]
        return logits, outs, grads_BxDxD

    logits, block_outs, per_sample = probe(state, x, y)
    assert len(block_outs) == L and all(o.shape == (3, 32, cfg.d_model) for o in block_outs)
    head = logit_head(model.lm_head(rms_norm(block_outs[-1])), cfg)
    np.testing.assert_allclose(head, logits, atol=1e-5)

    is_w_o = lambda path, _: path == ("blocks", L - 1, "attn", "c_proj", "kernel")
    graphdef2, w_o, rest = nnx.split(model, is_w_o, ...)

    def sequence_loss(w_o, x1, y1):
        return cross_entropy(nnx.merge(graphdef2, w_o, rest)(x1[None]), y1[None])

    reference = jax.jit(jax.vmap(jax.grad(sequence_loss), in_axes=(None, 0, 0)))(w_o, x, y)
    reference = jax.tree.leaves(reference)[0]
    assert float(jnp.abs(reference).max()) > 0
    np.testing.assert_allclose(per_sample, reference, atol=1e-6, rtol=1e-4)


def test_fp8_matmul_matches_numpy_cast_reference():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 32)).astype(np.float32)
    w = (0.05 * rng.normal(size=(32, 10))).astype(np.float32)
    g = (1e-3 * rng.normal(size=(6, 10))).astype(np.float32)
    xs, ws, gs = 2.0, 32.0, float(2**16)
    f8 = lambda a, t: a.astype(t).astype(np.float64)
    x8, w8, g8 = (
        f8(x * xs, ml_dtypes.float8_e4m3fn),
        f8(w * ws, ml_dtypes.float8_e4m3fn),
        f8(g.astype(ml_dtypes.bfloat16).astype(np.float32) * gs, ml_dtypes.float8_e5m2),
    )
    bf16 = lambda a: a.astype(ml_dtypes.bfloat16).astype(np.float64)

    out, vjp = jax.vjp(lambda a, b: fp8_matmul(a, b, xs, ws, gs), jnp.asarray(x), jnp.asarray(w))
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float64), bf16(x8 @ w8 / (xs * ws)), rtol=1e-2, atol=1e-4)
    assert np.abs(np.asarray(out, np.float64) - x @ w).max() > 1e-3, "fp8 rounding must be visible"

    dx, dw = vjp(jnp.asarray(g, jnp.bfloat16))
    assert dx.dtype == jnp.float32 and dw.dtype == jnp.float32
    np.testing.assert_allclose(dx, bf16(g8 @ w8.T / (gs * ws)), rtol=1e-2, atol=1e-6)
    np.testing.assert_allclose(dw, x8.T @ g8 / (gs * xs), rtol=1e-5, atol=1e-9)


def test_fp8_head_gradients_reach_the_head_and_the_trunk():
    cfg = make_config("fp8head", "tiny", **{**SMALL, "n_layer": 2})
    model = GPT(cfg, rngs=nnx.Rngs(0))
    model.lm_head.kernel[...] = 0.02 * jax.random.normal(jax.random.key(0), model.lm_head.kernel.shape)
    x, y = _batch(cfg, 2, 32)
    grads = nnx.jit(nnx.grad(lambda m: cross_entropy(m(x), y)))(model)
    assert float(jnp.abs(grads["lm_head"]["kernel"][...]).max()) > 0
    assert float(jnp.abs(grads["blocks"][0]["mlp"]["c_proj"]["kernel"][...]).max()) > 0
    assert float(jnp.abs(grads["embed"]["embedding"][...]).max()) > 0


def test_bad_inputs_name_the_problem():
    cfg = make_config("flexwin", "tiny", **SMALL)
    model = GPT(cfg, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="exceeds config.seq_len 512"):
        model(jnp.zeros((1, 528), jnp.int32))
    with pytest.raises(ValueError, match="not a multiple of the attention block size 16"):
        model(jnp.zeros((1, 40), jnp.int32))
    with pytest.raises(ValueError, match="window 300 outside"):
        model(jnp.zeros((1, 32), jnp.int32), window=300)


def test_parameter_names_layouts_and_init():
    cfg = make_config("sparsev", "tiny", **SMALL)
    model = GPT(cfg, rngs=nnx.Rngs(0))
    params = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    names = {"/".join(map(str, path)) for path in params}
    assert {
        "embed/embedding",
        "lm_head/kernel",
        "skip_weights",
        "value_embeds/0/embedding",
        "blocks/0/attn/c_q/kernel",
        "blocks/0/attn/mix",
        "blocks/0/lambdas",
        "blocks/0/mlp/c_proj/kernel",
    } <= names
    assert not any(name.startswith(f"blocks/{cfg.no_attn_layer}/attn") for name in names)
    assert params[("blocks", 0, "mlp", "c_fc", "kernel")].shape == (64, 256)  # (in, out)
    for path, p in params.items():
        if path[0] == "blocks":
            assert p.ndim <= 1 or p.ndim == 2
    assert float(jnp.abs(model.lm_head.kernel[...]).max()) == 0  # untied head zero-init
    assert float(jnp.abs(model.blocks[0].attn.c_proj.kernel[...]).max()) == 0
    assert 0.9 < float(jnp.std(model.embed.embedding[...])) < 1.1

    rope = GPT(make_config("rope", "tiny", **SMALL), rngs=nnx.Rngs(0))
    assert not hasattr(rope, "lm_head") and not hasattr(rope, "pos_embed")
    assert 0.018 < float(jnp.std(rope.embed.embedding[...])) < 0.022
    assert 0.018 / 8**0.5 < float(jnp.std(rope.blocks[0].mlp.c_proj.kernel[...])) < 0.022 / 8**0.5
    base = GPT(make_config("baseline", "tiny", **SMALL), rngs=nnx.Rngs(0))
    assert float(jnp.abs(base.embed.embedding[...]).max()) <= 64**-0.5
    assert base.pos_embed.embedding.shape == (128, 64)
    assert base.blocks[0].attn.c_attn.kernel.shape == (64, 192)


def test_rotary_is_relative_and_truncated_pairs_are_identity():
    rng = np.random.default_rng(0)
    v = jnp.asarray(rng.normal(size=(1, 1, 1, 32)), jnp.float32)
    x = jnp.tile(v, (1, 40, 1, 1))
    rotate = jax.jit(
        lambda x, pos, sign: apply_rotary(x, rotary_frequencies(32, pos, 10000.0), sign), static_argnums=(1, 2)
    )
    for pos, sign in (("rope", 1.0), ("trunc_rope", -1.0)):
        r = rotate(x, pos, sign)[0, :, 0]
        dots = r @ r.T
        np.testing.assert_allclose(dots[5, 2], dots[30, 27], rtol=1e-4)
        np.testing.assert_allclose(dots[7, 7], float(v[0, 0, 0] @ v[0, 0, 0]), rtol=1e-4)
    truncated = rotate(x, "trunc_rope", -1.0)
    np.testing.assert_allclose(truncated[0, 17, 0, 8:16], x[0, 17, 0, 8:16])
    np.testing.assert_allclose(truncated[0, 17, 0, 24:], x[0, 17, 0, 24:])
    assert not np.allclose(truncated[0, 17, 0, :8], x[0, 17, 0, :8])


def test_rotary_constant_tables_equal_the_graph_computation(monkeypatch):
    """The NumPy tables (tiny lengths) and the in-graph cos/sin (long tables, or traced frequencies) agree."""
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 64, 2, 32)), jnp.float32)
    for pos, sign in (("rope", 1.0), ("trunc_rope", -1.0)):
        freq = rotary_frequencies(32, pos, 10000.0)
        assert isinstance(freq, np.ndarray) and freq.dtype == np.float32
        assert isinstance(rotary_module.rotary_tables(64, freq)[0], np.ndarray)
        constant = jax.jit(lambda x: apply_rotary(x, freq, sign))(x)
        traced = jax.jit(lambda x, f: apply_rotary(x, f, sign))(x, jnp.asarray(freq))
        monkeypatch.setattr(rotary_module, "ROTARY_CONSTANT_ENTRIES", 0)
        assert isinstance(rotary_module.rotary_tables(64, freq)[0], jax.Array)
        in_graph = jax.jit(lambda x: apply_rotary(x, freq, sign))(x)
        monkeypatch.undo()
        np.testing.assert_allclose(constant, traced, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(constant, in_graph, rtol=1e-5, atol=1e-5)


def test_cross_entropy_matches_optax_and_ignores_negative_targets():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(2, 5, 11)), jnp.bfloat16)
    targets = jnp.asarray(rng.integers(0, 11, (2, 5)))
    ref = np.asarray(jax.jit(optax.softmax_cross_entropy_with_integer_labels)(logits.astype(jnp.float32), targets))
    np.testing.assert_allclose(jax.jit(cross_entropy)(logits, targets), ref.mean(), rtol=1e-6)
    masked = targets.at[1, 3:].set(-1)
    np.testing.assert_allclose(
        jax.jit(cross_entropy_per_sequence)(logits, masked), [ref[0].mean(), ref[1, :3].mean()], rtol=1e-6
    )


def test_logit_heads():
    z = jnp.asarray([-1e4, 0.0, 1e4])
    cfg = make_config("softcap", "tiny")
    np.testing.assert_allclose(logit_head(z, cfg), [-15, 0, 15], atol=1e-4)
    sub = make_config("sublr", "d12")
    np.testing.assert_allclose(
        logit_head(jnp.asarray([0.0, 7.5 * 768**0.5]), sub), [15.0, 30 * jax.nn.sigmoid(1.0)], rtol=1e-6
    )


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_trains_at_full_tiny_tier_with_its_optimizer(family):
    """The unreduced tiny tier (8 layers, 8,192 vocabulary) with the family's own optimizer and anchor LRs:
    finite forward and first step, and the loss falls over 50 steps on one batch of 2 x 128 tokens."""
    cfg = make_config(family, "tiny")
    graphdef, params = nnx.split(GPT(cfg, rngs=nnx.Rngs(0)), nnx.Param)
    x, y = _batch(cfg, 2, 128)
    run = jax.jit(
        lambda p, x, y: _adam_loop(
            graphdef, p, x, y, jnp.int32(attention.scheduled_window(cfg, 0.1)), 50, make_optimizer(cfg)
        )
    )
    logits0, losses, finite = jax.tree.map(np.asarray, run(params, x, y))
    assert logits0.shape == (2, 128, cfg.vocab_size) and np.all(np.isfinite(logits0))
    assert finite and np.all(np.isfinite(losses))
    assert losses[-1] < losses[0] - 0.3, f"loss did not fall: {losses[0]:.3f} -> {losses[-1]:.3f}"


def test_joint_linear_equals_separate_layers_in_values_and_kernel_gradients():
    """q/k/v as one matmul over concatenated kernels: the same outputs and per-kernel gradients as three calls."""

    lins = [nnx.Linear(16, n, use_bias=False, rngs=nnx.Rngs(i)) for i, n in enumerate((16, 16, 8))]
    x = jax.random.normal(jax.random.key(0), (2, 5, 16))
    w = [jax.random.normal(jax.random.key(i + 1), (2, 5, n)) for i, n in enumerate((16, 16, 8))]

    graphdef, params = nnx.split(nnx.List(lins))

    def loss(params, joint):
        layers = list(nnx.merge(graphdef, params))
        ys = _joint_linear(x, layers) if joint else [lin(x) for lin in layers]
        return sum(jnp.sum(y * wi) for y, wi in zip(ys, w))

    g_joint, g_separate = jax.grad(loss)(params, True), jax.grad(loss)(params, False)
    assert jax.tree.structure(g_joint) == jax.tree.structure(g_separate)
    for a, b in zip(jax.tree.leaves(g_joint), jax.tree.leaves(g_separate)):
        assert a.shape in ((16, 16), (16, 8))
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    for a, b in zip(_joint_linear(x, lins), [lin(x) for lin in lins]):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_matmul_values_and_gradients_match_float64_numpy(dtype):
    """matmul.matmul through gpt._apply (the block matrices' product, hand-written weight gradient): x @ W,
    dX = dY W^T and dW = sum over tokens of x^T dY, against float64 NumPy for a 3-D input; a bf16 layer gives
    bf16 values and a float32 kernel gradient as nnx.Linear does."""

    lin = nnx.Linear(24, 40, use_bias=False, dtype=jnp.dtype(dtype), param_dtype=jnp.float32, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (3, 7, 24))
    c = jax.random.normal(jax.random.key(2), (3, 7, 40))
    graphdef, params = nnx.split(lin)

    def loss(params, x):
        return jnp.sum(_apply(nnx.merge(graphdef, params), x).astype(jnp.float32) * c)

    (g_params, g_x) = jax.grad(loss, (0, 1))(params, x)
    y = _apply(lin, x)
    assert y.dtype == jnp.dtype(dtype) and g_params["kernel"][...].dtype == jnp.float32
    w64, x64, c64 = (np.asarray(a, np.float64) for a in (lin.kernel[...], x, c))
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == "float32" else dict(rtol=3e-2, atol=3e-2)
    np.testing.assert_allclose(np.asarray(y, np.float64), x64 @ w64, **tol)
    np.testing.assert_allclose(g_x, c64 @ w64.T, **tol)
    np.testing.assert_allclose(g_params["kernel"][...], np.einsum("bti,bto->io", x64, c64), **tol)
    # and equal to autodiff through nnx.Linear itself
    g_ref = jax.grad(lambda p: jnp.sum(nnx.merge(graphdef, p)(x).astype(jnp.float32) * c))(params)
    np.testing.assert_allclose(g_params["kernel"][...], g_ref["kernel"][...], **tol)
