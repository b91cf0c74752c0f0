"""Config fields that carry their command-line help, and override records derived from a config class.

Experiment configs are frozen dataclasses whose fields are the flags: `option(default, help)` declares a field and
its help in one line, and `experiments._cli.define_flags` turns the fields into absl flags. `overrides_of(Config)`
makes the matching record of optional overrides (every flag field, default None = "keep the preset's value"), so
a preset's TrainConfig or ProbeConfig is changed field by field, typed, from code or from the command line.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

C = TypeVar("C")


def option(default: Any, help: str, *, flag: bool = True, name: str | None = None) -> Any:
    """A dataclass field with `help` for its generated flag; `flag=False` keeps it off the command line, `name`
    renames its flag."""
    return dataclasses.field(default=default, metadata={"help": help, "flag": flag, "name": name})


def added_later(default: Any) -> Any:
    """A dataclass field added after records exist: left out of records and fingerprints while it holds `default`
    (records.to_jsonable), so runs made before the field existed keep matching the runs made at its default."""
    return dataclasses.field(default=default, metadata={"omit_at_default": True})


def help_of(field: dataclasses.Field) -> str:
    return field.metadata.get("help", field.name.replace("_", " "))


def is_flag(field: dataclasses.Field) -> bool:
    return field.metadata.get("flag", True)


def flag_name(field: dataclasses.Field) -> str:
    return field.metadata.get("name") or field.name


class Overrides:
    """Base of the records made by `overrides_of`: `apply(base)` replaces the fields that are set."""

    source: type

    def changes(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}

    def apply(self, base: C) -> C:
        return dataclasses.replace(base, **self.changes())


def overrides_of(cls: type, name: str) -> type:
    """A frozen dataclass `name` with every flag field of `cls`, each optional with default None."""
    fields = [
        (f.name, f"{f.type} | None", dataclasses.field(default=None, metadata=f.metadata))
        for f in dataclasses.fields(cls)
        if is_flag(f)
    ]
    made = dataclasses.make_dataclass(
        name,
        fields,
        bases=(Overrides,),
        frozen=True,
        namespace={
            "source": cls,
            "__module__": cls.__module__,
            "__doc__": f"Optional overrides of {cls.__name__}'s fields (None keeps the preset's value).",
        },
    )
    return made


__all__ = ["option", "added_later", "help_of", "is_flag", "flag_name", "Overrides", "overrides_of"]
