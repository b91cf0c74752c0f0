"""train.py: target stop and T(B), gradient accumulation, kill-and-resume, NaN stop, run directory."""

import errno
import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from spectral_jax import checkpoints
from spectral_jax.checkpoints import result_answers
from spectral_jax.data import load_shard_dir, write_dataset
from spectral_jax.halving import lr_multiplier_for_batch
from spectral_jax.models import make_config
from spectral_jax.models.gpt import GPT
from spectral_jax.optim import group_learning_rates, make_optimizer, schedule_steps
from spectral_jax.records import read_jsonl, truncate_jsonl
from spectral_jax.train import TrainingDiverged, replay, train
from spectral_jax.train_config import TrainConfig
from spectral_jax.train_step import Schedules, TrainStep, _lr_field, _make_apply

SMALL = dict(n_layer=2, vocab_size=256, eot_id=0)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Synthetic documents with a learnable pattern (each token predicts the next), EOT id 0."""
    rng = np.random.default_rng(0)
    docs = []
    for _ in range(400):
        start, step = rng.integers(1, 255), rng.integers(1, 4)
        n = rng.integers(50, 300)
        docs.append(np.concatenate([[0], 1 + (start + step * np.arange(n)) % 255]))
    tokens = np.concatenate(docs).astype(np.uint16)
    cut = int(0.8 * len(tokens))
    root = tmp_path_factory.mktemp("data")
    write_dataset(
        root,
        {"train": tokens[:cut], "val": tokens[cut : cut + 8000], "pool": tokens[cut + 8000 :]},
        {"eot_id": 0, "vocab_size": 256},
    )
    return load_shard_dir(root)


def _config(family="unet", **kw):
    return make_config(family, "tiny", **{**SMALL, "seq_len": 64, **kw})


def _tc(**kw):
    base = dict(
        batch_size=4,
        target_loss=0.0,
        max_tokens=64 * 4 * 12,
        eval_every_tokens=64 * 4 * 3,
        val_tokens=64 * 8,
        eval_batch=4,
        checkpoint_every_tokens=64 * 4 * 3,
        schedule_scale=0.05,
        log_every_seconds=1e9,
    )
    return TrainConfig(**{**base, **kw})


def test_budget_stop_evals_and_run_directory(dataset, tmp_path):
    result = train(_config(), _tc(), dataset, tmp_path, log=lambda m: None)
    assert result["status"] == "budget" and result["tokens_to_target"] is None
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 3, 6, 9, 12]
    assert [r["tokens"] for r in rows] == [s * 4 * 64 for s in (0, 3, 6, 9, 12)]
    assert rows[-1]["val_loss"] < rows[0]["val_loss"] - 0.5, "loss should fall on the learnable pattern"
    run = json.loads((tmp_path / "run.json").read_text())
    env = run["environment"]
    assert env["git_sha"] and env["jax"] and env["devices"]
    assert run["model"]["n_layer"] == 2 and run["train"]["batch_size"] == 4 and run["grad_accum"] == 1
    assert result["throughput_tokens_per_s"] > 0


def test_target_stop_gives_tokens_at_first_eval_at_or_below_target(dataset, tmp_path):
    full = train(_config(), _tc(), dataset, tmp_path / "a", log=lambda m: None)
    rows = read_jsonl(tmp_path / "a" / "metrics.jsonl")
    target = rows[2]["val_loss"] + 1e-6  # first crossing at the third eval (step 6)
    assert rows[1]["val_loss"] > target
    hit = train(_config(), _tc(target_loss=target), dataset, tmp_path / "b", log=lambda m: None)
    assert hit["status"] == "reached" and hit["steps"] == 6 and hit["tokens_to_target"] == 6 * 4 * 64
    assert full["status"] == "budget"


def test_gradient_accumulation_matches_one_big_micro_batch(dataset, tmp_path):
    one = train(_config(), _tc(max_tokens=64 * 4 * 3, micro_batch=4), dataset, tmp_path / "a", log=lambda m: None)
    acc = train(_config(), _tc(max_tokens=64 * 4 * 3, micro_batch=1), dataset, tmp_path / "b", log=lambda m: None)
    assert json.loads((tmp_path / "b" / "run.json").read_text())["grad_accum"] == 4
    np.testing.assert_allclose(acc["final_val_loss"], one["final_val_loss"], rtol=2e-5)


def test_kill_and_resume_reproduces_the_uninterrupted_run(dataset, tmp_path):
    seen = []

    def callback(state):
        seen.append((state.step, state.val_loss))

    ref = train(_config(), _tc(), dataset, tmp_path / "ref", callbacks=[callback], log=lambda m: None)
    ref_rows = read_jsonl(tmp_path / "ref" / "metrics.jsonl")
    seen.clear()
    part = train(_config(), _tc(), dataset, tmp_path / "run", log=lambda m: None, stop_after_steps=7)
    assert part["status"] == "interrupted"
    assert not (tmp_path / "run" / "result.json").exists()
    # simulate a crash mid-append: a torn last line must not break the resume
    with open(tmp_path / "run" / "metrics.jsonl", "a") as f:
        f.write('{"step": 9, "val_lo')
    resumed = train(_config(), _tc(), dataset, tmp_path / "run", callbacks=[callback], log=lambda m: None)
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    drop = ("throughput_tokens_per_s", "elapsed_train_s")
    clean = lambda rs: [{k: v for k, v in r.items() if k not in drop} for r in rs]  # noqa: E731
    assert clean(rows) == clean(ref_rows)
    for key in ("status", "steps", "tokens", "tokens_to_target", "final_val_loss"):
        assert resumed[key] == ref[key]
    assert [s for s, _ in seen] == [6, 9, 12], "callbacks rerun from the checkpoint (step 6) on"
    again = train(_config(), _tc(), dataset, tmp_path / "run", log=lambda m: None)
    assert again == resumed, "a finished run is reused, not retrained"


def _clean(rows):
    return [{k: v for k, v in r.items() if k not in ("throughput_tokens_per_s", "elapsed_train_s")} for r in rows]


def test_continuing_to_a_larger_budget_equals_a_straight_run(dataset, tmp_path):
    """Successive halving continues a candidate from its last rung's checkpoint: that must be exact."""
    straight = train(_config(), _tc(), dataset, tmp_path / "straight", log=lambda m: None)
    logs = []
    # rung 1 stops at step 7, off the 3-step eval cadence (a forced budget eval the straight run never makes)
    first = train(_config(), _tc(max_tokens=64 * 4 * 7), dataset, tmp_path / "run", log=logs.append)
    assert first["status"] == "budget" and first["steps"] == 7
    assert [r["step"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl")] == [0, 3, 6, 7]
    cont = train(_config(), _tc(), dataset, tmp_path / "run", log=logs.append)
    assert any("resumed from checkpoint at step 7" in m for m in logs), logs
    assert _clean(read_jsonl(tmp_path / "run" / "metrics.jsonl")) == _clean(
        read_jsonl(tmp_path / "straight" / "metrics.jsonl")
    )
    for key in ("status", "steps", "tokens", "final_val_loss"):
        assert cont[key] == straight[key], key
    # the finished larger budget is reused as is; the smaller one is not retrained from the larger either
    logs.clear()
    assert train(_config(), _tc(), dataset, tmp_path / "run", log=logs.append) == cont
    assert any("reusing" in m for m in logs)


def test_a_finished_result_is_reused_only_when_it_answers_the_budget(dataset):
    sched = Schedules.build(_config(), _tc())  # 12 steps, evals every 3
    assert sched.max_steps == 12 and sched.eval_every_steps == 3
    assert result_answers(dict(status="budget", steps=12, budget_eval=False), sched.max_steps)
    assert not result_answers(dict(status="budget", steps=7, budget_eval=True), sched.max_steps), "must continue"
    assert not result_answers(dict(status="budget", steps=15, budget_eval=False), sched.max_steps), "past this budget"
    assert result_answers(dict(status="reached", steps=6, budget_eval=False), sched.max_steps)
    assert not result_answers(dict(status="reached", steps=15, budget_eval=False), sched.max_steps)
    # reached at an eval made only because it was a smaller budget's last step: the straight run has no eval there
    assert not result_answers(dict(status="reached", steps=7, budget_eval=True), sched.max_steps)
    assert result_answers(dict(status="diverged", steps=5, budget_eval=False), sched.max_steps)


def test_resume_refuses_a_checkpoint_from_another_config(dataset, tmp_path):
    train(_config(), _tc(), dataset, tmp_path, log=lambda m: None, stop_after_steps=4)
    with pytest.raises(ValueError, match=r"other settings \(train\.batch_size differ\); pass another --out"):
        train(_config(), _tc(batch_size=2), dataset, tmp_path, log=lambda m: None)
    with pytest.raises(ValueError, match=r"other settings \(model\.n_layer differ\)"):
        train(_config(n_layer=4), _tc(), dataset, tmp_path, log=lambda m: None)
    with pytest.raises(ValueError, match=r"other settings \(identity differ\)"):
        train(_config(), _tc(), dataset, tmp_path, log=lambda m: None, identity=dict(data="other"))
    (tmp_path / "run.json").unlink()  # the checkpoint's own fingerprint still guards it
    with pytest.raises(ValueError, match="different configuration"):  # other shapes: refused before restoring
        train(_config(n_layer=4), _tc(), dataset, tmp_path, log=lambda m: None)
    # --noresume starts the directory over
    done = train(_config(), _tc(batch_size=2), dataset, tmp_path, log=lambda m: None, resume=False)
    assert done["batch"] == 2


def test_nan_loss_stops_with_a_clear_message_and_no_probe(dataset, tmp_path):
    calls = []
    with pytest.raises(TrainingDiverged, match="diverged"):
        train(_config(), _tc(lr=float("nan")), dataset, tmp_path, callbacks=[calls.append], log=lambda m: None)
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["status"] == "diverged" and "lower the learning rate" in result["message"]
    assert [c.step for c in calls] == [0], "probes ran only on the finite step-0 model"


def test_bad_train_config_is_rejected():
    with pytest.raises(ValueError, match="multiple of micro_batch"):
        TrainConfig(batch_size=6, micro_batch=4)
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)
    assert TrainConfig(batch_size=32, max_micro_batch=8).resolved_micro_batch == 8
    assert TrainConfig(batch_size=2, max_micro_batch=8).resolved_micro_batch == 2


def test_lr_scaling_rules():
    assert lr_multiplier_for_batch(32, 8, "sqrt") == 2.0
    assert lr_multiplier_for_batch(2, 8, "linear") == 0.25
    assert lr_multiplier_for_batch(2, 8, "none") == 1.0
    with pytest.raises(ValueError, match="unknown LR scaling rule"):
        lr_multiplier_for_batch(2, 8, "cubic")
    assert math.isclose(lr_multiplier_for_batch(1, 8), 8**-0.5)


def test_truncate_jsonl_keeps_rows_before_the_checkpoint(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 0}\n{"step": 3}\n{"step": 6}\n{"step": 9')
    truncate_jsonl(path, lambda r: r["step"] < 6)
    assert read_jsonl(path) == [{"step": 0}, {"step": 3}]


@pytest.mark.parametrize("family", ["baseline", "unet"])  # AdamW; Muon + Adam groups
def test_traced_peak_lrs_update_exactly_as_constant_lrs(family):
    """train() compiles one update for all LR candidates and batch tiers (peaks and schedule step counts are
    arguments): it must be bitwise the update with them as constants, through the schedule's warmdown and the
    momentum warmup, at two step scales sharing the compiled program."""

    config = _config(family)
    graphdef, params = nnx.split(GPT(config, rngs=nnx.Rngs(0)), nnx.Param)
    lrs = group_learning_rates(config, 0.7071067811865476)
    peaks = {g: jnp.float32(v) for g, v in lrs.items()}
    rng = np.random.default_rng(0)
    # unet at 3e-4: N = 6, W_d = 1, so steps 5-6 are in the warmdown; at 4e-3: N = 80 and a momentum warmup
    # W_m = 2 (baseline: cosine over N = 18 and 240)
    sizes = []
    accum = 2
    for step_scale in (3e-4, 4e-3):
        tx = make_optimizer(config, lrs, step_scale=step_scale)
        steps = {k: jnp.int32(v) for k, v in schedule_steps(config, step_scale=step_scale).items()}
        p_const, s_const = params, tx.init(params)
        p_traced, params_def = jax.tree.flatten(jax.tree.map(jnp.copy, params))
        s_traced, opt_def = jax.tree.flatten(tx.init(params))
        apply = _make_apply(config.optim, accum, params_def, opt_def)

        @jax.jit
        def const_apply(p, s, g):  # the pre-sweep train() update: LRs and step counts baked in as constants
            upd, s = tx.update(jax.tree.map(lambda x: x / accum, g), s, p)
            return optax.apply_updates(p, upd), s

        for _ in range(7):
            grads = jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(x.shape), x.dtype), params)
            p_const, s_const = const_apply(p_const, s_const, grads)
            p_traced, s_traced = apply(p_traced, s_traced, jax.tree.leaves(grads), peaks, steps)
        for a, b in zip(jax.tree.leaves(p_const), p_traced, strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        sizes.append((apply, apply._cache_size()))
    assert sizes[1][0] is sizes[0][0] and sizes[1][1] == sizes[0][1] == 1  # one compiled update for both scales
    assert _lr_field("lr") == "lr" and _lr_field("matrix") == "lr_matrix"


def test_train_step_on_flat_leaves_equals_the_pytree_step():
    """TrainStep dispatches its programs with flat leaf lists: two accumulated micro-batches must give the
    update that value_and_grad over the nnx.State and optax's update give (a leaf order mix-up would not), and a
    repeated call reuses the compiled programs."""

    config = _config("unet")  # Muon and Adam groups, scalars
    lrs = group_learning_rates(config, 1.0)
    graphdef, params = nnx.split(GPT(config, rngs=nnx.Rngs(0)), nnx.Param)
    step = TrainStep(config, lrs, 0.05, accum=2)
    batches = [np.random.default_rng(k).integers(1, 256, (2, 65)) for k in range(2)]

    p_ref, s_ref = jax.tree.map(jnp.copy, params), step.tx.init(params)
    grad = lambda p, b: jax.value_and_grad(
        lambda p: nnx.merge(graphdef, p).loss(jnp.asarray(b[:, :-1]), jnp.asarray(b[:, 1:]), window=64)
    )(p)
    (l0, g0), (l1, g1) = grad(p_ref, batches[0]), grad(p_ref, batches[1])
    updates, s_ref = step.tx.update(jax.tree.map(lambda a, b: (a + b) / 2, g0, g1), s_ref, p_ref)
    p_ref = optax.apply_updates(p_ref, updates)

    p, s = step.init(jax.tree.map(jnp.copy, params))
    p, s, loss_sum = step(graphdef, p, s, batches, 64)
    assert jax.tree.structure(p) == jax.tree.structure(p_ref) and jax.tree.structure(s) == jax.tree.structure(s_ref)
    np.testing.assert_allclose(float(loss_sum), float(l0 + l1), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(p_ref), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(s), jax.tree.leaves(s_ref), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=1e-6)
    programs = step._programs_for(graphdef, jax.tree.structure(p), jax.tree.structure(s))
    sizes = [f._cache_size() for f in (programs[0], programs[1].func)]
    step(graphdef, p, s, batches, 64)
    assert step._programs_for(graphdef, jax.tree.structure(p), jax.tree.structure(s)) == programs
    assert [f._cache_size() for f in (programs[0], programs[1].func)] == sizes


def test_replay_to_an_exact_step_equals_the_uninterrupted_run_bitwise(dataset, tmp_path):
    """replay() from the initial model and from a checkpoint both give, at step s, exactly the parameters the
    uninterrupted run had there (its checkpoint at s); the run directory's records stay as they were."""
    config, tc = _config(), _tc(keep_checkpoints=10)
    run_dir = tmp_path / "run"
    train(config, tc, dataset, run_dir, log=lambda m: None)
    metrics = (run_dir / "metrics.jsonl").read_text()
    mgr = checkpoints.manager(run_dir / "checkpoints", 10)
    assert 6 in mgr.all_steps()

    def params_at(directory, steps):
        got = {}

        def keep(state):
            got[state.step] = [np.asarray(x) for x in jax.tree.leaves(nnx.state(state.model, nnx.Param))]

        replay(config, tc, dataset, directory, steps, keep, log=lambda m: None)
        return got

    fresh = params_at(tmp_path / "empty", [6, 7])  # no checkpoint there: from the initial model
    resumed = params_at(run_dir, [7])  # from the checkpoint at step 6
    _, template = nnx.split(GPT(config, rngs=nnx.Rngs(0)), nnx.Param)
    lrs = group_learning_rates(config, tc.lr)
    opt = make_optimizer(config, lrs, step_scale=Schedules.build(config, tc).step_scale).init(template)
    saved = [np.asarray(x) for x in jax.tree.leaves(checkpoints.restore_state(mgr, 6, template, opt)[0])]
    assert all(np.array_equal(a, b) for a, b in zip(fresh[6], saved, strict=True))
    assert all(np.array_equal(a, b) for a, b in zip(fresh[7], resumed[7], strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(fresh[6], fresh[7], strict=True))
    assert (run_dir / "metrics.jsonl").read_text() == metrics
    with pytest.raises(ValueError, match="step 0 is the initial model"):
        replay(config, tc, dataset, run_dir, [0], lambda s: None)


# orbax's failed restore of a truncated array leaves its reader coroutines unawaited (a warning from orbax's code)
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("damage", ["truncate", "garble_meta"])
def test_a_corrupt_newest_checkpoint_falls_back_to_the_one_before(dataset, tmp_path, damage):
    """Two checkpoints are kept; when the newest is damaged the rerun says so, deletes it, resumes from the one
    before, and ends with the records of an uninterrupted run."""
    straight = train(_config(), _tc(), dataset, tmp_path / "straight", log=lambda m: None)
    run = tmp_path / "run"
    train(_config(), _tc(), dataset, run, log=lambda m: None, stop_after_steps=7)  # checkpoints at steps 3 and 6
    assert sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit()) == [3, 6]
    files = sorted(p for p in (run / "checkpoints" / "6").rglob("*") if p.is_file() and p.stat().st_size > 64)
    if damage == "truncate":
        target = max(files, key=lambda p: p.stat().st_size)  # the largest array file
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    else:
        target = next(p for p in (run / "checkpoints" / "6").rglob("*") if p.is_file() and "meta" in str(p))
        target.write_text("{ not json")
    logs = []
    resumed = train(_config(), _tc(), dataset, run, log=logs.append)
    assert any("checkpoint at step 6" in m and "unreadable" in m for m in logs), logs
    assert any("resumed from checkpoint at step 3" in m for m in logs), logs
    assert _clean(read_jsonl(run / "metrics.jsonl")) == _clean(read_jsonl(tmp_path / "straight" / "metrics.jsonl"))
    assert resumed["final_val_loss"] == straight["final_val_loss"]


def test_a_full_disk_during_a_checkpoint_leaves_no_debris_and_says_so(dataset, tmp_path, monkeypatch):
    """orbax wraps the write error and leaves `<step>.orbax-checkpoint-tmp-*`; train() removes it and raises the
    OSError(ENOSPC) itself (which the entry points print as one line), and a rerun resumes cleanly."""
    real_save = ocp.CheckpointManager.save

    def full_disk(self, step, *args, **kwargs):
        if step == 6:
            (pathlib.Path(self.directory) / f"{step}.orbax-checkpoint-tmp-1234").mkdir()
            try:
                raise OSError(errno.ENOSPC, "No space left on device", str(self.directory))
            except OSError as err:
                raise RuntimeError("orbax: save failed") from err
        return real_save(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", full_disk)
    with pytest.raises(OSError) as err:
        train(_config(), _tc(), dataset, tmp_path, log=lambda m: None)
    assert err.value.errno == errno.ENOSPC
    assert not list((tmp_path / "checkpoints").glob("*orbax-checkpoint-tmp*"))
    monkeypatch.setattr(ocp.CheckpointManager, "save", real_save)
    straight = train(_config(), _tc(), dataset, tmp_path / "straight", log=lambda m: None)
    resumed = train(_config(), _tc(), dataset, tmp_path, log=lambda m: None)
    assert resumed["final_val_loss"] == straight["final_val_loss"]


@pytest.mark.parametrize("name", ["result.json", "run.json"])
def test_an_unreadable_result_or_run_record_is_recovered_from_the_checkpoints(dataset, tmp_path, name):
    done = train(_config(), _tc(), dataset, tmp_path, log=lambda m: None, stop_after_steps=None)
    path = tmp_path / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])  # truncated
    logs = []
    again = train(_config(), _tc(), dataset, tmp_path, log=logs.append)
    assert any(f"warning: {path} is not valid JSON" in m for m in logs), logs
    for key in ("status", "steps", "tokens", "final_val_loss"):
        assert again[key] == done[key], key
    assert json.loads(path.read_text())  # rewritten
