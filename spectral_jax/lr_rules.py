"""The LR of a batch tier from `--lr`: the tuned table shipped with the package (the default), a scaling rule of
the family's anchors (sqrt(B/B0), B/B0, none), a number, a JSON table, or the successive-halving table that
experiments.lr_sweep writes (docs/method.md §3.3).

The shipped tables (`spectral_jax/lr_tables/<family>_<preset>_<tokenizer>.json`) were made once per preset by
`python -m experiments.lr_sweep` on the embedded corpus, in the batch sweep's regime; `lr_sweep.make_lr_table`
turns an LR sweep's results into one.
"""

from __future__ import annotations

import math
import os
import pathlib
from typing import Any

from spectral_jax.errors import UserError
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
    tokenizer: str = "gpt2",
) -> tuple[Any, str]:
    """--lr: "tuned" (the package's table for family, preset and tokenizer), a scaling rule name, a float
    multiplier, a JSON table {family: {batch: multiplier|{group: lr}}}, or "auto": the successive-halving table of
    experiments.lr_sweep (`lr_table`, default results/lr_sweep/<family>_<preset>[_bytes]/lr_table.json).
    Returns (multiplier or per-group LRs, how it was chosen)."""
    if spec == "tuned":
        path = packaged_lr_table(family, preset, tokenizer)
        fix = (
            "pass --lr=auto to tune it here (experiments.lr_sweep on this data), or --lr=sqrt for the "
            "untuned sqrt(B/B0) rule"
        )
        if not path.is_file():
            raise UserError(
                f"no tuned LR table ships for family {family!r}, preset {preset!r}, {tokenizer} tokens; {fix}"
            )
        entry = read_json(path)["multipliers"].get(str(batch))
        if entry is None:
            raise UserError(f"the tuned LR table {path.name} has no tier B={batch}; {fix}")
        return _positive_lr(entry, f"tuned LR table {path.name} (batch {batch})"), (
            f"tuned by successive halving ({path.name})"
        )
    if spec in ("sqrt", "linear", "none"):
        return lr_multiplier_for_batch(batch, reference_batch, spec), f"{spec}(B/{reference_batch})"
    if spec == "auto":
        path = pathlib.Path(lr_table) if lr_table else default_lr_table(family, preset, tokenizer)
        if not path.is_file():
            raise UserError(
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
        value = float(spec)
    except ValueError:
        pass
    else:
        return _positive_lr(value, f"--lr={spec}"), "constant multiplier"
    path = pathlib.Path(spec)
    if not path.is_file():
        raise UserError(f"--lr={spec!r} is neither tuned, auto, a rule (sqrt, linear, none), a number, nor a JSON file")
    return _table_entry(path, family, batch, fix="add it or pick another --lr"), f"table {path}"


def default_lr_table(family: str, preset: str, tokenizer: str = "gpt2") -> pathlib.Path:
    """Where experiments.lr_sweep writes its table and `--lr=auto` looks for it."""
    suffix = "" if tokenizer == "gpt2" else f"_{tokenizer}"
    return pathlib.Path(f"results/lr_sweep/{family}_{preset}{suffix}/lr_table.json")


PACKAGED_TABLES = pathlib.Path(__file__).with_name("lr_tables")


def packaged_lr_table(family: str, preset: str, tokenizer: str = "gpt2") -> pathlib.Path:
    """The tuned table shipped with the package for (family, preset, tokenizer); it may not exist."""
    return PACKAGED_TABLES / f"{family}_{preset}_{tokenizer}.json"


def _table_entry(path: pathlib.Path, family: str, batch: int, *, fix: str) -> Any:
    table = read_json(path)
    entry = table.get(family, table).get(str(batch)) if isinstance(table, dict) else None
    if entry is None:
        raise UserError(f"LR table {path} has no entry for family {family!r} at batch {batch}; {fix}")
    where = f"LR table {path} (family {family!r}, batch {batch})"
    if isinstance(entry, dict):
        return {group: _positive_lr(v, f"{where}, group {group!r}") for group, v in entry.items()}
    return _positive_lr(entry, where)


def _positive_lr(value: Any, where: str) -> float:
    """A learning rate or multiplier must be a positive finite number."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{where}: the learning rate {value!r} is not a number") from None
    if not (v > 0 and math.isfinite(v)):
        raise UserError(f"{where}: the learning rate must be positive and finite, got {value!r}")
    return v


__all__ = ["resolve_lr", "default_lr_table", "packaged_lr_table", "PACKAGED_TABLES"]
