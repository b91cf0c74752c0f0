"""Which finished toy runs an experiment may reuse.

A run file is stamped with its own fingerprint: the experiment config with its run lists narrowed to that run (its
stage, batch and seed, plus the first seed when later seeds reuse its halving LR). Adding a seed, a stage or a
batch size to an experiment therefore reuses every finished run, and any other change retrains. Run files and
mid-run saves stamped with an earlier whole-config fingerprint are adopted when the config that made them gives the
run the same fingerprint as the current one.
"""

from __future__ import annotations

import hashlib
import pathlib
import re
from collections.abc import Callable

from spectral_jax.records import json_text, read_json, to_jsonable, write_json

_NAME = re.compile(r"(?P<stage>.+)_B(?P<batch>\d+)_seed(?P<seed>\d+)$")


def run_name(stage: str, batch: int, seed: int) -> str:
    return f"{stage}_B{batch}_seed{seed}"


def run_fingerprint(cfg, stage: str, batch: int, seed: int) -> str:
    """The fingerprint of one run of the experiment config `cfg` (a ToyExperimentConfig)."""
    d = to_jsonable(cfg)
    d.update(stages=[stage], batches=[batch], seeds=[seed])
    if cfg.lrs == "halving" and cfg.selection == "first_seed":
        d["lr_seed"] = cfg.seeds[0]  # later seeds train at the LR halving chose on this one
    return hashlib.sha256(json_text(d).encode()).hexdigest()[:16]


def belongs(cfg, run: dict) -> bool:
    """Whether a run file is one of `cfg`'s runs, made under the same settings."""
    stage, batch, seed = run.get("stage"), run.get("batch"), run.get("seed")
    if stage not in cfg.stages or batch not in cfg.batches or seed not in cfg.seeds:
        return False
    return run.get("fingerprint") == run_fingerprint(cfg, stage, batch, seed)


def adopt_earlier_runs(out: pathlib.Path, cfg, config_from_dict: Callable, log: Callable[[str], None]) -> int:
    """Before config.json is rewritten: re-stamp the run files and rename the mid-run saves that carry the previous
    config.json's whole-config fingerprint, where that config gives the run the fingerprint `cfg` gives it (the run
    would train the same). Returns how many runs were adopted."""
    meta_path = out / "config.json"
    if not meta_path.is_file():
        return 0
    meta = read_json(meta_path)
    old, prev = meta.get("fingerprint"), config_from_dict(meta["config"])
    adopted = 0
    for path in sorted((out / "runs").glob(f"*.{old}.partial.npz")) + sorted((out / "runs").glob("*.json")):
        m = _NAME.match(path.name.split(".")[0])
        if not m or (path.suffix == ".json" and read_json(path).get("fingerprint") != old):
            continue
        key = (m["stage"], int(m["batch"]), int(m["seed"]))
        new = run_fingerprint(cfg, *key)
        if run_fingerprint(prev, *key) != new:
            continue
        if path.suffix == ".json":
            write_json(path, dict(read_json(path), fingerprint=new))
        else:
            path.rename(path.with_name(f"{run_name(*key)}.{new}.partial.npz"))
        adopted += 1
    if adopted:
        log(f"adopted {adopted} run file(s) and mid-run save(s) made under the previous config.json")
    return adopted


__all__ = ["run_name", "run_fingerprint", "belongs", "adopt_earlier_runs"]
