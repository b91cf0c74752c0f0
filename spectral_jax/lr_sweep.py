"""The LR sweep: successive halving per family x batch tier, for the language-model families.

`run_lr_sweep(LRSweepConfig)` is what `python -m experiments.lr_sweep` calls. For each batch tier B it takes the
candidate multipliers of the family's anchor LRs (`halving.lr_candidates`: the centres sqrt(B/B0) and B/B0 times
{0.5, 1/sqrt2, 1, sqrt2, 2}, one multiplier for every optimizer group), and runs `halving.successive_halving` over
token rungs; `advance(candidate, budget)` is `train(..., max_tokens=budget)` in the candidate's own run
directory, so a survivor CONTINUES from its previous rung's checkpoint (train.py leaves the budget out of the
config fingerprint, and continuing equals a straight run; the reference retrains every survivor from step 0).
The ranking is the core's: reached the target (fewer tokens first), then last observed val loss, diverged last.

    <out>/sweep.json                       resolved config, rungs, data
    <out>/<family>/B{B}/config.json        what the tier's runs must share (guards resume)
    <out>/<family>/B{B}/halving.jsonl      finished (candidate, rung) results (restart state)
    <out>/<family>/B{B}/lr_<mult>/         one train() run directory per candidate
    <out>/<family>/B{B}/selection.json     the tier's selected multiplier, per-group LRs, per-rung table
    <out>/lr_table.json                    {family: {B: multiplier}}: what `batch_sweep --lr=auto` reads
    <out>/summary.json + *.png             everything above, from the selection records alone

Rungs: the reference's 50M / 150M / 500M training tokens (docs/method.md §3.3) scaled to a preset by
`preset_rungs`: times the preset's tokens per reference-batch step over d12's, times the preset's
schedule_scale (the same share of the family's compressed schedule), rounded up to the eval cadence.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from spectral_jax import halving, plots
from spectral_jax.data import TokenDataset, load_data
from spectral_jax.data.vocab import VocabMap, fit_vocab
from spectral_jax.errors import UserError
from spectral_jax.fields import option
from spectral_jax.lock import results_lock
from spectral_jax.lr_rules import default_lr_table, packaged_lr_table
from spectral_jax.models import ModelConfig, make_config
from spectral_jax.optim import group_learning_rates
from spectral_jax.presets import DEFAULT_BATCH_TIERS, UsesPreset, get_preset
from spectral_jax.records import json_text, log_stderr, read_json, write_json
from spectral_jax.train import TrainingDiverged, train
from spectral_jax.train_config import TrainConfig, TrainOverrides

REFERENCE_RUNGS = (50_000_000, 150_000_000, 500_000_000)  # docs/method.md §3.3, training tokens at d12
DEFAULT_ETA = 2.0  # paper: top half; the reference's shells use 3
DEFAULT_TIERS = DEFAULT_BATCH_TIERS  # as the batch sweep, so `batch_sweep --lr=auto` finds every tier


def preset_rungs(
    family: str, preset: str, tc: TrainConfig, *, reference: Sequence[int] = REFERENCE_RUNGS, **model_overrides
) -> tuple[int, ...]:
    """The reference rungs for a preset: scaled by (preset tokens per reference-batch step / d12's) x
    schedule_scale, rounded up to whole evals. d12 keeps 50M/150M/500M up to the 52.4M eval cadence."""
    here = make_config(family, preset, **model_overrides)
    ref = make_config(family, "d12")
    scale = (here.optim.reference_batch * here.seq_len) / (ref.optim.reference_batch * ref.seq_len)
    scale *= tc.schedule_scale
    e = tc.eval_every_tokens
    rungs = tuple(max(1, math.ceil(r * scale / e)) * e for r in reference)
    return tuple(sorted(set(rungs)))


@dataclasses.dataclass(frozen=True)
class LRSweepConfig(UsesPreset):
    """Successive halving per batch tier of one family, on a preset, in the batch sweep's regime (its target,
    cadences and tiers) so that the table it writes is what `batch_sweep` trains with."""

    family: str = option("betterwin", "family of the chain (spectral_jax.models.FAMILIES)")
    preset: str = option("tiny", "model/training preset: tiny (CPU), d12, d36, d48 (spectral_jax.presets)")
    tiers: tuple[int, ...] | None = option(None, "batch tiers B, sequences per step (default: the preset's)")
    data: str = option("embedded", "'embedded' (default corpus), a directory of .bin shards, or text files")
    tokenizer: str = option("gpt2", "tokenizer of text data: gpt2 (the package's BPE) or bytes (UTF-8 bytes)")
    rungs: tuple[int, ...] | None = option(
        None,
        "token budgets of the halving rungs, comma-separated (default: the preset's sweep regime's, else the "
        "reference's 50M,150M,500M scaled to the preset)",
    )
    eta: float = option(DEFAULT_ETA, "keep the best 1/eta of the candidates at each rung (the reference used 3)")
    lr_multipliers: tuple[float, ...] | None = option(
        None, "LR grid: multipliers around each centre (default: the sweep regime's, else 0.5,0.707,1,1.414,2)"
    )
    lr_centers: tuple[str, ...] | None = option(
        None, "LR grid: scaling centres with B/B0, of sqrt, linear, none (default: the regime's, else sqrt,linear)"
    )
    min_survivors: int = option(1, "candidates kept at least at every rung")
    out: str | None = option(None, "results directory (default results/lr_sweep/<family>_<preset>)")
    resume: bool = option(
        True,
        "reuse finished rungs and continue interrupted candidates from checkpoints; "
        "--noresume starts the requested tiers over",
    )
    ship: bool = option(False, "maintainers: also write the table into the package (spectral_jax/lr_tables)")
    train: TrainOverrides = option(TrainOverrides(), "changes to the preset's training config")
    model_overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict, metadata={"flag": False})
    use_sweep_regime: bool = dataclasses.field(default=True, metadata={"flag": False})  # False: preset's own

    def out_dir(self) -> pathlib.Path:
        return pathlib.Path(self.out) if self.out else default_lr_table(self.family, self.preset, self.tokenizer).parent


def tier_dir(out: pathlib.Path, family: str, batch: int) -> pathlib.Path:
    return out / family / f"B{batch}"


def _rung_result(result: Mapping[str, Any]) -> halving.RungResult:
    loss = result.get("final_val_loss")
    return halving.RungResult(
        loss=float("nan") if loss is None else float(loss),
        tokens=int(result["tokens"]),
        reached=result.get("status") == "reached",
    )


@dataclasses.dataclass(frozen=True)
class _SweepContext:
    """What every tier of one LR sweep trains with: the config, model, base training config, data and rungs."""

    cfg: LRSweepConfig
    model_cfg: ModelConfig
    base_tc: TrainConfig
    dataset: TokenDataset
    vmap: VocabMap | None
    rungs: tuple[int, ...]
    out: pathlib.Path
    shared: dict
    log: Callable[[str], None]


def _sweep_rungs(cfg: LRSweepConfig, base_tc: TrainConfig) -> tuple[int, ...]:
    """The halving rungs (--rungs, else the preset's scaled reference rungs), checked positive and increasing."""
    regime = cfg.regime()
    if cfg.rungs:
        rungs = tuple(cfg.rungs)
    elif regime.lr_rungs:
        rungs = tuple(regime.lr_rungs)
    else:
        rungs = preset_rungs(cfg.family, cfg.preset, base_tc, **cfg.model_changes())
    if any(b2 <= b1 for b1, b2 in zip(rungs, rungs[1:])) or rungs[0] < 1:
        raise UserError(f"--rungs must be positive, strictly increasing token budgets, got {rungs}")
    return rungs


def _shared_settings(model_cfg: ModelConfig, base_tc: TrainConfig, dataset: TokenDataset) -> dict:
    """What every run of a tier must share for earlier results to be reused."""
    # not the budget, batch, LR or logging; not the corpus build time
    return dict(
        model=model_cfg,
        train={
            k: v
            for k, v in dataclasses.asdict(base_tc).items()
            if k not in ("batch_size", "lr", "max_tokens", "micro_batch", "log_every_seconds")
        },
        data={k: v for k, v in dataset.metadata.items() if k != "build_seconds"},
    )


def _advance_fn(ctx: _SweepContext, batch: int, tdir: pathlib.Path, by_key: Mapping[str, float]) -> Callable:
    """advance(candidate, budget) of one tier: train() the candidate to `budget` tokens in its own run directory."""
    cfg, log = ctx.cfg, ctx.log

    def advance(key: str, budget: int) -> halving.RungResult:
        tc = ctx.base_tc.for_batch(batch, lr=by_key[key], max_tokens=budget)
        tag = f"[{cfg.family} lr x{key}]"  # train() adds [B=...]
        run_dir = tdir / f"lr_{key}"
        try:
            result = train(
                ctx.model_cfg,
                tc,
                ctx.dataset,
                run_dir,
                resume=True,
                log=lambda msg, tag=tag: log(f"{tag} {msg}"),
                run_info=dict(
                    family=cfg.family,
                    preset=cfg.preset,
                    lr_multiplier=by_key[key],
                    lr_rule="successive halving candidate",
                    vocab_map=ctx.vmap and ctx.vmap.describe(),
                ),
            )
        except TrainingDiverged as err:
            log(f"{tag} diverged: {err}")
            result = read_json(run_dir / "result.json")
        return _rung_result(result)

    return advance


MAX_EXTENSIONS = 3  # times the grid is extended past an edge winner before the edge is accepted


def _extend(mults: list[float], best: float) -> list[float]:
    """One more step of sqrt(2) and 2 past the grid's edge when `best` sits on it; [] when it is inside."""
    if best == max(mults):
        return [best * math.sqrt(2), best * 2]
    if best == min(mults):
        return [best / math.sqrt(2), best / 2]
    return []


def _halving_extended(ctx: _SweepContext, batch: int, tdir: pathlib.Path, mults: list[float], log) -> tuple:
    """Successive halving over `mults`, rerun with the grid extended while the winner sits on an edge (finished
    (candidate, rung) results are reused from halving.jsonl, so only the new candidates train)."""
    extensions = []
    for attempt in range(MAX_EXTENSIONS + 1):
        by_key = {halving.candidate_key(m): m for m in sorted(mults)}
        selection = halving.successive_halving(
            list(by_key),
            ctx.rungs,
            _advance_fn(ctx, batch, tdir, by_key),
            eta=ctx.cfg.eta,
            min_survivors=ctx.cfg.min_survivors,
            state_path=tdir / "halving.jsonl",
            log=log,
        )
        more = _extend(list(by_key.values()), by_key[selection.best])
        if not more or attempt == MAX_EXTENSIONS:
            return selection, by_key, extensions, bool(more)
        log(f"winner x{selection.best} sits on the grid's edge: adding {', '.join(f'x{m:.4g}' for m in more)}")
        extensions.append([halving.candidate_key(m) for m in more])
        mults = mults + more
    raise AssertionError("unreachable")


def _flatness(selection: halving.HalvingResult, by_key: Mapping[str, float]) -> list[dict]:
    """How flat the optimum is: every final-rung survivor's tokens to target (or val loss) relative to the winner."""
    best = selection.results[selection.best]
    rows = []
    for key in selection.survivors:
        r = selection.results[key]
        rows.append(
            dict(
                candidate=key,
                multiplier=by_key[key],
                reached=r.reached,
                tokens=r.tokens,
                loss=r.loss,
                tokens_vs_best=r.tokens / best.tokens if r.reached and best.reached else None,
                loss_minus_best=r.loss - best.loss if math.isfinite(r.loss) and math.isfinite(best.loss) else None,
            )
        )
    return rows


def _grid(cfg: LRSweepConfig) -> dict:
    """lr_candidates' grid arguments: the flags, else the sweep regime's, else halving's defaults."""
    regime = cfg.regime()
    grid = dict(
        multipliers=tuple(cfg.lr_multipliers or regime.lr_multipliers or halving.MULTIPLIERS),
        centers=tuple(cfg.lr_centers or regime.lr_centers or halving.CENTERS),
    )
    try:  # halving checks the grid; here its error becomes a user error naming the flags
        halving.lr_candidates(1, 1, **grid)
    except ValueError as err:
        raise UserError(f"--lr_multipliers / --lr_centers: {err}") from None
    return grid


def _select_tier(ctx: _SweepContext, i: int, batch: int, t0: float) -> None:
    """Successive halving over one tier's LR multipliers (resuming; the grid extended past an edge winner), then
    its selection.json."""
    cfg, log = ctx.cfg, ctx.log
    ref_batch = ctx.model_cfg.optim.reference_batch
    tdir = tier_dir(ctx.out, cfg.family, batch)
    if not cfg.resume and tdir.exists():
        shutil.rmtree(tdir)
    tdir.mkdir(parents=True, exist_ok=True)
    _check_shared(tdir / "config.json", dict(ctx.shared, batch=batch))
    mults = list(halving.lr_candidates(batch, ref_batch, **_grid(cfg)))
    log(
        f"== {cfg.family} {cfg.preset}: tier {i + 1}/{len(cfg.tiers)}, B = {batch} (B0 = {ref_batch}), "
        f"{len(mults)} LR multipliers {', '.join(halving.candidate_key(m) for m in mults)}; rungs "
        f"{', '.join(f'{r:,}' for r in ctx.rungs)} tokens, eta {cfg.eta:g} ({time.perf_counter() - t0:.0f}s elapsed)"
    )
    selection, by_key, extensions, at_edge = _halving_extended(
        ctx, batch, tdir, mults, lambda m: log(f"[{cfg.family} B={batch}] {m}")
    )
    best = selection.best
    chosen = selection.results[best]
    write_json(
        tdir / "selection.json",
        dict(
            family=cfg.family,
            preset=cfg.preset,
            batch=batch,
            reference_batch=ref_batch,
            rungs=ctx.rungs,
            eta=cfg.eta,
            candidates=[dict(key=k, multiplier=m) for k, m in by_key.items()],
            extensions=extensions,
            winner_at_edge=at_edge,
            selected=best,
            multiplier=by_key[best],
            learning_rates=group_learning_rates(ctx.model_cfg, by_key[best]),
            selected_result=dataclasses.asdict(chosen),
            survivors=selection.survivors,
            flatness=_flatness(selection, by_key),
            table=[dict(r, multiplier=by_key[r["candidate"]]) for r in selection.table],
        ),
    )
    log(
        f"[{cfg.family} B={batch}] selected LR multiplier x{best} "
        f"({'reached the target at' if chosen.reached else 'val loss ' + format(chosen.loss, '.4f') + ' at'} "
        f"{chosen.tokens:,} tokens)" + (" -- still on the grid's edge after extending it" if at_edge else "")
    )


def run_lr_sweep(cfg: LRSweepConfig, log: Callable[[str], None] = log_stderr) -> dict:
    """Successive halving for every tier (resuming), then lr_table.json, summary.json and figures."""
    if not cfg.tiers or any(b < 1 for b in cfg.tiers):
        raise UserError(f"--tiers must be positive batch sizes, got {cfg.tiers}")
    if not cfg.eta > 1:
        raise UserError(f"--eta must be > 1 (2 keeps the top half, the reference used 3), got {cfg.eta}")
    model_cfg = make_config(cfg.family, cfg.preset, **cfg.model_changes())
    base_tc = cfg.train_config()
    if cfg.train.keep_checkpoints is None:  # the sweep regime keeps many for the batch sweep's replay; not here
        base_tc = base_tc.replace(keep_checkpoints=get_preset(cfg.preset).train.keep_checkpoints)
    rungs = _sweep_rungs(cfg, base_tc)
    _grid(cfg)  # a bad grid fails before any data is loaded
    with results_lock(cfg.out_dir(), log):
        return _run_locked(cfg, model_cfg, base_tc, rungs, log)


def _run_locked(cfg: LRSweepConfig, model_cfg: ModelConfig, base_tc: TrainConfig, rungs, log) -> dict:
    """run_lr_sweep under the results directory's lock."""
    out = cfg.out_dir()
    dataset, vmap = fit_vocab(load_data(cfg.data, tokenizer=cfg.tokenizer), model_cfg.vocab_size, model_cfg.eot_id)
    shared = _shared_settings(model_cfg, base_tc, dataset)
    write_json(
        out / "sweep.json",
        dict(
            config=cfg,
            rungs=rungs,
            reference_rungs=REFERENCE_RUNGS,
            model=model_cfg,
            train=base_tc,
            data=dataset.metadata,
        ),
    )
    ctx = _SweepContext(cfg, model_cfg, base_tc, dataset, vmap, rungs, out, shared, log)
    t0 = time.perf_counter()
    for i, batch in enumerate(sorted(set(cfg.tiers))):
        _select_tier(ctx, i, batch, t0)
    summary = summarize_lr_sweep(out, log=log)
    log(format_selection(summary))
    if cfg.ship:
        command = (
            f"python -m experiments.lr_sweep --family={cfg.family} --preset={cfg.preset} --data={cfg.data} "
            f"--tokenizer={cfg.tokenizer} --tiers={','.join(map(str, sorted(cfg.tiers)))} --ship"
        )
        path = packaged_lr_table(cfg.family, cfg.preset, cfg.tokenizer)
        write_json(path, make_lr_table(out, cfg.family, tokenizer=cfg.tokenizer, command=command))
        log(f"packaged LR table -> {path}")
    return summary


def _check_shared(path: pathlib.Path, shared: Mapping[str, Any]) -> None:
    """A tier's earlier results are reusable only under the same model/train/data settings."""
    now = json.loads(json_text(shared))  # as write_json stores it
    if path.is_file():
        before = read_json(path)
        if before != now:
            changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
            raise UserError(
                f"{path.parent} holds LR-sweep results made with other settings ({', '.join(changed)} "
                "differ); use another --out or --resume=false to start this tier over"
            )
        return
    write_json(path, now)


# ---- summary from records -------------------------------------------------------------------------------
def load_selections(out: str | pathlib.Path) -> list[dict]:
    """Every finished tier's selection.json under out/<family>/B*/ (sorted by family, batch)."""
    out = pathlib.Path(out)
    rows = [read_json(p) for p in out.glob("*/B*/selection.json")]
    if not rows:
        raise FileNotFoundError(
            f"{out} holds no finished LR-sweep tier (<family>/B*/selection.json); run "
            "python -m experiments.lr_sweep first"
        )
    return sorted(rows, key=lambda r: (r["family"], r["batch"]))


def summarize_lr_sweep(out: str | pathlib.Path, *, log: Callable[[str], None] = log_stderr) -> dict:
    """lr_table.json, summary.json and the figures from the tiers' selection records alone."""
    out = pathlib.Path(out)
    tiers = load_selections(out)
    table: dict[str, dict[str, float]] = {}
    for t in tiers:
        table.setdefault(t["family"], {})[str(t["batch"])] = t["multiplier"]
    write_json(out / "lr_table.json", table)
    summary = dict(
        lr_table=table,
        tiers=tiers,
        note="multipliers of each family's anchor LRs (all groups); learning_rates are per group",
    )
    write_json(out / "summary.json", summary)
    for family in table:
        fam = [t for t in tiers if t["family"] == family]
        plots.save_figure(plots.plot_rung_losses(fam), out / f"{family}_lr_rung_losses.png")
        plots.save_figure(plots.plot_selected_lr(fam), out / f"{family}_selected_lr_vs_batch.png")
    log(f"LR table -> {out / 'lr_table.json'}")
    return summary


def make_lr_table(lr_sweep_out: str | pathlib.Path, family: str, *, tokenizer: str, command: str) -> dict:
    """A packaged table from an LR sweep's results: each tier's selected multiplier, with how flat the optimum was
    (the final rung's survivors), the rungs, the grid extensions and the command that made it."""
    tiers = [t for t in load_selections(lr_sweep_out) if t["family"] == family]
    if not tiers:
        raise UserError(f"{lr_sweep_out} holds no LR-sweep tier of family {family!r}")
    return dict(
        family=family,
        preset=tiers[0]["preset"],
        tokenizer=tokenizer,
        command=command,
        rungs=tiers[0]["rungs"],
        multipliers={str(t["batch"]): t["multiplier"] for t in tiers},
        tiers=[
            {k: t.get(k) for k in ("batch", "selected", "multiplier", "extensions", "winner_at_edge", "flatness")}
            for t in tiers
        ],
    )


def format_selection(summary: Mapping[str, Any]) -> str:
    lines = [f"{'family':>10} {'B':>4} {'selected x':>10} {'result':>24}  per-group LRs"]
    for t in summary["tiers"]:
        r = t["selected_result"]
        what = (
            f"reached @ {r['tokens']:,}"
            if r["reached"]
            else f"{'diverged' if r['loss'] is None else format(r['loss'], '.4f')} @ {r['tokens']:,}"
        )
        lrs = ", ".join(f"{g} {v:.4g}" for g, v in t["learning_rates"].items())
        lines.append(f"{t['family']:>10} {t['batch']:>4} {t['selected']:>10} {what:>24}  {lrs}")
    return "\n".join(lines)


__all__ = [
    "LRSweepConfig",
    "run_lr_sweep",
    "summarize_lr_sweep",
    "load_selections",
    "preset_rungs",
    "format_selection",
    "make_lr_table",
    "REFERENCE_RUNGS",
    "DEFAULT_ETA",
    "DEFAULT_TIERS",
]
