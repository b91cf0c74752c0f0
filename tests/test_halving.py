"""Successive-halving core: the candidate grid, promotion order, survivors continuing, restart from state."""

import math

import pytest

from spectral_jax import halving as sweep
from spectral_jax.halving import RungResult


def test_candidates_at_reference_batch_are_the_five_multipliers():
    assert sweep.lr_candidates(8, 8) == pytest.approx((0.5, 1 / math.sqrt(2), 1.0, math.sqrt(2), 2.0), rel=1e-6)


def test_candidates_two_centres_deduplicated_and_sorted():
    c = sweep.lr_candidates(32, 8)  # centres 2 (sqrt) and 4 (linear) share 2, 2*sqrt2 and 4
    s2 = math.sqrt(2)
    assert list(c) == pytest.approx([1, s2, 2, 2 * s2, 4, 4 * s2, 8], rel=1e-12)
    assert len(sweep.lr_candidates(16, 8)) == 6  # centres sqrt2 and 2 share three values
    assert len(sweep.lr_candidates(128, 8)) == 9  # centres 4 and 16 share one
    assert len(sweep.lr_candidates(1024, 8)) == 10
    assert sweep.lr_candidates(4, 8, base=3e-4, centers=("sqrt",))[2] == pytest.approx(3e-4 * math.sqrt(0.5), rel=1e-6)


@pytest.mark.parametrize(
    "bad",
    [
        dict(batch=0, reference_batch=8),
        dict(batch=4, reference_batch=8, multipliers=(-1,)),
        dict(batch=4, reference_batch=8, centers=("cube",)),
    ],
)
def test_candidates_bad_input(bad):
    with pytest.raises(ValueError):
        sweep.lr_candidates(**bad)


def _quadratic_advance(calls, best=1.0, target=None):
    """Loss falls with budget and is lowest at lr == best; records every call."""

    def advance(cand, budget):
        calls.append((cand, budget))
        lr = float(cand)
        loss = 3.0 + (math.log(lr / best)) ** 2 + 100.0 / budget
        if lr > 3.9:
            loss = float("nan")
        reached = target is not None and loss <= target
        return RungResult(loss, budget, reached)

    return advance


def test_halving_keeps_top_half_and_picks_the_best():
    cands = [sweep.candidate_key(x) for x in sweep.lr_candidates(32, 8)]
    calls = []
    res = sweep.successive_halving(cands, [10, 30, 100], _quadratic_advance(calls, best=2.0), eta=2)
    assert res.best == sweep.candidate_key(2.0)
    per_rung = [[c for c, b in calls if b == budget] for budget in (10, 30, 100)]
    assert [len(r) for r in per_rung] == [7, 3, 1]
    assert set(per_rung[2]) <= set(per_rung[1]) <= set(per_rung[0])
    diverged = [r for r in res.table if r["rung"] == 0 and not math.isfinite(r["loss"])]
    assert len(diverged) == 3 and all(r["rank"] >= 5 and not r["promoted"] for r in diverged)
    assert sum(r["promoted"] for r in res.table if r["rung"] == 0) == 3
    assert res.survivors == (res.best,)


def test_eta3_and_min_survivors():
    cands = [str(x) for x in (0.5, 1.0, 2.0)]
    calls = []
    res = sweep.successive_halving(cands, [10, 20], _quadratic_advance(calls), eta=3)
    assert [b for _, b in calls].count(20) == 1 and res.best == "1.0"
    calls = []
    sweep.successive_halving(cands, [10, 20], _quadratic_advance(calls), eta=3, min_survivors=2)
    assert [b for _, b in calls].count(20) == 2


def test_reached_candidates_rank_first_by_tokens():
    results = {
        "a": RungResult(3.1, 500, False),
        "b": RungResult(3.4, 300, True),
        "c": RungResult(3.5, 200, True),
        "d": RungResult(float("inf"), 10, False),
    }
    assert sorted(results, key=lambda k: sweep.rank_key(results[k])) == ["c", "b", "a", "d"]


def test_restart_reuses_finished_rungs(tmp_path):
    cands = [str(x) for x in (0.5, 1.0, 2.0, 4.0)]
    state = tmp_path / "halving.jsonl"
    calls = []

    def interrupted(cand, budget):
        if budget == 30 and len([c for c in calls if c[1] == 30]) == 1:
            raise KeyboardInterrupt
        return _quadratic_advance(calls)(cand, budget)

    with pytest.raises(KeyboardInterrupt):
        sweep.successive_halving(cands, [10, 30], interrupted, state_path=state)
    first = list(calls)
    calls.clear()
    res = sweep.successive_halving(cands, [10, 30], _quadratic_advance(calls), state_path=state)
    assert all(b == 30 for _, b in calls) and len(calls) == 1  # rung 1 and the finished rung-2 run were reused
    fresh = sweep.successive_halving(cands, [10, 30], _quadratic_advance([]))
    assert res.best == fresh.best and repr(res.table) == repr(fresh.table)
    assert len(first) == 5


@pytest.mark.parametrize("kwargs", [dict(rungs=[10, 10]), dict(rungs=[]), dict(eta=1), dict(min_survivors=0)])
def test_halving_bad_input(kwargs):
    args = dict(candidates=["1"], rungs=[10, 20], advance=_quadratic_advance([]))
    args.update(kwargs)
    with pytest.raises(ValueError):
        sweep.successive_halving(**args)


def test_format_rung_table_lists_every_row():
    res = sweep.successive_halving(["0.5", "1", "2"], [10], _quadratic_advance([]))
    text = sweep.format_rung_table(res.table)
    assert len(text.splitlines()) == 4 and "candidate" in text
