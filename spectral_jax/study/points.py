"""The study's measurements read back from a seeded batch sweep: one `Point` per (seed, tier, early definition,
grid value, spectrum series), with its exact step and raw spectrum, and the rank-window statistics of it.

Early definitions (docs/method.md §3.6, "the study"): "fraction" (f of each tier's own T(B), retrospective),
"tokens" (a fixed number of training tokens, online; the training probes' token grid, common to all tiers) and
"loss" (the first eval at or below a val loss L, online). A point is read at its exact step: from the replayed
records (early_probes.jsonl, kind "fraction@f" / "loss@L") or from a training probe at that very step; a point
whose step has no record is absent, never the nearest probe.

Statistics of a spectrum (`statistics`): alpha over every window of the preset's bank, the paper's bank scaled to
the spectrum's length (`lens.scaled_bank`) and the tail window, alpha "past the head" over ranks
[ceil(2 RankMe), n] (when that holds >= 4 ranks), and RankMe.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from collections.abc import Iterator, Sequence

import numpy as np

from spectral_jax.batch_sweep.records import TierRecords, load_sweep
from spectral_jax.errors import UserError
from spectral_jax.records import read_json
from spectral_jax.schemas import spectrum_key
from spectral_jax.study.statistics import PAST_HEAD, statistics, windows_for

DEFINITIONS = ("fraction", "tokens", "loss")


@dataclasses.dataclass(frozen=True)
class Point:
    """One spectrum series of one tier of one seed at one early point."""

    seed: int
    batch: int
    definition: str  # fraction | tokens | loss
    value: float  # f, tokens or L
    series: str  # activation/L7, gradient/L7.attn_out
    step: int
    tokens: int
    val_loss: float
    file: str  # the npz, relative to the seed directory


@dataclasses.dataclass(frozen=True)
class SeededSweep:
    """A seeded sweep's directories, config and per-seed tiers."""

    dir: pathlib.Path
    seeds: tuple[pathlib.Path, ...]
    config: dict
    tail_window: tuple[int, int]
    local_windows: tuple[tuple[int, int], ...]
    tiers: tuple[dict[int, TierRecords], ...]  # per seed: batch -> records

    @property
    def batches(self) -> list[int]:
        return sorted({b for t in self.tiers for b in t})

    def tokens_to_target(self) -> np.ndarray:
        """T(B) interpolated, seeds x batches (NaN where a tier did not reach the target)."""
        out = np.full((len(self.seeds), len(self.batches)), np.nan)
        for i, tiers in enumerate(self.tiers):
            for j, b in enumerate(self.batches):
                T = tiers[b].tokens_to_target() if b in tiers else None
                out[i, j] = T if T else np.nan
        return out


def load_seeded_sweep(directory: str | pathlib.Path) -> SeededSweep:
    """A batch sweep run with --seeds >= 1 (a single-seed directory counts as one seed)."""
    directory = pathlib.Path(directory)
    seed_dirs = sorted(directory.glob("seed[0-9]*"), key=lambda d: int(d.name[4:]))
    if (directory / "sweep.json").is_file():
        dirs = [directory / d for d in read_json(directory / "sweep.json").get("seed_dirs", [])] or [directory]
    elif seed_dirs:  # a seeded sweep still running: its seeds so far
        dirs = seed_dirs
    else:
        raise UserError(f"{directory} is not a batch-sweep results directory (no sweep.json); run the sweep first")
    dirs = [d for d in dirs if (d / "sweep.json").is_file()]
    if not dirs:
        raise UserError(f"{directory} holds no started seed directory")
    first = read_json(dirs[0] / "sweep.json")
    wanted = set(first["config"]["tiers"])
    tiers, kept = [], []
    for d in dirs:
        try:
            found = load_sweep(d)[1]
        except FileNotFoundError:
            found = {}
        if set(found) >= wanted:  # a seed still training would bias the seed means: only complete seeds count
            tiers.append(found)
            kept.append(d)
    if not kept:
        raise UserError(f"{directory} holds no seed with every tier finished yet; let the sweep run")
    return SeededSweep(
        dir=directory,
        seeds=tuple(kept),
        config=first["config"],
        tail_window=tuple(first["tail_window"]),
        local_windows=tuple(tuple(w) for w in first["local_windows"]),
        tiers=tuple(tiers),
    )


def _series(record: dict) -> str:
    return spectrum_key(record["kind"], record["layer"], record.get("matrix"))


def _by_step(tier: TierRecords) -> dict[int, dict[str, dict]]:
    """step -> series -> record, over the training probes and the replayed points (the same model at a step)."""
    out: dict[int, dict[str, dict]] = {}
    for r in (*tier.probes, *tier.early):
        if r["kind"] != "weight":
            out.setdefault(r["step"], {}).setdefault(_series(r), r)
    return out


def tier_steps(tier: TierRecords, grid: dict[str, Sequence[float]]) -> Iterator[tuple[str, float, int]]:
    """(definition, value, exact step) of every grid point of one tier that lies inside its run."""
    found = tier.exact_steps(fractions=grid.get("fraction", ()), losses=grid.get("loss", ()))
    yield from ((d, float(v), s) for (d, v), s in found.items() if d == "fraction" and s is not None)
    per_step = tier.result.tokens // max(tier.result.steps, 1)
    for t in grid.get("tokens", ()):  # only a token count that is a whole step (a training probe's)
        if t % per_step == 0 and 0 < t // per_step <= tier.result.steps:
            yield "tokens", float(t), int(t // per_step)
    yield from ((d, float(v), s) for (d, v), s in found.items() if d == "loss" and s is not None)


def study_grid(sweep: SeededSweep) -> dict[str, tuple[float, ...]]:
    """The grid of each definition: the sweep's --progress_fractions (and its early fraction), the training probes'
    token grid up to the smallest tier's last probe (and its early tokens), and its --progress_losses (and its
    early loss)."""
    cfg = sweep.config
    fractions = sorted({*cfg.get("progress_fractions", ()), cfg["early_fraction"]})
    losses = sorted({*cfg.get("progress_losses", ()), cfg["early_loss"]}, reverse=True)
    common = None
    for tiers in sweep.tiers:
        for t in tiers.values():
            toks = {r["tokens"] for r in t.probes if r["step"] > 0}
            common = toks if common is None else common & toks
    tokens = sorted({*(common or ()), cfg["early_tokens"]})  # the early point's own step is replayed
    return dict(fraction=tuple(fractions), tokens=tuple(tokens), loss=tuple(losses))


def points(sweep: SeededSweep, grid: dict[str, Sequence[float]] | None = None) -> list[Point]:
    """Every (seed, tier, definition, value, series) point measured at its exact step."""
    grid = grid or study_grid(sweep)
    out = []
    for k, tiers in enumerate(sweep.tiers):
        for b, tier in tiers.items():
            at = _by_step(tier)
            for definition, value, step in tier_steps(tier, grid):
                for series, r in sorted(at.get(step, {}).items()):
                    out.append(Point(k, b, definition, value, series, step, r["tokens"], r["val_loss"], r["file"]))
    return out


@functools.lru_cache(maxsize=4096)
def _npz(path: str) -> dict[str, np.ndarray]:
    with np.load(path) as f:
        return {k: np.asarray(f[k]) for k in f.files}


def spectrum(sweep: SeededSweep, point: Point) -> np.ndarray:
    """The raw spectrum of a point (eigenvalues or singular values, descending)."""
    return _npz(str(sweep.seeds[point.seed] / f"tier_B{point.batch}" / point.file))[point.series]


def windows(sweep: SeededSweep, n: int) -> list[tuple[int, int]]:
    """`windows_for` with the sweep's tail window and bank."""
    return windows_for(n, sweep.tail_window, sweep.local_windows)


__all__ = [
    "DEFINITIONS",
    "PAST_HEAD",
    "Point",
    "SeededSweep",
    "load_seeded_sweep",
    "points",
    "spectrum",
    "statistics",
    "study_grid",
    "tier_steps",
    "windows",
    "windows_for",
]
