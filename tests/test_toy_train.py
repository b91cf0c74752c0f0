"""Toy training (spectral_jax.toy.train): loss falls, stop rule, determinism, micro-batching, optimizer groups."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from spectral_jax.optim import newton_schulz, param_labels
from spectral_jax.toy import task
from spectral_jax.toy.train import ToyRun, ToyTrainConfig, _train_step, set_learning_rate, toy_optimizer, train_toy


@pytest.fixture(scope="module")
def splits():
    return task.make_task(task.TaskConfig(n_train=512, n_val=64, n_test=8))


def cfg(**kw):
    base = dict(stage="untied", batch_size=8, lr=2e-3, max_steps=12, eval_every=4, target=0.0)
    return ToyTrainConfig(**{**base, **kw})


def test_config_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown toy stage"):
        cfg(stage="unet")
    with pytest.raises(ValueError, match="batch_size"):
        cfg(batch_size=0)
    with pytest.raises(ValueError, match="lr"):
        cfg(lr=0.0)
    with pytest.raises(ValueError, match="eval_every"):
        cfg(eval_every=0)


def test_loss_falls_and_runs_are_deterministic_by_seed(splits):
    a = train_toy(cfg(max_steps=24), splits)
    assert a.status == "budget" and a.step == 24 and a.tokens == 24 * 8 * 64
    losses = [e["val_loss"] for e in a.evals]
    assert [e["step"] for e in a.evals] == [0, 4, 8, 12, 16, 20, 24]
    assert losses[-1] < losses[0] - 0.5, losses
    b = train_toy(cfg(max_steps=24), splits)
    assert [e["val_loss"] for e in b.evals] == losses
    c = train_toy(cfg(max_steps=24, seed=1), splits)
    assert [e["val_loss"] for e in c.evals] != losses


def test_stop_at_target_and_snapshots(splits):
    run = train_toy(cfg(target=6.8, max_steps=40), splits)  # the untied model starts at ln(1024) = 6.93
    assert run.status == "reached"
    first = next(e for e in run.evals if e["step"] > 0 and e["val_loss"] <= 6.8)
    assert run.step == first["step"] and run.tokens_to_target == run.step * 8 * 64
    assert [s.step for s in run.snapshots] == [e["step"] for e in run.evals]
    recs = run.measure(lambda model, snap: {"n": len(jax.tree.leaves(nnx.state(model, nnx.Param)))}, steps=[0])
    assert [r["step"] for r in recs] == [0] and recs[0]["val_loss"] == run.evals[0]["val_loss"]


def test_advance_continues_like_a_straight_run(splits):
    straight = train_toy(cfg(max_steps=12, eval_every=6), splits)
    split = ToyRun(cfg(max_steps=12, eval_every=6), splits)
    split.advance(6)
    assert split.status == "running" and split.step == 6
    split.advance(12)
    assert split.status == "budget"
    for x, y in zip(jax.tree.leaves(straight.params), jax.tree.leaves(split.params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_micro_batching_gives_the_same_update(splits):
    run = ToyRun(cfg(stage="rope", batch_size=8), splits)
    x = splits["train"].x_NxL[:8].reshape(1, 8, 64)
    y = splits["train"].y_NxL[:8].reshape(1, 8, 64)
    copy = lambda t: jax.tree.map(jnp.copy, t)  # noqa: E731 (the step donates its inputs)
    p1, _, l1 = _train_step(run.graphdef, run.tx, copy(run.params), copy(run.opt_state), x, y)
    p2, _, l2 = _train_step(
        run.graphdef, run.tx, copy(run.params), copy(run.opt_state), x.reshape(4, 2, 64), y.reshape(4, 2, 64)
    )
    assert abs(float(l1) - float(l2)) < 1e-6 * abs(float(l1))
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5)
    assert cfg(batch_size=512, micro_batch=128).accum == 4 and cfg(batch_size=96, micro_batch=128).accum == 1


def test_optimizer_groups_and_learning_rates(splits):
    run = ToyRun(cfg(stage="untied"), splits)
    labels = jax.tree.leaves(param_labels(run.params))
    assert sorted(set(labels)) == ["embed", "head", "matrix"]
    grads = jax.tree.map(jnp.ones_like, run.params)

    def update(tc, lr):
        tx = toy_optimizer(tc)
        state = set_learning_rate(tx.init(run.params), lr)
        return tx.update(grads, state, run.params)[0]

    u1, u2 = update(cfg(stage="untied"), 1e-3), update(cfg(stage="untied"), 2e-3)
    head1, head2 = np.asarray(u1["lm_head"]["kernel"][...]), np.asarray(u2["lm_head"]["kernel"][...])
    # AdamW group, zero head (no decay contribution): first step is -lr * sign(g)
    np.testing.assert_allclose(head1, -1e-3, rtol=1e-4)
    np.testing.assert_allclose(head2, 2 * head1, rtol=1e-5)
    # Muon matrices: -(50 lr) * NS5(g) * sqrt(max(1, out/in)) (first step: the momentum buffer is g)
    w = np.asarray(u1["blocks"][0]["mlp"]["c_fc"]["kernel"][...])
    ns = np.asarray(newton_schulz(jnp.ones((128, 256)) * (1 + 0.95)), np.float32)
    np.testing.assert_allclose(w, -50e-3 * ns * np.sqrt(2.0), rtol=1e-2)
    # weight decay 0.01 on the AdamW groups of Muon stages: the embedding update includes -lr * wd * p
    e1 = np.asarray(u1["embed"]["embedding"][...])
    p = np.asarray(run.params["embed"]["embedding"][...])
    np.testing.assert_allclose(e1, -1e-3 * (1.0 + 0.01 * p), rtol=1e-3, atol=1e-8)
    # baseline / rope: one AdamW over everything, no decay
    base = ToyRun(cfg(stage="baseline"), splits)
    tx = toy_optimizer(cfg(stage="baseline"))
    u = tx.update(jax.tree.map(jnp.ones_like, base.params), set_learning_rate(tx.init(base.params), 1e-3), base.params)[
        0
    ]
    for leaf in jax.tree.leaves(u):
        np.testing.assert_allclose(np.asarray(leaf), -1e-3, rtol=1e-4)
    assert dataclasses.replace(cfg(), lr=3e-3).tokens_per_step == 8 * 64
