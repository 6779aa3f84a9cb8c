"""What a resumed run changed, by the kinds of `pvpp.settings`, and the record of its segments in config.json.

    changes = differences(recorded, description)     # [Change(path, kind, recorded, given)], paths like
                                                     # "train.optim.learning_rate"
    document, started = record(recorded, description, start_step)   # config.json's new content

A run description is config.json's content: {"model": ModelConfig.to_dict(), "train": TrainConfig.to_dict(), "data":
DataConfig.to_dict() + {"source"}, "num_devices", "micro_batches", "num_steps", "versions"}. Its top level holds the
settings in force now; "segments" lists every segment of the run, oldest first, as {"start_step": S, **settings}:
the settings that took the run from step S on (S is the step the segment resumed from). A segment that starts after
the step a later resume restored (or at it, with other settings) gave no step of the state and is dropped.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any, NamedTuple

from pvpp import settings
from pvpp.model import ModelConfig
from pvpp.runs import workdir as workdir_files
from pvpp.training.config import DataConfig, TrainConfig

SEGMENTS_KEY = "segments"
START_STEP_KEY = "start_step"
#: The config dataclass of each section of a run description.
SECTIONS = {"model": ModelConfig, "train": TrainConfig, "data": DataConfig}
#: The kinds of the entries that are no config field: the device count and the micro-batches in use, the number of
#: steps derived from the length settings, the library versions, and where the data were actually read from.
RUN_ENTRIES = {
    "num_devices": settings.CHANGEABLE,
    "micro_batches": settings.CHANGEABLE,
    "num_steps": settings.RECORDED,
    "versions": settings.RECORDED,
    "data.source": settings.RECORDED,
}
#: The value of each entry that records written before it existed lack: what every run of that time had (one
#: micro-batch), so that a resume with another value is a noted change, not a silent rewrite of the run's history.
OLDER_RECORD_VALUES = {"micro_batches": 1}
#: Entries that describe how this start went, not the run's settings: they neither start a segment nor get a note
#: (the data source says whether the prepared copy was made now or reused).
VOLATILE = ("data.source",)


class Change(NamedTuple):
    """One setting that differs between the record and a new run: its path in the description, its kind
    (`pvpp.settings`), the recorded and the given value (JSON values)."""

    path: str
    kind: str
    recorded: Any
    given: Any

    def describe(self, names: Mapping[str, str] | None = None) -> str:
        """'NAME: recorded -> given', NAME from `names` (path -> e.g. a flag) or `default_name`."""
        return f"{name_of(self.path, names)}: {self.recorded!r} -> {self.given!r}"


def differences(recorded: Mapping[str, Any] | None, description: Mapping[str, Any]) -> list[Change]:
    """The settings present in both descriptions whose values differ, in the order of `description`; a setting
    only one of them records (an older record, a newer field) is not compared. None (no record): none."""
    if recorded is None:
        return []
    old, new = flatten(settings_of(recorded)), flatten(normalized(description))
    return [
        Change(path, kind_of(path), old[path], value)
        for path, value in new.items()
        if path in old and old[path] != value
    ]


def record(
    recorded: Mapping[str, Any] | None, description: Mapping[str, Any], start_step: int
) -> tuple[dict[str, Any], bool]:
    """config.json's content for a run that goes on from `start_step` with `description`, and whether a new
    segment starts there (see the module docstring). The top level is `description`."""
    current = normalized(description)
    segments = [] if recorded is None else segments_of(recorded)
    kept = [
        s
        for s in segments
        if s[START_STEP_KEY] < start_step or (s[START_STEP_KEY] == start_step and _same(_settings(s), current))
    ]
    started = not kept or not _same(_settings(kept[-1]), current)
    if started:
        kept.append({START_STEP_KEY: int(start_step), **current})
    return {**current, SEGMENTS_KEY: kept}, started


def note(changes: list[Change], step: int, names: Mapping[str, str] | None = None) -> str | None:
    """One line for metrics.jsonl / TensorBoard: the settings that changed at `step` (recorded -> given); None
    when only VOLATILE entries changed."""
    shown = "; ".join(change.describe(names) for change in changes if change.path not in VOLATILE)
    return f"settings changed at step {step} (recorded -> given): {shown}" if shown else None


def segments_of(recorded: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The segments of a record; a record written before segments existed is one segment from step 0."""
    segments = recorded.get(SEGMENTS_KEY)
    if isinstance(segments, list) and segments:
        return [dict(s) for s in segments]
    return [{START_STEP_KEY: 0, **settings_of(recorded)}]


def settings_of(recorded: Mapping[str, Any]) -> dict[str, Any]:
    """The settings in force at the top level of a record (without its segments)."""
    return {key: value for key, value in recorded.items() if key != SEGMENTS_KEY}


def kind_of(path: str) -> str:
    """The `pvpp.settings` kind of the setting at `path` (e.g. "train.optim.learning_rate"); RECORDED for an
    entry no config declares (a record written by another version)."""
    parts = path.split(".")
    for entry, kind in RUN_ENTRIES.items():
        if path == entry or path.startswith(entry + "."):
            return kind
    cls = SECTIONS.get(parts[0])
    for name in parts[1:]:
        fields = {field.name: field for field in dataclasses.fields(cls)} if cls is not None else {}
        if name not in fields:
            return settings.RECORDED
        kind = settings.kind_of(cls, name)
        if kind != settings.NESTED:
            return kind
        cls = type(fields[name].default)
    return settings.RECORDED


def name_of(path: str, names: Mapping[str, str] | None = None) -> str:
    """How messages name a setting: `names[path]` (the entry points give their flags), else the argument it
    belongs to ("train_config.optim.learning_rate", "model_config.nr_filters", "the device count in use")."""
    if names and path in names:
        return names[path]
    section, _, rest = path.partition(".")
    if section in SECTIONS and rest:
        return f"{section}_config.{rest}"
    return {
        "num_devices": "the device count in use",
        "micro_batches": "the micro-batches in use",
        "num_steps": "the run's number of steps",
    }.get(path, path)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists and other values stay whole."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, path + "."))
        else:
            flat[path] = value
    return flat


def normalized(description: Mapping[str, Any]) -> dict[str, Any]:
    """The description as JSON gives it back (tuples become lists), so that it compares with a record."""
    return json.loads(json.dumps(dict(description)))


def _same(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two descriptions hold the same settings (VOLATILE entries aside)."""
    first, second = flatten(a), flatten(b)
    for path in VOLATILE:
        first.pop(path, None)
        second.pop(path, None)
    return first == second


def _settings(segment: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in segment.items() if key != START_STEP_KEY}


def check_resumable(
    workdir,
    description: Mapping[str, Any],
    *,
    allow_changed_settings: bool = False,
    names: Mapping[str, str] | None = None,
) -> tuple[dict[str, Any] | None, list[Change]]:
    """Compares the run `description` with the one recorded in `<workdir>/config.json` (`pvpp.settings` kinds).

    A FIXED setting that differs is another run: WorkdirConflictError. A CHANGEABLE one: ChangedSettingsError
    unless allow_changed_settings. names: how the messages name each setting (path -> e.g. '--flag'; the entry
    points give their flags; 'allow_changed_settings' and 'workdir' name those arguments). Returns (the record or
    None, every difference found: the changes to record). Reads only.
    """
    recorded = _completed(workdir_files.read_config(workdir))
    changes = differences(recorded, description)
    fixed = [c for c in changes if c.kind == settings.FIXED]
    if fixed:
        sections = [s for s in SECTIONS if any(c.path.split(".")[0] == s for c in fixed)] or ["run"]
        raise workdir_files.WorkdirConflictError(
            f"{_named_workdir(workdir, names)} holds a run with another {' and '.join(sections)} configuration "
            f"({'; '.join(c.describe(names) for c in fixed)}; recorded -> given), which a resumed run cannot "
            f"change: use a new {name_of('workdir', names)}, or the recorded values to resume"
        )
    changed = [c for c in changes if c.kind == settings.CHANGEABLE]
    if changed and not allow_changed_settings:
        allow = (names or {}).get("allow_changed_settings", "allow_changed_settings=True")
        raise workdir_files.ChangedSettingsError(
            f"{_named_workdir(workdir, names)} was trained with other settings "
            f"({'; '.join(c.describe(names) for c in changed)}; recorded -> given): pass {allow} to resume with "
            "the new ones (config.json then keeps both, with the step where the change starts), or the recorded "
            "values to resume as before"
        )
    return recorded, changes


def _completed(recorded: dict[str, Any] | None) -> dict[str, Any] | None:
    """The record with the `OLDER_RECORD_VALUES` of the entries it lacks (None: no record)."""
    if recorded is None:
        return None
    return {**recorded, **{key: value for key, value in OLDER_RECORD_VALUES.items() if key not in recorded}}


def _named_workdir(workdir, names: Mapping[str, str] | None) -> str:
    return f"{name_of('workdir', names)} {os.fspath(workdir)}"
