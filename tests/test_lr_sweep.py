"""LR successive halving for the LM families end to end at reduced budgets: selection records, lr_table.json
consumed by batch_sweep --lr=auto, figures, kill-and-resume through the CLI, CLI errors."""

import json
import math
import os
import shutil
import subprocess
import sys

import pytest

from spectral_jax import halving as sweep
from spectral_jax import lr_sweep as lrs
from spectral_jax.batch_sweep import SweepConfig, resolve_lr, run_batch_sweep
from spectral_jax.lr_rules import packaged_lr_table
from spectral_jax.lr_sweep import LRSweepConfig, preset_rungs, run_lr_sweep
from spectral_jax.models import make_config
from spectral_jax.optim import group_learning_rates
from spectral_jax.presets import get_preset
from spectral_jax.records import read_jsonl
from spectral_jax.train_config import TrainOverrides

RUNGS = (4096, 8192, 12288)  # 1, 2, 3 steps at B = 8; 2, 4, 6 at B = 4
TRAIN = TrainOverrides(val_tokens=1024, eval_every_tokens=4096)  # eval every 4,096 tokens on 4 sequences
FIGURES = ("betterwin_lr_rung_losses.png", "betterwin_selected_lr_vs_batch.png")


@pytest.fixture(scope="module")
def lr_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("lr_sweep")
    logs = []
    cfg = LRSweepConfig(family="betterwin", preset="tiny", tiers=(4, 8), rungs=RUNGS, out=str(out), train=TRAIN)
    summary = run_lr_sweep(cfg, log=logs.append)
    return cfg, out, summary, logs


def test_sweep_selects_per_tier_with_halving_and_continuation(lr_sweep):
    cfg, out, summary, logs = lr_sweep
    model = make_config("betterwin", "tiny")
    table = json.loads((out / "lr_table.json").read_text())
    assert set(table) == {"betterwin"} and set(table["betterwin"]) == {"4", "8"}
    tiers = {t["batch"]: t for t in summary["tiers"]}
    for batch in (4, 8):
        t = tiers[batch]
        mults = sweep.lr_candidates(batch, model.optim.reference_batch)
        # the grid, extended past an edge winner as often as the selection records
        added = {k for ext in t["extensions"] for k in ext}
        assert {c["key"] for c in t["candidates"]} == {sweep.candidate_key(m) for m in mults} | added
        n = len(t["candidates"])
        sizes = [n, max(1, n // 2), max(1, n // 2 // 2)]  # eta 2: keep n // 2, at least one
        assert [sum(r["rung"] == k for r in t["table"]) for k in range(3)] == sizes
        # promotion on observed results: the promoted set of each rung is the head of its ranking
        for k in range(2):
            rows = sorted((r for r in t["table"] if r["rung"] == k), key=lambda r: r["rank"])
            keys = [
                sweep.rank_key(
                    sweep.RungResult(math.nan if r["loss"] is None else r["loss"], r["tokens"], r["reached"])
                )
                for r in rows
            ]
            assert keys == sorted(keys)
            assert [r["promoted"] for r in rows] == [i < sizes[k + 1] for i in range(len(rows))]
            nxt = {r["candidate"] for r in t["table"] if r["rung"] == k + 1}
            assert nxt == {r["candidate"] for r in rows if r["promoted"]}
        final = [r for r in t["table"] if r["rung"] == 2]
        assert t["selected"] == final[0]["candidate"] and table["betterwin"][str(batch)] == t["multiplier"]
        assert t["multiplier"] in [c["multiplier"] for c in t["candidates"]]
        assert t["learning_rates"] == pytest.approx(group_learning_rates(model, t["multiplier"]))
        # every recorded loss is the candidate's own eval at that rung's budget
        for r in t["table"]:
            rows = read_jsonl(out / "betterwin" / f"B{batch}" / f"lr_{r['candidate']}" / "metrics.jsonl")
            at = [m for m in rows if m["tokens"] == r["tokens"]]
            assert at and at[0]["val_loss"] == pytest.approx(r["loss"], abs=0), (batch, r)
        # the winner's run holds one continuous record up to the last rung (continued, not retrained)
        win = read_jsonl(out / "betterwin" / f"B{batch}" / f"lr_{t['selected']}" / "metrics.jsonl")
        assert [m["tokens"] for m in win] == list(range(0, RUNGS[-1] + 1, 4096))
        assert any(f"lr x{t['selected']}] [B={batch}] resumed from checkpoint" in m for m in logs)
    assert any("rung 1/3" in m and "keep 3 of 6" in m and "val loss" in m for m in logs), "progress table"
    for name in FIGURES:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert json.loads((out / "summary.json").read_text())["lr_table"] == table


def test_batch_sweep_lr_auto_reads_the_table(lr_sweep, tmp_path, monkeypatch):
    _, out, summary, _ = lr_sweep
    path = out / "lr_table.json"
    mult = {t["batch"]: t["multiplier"] for t in summary["tiers"]}
    lr, rule = resolve_lr("auto", 8, 8, "betterwin", preset="tiny", lr_table=path)
    assert lr == mult[8] and "successive halving" in rule
    # the default location: results/lr_sweep/<family>_<preset>/lr_table.json under the working directory
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        ValueError,
        match=r"lr_sweep/betterwin_tiny/lr_table\.json does not exist.*"
        r"python -m experiments\.lr_sweep --family=betterwin",
    ):
        resolve_lr("auto", 4, 8, "betterwin")
    default = tmp_path / "results" / "lr_sweep" / "betterwin_tiny"
    default.mkdir(parents=True)
    shutil.copy(path, default / "lr_table.json")
    assert resolve_lr("auto", 4, 8, "betterwin")[0] == mult[4]
    with pytest.raises(ValueError, match="no entry for family 'betterwin' at batch 16.*--tiers=16"):
        resolve_lr("auto", 16, 8, "betterwin")
    # with an explicit --lr_table, a missing tier fails before any data is loaded or anything trained
    with pytest.raises(ValueError, match="at batch 2"):
        run_batch_sweep(
            SweepConfig(family="betterwin", tiers=(2, 4), lr="auto", lr_table=str(path), out=str(tmp_path / "bs"))
        )
    assert not (tmp_path / "bs").exists()
    assert resolve_lr("sqrt", 32, 8, "betterwin")[0] == 2.0 and resolve_lr("0.5", 4, 8, "betterwin")[0] == 0.5


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "experiments.lr_sweep", *args], capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow  # 30 s; halving restarts are also tested in test_sweep.py, train resume in test_train.py
def test_killed_sweep_resumes_through_the_cli_to_the_same_table(lr_sweep, tmp_path):
    _, out, summary, _ = lr_sweep
    copy = tmp_path / "resume"
    shutil.copytree(out, copy)
    for name in ("lr_table.json", "summary.json", *FIGURES):
        (copy / name).unlink()
    tier = copy / "betterwin" / "B8"
    (tier / "selection.json").unlink()
    # killed during rung 2 of B = 8: the halving state holds rung 1 and a torn line; one rung-2 survivor lost
    # its result and checkpoints (restarts from step 0), the other its result only (continues)
    rows = (tier / "halving.jsonl").read_text().splitlines()
    (tier / "halving.jsonl").write_text("\n".join(rows[:5]) + "\n" + rows[5][:9])
    t8 = next(t for t in summary["tiers"] if t["batch"] == 8)
    survivors = [r["candidate"] for r in t8["table"] if r["rung"] == 1]
    shutil.rmtree(tier / f"lr_{survivors[0]}" / "checkpoints")
    for s in survivors:
        (tier / f"lr_{s}" / "result.json").unlink()
    proc = _cli(
        "--family=betterwin",
        "--tiers=4,8",
        f"--rungs={','.join(map(str, RUNGS))}",
        f"--val_tokens={TRAIN.val_tokens}",
        f"--eval_every_tokens={TRAIN.eval_every_tokens}",
        f"--out={copy}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[B=4] eval step" not in proc.stderr, "the finished tier must not train again"
    assert json.loads((copy / "lr_table.json").read_text()) == json.loads((out / "lr_table.json").read_text())
    again = json.loads((copy / "summary.json").read_text())
    for a, b in zip(again["tiers"], summary["tiers"]):
        assert [(r["candidate"], r["rank"], r["promoted"], r["tokens"]) for r in a["table"]] == [
            (r["candidate"], r["rank"], r["promoted"], r["tokens"]) for r in b["table"]
        ]
        assert [r["loss"] for r in a["table"]] == pytest.approx([r["loss"] for r in b["table"]], rel=1e-6)
    assert all((copy / name).is_file() for name in FIGURES)


def test_resume_refuses_results_of_other_settings(lr_sweep, tmp_path):
    cfg, out, _, _ = lr_sweep
    copy = tmp_path / "other"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("checkpoints"))
    other = LRSweepConfig(
        **{**cfg.__dict__, "out": str(copy), "train": TrainOverrides(val_tokens=1024, target_loss=5.0)}
    )
    with pytest.raises(ValueError, match=r"B4 holds LR-sweep results made with other settings \(train differ\)"):
        run_lr_sweep(other, log=lambda m: None)


def test_cli_unknown_family_is_a_one_line_error_with_exit_code_2(tmp_path):
    proc = _cli("--family=nope", f"--out={tmp_path}")
    assert proc.returncode == 2
    err = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "unknown family 'nope'" in err[0]


def test_batch_sweep_cli_lr_auto_without_a_table_says_how_to_make_one(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.batch_sweep",
            "--lr=auto",
            "--tiers=4",
            f"--lr_table={tmp_path / 'none.json'}",
            f"--out={tmp_path / 'bs'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    err = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "python -m experiments.lr_sweep --family=betterwin" in err[0]


def test_preset_rungs_scale_the_reference_rungs():
    tiny = preset_rungs("betterwin", "tiny", get_preset("tiny").train)
    # 50M/150M/500M x (8 x 512 / (8 x 65,536)) x schedule_scale 0.05, rounded up to the 4,096-token evals
    assert tiny == (20_480, 61_440, 196_608)
    d12 = preset_rungs("betterwin", "d12", get_preset("d12").train)
    assert d12 == (52_428_800, 157_286_400, 524_288_000)  # whole 52.4M-token evals
    assert preset_rungs("baseline", "tiny", get_preset("tiny").train) == tiny  # prefix: 32 x 128 tokens per step
    with pytest.raises(ValueError, match="strictly increasing"):
        run_lr_sweep(LRSweepConfig(rungs=(8192, 4096), out=os.devnull))


def test_grid_extends_past_an_edge_winner_until_the_optimum_is_inside(tmp_path, monkeypatch):
    """A loss whose optimum (x8) lies far above the B = 8 grid (x0.5..x2): the grid grows by sqrt(2) and 2 past
    the edge, reusing finished (candidate, rung) results, until the winner is inside; flatness is recorded."""
    trained = []

    def fake_advance(ctx, batch, tdir, by_key):
        def advance(key, budget):
            trained.append((key, budget))
            return sweep.RungResult(loss=3 + (math.log(by_key[key]) - math.log(8)) ** 2, tokens=budget, reached=False)

        return advance

    monkeypatch.setattr(lrs, "_advance_fn", fake_advance)
    cfg = LRSweepConfig(tiers=(8,), rungs=RUNGS, out=str(tmp_path))
    ctx = lrs._SweepContext(
        cfg, make_config("betterwin", "tiny"), cfg.train_config(), None, None, RUNGS, tmp_path, {}, print
    )
    lrs._select_tier(ctx, 0, 8, 0.0)
    sel = json.loads((tmp_path / "betterwin" / "B8" / "selection.json").read_text())
    assert sel["multiplier"] == pytest.approx(8.0) and not sel["winner_at_edge"]
    assert sel["extensions"] == [["2.82843", "4"], ["5.65685", "8"], ["11.3137", "16"]]
    assert len(trained) == len(set(trained))  # nothing trained twice
    flat = {r["candidate"]: r for r in sel["flatness"]}
    assert flat["8"]["loss_minus_best"] == 0 and all(r["loss_minus_best"] >= 0 for r in flat.values())


def test_tuned_lrs_ship_with_the_package_for_the_main_job():
    """--lr=tuned (the default) reads the packaged successive-halving table; what it lacks is a one-line error that
    names --lr=auto and --lr=sqrt."""
    table = json.loads(packaged_lr_table("betterwin", "tiny").read_text())
    cfg = SweepConfig()
    assert cfg.lr == "tuned" and set(table["multipliers"]) == {str(b) for b in cfg.tiers}
    for b in cfg.tiers:
        lr, rule = resolve_lr("tuned", b, 8, "betterwin", preset="tiny")
        assert lr == table["multipliers"][str(b)] and "successive halving" in rule
    assert all(not t["winner_at_edge"] for t in table["tiers"])
    with pytest.raises(ValueError, match="no tuned LR table ships for family 'baseline'.*--lr=auto.*--lr=sqrt"):
        resolve_lr("tuned", 4, 8, "baseline", preset="tiny")
    with pytest.raises(ValueError, match="has no tier B=64"):
        resolve_lr("tuned", 64, 8, "betterwin", preset="tiny")


def test_lr_grid_follows_the_regime_and_refuses_a_bad_grid_before_any_work(tmp_path):
    """--preset=small's regime narrows the grid to the sqrt centre; a bad --lr_centers / --lr_multipliers is a user
    error raised before anything is written."""
    grid = lrs._grid(LRSweepConfig(preset="small"))
    assert grid["centers"] == ("sqrt",) and grid["multipliers"] == get_preset("small").sweeps["gpt2"].lr_multipliers
    assert lrs._grid(LRSweepConfig(preset="tiny"))["centers"] == sweep.CENTERS
    for bad, match in (
        (dict(lr_centers=("cube",)), "unknown LR scaling rule"),
        (dict(lr_multipliers=(-1.0,)), "finite"),
    ):
        with pytest.raises(ValueError, match=match):
            run_lr_sweep(LRSweepConfig(preset="small", out=str(tmp_path / "o"), **bad), log=lambda m: None)
    assert not (tmp_path / "o").exists()
