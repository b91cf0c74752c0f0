"""Toy transformer chain (spectral_jax.toy.model): parameter counts, init, forward, hidden-state readout."""

import jax
import numpy as np
import pytest
from flax import nnx

from spectral_jax.toy import model as toy_model
from spectral_jax.toy.model import EXPECTED_PARAMS, STAGES, build_toy_model, toy_config, toy_param_count


@pytest.mark.parametrize("stage", STAGES)
def test_parameter_counts_match_the_reference(stage):
    assert toy_param_count(stage) == EXPECTED_PARAMS[stage]
    model = build_toy_model(stage)
    assert sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))) == EXPECTED_PARAMS[stage]


def test_stage_switches_and_init():
    base, rope, untied = (build_toy_model(s, seed=3) for s in ("baseline", "rope", "untied"))
    # baseline: tied N(0,1) embedding, learned positions N(0,0.02), fused qkv
    emb = np.asarray(base.embed.embedding[...])
    assert abs(emb.std() - 1.0) < 0.02 and abs(emb.mean()) < 0.02
    pos = np.asarray(base.pos_embed.embedding[...])
    assert pos.shape == (64, 128) and abs(pos.std() - 0.02) < 0.002
    assert hasattr(base.blocks[0].attn, "c_attn") and not hasattr(base, "lm_head")
    # rope: no positions, separate q/k/v, QK norm, rotary, still tied
    cfg = toy_config("rope")
    assert cfg.pos == "rope" and cfg.qk_norm and not cfg.fused_qkv and cfg.tied_head and cfg.rope_base == 10000.0
    assert not hasattr(rope, "pos_embed") and hasattr(rope.blocks[0].attn, "c_q")
    assert abs(np.asarray(rope.embed.embedding[...]).std() - 1.0) < 0.02
    # untied: zero head, embedding norm, N(0,1) embedding
    assert toy_config("untied").embed_norm and not toy_config("untied").tied_head
    assert np.all(np.asarray(untied.lm_head.kernel[...]) == 0)
    # every stage: zero-initialised output projections, torch-default hidden kernels, ReLU^2 MLP 128 -> 256
    for m in (base, rope, untied):
        for blk in m.blocks:
            assert np.all(np.asarray(blk.attn.c_proj.kernel[...]) == 0)
            assert np.all(np.asarray(blk.mlp.c_proj.kernel[...]) == 0)
            fc = np.asarray(blk.mlp.c_fc.kernel[...])
            assert fc.shape == (128, 256) and np.abs(fc).max() <= 1 / np.sqrt(128) + 1e-7
    assert toy_config("muon").replace(optim=toy_config("rope").optim) == toy_config("rope")


def test_forward_is_finite_and_h_is_the_normalised_head_input():
    x = np.random.default_rng(0).integers(0, 1024, size=(3, 64)).astype(np.int32)
    for stage in STAGES:
        model = build_toy_model(stage, seed=1)
        h, logits = toy_model.hidden_and_logits(model, x)
        assert h.shape == (3, 64, 128) and logits.shape == (3, 64, 1024)
        assert np.all(np.isfinite(np.asarray(logits)))
        np.testing.assert_allclose(np.sqrt(np.mean(np.asarray(h) ** 2, axis=-1)), 1.0, atol=1e-4)
        np.testing.assert_allclose(np.asarray(logits), np.asarray(model(x)), rtol=1e-5, atol=1e-4)
    # tied head: logits = h @ E^T
    model = build_toy_model("baseline", seed=1)
    h, logits = toy_model.hidden_and_logits(model, x)
    np.testing.assert_allclose(
        np.asarray(logits), np.asarray(h) @ np.asarray(model.embed.embedding[...]).T, rtol=1e-4, atol=1e-3
    )


def test_init_is_deterministic_by_seed():
    a, b, c = build_toy_model("untied", 5), build_toy_model("untied", 5), build_toy_model("untied", 6)
    la, lb, lc = (jax.tree.leaves(nnx.state(m, nnx.Param)) for m in (a, b, c))
    assert all(np.array_equal(x, y) for x, y in zip(la, lb))
    assert not all(np.array_equal(x, y) for x, y in zip(la, lc))


def test_bad_input_raises():
    with pytest.raises(ValueError, match="unknown toy stage"):
        toy_config("valuemix")
    with pytest.raises(ValueError):
        toy_model.ToyDims(d_model=130, n_head=4)
