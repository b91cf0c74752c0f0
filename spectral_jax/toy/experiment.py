"""The toy experiment: batch x stage sweep with LR selection by successive halving, probes, figures, summary.

For every seed, stage and batch B: LR candidates base * {sqrt(B/B0), B/B0} * multipliers (spectral_jax.halving.
lr_candidates); on the first seed `selection_seeds` they compete by successive halving (spectral_jax.halving.
successive_halving, survivors continue in memory), later seeds train the LR chosen for (stage, B) on seed 0 (or
run their own halving with selection="every_seed"). The winner's snapshots are then probed (spectral_jax.toy.
probes) and the run is written to DIR/runs/{stage}_B{B}_seed{seed}.json; an existing file of the same
configuration is reused, so an interrupted experiment resumes at the first missing run. `summarize` turns the run
files into summary.json and the figures (the tables in spectral_jax.toy.summary, the plots in spectral_jax.toy.figures).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import pathlib
import time
from collections.abc import Callable, Mapping
from typing import Any

from spectral_jax import halving as sweep_lib
from spectral_jax.errors import UserError
from spectral_jax.fields import option, overrides_of
from spectral_jax.records import environment, json_text, log_stderr, read_json, to_jsonable, write_json
from spectral_jax.toy import fourier
from spectral_jax.toy import task as task_lib
from spectral_jax.toy.model import STAGES, ToyDims, check_stage
from spectral_jax.toy.probes import ToyProbeConfig, ToyProber
from spectral_jax.toy.resume import advance_saving, load_run
from spectral_jax.toy.run_files import adopt_earlier_runs, belongs, run_fingerprint, run_name
from spectral_jax.toy.summary import band_mean, record_at_step, write_summary
from spectral_jax.toy.train import ToyRun, ToyTrainConfig

SELECTIONS = ("first_seed", "every_seed")
LR_SOURCES = ("halving", "reference")

# The reference's selected LRs of its trusted run (docs/method.md §6.4), base LR by stage and batch
REFERENCE_LRS: Mapping[str, Mapping[int, float]] = {
    "baseline": {32: 6.00e-4, 128: 1.697e-3, 512: 3.394e-3},
    "rope": {32: 6.00e-4, 128: 2.4e-3, 512: 6.787e-3},
    "muon": {32: 4.24e-4, 128: 1.697e-3, 512: 2.4e-3},
    "untied": {32: 6.00e-4, 128: 1.2e-3, 512: 1.697e-3},
}


def reference_lr(stage: str, batch: int) -> float:
    """The reference's selected LR for (stage, B); between its batches log-log interpolated, the centre its
    extension script used for B = 64 and 256."""
    table = REFERENCE_LRS[check_stage(stage)]
    if batch in table:
        return table[batch]
    lo = max((b for b in table if b < batch), default=None)
    hi = min((b for b in table if b > batch), default=None)
    if lo is None or hi is None:
        raise UserError(f"the reference selected LRs for B in {sorted(table)}; B = {batch} lies outside")
    t = math.log(batch / lo) / math.log(hi / lo)
    return math.exp((1 - t) * math.log(table[lo]) + t * math.log(table[hi]))


@dataclasses.dataclass(frozen=True)
class ToyExperimentConfig:
    """Everything one toy experiment depends on (each run file's fingerprint hashes it, narrowed to that run:
    `run_files.run_fingerprint`)."""

    stages: tuple[str, ...] = option(STAGES, "stages of baseline,rope,muon,untied")
    batches: tuple[int, ...] = option((8, 16, 32, 64), "batch sizes (sequences per step)")
    seeds: tuple[int, ...] = option((0, 1), "seeds (task data, init and batch order)")
    target: float = option(2.0, "stop at the first eval with val loss <= target")
    max_steps: int = option(5000, "step budget per run (at the reference batch; see scale_steps)")
    eval_every: int = option(10, "eval cadence in steps")
    val_sequences: int | None = option(None, "validation sequences per eval (0 or None = the whole val split)")
    measure_every: int = option(1, "probe snapshot every N evals (`probe_steps` picks which to probe)")
    micro_batch: int = option(128, "sequences per forward/backward")
    lr_base: float = option(3e-4, "base LR at the reference batch (AdamW groups; Muon matrices use 50x)")
    reference_batch: int = option(32, "B0 of the LR scaling and the step scaling")
    lr_multipliers: tuple[float, ...] = option(sweep_lib.MULTIPLIERS, "LR multipliers around each scaling centre")
    lr_centers: tuple[str, ...] = option(sweep_lib.CENTERS, "LR scaling centres (sqrt, linear, none)")
    scale_steps: bool = option(
        True, "max_steps and eval_every are at reference_batch; B < B0 runs B0/B times more steps"
    )
    rung_fractions: tuple[float, ...] = option(
        (0.125, 0.25, 0.5, 1.0), "successive-halving rung budgets as fractions of max_steps, ending at 1", name="rungs"
    )
    eta: float = option(2.0, "keep the best 1/eta of the LR candidates at each rung")
    lrs: str = option(
        "halving", "LR per (stage, B): halving (successive halving over the grid) or reference (its selected LRs)"
    )
    selection: str = option(
        "first_seed",
        "LR selection on the first seed only (first_seed: later seeds reuse its LR), or on every seed (every_seed)",
    )
    checkpoint_fractions: tuple[float, ...] = option(
        (0.25, 0.5, 1.0), "fractions of max_steps: the three ΔH_peak checkpoints"
    )
    progress_fractions: tuple[float, ...] = option(
        tuple(round(0.1 * i, 1) for i in range(1, 11)), "training-progress fractions of the Spearman-vs-progress tables"
    )
    task: task_lib.TaskConfig = option(task_lib.TaskConfig(), "the task", flag=False)
    probe: ToyProbeConfig = option(ToyProbeConfig(), "probe sizes", flag=False)
    dims: ToyDims = option(ToyDims(), "model dimensions", flag=False)

    def __post_init__(self):
        if not self.stages:
            raise UserError("need at least one stage")
        for s in self.stages:
            check_stage(s)
        if len(set(self.stages)) != len(self.stages):
            raise UserError(f"stages repeat: {self.stages}")
        if not self.batches or any(int(b) < 1 for b in self.batches):
            raise UserError(f"batches must be >= 1, got {self.batches}")
        if not self.seeds:
            raise UserError("need at least one seed")
        if self.lrs not in LR_SOURCES:
            raise UserError(f"lrs must be one of {LR_SOURCES}, got {self.lrs!r}")
        if self.lrs == "reference":
            for stage in self.stages:
                for b in self.batches:
                    reference_lr(stage, b)
        if self.selection not in SELECTIONS:
            raise UserError(f"selection must be one of {SELECTIONS}, got {self.selection!r}")
        fr = self.rung_fractions
        if not fr or any(not 0 < f <= 1 for f in fr) or list(fr) != sorted(set(fr)) or fr[-1] != 1.0:
            raise UserError(f"rung_fractions must increase strictly within (0, 1] and end at 1.0, got {fr}")
        if any(not 0 < f <= 1 for f in self.checkpoint_fractions):
            raise UserError(f"checkpoint_fractions must lie in (0, 1], got {self.checkpoint_fractions}")
        if self.max_steps < 1 or self.eval_every < 1 or self.measure_every < 1:
            raise UserError("max_steps, eval_every and measure_every must be >= 1")
        if not (math.isfinite(self.target) and self.lr_base > 0):
            raise UserError("target must be finite and lr_base positive")

    def step_scale(self, batch: int) -> int:
        """Steps at batch B per step at the reference batch: max(1, B0 / B) (the reference's extension script), so a
        batch below B0 gets the reference batch's token budget and eval cadence in tokens; 1 with scale_steps off."""
        return max(1, round(self.reference_batch / batch)) if self.scale_steps else 1

    def train_config(self, stage: str, batch: int, lr: float, seed: int) -> ToyTrainConfig:
        k = self.step_scale(batch)
        return ToyTrainConfig(
            stage=stage,
            batch_size=batch,
            lr=lr,
            seed=seed,
            target=self.target,
            max_steps=self.max_steps * k,
            eval_every=self.eval_every * k,
            val_sequences=self.val_sequences,
            measure_every=self.measure_every,
            micro_batch=self.micro_batch,
            dims=self.dims,
        )

    def rungs(self, batch: int) -> list[int]:
        """Rung budgets in steps at batch B: fractions of its max_steps rounded up to its eval cadence."""
        k = self.step_scale(batch)
        e, top = self.eval_every * k, self.max_steps * k
        return sorted({min(top, max(e, math.ceil(f * top / e) * e)) for f in self.rung_fractions})

    def checkpoint_steps(self, batch: int) -> list[int]:
        """ΔH_peak checkpoints at batch B: fractions of its max_steps on its snapshot grid (eval x measure_every)."""
        k = self.step_scale(batch)
        grid, top = self.eval_every * self.measure_every * k, self.max_steps * k
        return sorted({min(top, max(grid, round(f * top / grid) * grid)) for f in self.checkpoint_fractions})

    def fingerprint(self) -> str:
        text = json_text(self)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


# ---- one (stage, batch, seed) ------------------------------------------------------------------------------------
def _halving(cfg: ToyExperimentConfig, stage: str, batch: int, seed: int, splits, log) -> tuple[ToyRun, dict]:
    """Successive halving over the LR grid; returns the winner's run (trained to its stop) and the table."""
    mults = sweep_lib.lr_candidates(batch, cfg.reference_batch, multipliers=cfg.lr_multipliers, centers=cfg.lr_centers)
    keys = {sweep_lib.candidate_key(m): m for m in mults}
    runs: dict[str, ToyRun] = {}

    def advance(key: str, budget: int) -> sweep_lib.RungResult:
        if key not in runs:
            runs[key] = ToyRun(cfg.train_config(stage, batch, cfg.lr_base * keys[key], seed), splits, log=log)
        run = runs[key].advance(budget)
        return sweep_lib.RungResult(loss=run.val_loss, tokens=run.tokens, reached=run.status == "reached")

    result = sweep_lib.successive_halving(
        list(keys),
        cfg.rungs(batch),
        advance,
        eta=cfg.eta,
        log=lambda msg: log(f"[{stage} B={batch} seed={seed}] LR halving " + msg),
    )
    winner = runs[result.best]
    table = [dict(row, lr=cfg.lr_base * keys[row["candidate"]]) for row in result.table]
    return winner, dict(
        candidates=[cfg.lr_base * m for m in mults],
        rungs=cfg.rungs(batch),
        table=table,
        best_lr=cfg.lr_base * keys[result.best],
    )


def probe_steps(cfg: ToyExperimentConfig, run: ToyRun) -> dict[int, str]:
    """Snapshot step -> probe level: "full" at step 0 and the stop, "fourier" at the ΔH_peak checkpoints (the last
    snapshot at or before each), "spectra" at the snapshot nearest each progress fraction of the tokens to target
    (of the run's stop when the target was not reached; for Fig. 4a)."""
    snaps = [s.step for s in run.snapshots]
    if not snaps:
        return {}
    chosen: dict[int, str] = {}
    end = run.step
    for f in cfg.progress_fractions:
        chosen[min(snaps, key=lambda s: (abs(s - f * end), s))] = "spectra"
    for c in cfg.checkpoint_steps(run.tc.batch_size):
        chosen[max([s for s in snaps if s <= c], default=snaps[0])] = "fourier"
    chosen[snaps[0]] = chosen[snaps[-1]] = "full"
    return dict(sorted(chosen.items()))


def _measure(cfg: ToyExperimentConfig, run: ToyRun, prober: ToyProber) -> list[dict]:
    levels = probe_steps(cfg, run)
    return run.measure(
        lambda model, snap: dict(prober(model, level=levels[snap.step]), level=levels[snap.step]), steps=list(levels)
    )


def _run_one(
    cfg: ToyExperimentConfig,
    stage: str,
    batch: int,
    seed: int,
    splits,
    prober: ToyProber,
    lr: float | None,
    log,
    partial: pathlib.Path,
) -> dict:
    t0 = time.perf_counter()
    if lr is None:
        run, selection = _halving(cfg, stage, batch, seed, splits, log)
    else:
        tc = cfg.train_config(stage, batch, lr, seed)
        run = load_run(tc, splits, partial, log=log) or ToyRun(tc, splits, log=log)
        run = advance_saving(run, tc.max_steps, partial)
        source = dict(reused_from_seed=cfg.seeds[0]) if cfg.lrs == "halving" else dict(source="reference")
        selection = dict(candidates=[lr], rungs=[], table=[], best_lr=lr, **source)
    t_train = time.perf_counter() - t0
    records = _measure(cfg, run, prober)
    t_probe = time.perf_counter() - t0 - t_train
    out = dict(
        run.summary(),
        evals=run.evals,
        records=records,
        selection=selection,
        wall_seconds=dict(train=t_train, probes=t_probe),
    )
    log(
        f"[{stage} B={batch} seed={seed}] {run.status} at step {run.step} ({run.tokens:,} tokens), val "
        f"{run.val_loss:.4f}, lr {run.tc.lr:.3g}; train {t_train:.0f}s, probes {t_probe:.0f}s"
    )
    return out


def run_toy_experiment(
    cfg: ToyExperimentConfig, out: str | pathlib.Path, log: Callable[[str], None] = log_stderr, *, figures: bool = True
) -> dict:
    """Train and probe every (seed, stage, batch), reusing finished run files; then summarise (and plot)."""
    out = pathlib.Path(out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    fp = cfg.fingerprint()
    adopt_earlier_runs(out, cfg, config_from_dict, log)
    write_json(out / "config.json", dict(config=to_jsonable(cfg), fingerprint=fp, environment=environment()))
    t0 = time.perf_counter()
    chosen: dict[tuple[str, int], float] = {}
    for seed in cfg.seeds:
        task_cfg = dataclasses.replace(cfg.task, seed=seed)
        splits = task_lib.make_task(task_cfg)
        prober = ToyProber(task_cfg, splits, dataclasses.replace(cfg.probe, sample_seed=seed))
        for stage in cfg.stages:
            for batch in cfg.batches:
                path = out / "runs" / f"{run_name(stage, batch, seed)}.json"
                run_fp = run_fingerprint(cfg, stage, batch, seed)
                if path.is_file():
                    done = read_json(path)
                    if done.get("fingerprint") == run_fp:
                        log(f"[{stage} B={batch} seed={seed}] reusing {path}")
                        chosen.setdefault((stage, batch), done["lr"])
                        continue
                reuse = seed != cfg.seeds[0] and cfg.selection == "first_seed"
                lr = reference_lr(stage, batch) if cfg.lrs == "reference" else chosen.get((stage, batch))
                partial = path.parent / f"{path.stem}.{run_fp}.partial.npz"  # mid-run save
                result = _run_one(
                    cfg,
                    stage,
                    batch,
                    seed,
                    splits,
                    prober,
                    lr if reuse or cfg.lrs == "reference" else None,
                    log,
                    partial,
                )
                chosen.setdefault((stage, batch), result["lr"])
                write_json(path, dict(result, fingerprint=run_fp))
                partial.unlink(missing_ok=True)
    log(f"all runs done in {time.perf_counter() - t0:.0f}s; summarising")
    return summarize(out, figures=figures, wall_seconds=time.perf_counter() - t0)


# ---- summary -----------------------------------------------------------------------------------------------------
def load_runs(out: str | pathlib.Path) -> tuple[ToyExperimentConfig, list[dict]]:
    """The experiment's config and its run files (made under its settings: `run_files.belongs`, or stamped with
    config.json's whole-config fingerprint by an earlier version), sorted by seed, stage, batch."""
    out = pathlib.Path(out)
    meta = read_json(out / "config.json")
    cfg = config_from_dict(meta["config"])
    runs = []
    for p in sorted((out / "runs").glob("*.json")):
        r = read_json(p)
        if belongs(cfg, r) or r.get("fingerprint") == meta["fingerprint"]:
            runs.append(r)
    order = {s: i for i, s in enumerate(cfg.stages)}
    runs.sort(key=lambda r: (r["seed"], order.get(r["stage"], 99), r["batch"]))
    return cfg, runs


def config_from_dict(d: Mapping[str, Any]) -> ToyExperimentConfig:
    d = dict(d)
    tup = lambda v: tuple(tuple(x) if isinstance(x, list) else x for x in v)  # noqa: E731
    for k in (
        "stages",
        "batches",
        "seeds",
        "lr_multipliers",
        "lr_centers",
        "rung_fractions",
        "checkpoint_fractions",
        "progress_fractions",
    ):
        d[k] = tup(d[k])
    probe = dict(d["probe"])
    for k in ("head", "tail", "local"):
        probe[k] = tuple(probe[k])
    for k in ("bands", "sweep_bands"):
        probe[k] = tuple(tuple(b) for b in probe[k])
    d["probe"] = ToyProbeConfig(**probe)
    d["task"] = task_lib.TaskConfig(**d["task"])
    d["dims"] = ToyDims(**d["dims"])
    return ToyExperimentConfig(**d)


def summarize(out: str | pathlib.Path, *, figures: bool = True, wall_seconds: float | None = None) -> dict:
    """summary.json (and the figures) from the run files in `out`."""
    out = pathlib.Path(out)
    cfg, runs = load_runs(out)
    if not runs:
        raise UserError(f"no finished runs of this configuration in {out / 'runs'}")
    return write_summary(out, cfg, runs, figures=figures, wall_seconds=wall_seconds)


# ---- presets -----------------------------------------------------------------------------------------------------
REFERENCE = ToyExperimentConfig(
    batches=(32, 64, 128, 256, 512),
    seeds=(0,),
    target=2.0,
    max_steps=5000,
    eval_every=10,
    val_sequences=None,
    measure_every=25,
    lr_base=3e-4,
    rung_fractions=(0.125, 0.5, 1.0),
    checkpoint_fractions=(0.1, 0.2, 0.3),
    scale_steps=False,
    probe=ToyProbeConfig(bands=((97, 200), (179, 50)), n_probe=12_000, n_sweep=12_000, grad_samples=64),
)
"""The reference's trusted toy run (docs/method.md §6.4): B 32..512, 5,000 steps, target 2.0, eval every 10 steps on the
whole validation split, ASHA-like rungs 1/8, 1/2, 1, checkpoints 500/1000/1500, 12,000 probe sequences. Days of
CPU time; here for accelerators."""

CPU = ToyExperimentConfig(
    batches=(8, 16, 32),
    seeds=(0, 1),
    target=5.0,
    max_steps=160,
    eval_every=10,
    val_sequences=128,
    measure_every=1,
    lr_base=1.2e-3,
    lr_multipliers=(0.5, 1.0, 2.0),
    rung_fractions=(0.125, 0.25, 0.5, 1.0),
    checkpoint_fractions=(0.25, 0.5, 1.0),
    progress_fractions=(0.1, 0.2, 0.3, 0.4, 0.6, 0.8, 1.0),
    probe=ToyProbeConfig(n_samples=512, n_probe=1024, n_sweep=512, grad_samples=32),
)
"""The default CPU run (under 45 minutes on 2 cores; docs/results.md gives the measured time, BUILD_NOTES.md the
reasons for each reduction)."""

QUICK = ToyExperimentConfig(
    batches=(8, 16),
    seeds=(0,),
    target=5.5,
    max_steps=20,
    eval_every=5,
    val_sequences=128,
    measure_every=1,
    lr_base=1.2e-3,
    lr_multipliers=(1.0, 2.0),
    lr_centers=("sqrt",),
    rung_fractions=(0.5, 1.0),
    checkpoint_fractions=(0.5, 1.0),
    progress_fractions=(0.25, 0.5, 1.0),
    probe=ToyProbeConfig(
        n_samples=256, n_probe=256, sweep_bands=fourier.PROBE_BANDS[:4], n_sweep=256, grad_samples=16, chunk=256
    ),
)
"""--quick: every code path at toy scale in a few minutes (numbers are not meaningful)."""

FAITHFUL = dataclasses.replace(
    REFERENCE,
    stages=("untied", "muon"),
    lrs="reference",
    measure_every=5,
    progress_fractions=(0.05,) + REFERENCE.progress_fractions,
)
"""The study's toy (docs/results.md): the reference's trusted run for the Untied and Muon stages at the reference's
selected LRs (no halving), B 32..512, up to 5,000 steps, snapshots every 50 steps for Fig. 4a's progress grid.
Untied runs first: it reaches the target in the fewest tokens, so its five batch sizes are complete soonest. Hours
per stage on 2 CPU cores; every run saves itself every 5 minutes and resumes."""

FAITHFUL_DH = dataclasses.replace(
    REFERENCE, batches=(32, 128), lrs="reference", max_steps=1500, checkpoint_fractions=(1 / 3, 2 / 3, 1.0)
)
"""ΔH_peak of all four stages at the reference's checkpoints 500 / 1,000 / 1,500 steps, at two batch sizes."""

PRESETS = {"cpu": CPU, "quick": QUICK, "reference": REFERENCE, "faithful": FAITHFUL, "faithful_dh": FAITHFUL_DH}
ToyOverrides = overrides_of(ToyExperimentConfig, "ToyOverrides")

__all__ = [
    "SELECTIONS",
    "ToyExperimentConfig",
    "ToyOverrides",
    "PRESETS",
    "CPU",
    "QUICK",
    "REFERENCE",
    "FAITHFUL",
    "FAITHFUL_DH",
    "REFERENCE_LRS",
    "reference_lr",
    "run_name",
    "probe_steps",
    "run_toy_experiment",
    "load_runs",
    "config_from_dict",
    "summarize",
    "record_at_step",
    "band_mean",
]
