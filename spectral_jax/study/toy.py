"""The study's toy tables, from the toy experiments' summaries (spectral_jax.toy.summary): Fig. 4a (rho of the
ranks 10-40 activation tail at each fraction of T(B) against eps_tok, within each stage across its batch sizes)
and ΔH_peak per stage transition at the three checkpoints."""

from __future__ import annotations

import pathlib
import shutil

import numpy as np

from spectral_jax.errors import UserError
from spectral_jax.records import read_json
from spectral_jax.study.analysis import write_csv
from spectral_jax.toy.summary import ratio_pairs

FIG4A_COLUMNS = ("stage", "seed", "fraction", "realized_min", "realized_max", "rho", "p_value", "n")
REACH_COLUMNS = ("stage", "batch", "seed", "lr", "status", "steps", "tokens_to_target", "final_val_loss")
DH_COLUMNS = ("transition", "checkpoint", "steps", "dH_peak_mean", "dH_peak_sd", "n_pairs")
H_COLUMNS = ("stage", "checkpoint", "steps", "H_peak_mean", "H_peak_sd", "n")
H_RUN_COLUMNS = ("stage", "batch", "seed", "checkpoint", "step", "val_loss", "H_peak")
RATIO_COLUMNS = ("seed", "numerator", "denominator", "numerator_mean", "denominator_mean", "ratio", "n_pairs")


def _summary(directory: str | pathlib.Path) -> dict:
    path = pathlib.Path(directory) / "summary.json"
    if not path.is_file():
        raise UserError(f"{path.parent} has no summary.json; run python -m experiments.toy_modarith there first")
    return read_json(path)


def fig4a_rows(summary: dict) -> list[dict]:
    """rho vs progress (Fig. 4a), one row per (stage, seed, fraction): within each stage across its batch sizes,
    then stage "pooled" over every stage's reached runs (the paper's figure; across stages it also ranks them)."""
    sp = summary["spearman_vs_progress"]
    rows = [{k: r.get(k) for k in FIG4A_COLUMNS} for r in sp["within_stage"]]
    return rows + [{k: r.get(k) for k in FIG4A_COLUMNS} | {"stage": "pooled"} for r in sp["pooled"]]


def reach_rows(summary: dict) -> list[dict]:
    return [{k: r.get(k) for k in REACH_COLUMNS} for r in summary["runs"]]


def dh_rows(summary: dict) -> tuple[list[dict], list[dict]]:
    """(ΔH_peak per transition and checkpoint, H_peak per stage and checkpoint), mean and sd over batches x seeds."""
    four = summary["fourier"]
    steps = four["checkpoint_steps_by_batch"]
    at = {ck: "/".join(sorted({str(s[i]) for s in steps.values()})) for i, ck in enumerate(four["checkpoints"])}
    dh = []
    for name in four["transition_order"]:
        for ck, stat in four["transitions"][name]["dH_peak"].items():
            dh.append(
                dict(
                    transition=name,
                    checkpoint=ck,
                    steps=at[ck],
                    dH_peak_mean=stat["mean"],
                    dH_peak_sd=stat["sd"],
                    n_pairs=stat["n"],
                )
            )
    h = []
    for stage, tables in four["stages"].items():
        for ck, stat in tables["H_peak"].items():
            h.append(
                dict(
                    stage=stage,
                    checkpoint=ck,
                    steps=at[ck],
                    H_peak_mean=stat["mean"],
                    H_peak_sd=stat["sd"],
                    n=stat["n"],
                )
            )
    return dh, h


def dh_ratio_rows(summary: dict) -> list[dict]:
    """The paper's ΔH_peak ratios (`toy.summary.ratio_pairs`: one transition's mean over checkpoints and batch sizes
    over another's), per seed and over all seeds ("all"), from each run's H_peak: how much the ratio moves between
    seeds."""
    four = summary["fourier"]
    h = {(r["stage"], r["batch"], r["seed"], r["checkpoint"]): r["H_peak"] for r in four["by_run"]}
    pairs = sorted({key[1:] for key in h})  # (batch, seed, checkpoint)
    all_seeds = sorted({k[1] for k in pairs})

    def mean_delta(transition: str, seeds) -> tuple[float | None, int]:
        a, b = transition.split("->")
        d = [h[(b, *k)] - h[(a, *k)] for k in pairs if k[1] in seeds and (a, *k) in h and (b, *k) in h]
        return (float(np.mean(d)) if d else None), len(d)

    rows = []
    for seed in all_seeds + ["all"]:
        seeds = set(all_seeds) if seed == "all" else {seed}
        for num, den in ratio_pairs(four["transition_order"]):
            (n, n_pairs), (d, _) = mean_delta(num, seeds), mean_delta(den, seeds)
            ratio = n / d if n is not None and d else None
            rows.append(
                dict(
                    seed=seed,
                    numerator=num,
                    denominator=den,
                    numerator_mean=n,
                    denominator_mean=d,
                    ratio=ratio,
                    n_pairs=n_pairs,
                )
            )
    return rows


def write_toy_tables(progress_dir, dh_dir, out: pathlib.Path) -> dict:
    """fig4a.csv and reach.csv from the progress experiment (five batch sizes); dh_peak.csv, h_peak.csv and
    h_peak_by_run.csv (each run at each checkpoint, with its val loss there) from the ΔH_peak experiment (four
    stages); their figures copied beside. Returns what it wrote."""
    out.mkdir(parents=True, exist_ok=True)
    wrote = {}
    if progress_dir:
        s = _summary(progress_dir)
        fig4a, reach = fig4a_rows(s), reach_rows(s)
        write_csv(out / "fig4a.csv", fig4a, FIG4A_COLUMNS)
        write_csv(out / "reach.csv", reach, REACH_COLUMNS)
        wrote["progress"] = dict(fig4a=fig4a, reach=reach, pooled=s["spearman_vs_progress"]["pooled"])
        _copy_figures(progress_dir, out, ("fig4a", "loss_curves"))
    if dh_dir:
        s = _summary(dh_dir)
        dh, h = dh_rows(s)
        write_csv(out / "dh_peak.csv", dh, DH_COLUMNS)
        write_csv(out / "h_peak.csv", h, H_COLUMNS)
        write_csv(out / "h_peak_by_run.csv", s["fourier"]["by_run"], H_RUN_COLUMNS)
        write_csv(out / "dh_reach.csv", reach_rows(s), REACH_COLUMNS)
        by_seed = dh_ratio_rows(s)
        write_csv(out / "dh_ratio.csv", by_seed, RATIO_COLUMNS)
        wrote["dh"] = dict(dh_peak=dh, h_peak=h, ratios=s["fourier"]["dH_peak_ratios"], by_seed=by_seed)
        _copy_figures(dh_dir, out, ("fig11", "fig4b", "fig4c"), prefix="dh_")
    return wrote


def _copy_figures(src, out: pathlib.Path, stems, prefix: str = "") -> None:
    for p in sorted(pathlib.Path(src).glob("*.png")):
        if p.stem.startswith(stems):
            shutil.copyfile(p, out / f"{prefix}{p.name}")


__all__ = ["fig4a_rows", "dh_rows", "dh_ratio_rows", "reach_rows", "write_toy_tables"]
