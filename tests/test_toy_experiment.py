"""Toy experiment end to end (spectral_jax.toy.experiment, experiments/toy_modarith.py) on a test-sized config."""

import csv
import dataclasses
import json
import subprocess
import sys
import time

import numpy as np
import pytest

from spectral_jax.records import to_jsonable
from spectral_jax.study.toy import write_toy_tables
from spectral_jax.toy import task
from spectral_jax.toy.experiment import (
    QUICK,
    ToyExperimentConfig,
    config_from_dict,
    probe_steps,
    reference_lr,
    run_toy_experiment,
    summarize,
)
from spectral_jax.toy.probes import ToyProbeConfig
from spectral_jax.toy.run_files import adopt_earlier_runs, belongs, run_fingerprint
from spectral_jax.toy.summary import _progress_tables
from spectral_jax.toy.train import ToyRun

TINY = ToyExperimentConfig(
    batches=(4, 8),
    seeds=(0, 1),
    target=6.0,
    max_steps=8,
    eval_every=4,
    val_sequences=64,
    reference_batch=8,
    lr_base=3e-3,
    lr_multipliers=(1.0, 2.0),
    lr_centers=("sqrt",),
    rung_fractions=(0.5, 1.0),
    checkpoint_fractions=(0.5, 1.0),
    progress_fractions=(0.5, 1.0),
    task=task.TaskConfig(n_train=512, n_val=64, n_test=8),
    probe=ToyProbeConfig(
        n_samples=64, n_probe=64, sweep_bands=((13, 0), (31, 400)), n_sweep=64, grad_samples=4, chunk=64
    ),
)

FIGURES = (
    "loss_curves",
    "fig4a_spearman_vs_progress",
    "fig4b_h_s_curves",
    "fig4c_fourier_profile",
    "fig11a_matched_loss_spectra",
    "fig11b_delta_h_peak",
    "fig11c_band_sweep",
)


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy")
    logs = []
    summary = run_toy_experiment(TINY, out, log=logs.append)
    return out, summary, logs


def test_summary_runs_and_figures(experiment):
    out, summary, logs = experiment
    assert summary["n_runs"] == 4 * 2 * 2
    on_disk = json.loads((out / "summary.json").read_text())
    for key in (
        "config",
        "runs",
        "reach",
        "fourier",
        "spearman_vs_progress",
        "band_sweep",
        "gradient_spectra",
        "figures",
    ):
        assert key in on_disk, key
    assert set(on_disk["reach"]) == {"baseline", "rope", "muon", "untied"}
    assert on_disk["fourier"]["transition_order"] == ["baseline->rope", "rope->muon", "muon->untied"]
    assert set(on_disk["fourier"]["transitions"]) == set(on_disk["fourier"]["transition_order"])
    d = on_disk["fourier"]["transitions"]["muon->untied"]["dH_peak"]["ck1"]
    assert d["n"] == 4 and d["mean"] is not None  # 2 batches x 2 seeds, paired
    rows = {(r["stage"], r["batch"], r["seed"], r["checkpoint"]): r for r in on_disk["fourier"]["by_run"]}
    muon, untied = [
        [v["H_peak"] for k, v in sorted(rows.items()) if k[0] == s and k[3] == "ck1"] for s in ("muon", "untied")
    ]
    assert d["mean"] == pytest.approx(np.mean(np.subtract(untied, muon)), rel=1e-9), "ΔH_peak: the runs' differences"
    for w in on_disk["spearman_vs_progress"]["within_stage"]:  # where the snapshots chosen for a fraction sit
        assert 0 < w["realized_min"] <= w["realized_max"] <= 1, w
    assert len(rows) == len(on_disk["fourier"]["checkpoints"]) * on_disk["n_runs"] and all(
        r["val_loss"] is not None for r in rows.values()
    )
    for name in FIGURES:
        png = out / f"{name}.png"
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    for run in on_disk["runs"]:
        assert run["status"] in ("reached", "budget") and run["lr"] > 0
    # the later seed reuses the LR chosen on seed 0 for each (stage, batch)
    lr = {(r["stage"], r["batch"], r["seed"]): r["lr"] for r in on_disk["runs"]}
    assert all(lr[(s, b, 1)] == lr[(s, b, 0)] for (s, b, seed) in lr if seed == 0)
    run = json.loads((out / "runs" / "untied_B4_seed0.json").read_text())
    assert run["selection"]["table"] and run["records"][0]["step"] == 0 and "band_sweep" in run["records"][-1]
    assert run["records"][0]["val_loss"] == run["evals"][0]["val_loss"]


def test_rerun_reuses_finished_runs(experiment):
    out, summary, _ = experiment
    logs = []
    t0 = time.perf_counter()
    again = run_toy_experiment(TINY, out, log=logs.append, figures=False)
    assert sum("reusing" in m for m in logs) == 16 and time.perf_counter() - t0 < 60
    assert again["reach"] == summary["reach"]
    assert summarize(out, figures=False)["fourier"] == summary["fourier"]


def test_probe_steps_cover_checkpoints_and_progress():
    cfg = ToyExperimentConfig(
        batches=(8,),
        max_steps=40,
        eval_every=4,
        reference_batch=8,
        checkpoint_fractions=(0.5, 1.0),
        progress_fractions=(0.25, 0.75, 1.0),
        task=task.TaskConfig(n_train=64, n_val=16, n_test=4),
    )
    run = ToyRun(cfg.train_config("untied", 8, 1e-3, 0), task.make_task(cfg.task))
    run.advance(12)  # stopped early (a reached run would stop like this): snapshots at 0, 4, 8, 12
    assert probe_steps(cfg, run) == {0: "full", 4: "spectra", 8: "spectra", 12: "full"}
    assert cfg.checkpoint_steps(8) == [20, 40] and cfg.rungs(8) == [8, 12, 20, 40] and cfg.step_scale(2) == 4


def test_config_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown toy stage"):
        ToyExperimentConfig(stages=("baseline", "bogus"))
    with pytest.raises(ValueError, match="batches"):
        ToyExperimentConfig(batches=(0,))
    with pytest.raises(ValueError, match="rung_fractions"):
        ToyExperimentConfig(rung_fractions=(0.5, 0.25))


def test_cli_bad_stage_exits_2_with_one_line(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "experiments.toy_modarith", "--quick", "--stages=baseline,bogus", f"--out={tmp_path}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1].startswith("error: unknown toy stage 'bogus'")


@pytest.mark.slow
def test_quick_mode_under_five_minutes(tmp_path):
    t0 = time.perf_counter()
    res = subprocess.run(
        [sys.executable, "-m", "experiments.toy_modarith", "--quick", f"--out={tmp_path}"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert time.perf_counter() - t0 < 300
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["n_runs"] == len(QUICK.stages) * len(QUICK.batches) * len(QUICK.seeds)
    for name in FIGURES:
        assert (tmp_path / f"{name}.png").is_file()


def test_study_toy_tables_from_the_summaries(experiment, tmp_path):
    """The study's toy tables are the summary's Fig. 4a rows and ΔH_peak / H_peak tables, as CSV."""
    out, summary, _ = experiment
    wrote = write_toy_tables(out, out, tmp_path)
    fig4a = list(csv.DictReader((tmp_path / "fig4a.csv").open()))
    sp = summary["spearman_vs_progress"]
    assert len(fig4a) == len(sp["within_stage"]) + len(sp["pooled"]) and fig4a[-1]["stage"] == "pooled"
    last = sp["pooled"][-1]["rho"]
    if last is None or not np.isfinite(last):  # too few reached runs at test budgets: an empty cell
        assert fig4a[-1]["rho"] == ""
    else:
        assert float(fig4a[-1]["rho"]) == pytest.approx(last, rel=1e-5)
    dh = list(csv.DictReader((tmp_path / "dh_peak.csv").open()))
    four = summary["fourier"]
    assert {r["transition"] for r in dh} == set(four["transition_order"])
    first = four["transitions"][four["transition_order"][0]]["dH_peak"]["ck1"]["mean"]
    row = next(r for r in dh if r["transition"] == four["transition_order"][0] and r["checkpoint"] == "ck1")
    assert float(row["dH_peak_mean"]) == pytest.approx(first, rel=1e-5)
    assert (tmp_path / "fig4a_spearman_vs_progress.png").is_file() and wrote["dh"]["ratios"] == four["dH_peak_ratios"]
    assert len(list(csv.DictReader((tmp_path / "h_peak_by_run.csv").open()))) == len(four["by_run"])
    # the ratios over all seeds are the summary's; per seed they come from that seed's runs alone
    ratios = {
        f"({r['numerator']})/({r['denominator']})": r["ratio"] for r in wrote["dh"]["by_seed"] if r["seed"] == "all"
    }
    assert set(ratios) == set(four["dH_peak_ratios"]) and (tmp_path / "dh_ratio.csv").is_file()
    for k, v in four["dH_peak_ratios"].items():
        assert (ratios[k] is None) if v is None or not np.isfinite(v) else ratios[k] == pytest.approx(v, rel=1e-9)


@pytest.mark.slow
def test_reference_lrs_train_without_halving_and_leave_no_partial(tmp_path):
    cfg = ToyExperimentConfig(
        stages=("untied",),
        batches=(32, 64),
        seeds=(0,),
        lrs="reference",
        target=0.0,
        max_steps=6,
        eval_every=3,
        val_sequences=32,
        scale_steps=False,
        checkpoint_fractions=(1.0,),
        progress_fractions=(1.0,),
        task=task.TaskConfig(n_train=512, n_val=64, n_test=8),
        probe=TINY.probe,
    )
    logs = []
    run_toy_experiment(cfg, tmp_path, log=logs.append, figures=False)
    for b in (32, 64):
        run = json.loads((tmp_path / "runs" / f"untied_B{b}_seed0.json").read_text())
        assert run["lr"] == pytest.approx(reference_lr("untied", b)) and run["steps"] == 6
        assert run["selection"]["source"] == "reference" and run["selection"]["table"] == []
    assert not list((tmp_path / "runs").glob("*.partial.npz"))
    assert not any("LR halving" in m for m in logs)


def test_fig4a_skips_step_0_and_reports_where_its_snapshots_sit():
    """Within-stage and pooled rho read the same snapshots, never step 0 (the same initial model for every batch);
    on a fixed snapshot grid each fraction's realized position is reported."""
    cfg = dataclasses.replace(TINY, stages=("untied",), batches=(4, 8, 16), seeds=(0,), progress_fractions=(0.2,))
    key = "alpha_{}_{}".format(*cfg.probe.local)
    T = {4: 1000, 8: 2000, 16: 8000}
    runs = [
        dict(
            stage="untied",
            batch=b,
            seed=0,
            tokens_to_target=T[b],
            records=[{"step": s, "tokens": 100 * s, key: float(b if s == 0 else -b)} for s in range(0, 101, 10)],
        )
        for b in T
    ]
    tables = _progress_tables(cfg, runs)
    (within,), (pooled,) = tables["within_stage"], tables["pooled"]
    assert within["rho"] == pytest.approx(-1.0) and pooled["rho"] == pytest.approx(-1.0), "step 0 would give +1"
    assert (within["realized_min"], within["realized_max"]) == (0.25, 1.0)  # 2,000 / 8,000 and 1,000 / 1,000


def test_adding_a_seed_keeps_finished_runs_and_other_changes_retrain(tmp_path):
    """Per-run fingerprints: a run keeps its fingerprint when seeds, stages or batches are added, not when its own
    settings change; files stamped with an earlier whole-config fingerprint are adopted on the same terms."""
    ref = dataclasses.replace(TINY, lrs="reference", stages=("untied",), batches=(32,), seeds=(0,))
    more = dataclasses.replace(ref, stages=("muon", "untied"), batches=(32, 64), seeds=(0, 1))
    assert run_fingerprint(ref, "untied", 32, 0) == run_fingerprint(more, "untied", 32, 0)
    shorter = dataclasses.replace(ref, max_steps=7)
    assert run_fingerprint(ref, "untied", 32, 0) != run_fingerprint(shorter, "untied", 32, 0)
    halving = dataclasses.replace(TINY, seeds=(0, 1))  # seed 1 trains at the LR halving chose on seed 0
    assert run_fingerprint(halving, "untied", 4, 1) != run_fingerprint(
        dataclasses.replace(halving, seeds=(2, 1)), "untied", 4, 1
    )
    (tmp_path / "runs").mkdir()
    old = ref.fingerprint()
    (tmp_path / "config.json").write_text(json.dumps(dict(config=to_jsonable(ref), fingerprint=old)))
    run = dict(stage="untied", batch=32, seed=0, fingerprint=old)
    (tmp_path / "runs" / "untied_B32_seed0.json").write_text(json.dumps(run))
    (tmp_path / "runs" / f"untied_B32_seed0.{old}.partial.npz").write_bytes(b"")
    assert adopt_earlier_runs(tmp_path, shorter, config_from_dict, print) == 0
    assert adopt_earlier_runs(tmp_path, more, config_from_dict, print) == 2
    assert belongs(more, json.loads((tmp_path / "runs" / "untied_B32_seed0.json").read_text()))
    new = run_fingerprint(more, "untied", 32, 0)
    assert (tmp_path / "runs" / f"untied_B32_seed0.{new}.partial.npz").is_file()
