"""The chain: the taxonomy rule on hand-made transitions, and `experiments.chain` end to end at reduced budgets."""

import json
import math
import shutil
import subprocess
import sys

import pytest

from spectral_jax import taxonomy as eff
from spectral_jax.chain import CSV_COLUMNS, ChainConfig, family_batch, run_chain, summarize_chain, transitions_of
from spectral_jax.models import make_config
from spectral_jax.taxonomy import TaxonomyThresholds

ACT = dict(d_act_alpha_head=0.4, d_act_head_mass=0.05, d_grad_log_rankme=0.02)
GRAD = dict(d_act_alpha_head=0.01, d_grad_log_rankme=-0.5, d_grad_head_mass=0.04)
QUIET = dict(d_act_alpha_head=0.01, d_grad_log_rankme=0.02, path_sep_act=0.001)


@pytest.mark.parametrize(
    "g_tok, g_thr, features, label, reason",
    [
        (0.30, 0.00, ACT, eff.ACTIVATION_LED, "activation"),
        (0.30, -0.02, GRAD, eff.GRADIENT_LED, "gradient"),
        (0.30, 0.00, QUIET, eff.MIXED, "without a spectral shift"),
        (0.01, 0.40, QUIET, eff.THROUGHPUT_LED, "throughput gain"),
        (-0.02, 0.40, ACT, eff.THROUGHPUT_LED, "throughput gain"),
        (0.30, -0.40, ACT, eff.MIXED, "paid for in throughput"),
        (-0.30, 0.40, GRAD, eff.MIXED, "paid for in tokens"),
        (-0.30, 0.00, ACT, eff.MIXED, "regression"),
        (0.01, -0.01, ACT, eff.MIXED, "no change"),
        (None, 0.10, ACT, None, "did not reach"),
    ],
)
def test_taxonomy_every_category(g_tok, g_thr, features, label, reason):
    out = eff.classify_transition(g_tok, g_thr, features)
    assert out["label"] == label and reason in out["reason"]


def test_taxonomy_scores_and_thresholds():
    act, grad = eff.spectral_scores(
        dict(d_act_alpha_head=-0.2, path_sep_act=0.01, d_grad_alpha=0.05, path_sep_grad=None)
    )
    assert act == pytest.approx(2.0) and grad == pytest.approx(0.5)
    assert all(math.isnan(s) for s in eff.spectral_scores({}))
    # the activation side wins ties; a larger gradient shift wins over a smaller activation shift
    assert eff.classify_transition(0.2, 0, dict(d_act_alpha_head=0.2, d_grad_alpha=0.2))["label"] == eff.ACTIVATION_LED
    assert eff.classify_transition(0.2, 0, dict(d_act_alpha_head=0.2, d_grad_alpha=0.3))["label"] == eff.GRADIENT_LED
    # thresholds are flags: a stricter token threshold turns the same learning gain into "no change"
    strict = TaxonomyThresholds(tok=0.5)
    assert eff.classify_transition(0.3, 0, ACT, strict)["label"] == eff.MIXED
    with pytest.raises(ValueError, match="tok"):
        TaxonomyThresholds(tok=0)


def test_transitions_follow_the_family_tree_and_batches_match_tokens():
    assert transitions_of(["baseline", "rope", "muon", "untied"]) == [
        ("baseline", "rope"),
        ("rope", "muon"),
        ("muon", "untied"),
    ]
    assert transitions_of(["lswa", "attnscale", "sublr", "lswa_adam"]) == [
        ("lswa", "attnscale"),
        ("lswa", "sublr"),
        ("lswa", "lswa_adam"),
    ]
    assert transitions_of(["baseline", "muon"]) == []
    assert family_batch(make_config("unet", "tiny"), 512, 8) == 32
    assert family_batch(make_config("fixedwin", "tiny"), 512, 8) == 8
    assert family_batch(make_config("unet", "d12"), 65_536, 8) == 512


# one eval after three steps (the first two are compile steps, not timed), where every family is below 8.95
ARGS = (
    "--max_tokens=12288",
    "--eval_every_tokens=12288",
    "--val_tokens=2048",
    "--probe_every_evals=1",
    "--target_loss=8.95",
    "--pool_sequences=8",
    "--grad_samples=8",
    "--throughput_rounds=1",
)
FIGURES = (
    "gain_plane.png",
    "final_gradient_spectra.png",
    "alpha_summaries.png",
    "atlas_activation.png",
    "atlas_gradient.png",
    "loss_curves.png",
)


def _cli(module, *args):
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    out = tmp_path_factory.mktemp("chain")
    proc = _cli("experiments.chain", "--families=baseline,rope,muon,untied", f"--out={out}", *ARGS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_chain_end_to_end(chain):
    out, proc = chain
    summary = json.loads((out / "summary.json").read_text())
    assert [r["family"] for r in summary["families"]] == ["baseline", "rope", "muon", "untied"]
    assert all(
        r["status"] == "reached" and r["tokens_to_target"] > 0 and r["throughput_tokens_per_s"] > 0
        for r in summary["families"]
    )
    assert [t["name"] for t in summary["transitions"]] == ["baseline->rope", "rope->muon", "muon->untied"]
    for t in summary["transitions"]:
        assert t["label"] in eff.TAXONOMY_LABELS
        assert math.isclose(t["tok_gain"], math.exp(t["g_tok"]) - 1) and math.isfinite(t["g_thr"])
        assert t["path_sep_act"] is None or t["path_sep_act"] >= 0  # None: the loss ranges do not overlap
    assert all(r["batch"] * r["seq_len"] == 8 * 512 for r in summary["families"])  # same tokens per step
    header = (out / "chain_table.csv").read_text().splitlines()[0]
    assert header == ",".join(CSV_COLUMNS) and len((out / "chain_table.csv").read_text().splitlines()) == 4
    for name in FIGURES:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert "muon->untied" in proc.stderr
    q = json.loads((out / "throughput.json").read_text())
    assert q["families"] == ["baseline", "rope", "muon", "untied"] and summary["throughput_rule"] == "interleaved"
    for r in summary["families"]:
        side = q["throughput"][r["family"]]
        assert r["throughput_tokens_per_s"] == r["throughput_interleaved"] == side["tokens_per_s"] > 0
        assert side["timed_steps"] == 2 * q["rounds"] and r["throughput_train"] > 0


def test_chain_report_rebuilds_from_records(chain, tmp_path):
    out, _ = chain
    copy = tmp_path / "copy"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("checkpoints", "*.png", "summary.json", "*.csv"))
    summarize_chain(copy, log=lambda m: None)  # what `python -m experiments.report --results=DIR` calls for a chain
    rebuilt, orig = (json.loads((d / "summary.json").read_text()) for d in (copy, out))
    assert rebuilt["transitions"] == orig["transitions"]
    assert all((copy / name).is_file() for name in FIGURES)
    stricter = summarize_chain(copy, thresholds=TaxonomyThresholds(tok=100.0, thr=100.0), log=lambda m: None)
    assert all(t["label"] == eff.MIXED for t in stricter["transitions"])
    common = summarize_chain(copy, gain_target="common", log=lambda m: None)
    best = {r["family"]: r["final_val_loss"] for r in common["families"]}
    assert common["gain_target"] == pytest.approx(max(best.values()))  # one eval after step 0: best == final
    assert all(r["tokens_to_gain_target"] == 12288 for r in common["families"])
    with pytest.raises(ValueError, match="gain target"):
        summarize_chain(copy, gain_target="lowest", log=lambda m: None)


def test_chain_rerun_reuses_finished_families(chain):
    out, _ = chain
    proc = _cli("experiments.chain", "--families=baseline,rope,muon,untied", f"--out={out}", *ARGS)
    assert proc.returncode == 0 and proc.stderr.count("already finished") == 4
    assert "throughput: reusing" in proc.stderr


def test_chain_unknown_family_exit_2(tmp_path):
    proc = _cli("experiments.chain", "--families=baseline,nope", f"--out={tmp_path}")
    err = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(err) == 1 and "unknown family 'nope'" in err[0]


def test_chain_without_transition_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no transition"):
        run_chain(ChainConfig(families=("baseline", "muon"), out=str(tmp_path)), log=lambda m: None)
