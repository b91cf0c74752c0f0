"""The main job end to end at reduced budgets: records, summary, figures, report rebuild, resume, CLI errors."""

import dataclasses
import json
import math
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

from spectral_jax import efficiency
from spectral_jax import train as train_module
from spectral_jax.batch_sweep import SweepConfig, format_table, load_tier, run_batch_sweep, summarize_sweep
from spectral_jax.batch_sweep.decide import Decision, early_statistic, rank_tiers
from spectral_jax.batch_sweep.early import progress_steps
from spectral_jax.presets import ProbeOverrides
from spectral_jax.schemas import EvalRow
from spectral_jax.train_config import TrainOverrides

FIGURES = (
    "matched_loss_activation_spectra.png",
    "gradient_spectra.png",
    "early_alpha_vs_eps_tok.png",
    "loss_curves.png",
    "spearman_vs_progress.png",
)
TIMING = ("throughput_tokens_per_s",)


def _strip_timing(summary):
    out = json.loads(json.dumps(summary))
    out.pop("git_sha", None)
    for row in out["tiers"]:
        for key in TIMING:
            row.pop(key, None)
    return out


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    cfg = SweepConfig(
        family="betterwin",
        preset="tiny",
        tiers=(1, 2, 4),
        out=str(out),
        progress_fractions=(0.3, 0.6),
        progress_losses=(7.0,),
        probe=ProbeOverrides(pool_sequences=8, grad_samples=8),
        train=TrainOverrides(
            target_loss=6.5,
            max_tokens=24_576,
            eval_every_tokens=2_048,
            val_tokens=2_048,
            checkpoint_every_tokens=4_096,
            probe_every_evals=1,
            keep_checkpoints=2,
            micro_batch=1,
        ),
    )
    summary = run_batch_sweep(cfg, log=lambda m: None)
    return cfg, out, summary


def test_sweep_writes_records_summary_and_figures(sweep):
    cfg, out, summary = sweep
    assert set(summary) >= {"family", "preset", "tiers", "spearman_within", "p_value"}
    assert [r["batch"] for r in summary["tiers"]] == [1, 2, 4]
    for row in summary["tiers"]:
        assert {
            "batch",
            "tokens_to_target",
            "eps_tok",
            "early_alpha_tail",
            "early_alpha_tail_normalized",
            "throughput_tokens_per_s",
        } <= set(row)
        assert row["status"] == "reached", "every tier must reach the reduced target"
        assert row["tokens_to_target"] > 0 and row["throughput_tokens_per_s"] > 0
    assert min(r["eps_tok"] for r in summary["tiers"]) == 1.0
    assert summary["matched_loss"] and summary["spearman_vs_progress"]
    for name in FIGURES:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    tier = out / "tier_B2"
    for name in ("run.json", "metrics.jsonl", "probes.jsonl", "result.json"):
        assert (tier / name).is_file(), name
    probes = [json.loads(line) for line in (tier / "probes.jsonl").read_text().splitlines()]
    kinds = {r["kind"] for r in probes}
    assert kinds == {"activation", "gradient", "weight"}
    assert all(r["file"].startswith("spectra/") for r in probes)
    assert "B" in format_table(summary)
    # T(B) at the first eval and interpolated below it; eps_tok from the interpolated one
    for row in summary["tiers"]:
        assert 0 < row["tokens_to_target_interpolated"] <= row["tokens_to_target"]
        for kind in ("fraction", "tokens", "loss"):
            point = row["early_points"][kind]
            assert point is None or point["step"] > 0, "step 0 is never an early point"
            assert point is None or point["exact"], "every early point is measured at its own step (replay)"
        per_step = row["tokens_to_target"] / row["steps"]
        point = row["early_points"]["fraction"]
        assert abs(point["tokens"] - 0.2 * row["tokens_to_target_interpolated"]) <= per_step / 2 + 1e-9
    assert summary["eps_tok_basis"] == "interpolated" and set(summary["early_points"]) == {"fraction", "tokens", "loss"}
    assert all(m["step"] > 0 for m in summary["matched_loss"]), "matched-loss points exclude the initial model"
    assert summary["probe_layer"] == 7 and summary["probe_matrix"] == "attn_out"
    assert any("fewer than 4" in w for w in summary["warnings"]), "three tiers: rho rests on fewer than 4"


def test_progress_grid_points_are_measured_at_their_exact_steps(sweep):
    """--progress_fractions / --progress_losses: every grid point has records at its own step, replayed when no
    training probe sits there (fractions of T(B)), read from the training probes when one does (eval points)."""
    _, out, _ = sweep
    for b in (1, 2, 4):
        tier = load_tier(out / f"tier_B{b}")
        steps = progress_steps(tier, fractions=(0.3, 0.6), losses=(7.0,))
        assert set(steps) == {"fraction@0.3", "fraction@0.6", "loss@7"}
        probed = {r["step"] for r in tier.probes}
        for kind, step in steps.items():
            assert step is not None and step > 0
            replayed = [r for r in tier.early if kind in r.get("early_kinds", ()) and r["step"] == step]
            assert replayed or step in probed, (b, kind, step)
            if kind.startswith("loss@"):
                assert step in probed and not replayed, "an eval point with a training probe is not replayed"
        per_step = tier.result.tokens / tier.result.steps
        T = efficiency.tokens_to_target_interpolated([e.to_dict() for e in tier.evals], tier.result.target_loss)
        assert abs(steps["fraction@0.6"] * per_step - 0.6 * T) <= per_step / 2 + 1e-9


def test_summary_reads_the_probed_layer_and_matrix(tmp_path):
    """--layers=3 --matrices=mlp_out: the summary's spectra, matched-loss gradients and figures are block 3's
    activations and the MLP-out gradients, not the deepest block's W_O."""
    cfg = SweepConfig(
        family="betterwin",
        tiers=(1, 2),
        lr="sqrt",  # at these budgets the sqrt rule's loss ranges overlap (matched loss needs that)
        out=str(tmp_path),
        layers=(3,),
        matrices=("mlp_out",),
        probe=ProbeOverrides(pool_sequences=8, grad_samples=8),
        train=TrainOverrides(
            target_loss=7.5,
            max_tokens=8_192,
            eval_every_tokens=2_048,
            val_tokens=2_048,
            checkpoint_every_tokens=1 << 30,
            probe_every_evals=1,
            micro_batch=1,
        ),
    )
    summary = run_batch_sweep(cfg, log=lambda m: None)
    assert summary["probe_layer"] == 3 and summary["probe_matrix"] == "mlp_out"
    assert all(r["early_alpha_tail"] is not None for r in summary["tiers"])
    assert summary["matched_loss"] and all(m["grad_rankme"] is not None for m in summary["matched_loss"])
    assert (tmp_path / "gradient_spectra.png").is_file()


def test_report_rebuilds_the_summary_from_records_alone(sweep, tmp_path):
    _, out, summary = sweep
    copy = tmp_path / "copy"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("checkpoints", "*.png", "summary.json"))
    rebuilt = summarize_sweep(copy, log=lambda m: None)
    assert _strip_timing(rebuilt) == _strip_timing(summary)
    assert all((copy / name).is_file() for name in FIGURES)


def test_killed_tier_resumes_to_identical_summary(sweep, tmp_path):
    cfg, out, summary = sweep
    copy = tmp_path / "resume"
    shutil.copytree(out, copy)
    tier = copy / "tier_B4"
    os.remove(tier / "result.json")  # killed mid-run: no result, and only the earlier checkpoint survived
    steps = sorted(int(p.name) for p in (tier / "checkpoints").iterdir() if p.name.isdigit())
    assert len(steps) == 2
    shutil.rmtree(tier / "checkpoints" / str(steps[-1]))
    (copy / "summary.json").unlink()
    lines = (tier / "metrics.jsonl").read_text().splitlines()
    (tier / "metrics.jsonl").write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:7])  # torn append
    resumed = run_batch_sweep(SweepConfig(**{**cfg.__dict__, "out": str(copy)}), log=lambda m: None)
    assert _strip_timing(resumed) == _strip_timing(summary)


def _cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "experiments.batch_sweep", *args], capture_output=True, text=True, timeout=300, env=env
    )


def test_cli_unknown_family_is_a_one_line_error_with_exit_code_2(tmp_path):
    proc = _cli("--family=nope", f"--out={tmp_path}")
    assert proc.returncode == 2
    err = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "unknown family 'nope'" in err[0] and "betterwin" in err[0]


def test_cli_corrupt_shard_is_a_one_line_error_with_exit_code_2(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "fineweb_train_000000.bin").write_bytes(b"\x00" * 2048)
    (data / "fineweb_val_000000.bin").write_bytes(b"\x00" * 2048)
    proc = _cli(f"--data={data}", f"--out={tmp_path / 'out'}", "--tiers=1")
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "fineweb_train_000000.bin" in err[0] and "magic" in err[0].lower()


def test_readme_library_snippet_probes_a_trained_tier(sweep, monkeypatch):
    """The README's library example, run as written on a tier of the fixture's sweep (its path swapped in)."""
    _, out, _ = sweep
    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    code = re.search(r"As a library.*?```python\n(.*?)```", readme, re.S).group(1)
    code = code.replace('"results/batch_sweep/betterwin_tiny/tier_B8"', repr(str(out / "tier_B2")))
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["info"]["step"] > 0 and namespace["eig"].shape == (64,) and namespace["sv"].shape == (16,)


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(layers=(99,)), "--layers / --matrices: .*99"),
        (dict(matrices=("nope",)), "--layers / --matrices: .*nope"),
        (dict(lr="-1"), "--lr=-1: the learning rate must be positive"),
        (dict(lr="0"), "--lr=0: the learning rate must be positive"),
        (dict(early_fraction=1.5), "--early_fraction must lie in"),
        (dict(tokenizer="words"), "--tokenizer must be one of"),
        (dict(seeds=0), "--seeds must be >= 1"),
    ],
)
def test_bad_flags_fail_before_any_work(tmp_path, changes, message):
    out = tmp_path / "never"
    with pytest.raises(ValueError, match=message):
        run_batch_sweep(SweepConfig(out=str(out), **changes), log=lambda m: None)
    assert not out.exists()


@pytest.mark.parametrize(
    "changes, fields",
    [
        (dict(matrices=("mlp_out",), probe=ProbeOverrides(pool_sequences=8, grad_samples=4)), "identity.probe"),
        (dict(tokenizer="bytes", lr="sqrt"), "identity.data.metadata"),
    ],
)
def test_a_rerun_with_other_data_or_probes_is_refused_before_anything_is_written(sweep, tmp_path, changes, fields):
    cfg, out, _ = sweep
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    before = {p: p.read_bytes() for p in copy.rglob("*") if p.is_file() and p.name != ".lock"}
    rerun = SweepConfig(**{**cfg.__dict__, "out": str(copy), **changes})
    with pytest.raises(
        ValueError,
        match=rf"holds a run made with other settings \(.*{fields}.* differ\); pass another --out, or --noresume",
    ):
        run_batch_sweep(rerun, log=lambda m: None)
    assert {p: p.read_bytes() for p in copy.rglob("*") if p.is_file() and p.name != ".lock"} == before


def test_a_diverged_tier_stays_diverged_and_the_sweep_goes_on(tmp_path, monkeypatch):
    """A tier whose loss becomes non-finite is recorded as diverged; the other tiers still train and the summary
    warns; a rerun keeps it diverged, and --retry_diverged retrains it. (The loop's loss read is patched to give
    NaN from step 3 of B = 2: the normalised model does not overflow even at absurd learning rates.)"""
    real_read = train_module._TierRun._read

    def read(self, pending):
        if self.tc.batch_size == 2 and pending.step >= 3 and not getattr(self, "healthy", False):
            pending = dataclasses.replace(pending, loss_sum=float("nan"))
        return real_read(self, pending)

    monkeypatch.setattr(train_module._TierRun, "_read", read)
    cfg = SweepConfig(
        tiers=(1, 2),
        lr="sqrt",
        out=str(tmp_path / "out"),
        probe=ProbeOverrides(pool_sequences=4, grad_samples=4),
        train=TrainOverrides(target_loss=7.0, max_tokens=4_096, val_tokens=512, micro_batch=1, probe_every_evals=1),
    )
    logs = []
    summary = run_batch_sweep(cfg, log=logs.append)
    status = {t["batch"]: t["status"] for t in summary["tiers"]}
    assert status[2] == "diverged" and status[1] != "diverged"
    assert any("B=2 did not reach the target (diverged)" in w for w in summary["warnings"])
    assert any("the sweep goes on without this tier" in m for m in logs)
    logs.clear()
    again = run_batch_sweep(cfg, log=logs.append)
    assert {t["batch"]: t["status"] for t in again["tiers"]} == status
    assert any("diverged in an earlier run; --retry_diverged retrains it" in m for m in logs)
    logs.clear()
    monkeypatch.setattr(train_module._TierRun, "healthy", True, raising=False)
    retried = run_batch_sweep(SweepConfig(**{**cfg.__dict__, "retry_diverged": True}), log=logs.append)
    assert any("retraining the diverged tier from step 0" in m for m in logs)
    assert {t["batch"]: t["status"] for t in retried["tiers"]}[2] != "diverged"


@pytest.mark.slow
@pytest.mark.parametrize("at", ["tokens:4096", "loss:7.0"])
def test_early_decision_finishes_the_kept_tiers_exactly_and_counts_savings(sweep, tmp_path, at):
    """--decide_at trains every tier to the early point, finishes the ranked-best ones: their records equal the
    full sweep's (stopping and continuing is exact), and decision.json reports the tokens saved against it."""
    cfg, out, _ = sweep
    decide = dataclasses.replace(
        cfg, out=str(tmp_path), decide_at=at, decide_keep=2, decide_reference=str(out), progress_fractions=()
    )
    run_batch_sweep(decide, log=lambda m: None)
    rec = json.loads((tmp_path / "decision.json").read_text())
    assert len(rec["tiers"]) == 3 and len(rec["kept"]) == 2
    stopped = [t for t in rec["tiers"] if not t["kept"]]
    assert len(stopped) == 1 and stopped[0]["step"] > 0
    if at.startswith("loss"):
        assert stopped[0]["val_loss"] <= 7.0
    else:
        assert stopped[0]["tokens"] == 4096
    values = {t["batch"]: t["value"] for t in rec["tiers"]}
    assert max(values, key=values.get) == stopped[0]["batch"], "the largest statistic is stopped (sign +1)"
    for b in rec["kept"]:
        ref = (out / f"tier_B{b}" / "metrics.jsonl").read_text().splitlines()
        got = (tmp_path / f"tier_B{b}" / "metrics.jsonl").read_text().splitlines()
        strip = lambda rows: [
            {k: v for k, v in json.loads(r).items() if "throughput" not in k and "elapsed" not in k} for r in rows
        ]  # noqa: E731
        assert strip(got) == strip(ref), f"B={b}: stop + continue must equal the uninterrupted run"
    full = sum(json.loads((out / f"tier_B{b}" / "result.json").read_text())["tokens"] for b in (1, 2, 4))
    assert rec["full_sweep_tokens"] == full and rec["tokens_saved"] == full - rec["tokens_spent"] > 0
    assert isinstance(rec["picked_is_best"], bool) and rec["reference_best"] in (1, 2, 4)


def test_early_decision_ranks_and_stops_as_asked():
    d = Decision.parse("loss:3.5", "activation:rankme", 1, 2, n_tiers=4)
    row = EvalRow(step=5, tokens=1, val_loss=3.4, train_loss=None, window=8)
    assert d.budget(10_000) == 10_000 and d.stop_when()(row)
    assert not d.stop_when()(dataclasses.replace(row, val_loss=3.6))
    t = Decision.parse("tokens:4096", "gradient:alpha[2,8]", -1, 1, n_tiers=3)
    assert t.budget(10_000) == 4096 and t.stop_when() is None
    values = {1: 9.0, 2: 7.0, 4: float("nan"), 8: 8.0}
    assert rank_tiers(values, d) == ([2, 8], [1, 4]), "sign +1 keeps the smallest values; NaN is stopped"
    assert rank_tiers({1: 9.0, 2: 7.0, 8: 8.0}, t) == ([1], [2, 8]), "sign -1 keeps the largest"


def test_a_tier_diverged_before_the_early_point_is_ranked_last(tmp_path):
    d = Decision.parse("tokens:4096", "activation:rankme", 1, 1, n_tiers=2)
    (tmp_path / "result.json").write_text(json.dumps(dict(status="diverged", steps=3, tokens=3072)))
    early = early_statistic(tmp_path, d, tail=(2, 8), bank=())
    assert early["status"] == "diverged" and math.isnan(early["value"]) and early["tokens"] == 3072
    assert rank_tiers({1: early["value"], 2: 40.0}, d) == ([2], [1])


def test_early_decision_rejects_bad_flags(tmp_path):
    for flags, msg in (
        (dict(decide_at="fraction:0.2"), "needs T"),
        (dict(decide_at="tokens:-5"), "tokens:N or loss:L"),
        (dict(decide_at="loss:3", decide_by="weight:rankme"), "--decide_by"),
        (dict(decide_at="loss:3", decide_keep=6), "--decide_keep"),
    ):
        with pytest.raises(ValueError, match=msg):
            SweepConfig(out=str(tmp_path), **flags).decision()
