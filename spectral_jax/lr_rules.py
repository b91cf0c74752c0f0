"""The LR of a batch tier from `--lr`: a scaling rule of the family's anchors (sqrt(B/B0), B/B0, none), a number,
a JSON table, or the successive-halving table that experiments.lr_sweep writes (docs/method.md §3.3)."""

from __future__ import annotations

import os
import pathlib
from typing import Any

from spectral_jax.halving import lr_multiplier_for_batch
from spectral_jax.records import read_json


def resolve_lr(
    spec: str,
    batch: int,
    reference_batch: int,
    family: str,
    *,
    preset: str = "tiny",
    lr_table: str | os.PathLike | None = None,
) -> tuple[Any, str]:
    """--lr: a scaling rule name, a float multiplier, a JSON table {family: {batch: multiplier|{group: lr}}}, or
    "auto": the successive-halving table of experiments.lr_sweep (`lr_table`, default
    results/lr_sweep/<family>_<preset>/lr_table.json)."""
    if spec in ("sqrt", "linear", "none"):
        return lr_multiplier_for_batch(batch, reference_batch, spec), f"{spec}(B/{reference_batch})"
    if spec == "auto":
        path = pathlib.Path(lr_table) if lr_table else default_lr_table(family, preset)
        if not path.is_file():
            raise ValueError(
                f"--lr=auto needs the successive-halving LR table, and {path} does not exist: run "
                f"python -m experiments.lr_sweep --family={family} --preset={preset} --tiers=<the tiers> "
                "first (or pass --lr_table=PATH)"
            )
        fix = (
            f"run python -m experiments.lr_sweep --family={family} --preset={preset} --tiers={batch} (it adds "
            "the tier to the table)"
        )
        return _table_entry(path, family, batch, fix=fix), f"successive halving ({path})"
    try:
        return float(spec), "constant multiplier"
    except ValueError:
        pass
    path = pathlib.Path(spec)
    if not path.is_file():
        raise ValueError(f"--lr={spec!r} is neither a rule (sqrt, linear, none), a number, auto, nor a JSON file")
    return _table_entry(path, family, batch, fix="add it or pick another --lr"), f"table {path}"


def default_lr_table(family: str, preset: str) -> pathlib.Path:
    """Where experiments.lr_sweep writes its table and `--lr=auto` looks for it."""
    return pathlib.Path(f"results/lr_sweep/{family}_{preset}/lr_table.json")


def _table_entry(path: pathlib.Path, family: str, batch: int, *, fix: str) -> Any:
    table = read_json(path)
    entry = table.get(family, table).get(str(batch)) if isinstance(table, dict) else None
    if entry is None:
        raise ValueError(f"LR table {path} has no entry for family {family!r} at batch {batch}; {fix}")
    return entry


__all__ = ["resolve_lr", "default_lr_table"]
