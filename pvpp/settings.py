"""How each setting of a training run may change when the run is resumed: the kinds every config dataclass assigns
to its fields, in a class attribute `ON_RESUME` beside the fields themselves.

    FIXED       the run is another run if it differs (the architecture, the data, the batch, the seed, the state's
                shapes): a resume that changes it is refused.
    CHANGEABLE  a researcher may change it on purpose (learning rate and schedule, EMA, warm-up, the negative phase's
                effort, evaluation, periods, length): allowed only when asked (`--allow_changed_settings`), and then
                recorded with the step where the change starts.
    RECORDED    where or with what the run ran (the data folder, the versions of jax / flax / optax): kept in the
                record, never compared.
    NESTED      the field is itself a classified config dataclass: its own `ON_RESUME` decides.

`ON_RESUME` maps field names to kinds; the key "*" gives the kind of every field not named. `check_classified`
refuses a class with an unclassified field (applied to every config class when it is defined). `setting` declares
a field together with its help text (and so its command-line flag).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

FIXED = "fixed"
CHANGEABLE = "changeable"
RECORDED = "recorded"
NESTED = "nested"
KINDS = (FIXED, CHANGEABLE, RECORDED, NESTED)
DEFAULT_KEY = "*"


def check_classified(cls: type) -> type:
    """Class decorator: TypeError unless `cls.ON_RESUME` gives every dataclass field of `cls` a kind of `KINDS`
    (directly or through "*") and names no field that does not exist. Returns `cls`."""
    rules = getattr(cls, "ON_RESUME", None)
    if not isinstance(rules, dict):
        raise TypeError(f"{cls.__name__} must define ON_RESUME (field name -> one of {KINDS})")
    names = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(rules) - names - {DEFAULT_KEY})
    bad = sorted(name for name, kind in rules.items() if kind not in KINDS)
    missing = sorted(names - set(rules)) if DEFAULT_KEY not in rules else []
    if unknown or bad or missing:
        raise TypeError(
            f"{cls.__name__}.ON_RESUME: unknown fields {unknown}, kinds outside {KINDS} for {bad}, "
            f"unclassified fields {missing}"
        )
    return cls


def kind_of(cls: type, field_name: str) -> str:
    """The kind `cls.ON_RESUME` gives `field_name` (KeyError for a field it does not classify)."""
    rules = cls.ON_RESUME
    return rules[field_name] if field_name in rules else rules[DEFAULT_KEY]


def setting(
    default: Any = dataclasses.MISSING,
    help: str | None = None,  # noqa: A002  (the name absl gives a flag's description)
    *,
    flag: str | None = None,
    minimum: float | None = None,
    choices: Sequence[str] | None = None,
    subflags: Mapping[str, str] | None = None,
    prefix: str | None = None,
) -> Any:
    """A config dataclass field with what the command line needs to know of it (its metadata; the dataclass sees
    an ordinary field with this default).

    help: the flag's description; a field without it has no flag. flag: the flag's name where it is not the
    field's (a name users already type). minimum: the least number the flag accepts; choices: the strings it accepts
    (the dataclass's `__post_init__` checks the same, for callers that do not come through flags). For a field that
    is itself a config dataclass: subflags maps some of its fields to flag names (only those get flags), prefix
    gives every described field of it a flag named prefix + field name; with neither, its described fields get
    flags under their own names. `pvpp.experiments.config_flags` reads this metadata.
    """
    metadata = {
        key: value
        for key, value in (
            ("help", help), ("flag", flag), ("minimum", minimum),
            ("choices", None if choices is None else tuple(choices)),
            ("subflags", None if subflags is None else dict(subflags)), ("prefix", prefix),
        )
        if value is not None
    }
    return dataclasses.field(default=default, metadata=metadata)
