"""Mid-run toy checkpoints (spectral_jax.toy.resume): replay == uninterrupted, and the reference LR table."""

import math

import jax
import numpy as np
import pytest

from spectral_jax.toy import task
from spectral_jax.toy.experiment import REFERENCE_LRS, ToyExperimentConfig, reference_lr
from spectral_jax.toy.resume import advance_saving, load_run, save_run
from spectral_jax.toy.train import ToyRun, ToyTrainConfig


@pytest.fixture(scope="module")
def splits():
    return task.make_task(task.TaskConfig(n_train=512, n_val=64, n_test=8))


def cfg(**kw):
    base = dict(stage="muon", batch_size=8, lr=2e-3, max_steps=24, eval_every=4, measure_every=2, target=0.0)
    return ToyTrainConfig(**{**base, **kw})


def _same(a: ToyRun, b: ToyRun):
    assert a.step == b.step and a.status == b.status
    assert [e["val_loss"] for e in a.evals] == [e["val_loss"] for e in b.evals]
    for x, y in zip(jax.tree.leaves((a.params, a.opt_state)), jax.tree.leaves((b.params, b.opt_state))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert [s.step for s in a.snapshots] == [s.step for s in b.snapshots]
    for sa, sb in zip(a.snapshots, b.snapshots):
        for x, y in zip(jax.tree.leaves(sa.params), jax.tree.leaves(sb.params)):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_saved_and_continued_run_equals_uninterrupted(splits, tmp_path):
    straight = ToyRun(cfg(), splits).advance(24)
    path = tmp_path / "run.npz"
    first = ToyRun(cfg(), splits).advance(12)
    save_run(first, path)
    again = load_run(cfg(), splits, path)
    assert again is not None and again.step == 12
    _same(again.advance(24), straight)


def test_advance_saving_resumes_and_ignores_other_configs(splits, tmp_path):
    path = tmp_path / "run.npz"
    straight = ToyRun(cfg(), splits).advance(24)
    part = advance_saving(ToyRun(cfg(), splits), 16, path, every_seconds=0.0, evals_per_segment=1)
    assert part.step == 16 and path.is_file()
    assert load_run(cfg(lr=1e-3), splits, path) is None  # another LR: not this run
    resumed = advance_saving(load_run(cfg(), splits, path), 24, path, every_seconds=1e9)
    _same(resumed, straight)


def test_reference_lrs_interpolate_log_log_and_refuse_outside():
    assert reference_lr("muon", 128) == REFERENCE_LRS["muon"][128]
    mid = reference_lr("untied", 64)
    assert math.isclose(mid, math.sqrt(6e-4 * 1.2e-3), rel_tol=1e-12)
    with pytest.raises(ValueError, match="outside"):
        reference_lr("muon", 1024)
    with pytest.raises(ValueError, match="outside"):
        ToyExperimentConfig(batches=(16,), lrs="reference")
    with pytest.raises(ValueError, match="lrs must be one of"):
        ToyExperimentConfig(lrs="sqrt")
