"""Flags derived from the config dataclasses, and configs built back from the flags: each setting is declared once,
as a field with its help (`pvpp.settings.setting`), and reaches the command line and config.json from there.

    specs = flag_specs(TrainConfig)                      # one FlagSpec per described field (nested ones flattened)
    define(specs, flag_values)                           # absl flags: name, default, help, type, bounds, choices
    config = build(TrainConfig, flag_values_by_path(specs, flag_values))

A field's flag is named as the field unless its metadata says `flag=` (a name users already type, e.g. `lr_decay`
for `OptimConfig.lr_decay_per_step`); its type comes from the annotation (bool, int, float or str; `X | None`
flags default to None); `minimum` and `choices` become the flag's lower bound and enum.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any

from absl import flags

#: A path of field names into a config: ("optim", "lr_decay_per_step") is config.optim.lr_decay_per_step.
Path = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class FlagSpec:
    """One flag of one config field: its name, the field's path, default, help, type and accepted values."""

    name: str
    path: Path
    default: Any
    help: str
    kind: type  # bool, int, float or str
    minimum: float | None = None
    choices: tuple[str, ...] | None = None


def flag_specs(cls: type, defaults: Any = None, *, prefix: str = "", help_suffix: str = "") -> list[FlagSpec]:
    """The flags of `cls`'s described fields (those with a help), in field order; nested config fields flattened.

    defaults: an instance whose values are the flags' defaults (None: the fields' defaults). prefix / help_suffix:
    prepended to every flag name / appended to every help (a nested field's `prefix` and help add theirs).
    """
    hints = typing.get_type_hints(cls)
    specs = []
    for field in dataclasses.fields(cls):
        meta = field.metadata
        if "help" not in meta:
            continue
        default = getattr(defaults, field.name) if defaults is not None else field.default
        if dataclasses.is_dataclass(default):
            specs += _nested_specs(field, default, help_suffix)
            continue
        kind = _flag_type(hints[field.name], f"{cls.__name__}.{field.name}")
        name = prefix + meta.get("flag", field.name)
        text = meta["help"] + help_suffix
        specs.append(FlagSpec(name, (field.name,), default, text, kind, meta.get("minimum"), meta.get("choices")))
    return specs


def _nested_specs(field: dataclasses.Field, default: Any, help_suffix: str) -> list[FlagSpec]:
    """The flags of a nested config field: those its `subflags` names, or every described one (with its prefix)."""
    meta = field.metadata
    suffix = (f" {meta['help']}" if meta["help"] else "") + help_suffix
    inner = flag_specs(type(default), default, prefix=meta.get("prefix", ""), help_suffix=suffix)
    if "subflags" in meta:
        renamed = meta["subflags"]
        inner = [dataclasses.replace(s, name=renamed[s.path[0]]) for s in inner if s.path[0] in renamed]
    return [dataclasses.replace(s, path=(field.name, *s.path)) for s in inner]


def _flag_type(annotation: Any, where: str) -> type:
    """bool, int, float or str from a field's annotation (`X | None` gives X)."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = options[0] if len(options) == 1 else None
    if annotation not in (bool, int, float, str):
        raise TypeError(f"{where}: a flag needs a bool, int, float or str field, got {annotation}")
    return annotation


def define(
    specs: Iterable[FlagSpec], flag_values: flags.FlagValues, *, defaults: Mapping[str, Any] | None = None
) -> None:
    """Defines one absl flag per spec on `flag_values`; defaults: flag name -> a default replacing the spec's."""
    defaults = dict(defaults or {})
    for spec in specs:
        default = defaults.get(spec.name, spec.default)
        fv = dict(flag_values=flag_values)
        if spec.choices is not None:
            flags.DEFINE_enum(spec.name, default, list(spec.choices), spec.help, **fv)
        elif spec.kind is bool:
            flags.DEFINE_boolean(spec.name, default, spec.help, **fv)
        elif spec.kind is int:
            flags.DEFINE_integer(spec.name, default, spec.help, lower_bound=spec.minimum, **fv)
        elif spec.kind is float:
            flags.DEFINE_float(spec.name, default, spec.help, lower_bound=spec.minimum, **fv)
        else:
            flags.DEFINE_string(spec.name, default, spec.help, **fv)


def flag_values_by_path(
    specs: Iterable[FlagSpec], flag_values: flags.FlagValues, *, skip_none: bool = False
) -> dict[Path, Any]:
    """{field path: the flag's value} for the specs whose flag is defined (skip_none: leave out unset ones)."""
    values = {spec.path: flag_values[spec.name].value for spec in specs if spec.name in flag_values}
    return {path: value for path, value in values.items() if not (skip_none and value is None)}


def build(cls: type, values: Mapping[Path, Any], base: Any = None) -> Any:
    """A `cls` with the fields `values` sets ({path: value}, nested paths allowed) and the rest from `base` (an
    instance; None: the fields' defaults). The dataclasses' `__post_init__` validates (ValueError / TypeError)."""
    kwargs = {}
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        if base is not None:
            current = getattr(base, field.name)
        elif field.default is not dataclasses.MISSING:
            current = field.default
        else:
            current = dataclasses.MISSING
        inner = {path[1:]: value for path, value in values.items() if path[0] == field.name and len(path) > 1}
        if (field.name,) in values:
            kwargs[field.name] = values[(field.name,)]
        elif inner:
            kwargs[field.name] = build(type(current), inner, current)
        elif current is not dataclasses.MISSING:
            kwargs[field.name] = current
    return cls(**kwargs)
