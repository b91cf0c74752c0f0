"""optim.py against a NumPy port of the reference Muon step, schedule formulas and an nnx model."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest
from flax import nnx

from spectral_jax import optim, records
from spectral_jax.errors import UserError

MUON_CONFIG = optim.OptimConfig(
    kind="muon",
    lr_embed=0.05,
    lr_head=0.01,
    lr_matrix=0.02,
    lr_scalar=0.01,
    momentum_start=0.85,
    momentum_warmup_steps=4,
    num_iterations=100,
    schedule="warmdown",
    warmdown_frac=0.1,
)


# ---------------------------------------------------------------------------------------------------
# NumPy port of the reference (torch layout: weights are (out, in))


def ns5_ref(G, steps=5):
    """zeropower_via_newtonschulz5 in float32 NumPy: A = XXᵀ, B = AX, X = aX + bB + cAB."""
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G.astype(np.float32)
    X = X / (np.linalg.norm(X) + 1e-7)
    tall = X.shape[0] > X.shape[1]
    if tall:
        X = X.T
    for _ in range(steps):
        A = X @ X.T
        B = A @ X
        X = a * X + b * B + c * A @ B
    return X.T if tall else X


def muon_ref_update(g_OxI, buf_OxI, lr, m, nesterov=True):
    """One reference Muon step on a torch (out, in) weight: returns (update, new buffer)."""
    buf_OxI = m * buf_OxI + g_OxI
    u_OxI = g_OxI + m * buf_OxI if nesterov else buf_OxI
    u_OxI = ns5_ref(u_OxI) * max(1, u_OxI.shape[0] / u_OxI.shape[1]) ** 0.5
    return -lr * u_OxI, buf_OxI


def run_muon(tx, grads_IxO):
    """Updates of tx for a sequence of gradients of one kernel."""
    state = tx.init(jnp.zeros_like(grads_IxO[0]))
    step = jax.jit(tx.update)
    out = []
    for g in grads_IxO:
        u, state = step(jnp.asarray(g), state)
        out.append(np.asarray(u))
    return out


def run_ref(grads_IxO, lr_fn, m_fn, nesterov=True):
    """Reference updates for the same gradients, computed in the torch layout and transposed back."""
    buf_OxI = np.zeros_like(grads_IxO[0].T)
    out = []
    for t, g_IxO in enumerate(grads_IxO):
        u_OxI, buf_OxI = muon_ref_update(g_IxO.T, buf_OxI, float(lr_fn(t)), float(m_fn(t)), nesterov)
        out.append(u_OxI.T)
    return out


def rel_err(x, y):
    return np.linalg.norm(x - y) / np.linalg.norm(y)


# ---------------------------------------------------------------------------------------------------
# Newton–Schulz and Muon


@pytest.mark.parametrize("shape", [(32, 80), (80, 32), (48, 48)])
def test_newton_schulz_float32_matches_numpy(shape):
    g = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    x = optim.newton_schulz(jnp.asarray(g), dtype=jnp.float32)
    assert x.shape == shape and x.dtype == jnp.float32
    assert rel_err(np.asarray(x), ns5_ref(g)) < 1e-5


def test_newton_schulz_stacked_leading_axes():
    g_2xMxN = np.random.default_rng(1).standard_normal((2, 24, 40)).astype(np.float32)
    x = np.asarray(optim.newton_schulz(jnp.asarray(g_2xMxN), dtype=jnp.float32))
    for i in range(2):
        assert rel_err(x[i], ns5_ref(g_2xMxN[i])) < 1e-5


@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("shape", [(24, 96), (96, 24)])
def test_muon_multistep_matches_reference_float32(shape, nesterov):
    """Momentum sum, nesterov, warmup schedules, width factor and layout, exact up to float32."""
    grads = [np.random.default_rng(s).standard_normal(shape).astype(np.float32) for s in range(6)]
    lr_fn = lambda t: 0.02 * (1 - t / 10)
    m_fn = lambda t: 0.85 + jnp.minimum(t / 4, 1) * 0.10
    tx = optim.muon(lr_fn, m_fn, nesterov=nesterov, ns_dtype=jnp.float32)
    for ours, ref in zip(run_muon(tx, grads), run_ref(grads, lr_fn, m_fn, nesterov)):
        assert rel_err(ours, ref) < 1e-5


def test_muon_multistep_bf16_close_to_float32_reference():
    """The default bf16 NS agrees with the float32 reference up to bf16 rounding noise.

    Measured: 2.3-2.8% relative Frobenius error on 64x256 ... 768x3072 (NS amplifies bf16 rounding
    of small singular directions), so the bound is 4e-2 with a direction check (cosine > 0.999).
    """
    grads = [np.random.default_rng(10 + s).standard_normal((64, 256)).astype(np.float32) for s in range(5)]
    m_fn = lambda t: 0.85 + jnp.minimum(t / 3, 1) * 0.10
    ours_all = run_muon(optim.muon(0.02, m_fn), grads)
    for ours, ref in zip(ours_all, run_ref(grads, lambda t: 0.02, m_fn)):
        cos = np.sum(ours * ref) / (np.linalg.norm(ours) * np.linalg.norm(ref))
        assert rel_err(ours, ref) < 4e-2 and cos > 0.999


def ns5_ref_bf16(G, steps=5):
    """The reference's bf16 torch NS5 in NumPy + ml_dtypes: every op rounds to bfloat16 where torch does
    (matmuls accumulate in float32; scalar products in float32 then rounded; `c * A @ B` is (c*A) @ B)."""
    bf = ml_dtypes.bfloat16
    r = lambda x: np.asarray(x, np.float32).astype(bf)  # noqa: E731
    f = lambda x: np.asarray(x).astype(np.float32)  # noqa: E731
    mm = lambda x, y: r(f(x) @ f(y))  # noqa: E731
    a, b, c = 3.4445, -4.7750, 2.0315
    X = r(G)
    norm = r(np.sqrt(np.sum(f(X) ** 2)))
    X = r(f(X) / f(r(f(norm) + np.float32(1e-7))))
    tall = X.shape[0] > X.shape[1]
    if tall:
        X = X.T
    for _ in range(steps):
        A = mm(X, X.T)
        B = mm(A, X)
        X = r(f(r(f(r(a * f(X))) + f(r(b * f(B))))) + f(mm(r(c * f(A)), B)))
    return f(X.T if tall else X)


@pytest.mark.parametrize("shape,bound", [((64, 256), 1e-6), ((256, 64), 2e-2), ((768, 3072), 2e-2)])
def test_newton_schulz_bf16_matches_bf16_numpy_reference(shape, bound):
    """Same rounding points as the reference's bf16 torch code. Wide 64x256 agrees exactly. Elsewhere the
    bf16 noise floor is above 1e-2: the SAME NumPy mirror with float64 instead of float32 matmul accumulation
    differs from itself by 1.25 % (256x64) and 1.31 % (768x3072), because accumulation-order differences flip
    bf16 ulps that NS amplifies; ours is 1.05 % and 1.35 % from the float32 mirror, 1.28 % and 1.30 % from the
    float64 one. The float32 (non-bf16) reference is 2.1-3.2 % away."""
    G = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    for ns in (optim.newton_schulz, jax.jit(optim.newton_schulz)):  # jit: fused, as in training
        ours = np.asarray(ns(jnp.asarray(G)).astype(jnp.float32))
        assert rel_err(ours, ns5_ref_bf16(G)) < bound


def test_muon_update_singular_values_in_ns5_range():
    g_768x3072 = jax.random.normal(jax.random.key(0), (768, 3072))
    tx = optim.muon(1.0, momentum=0.95)
    u, _ = jax.jit(tx.update)(g_768x3072, tx.init(g_768x3072))
    u_768x3072 = np.asarray(u, np.float64) / -optim.muon_scale(u.shape)
    sv = np.sqrt(np.linalg.eigvalsh(u_768x3072 @ u_768x3072.T))
    assert 0.5 <= sv.min() and sv.max() <= 1.5
    assert optim.muon_scale(u.shape) == 2.0


def test_muon_scale_factors_for_flax_kernels_equal_reference_factors():
    """Flax (in, out) kernels get the reference's (out, in) factor sqrt(max(1, out/in))."""
    ref_factor = lambda w_OxI_shape: max(1, w_OxI_shape[0] / w_OxI_shape[1]) ** 0.5
    c_fc_IxO, c_proj_IxO, attn_IxO = (768, 3072), (3072, 768), (768, 768)
    for shape in (c_fc_IxO, c_proj_IxO, attn_IxO):
        assert optim.muon_scale(shape) == ref_factor(shape[::-1])
    assert optim.muon_scale(c_fc_IxO) == 2.0 and optim.muon_scale(c_proj_IxO) == 1.0
    for shape, factor in (((32, 128), 2.0), ((128, 32), 1.0)):
        g = jax.random.normal(jax.random.key(1), shape)
        tx = optim.muon(1.0, ns_dtype=jnp.float32)
        u, _ = tx.update(g, tx.init(g))
        np.testing.assert_allclose(-u, factor * optim.newton_schulz(g * 1.95, dtype=jnp.float32), rtol=1e-5, atol=1e-6)


def test_muon_rejects_vectors():
    with pytest.raises(ValueError, match="matrices"):
        optim.muon(0.1).init({"lamb": jnp.ones(3)})


# ---------------------------------------------------------------------------------------------------
# Schedules


def test_momentum_warmup_schedule():
    cfg = optim.OptimConfig(momentum_start=0.85, momentum=0.95, momentum_warmup_steps=500)
    m = optim.momentum_schedule(cfg)
    for step, want in ((0, 0.85), (250, 0.90), (500, 0.95), (5000, 0.95)):
        assert float(m(step)) == pytest.approx(want, abs=1e-7)
    assert float(optim.momentum_schedule(dataclasses.replace(cfg, momentum_warmup_steps=0))(0)) == pytest.approx(0.95)


def test_warmdown_cosine_constant_multipliers():
    cfg = optim.OptimConfig(schedule="warmdown", num_iterations=1000, warmdown_frac=0.1)
    w = optim.lr_multiplier(cfg)
    for step, want in ((0, 1.0), (899, 1.0), (900, 1.0), (950, 0.5), (990, 0.1), (1000, 0.0), (1200, 0.0)):
        assert float(w(step)) == pytest.approx(want, abs=1e-6)
    c = optim.lr_multiplier(dataclasses.replace(cfg, schedule="cosine"))
    for step, want in ((0, 1.0), (250, 0.5 * (1 + math.cos(math.pi / 4))), (500, 0.5), (1000, 0.0)):
        assert float(c(step)) == pytest.approx(want, abs=1e-6)
    assert float(optim.lr_multiplier(dataclasses.replace(cfg, schedule="constant"))(10**6)) == 1.0
    with pytest.raises(ValueError):
        optim.lr_multiplier(dataclasses.replace(cfg, schedule="linear"))


def test_step_scale_rescales_every_step_count():
    cfg = optim.OptimConfig(num_iterations=1000, warmdown_frac=0.1, momentum_start=0.85, momentum_warmup_steps=500)
    w = optim.lr_multiplier(cfg, step_scale=8 / 32)  # N = 250, W_d = 25
    assert float(w(225)) == 1.0 and float(w(240)) == pytest.approx(0.4) and float(w(250)) == 0.0
    m = optim.momentum_schedule(cfg, step_scale=8 / 32)  # W_m = 125
    assert float(m(25)) == pytest.approx(0.87) and float(m(125)) == pytest.approx(0.95)
    assert optim.scaled_steps(500, 8 / 32) == 125 and optim.scaled_steps(4000, 8 / 1) == 32000

    adamw = optim.OptimConfig(
        kind="adamw", lr=0.1, schedule="warmdown", num_iterations=8, warmdown_frac=1.0, grad_clip=None
    )
    tx = optim.make_optimizer(adamw, step_scale=0.5)  # N = 4: lr = 0.1·(1, 3/4, 1/2, 1/4, 0)
    g = {"w": jnp.ones(3)}
    state = tx.init(g)
    sizes = []
    for _ in range(5):
        u, state = tx.update(g, state, g)
        sizes.append(-float(u["w"][0]))
    np.testing.assert_allclose(sizes, [0.1, 0.075, 0.05, 0.025, 0.0], atol=1e-6)


# ---------------------------------------------------------------------------------------------------
# Groups


def test_param_labels_follow_naming_convention():
    z1, z2 = jnp.zeros(4), jnp.zeros((4, 4))
    params = {
        "embed": {"embedding": z2},
        "pos_embed": {"embedding": z2},
        "value_embeds": [{"embedding": z2}],
        "vte": {"embedding": z2},
        "lm_head": {"kernel": z2},
        "blocks": [{"attn": {"c_q": {"kernel": z2}}, "lamb": z1, "mlp": {"c_fc": {"kernel": jnp.zeros((3, 4, 4))}}}],
        "skip_weights": z1,
        "x0_lambdas": jnp.zeros(()),
        "embedding_norm": {"scale": z1},
    }
    labels = optim.param_labels(params)
    assert labels["embed"]["embedding"] == labels["pos_embed"]["embedding"] == "embed"
    assert labels["value_embeds"][0]["embedding"] == labels["vte"]["embedding"] == "embed"
    assert labels["lm_head"]["kernel"] == "head"
    block = labels["blocks"][0]
    assert block["attn"]["c_q"]["kernel"] == block["mlp"]["c_fc"]["kernel"] == "matrix"
    assert labels["blocks"][0]["lamb"] == labels["skip_weights"] == labels["x0_lambdas"] == "scalar"
    assert labels["embedding_norm"]["scale"] == "scalar"
    groups = optim.describe_groups(params)
    assert groups["head"] == ["lm_head.kernel"] and "blocks.0.attn.c_q.kernel" in groups["matrix"]
    assert sorted(groups["embed"]) == [
        "embed.embedding",
        "pos_embed.embedding",
        "value_embeds.0.embedding",
        "vte.embedding",
    ]


class Attn(nnx.Module):
    def __init__(self, d, rngs):
        self.c_q = nnx.Linear(d, d, use_bias=False, rngs=rngs)


class Block(nnx.Module):
    def __init__(self, d, rngs):
        self.attn = Attn(d, rngs)
        self.lamb = nnx.Param(jnp.ones(d))


class TinyLM(nnx.Module):
    """embed -> one residual block (c_q, lamb) -> lm_head; names follow the model's convention."""

    def __init__(self, vocab=16, d=8, *, tied=False, rngs):
        self.embed = nnx.Embed(vocab, d, rngs=rngs)
        self.blocks = nnx.List([Block(d, rngs)])
        self.lm_head = None if tied else nnx.Linear(d, vocab, use_bias=False, rngs=rngs)

    def __call__(self, tokens):
        x = self.embed(tokens)
        for block in self.blocks:
            x = x + block.lamb[...] * jnp.tanh(block.attn.c_q(x))
        return self.embed.attend(x) if self.lm_head is None else self.lm_head(x)


def lm_loss(model, tokens, targets):
    return optax.softmax_cross_entropy_with_integer_labels(model(tokens), targets).mean()


@nnx.jit
def train_step(model, opt, tokens, targets):
    loss, grads = nnx.value_and_grad(lm_loss)(model, tokens, targets)
    opt.update(model, grads)
    return loss


def lm_batch():
    tokens = jax.random.randint(jax.random.key(0), (4, 12), 0, 16)
    return tokens, (3 * tokens + 1) % 16


def test_param_labels_on_nnx_state():
    model = TinyLM(rngs=nnx.Rngs(0))
    for state in (nnx.state(model, nnx.Param), nnx.as_pure(nnx.state(model, nnx.Param))):
        assert optim.describe_groups(state) == {
            "embed": ["embed.embedding"],
            "head": ["lm_head.kernel"],
            "matrix": ["blocks.0.attn.c_q.kernel"],
            "scalar": ["blocks.0.lamb"],
        }


@dataclasses.dataclass(frozen=True)
class ModelConfigStub:
    optim: optim.OptimConfig


@pytest.mark.parametrize("kind", ["adamw", "muon", "adam"])
def test_make_optimizer_trains_nnx_model(kind):
    cfg = dataclasses.replace(MUON_CONFIG, kind=kind, lr=0.02, lr_matrix=0.02 if kind == "muon" else 0.01)
    model = TinyLM(rngs=nnx.Rngs(0))
    opt = nnx.Optimizer(model, optim.make_optimizer(ModelConfigStub(cfg)), wrt=nnx.Param)
    tokens, targets = lm_batch()
    losses = [float(train_step(model, opt, tokens, targets)) for _ in range(12)]
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.8 * losses[0]


def test_tied_muon_family_embedding_uses_lr_embed():
    """No separate head exists when tied: the embedding is in "embed" and moves by lr_embed (Adam step 1)."""
    model = TinyLM(tied=True, rngs=nnx.Rngs(0))
    cfg = dataclasses.replace(MUON_CONFIG, lr_embed=0.0036, grad_clip=None)
    opt = nnx.Optimizer(model, optim.make_optimizer(cfg), wrt=nnx.Param)
    before = np.asarray(model.embed.embedding[...])
    tokens, targets = lm_batch()
    train_step(model, opt, tokens, targets)
    step = np.abs(np.asarray(model.embed.embedding[...]) - before)
    assert step.max() == pytest.approx(0.0036, rel=1e-3)


def one_update(tx, grads, params):
    return jax.jit(lambda g, p: tx.update(g, tx.init(p), p)[0])(grads, params)


def test_lrs_override_and_uniform_multiplier():
    model = TinyLM(rngs=nnx.Rngs(0))
    params = nnx.as_pure(nnx.state(model, nnx.Param))
    grads = jax.tree.map(lambda x: jax.random.normal(jax.random.key(3), x.shape), params)
    labels = optim.param_labels(params)
    base = one_update(optim.make_optimizer(MUON_CONFIG), grads, params)
    peaks = optim.group_learning_rates(MUON_CONFIG)
    for label, u in zip(jax.tree.leaves(labels), jax.tree.leaves(base)):
        if label != "matrix":  # Adam's first step is lr·g/(|g| + eps) ≈ lr·sign(g)
            assert np.abs(np.asarray(u)).max() == pytest.approx(peaks[label], rel=1e-4), label

    no_matrix = one_update(optim.make_optimizer(MUON_CONFIG, {"matrix": 0.0}), grads, params)
    for label, u, u0 in zip(jax.tree.leaves(labels), jax.tree.leaves(no_matrix), jax.tree.leaves(base)):
        if label == "matrix":
            assert not np.any(np.asarray(u))
        else:
            np.testing.assert_array_equal(u, u0)

    doubled = one_update(optim.make_optimizer(MUON_CONFIG, 2.0), grads, params)
    for u, u0 in zip(jax.tree.leaves(doubled), jax.tree.leaves(base)):
        np.testing.assert_allclose(u, 2 * np.asarray(u0), rtol=1e-6)

    assert optim.group_learning_rates(MUON_CONFIG, 0.5) == {
        "embed": 0.025,
        "head": 0.005,
        "matrix": 0.01,
        "scalar": 0.005,
    }
    assert optim.group_learning_rates(optim.OptimConfig(kind="adamw", lr=1e-3), {"lr": 3e-3}) == {"lr": 3e-3}
    with pytest.raises(ValueError, match="unknown LR groups"):
        optim.make_optimizer(MUON_CONFIG, {"lr": 0.1})


def test_ns_dtype_float32_is_the_float32_muon_and_stays_out_of_default_records():
    """OptimConfig.ns_dtype="float32" gives the matrix group the float32 Muon update (the bf16 default differs from
    it by bf16 rounding); at its default the field is absent from records, so earlier fingerprints still match."""
    model = TinyLM(rngs=nnx.Rngs(0))
    params = nnx.as_pure(nnx.state(model, nnx.Param))
    grads = jax.tree.map(lambda x: jax.random.normal(jax.random.key(3), x.shape), params)
    f32 = dataclasses.replace(MUON_CONFIG, ns_dtype="float32", grad_clip=None)
    bf16 = dataclasses.replace(f32, ns_dtype="bfloat16")
    ours, rounded = (
        one_update(optim.make_optimizer(f32), grads, params),
        one_update(optim.make_optimizer(bf16), grads, params),
    )
    alone = optim.muon(optim.group_learning_rates(f32)["matrix"], nesterov=f32.nesterov, ns_dtype=jnp.float32)
    labels = jax.tree.leaves(optim.param_labels(params))
    n_matrix = 0
    for label, u, r, g, p in zip(
        labels, jax.tree.leaves(ours), jax.tree.leaves(rounded), *map(jax.tree.leaves, (grads, params))
    ):
        if label == "matrix":
            n_matrix += 1
            assert rel_err(np.asarray(u), np.asarray(one_update(alone, g, p))) < 1e-5
            assert 1e-4 < rel_err(np.asarray(r), np.asarray(u)) < 0.1  # bf16 rounding: 2-4 %
    assert n_matrix >= 1
    assert "ns_dtype" not in records.json_text(MUON_CONFIG) and '"ns_dtype": "float32"' in records.json_text(f32)
    with pytest.raises(UserError, match="ns_dtype='float16' is not one of"):
        dataclasses.replace(MUON_CONFIG, ns_dtype="float16")


def test_grad_clip_bounds_adamw_moments_and_matches_preclipped_grads():
    """With clip 1 a 1e6-norm gradient enters Adam with norm 1, so it does not swamp the next step.

    Adam is scale-invariant per coordinate, so the clip shows in a two-step history on one coordinate.
    """
    cfg = optim.OptimConfig(kind="adamw", lr=0.1, grad_clip=1.0, schedule="constant")
    params = {"w": jnp.zeros(4)}
    g_huge = {"w": jnp.array([1e6, -1e6, 0.0, 0.0])}
    g_small = {"w": jnp.array([0.3, 0.4, 0.0, 0.0])}  # norm 0.5, untouched by the clip
    g_clipped = {"w": g_huge["w"] / jnp.linalg.norm(g_huge["w"])}

    def two_steps(tx, g1):
        state = tx.init(params)
        _, state = tx.update(g1, state, params)
        u, state = tx.update(g_small, state, params)
        return np.asarray(u["w"]), state

    u_clip, state = two_steps(optim.make_optimizer(cfg), g_huge)
    unclipped = optim.make_optimizer(dataclasses.replace(cfg, grad_clip=None))
    u_ref, _ = two_steps(unclipped, g_clipped)
    u_raw, raw_state = two_steps(unclipped, g_huge)
    np.testing.assert_allclose(u_clip, u_ref, rtol=1e-5, atol=1e-8)
    assert np.abs(u_raw - u_clip).max() > 0.02
    first_moment = lambda st: [x for x in jax.tree.leaves(st) if np.shape(x) == (4,)][0]
    assert np.linalg.norm(first_moment(state)) <= 1.0 < np.linalg.norm(first_moment(raw_state))
