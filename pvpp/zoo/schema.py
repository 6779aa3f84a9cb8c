"""The card's schema: `validate_card(card, where)` raises CardError naming the first field that is missing, of
the wrong type or inconsistent with the rest (the name's parts against the data set and prior, list lengths).

Fields are given as `section.field[index]`. Sections: identity, files, model (a `ModelConfig.to_dict()`), data,
training, result, paper, budget, check_subset, reference (see `pvpp.zoo.sections` for what each field means).
Extra fields are refused, so a misspelt field is caught rather than ignored.
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable

from pvpp.data.catalog import DATASET_NAMES
from pvpp.model import ModelConfig
from pvpp.zoo import names
from pvpp.zoo.errors import CardError, UnknownEntryError

SCHEMA = "pvpp.zoo.card/1"
Check = Callable[[Any, str], None]


class _Invalid(Exception):
    def __init__(self, path: str, problem: str):
        super().__init__(f"{path}: {problem}")


def validate_card(card: Any, where: str) -> None:
    """CardError '<where>: field <path>: <problem>' unless `card` follows the schema."""
    try:
        _CARD(card, "")
        _consistent(card)
    except _Invalid as err:
        raise CardError(f"{where}: field {err}") from None


# ----------------------------------------------------------------------------------------------------------
# Building blocks: each returns a check(value, path) that raises _Invalid.


def _typed(kind: type | tuple[type, ...], label: str) -> Check:
    def check(value, path):
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise _Invalid(path, f"expected {label}, got {value!r}")
        if not isinstance(value, kind):
            raise _Invalid(path, f"expected {label}, got {type(value).__name__} {value!r:.60}")

    return check


_string = _typed(str, "a string")
_boolean = _typed(bool, "true or false")
_mapping = _typed(dict, "an object")


def _text(value, path):
    _string(value, path)
    if not value.strip():
        raise _Invalid(path, "expected a non-empty string")


def _integer(minimum: int | None = None) -> Check:
    def check(value, path):
        _typed(int, "an integer")(value, path)
        if minimum is not None and value < minimum:
            raise _Invalid(path, f"expected an integer >= {minimum}, got {value}")

    return check


def _number(value, path):
    _typed((int, float), "a number")(value, path)
    if not math.isfinite(value):
        raise _Invalid(path, f"expected a finite number, got {value!r}")


def _sha256(value, path):
    _string(value, path)
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise _Invalid(path, f"expected a sha256 digest (64 hex digits), got {value!r:.80}")


def _one_of(*choices) -> Check:
    def check(value, path):
        if value not in choices:
            raise _Invalid(path, f"expected one of {list(choices)}, got {value!r:.80}")

    return check


def _nullable(inner: Check) -> Check:
    def check(value, path):
        if value is not None:
            inner(value, path)

    return check


def _list(inner: Check, length: int | None = None, min_length: int = 0) -> Check:
    def check(value, path):
        _typed(list, "a list")(value, path)
        if length is not None and len(value) != length:
            raise _Invalid(path, f"expected {length} items, got {len(value)}")
        if len(value) < min_length:
            raise _Invalid(path, f"expected at least {min_length} items, got {len(value)}")
        for i, item in enumerate(value):
            inner(item, f"{path}[{i}]")

    return check


def _values(inner: Check) -> Check:
    """An object of any keys whose values all pass `inner`."""

    def check(value, path):
        _mapping(value, path)
        for key, item in value.items():
            inner(item, f"{path}.{key}")

    return check


def _object(fields: dict[str, Check]) -> Check:
    """An object with exactly these fields."""

    def check(value, path):
        _mapping(value, path or "(card)")
        prefix = f"{path}." if path else ""
        for name, inner in fields.items():
            if name not in value:
                raise _Invalid(f"{prefix}{name}", "missing")
            inner(value[name], f"{prefix}{name}")
        extra = sorted(set(value) - set(fields))
        if extra:
            raise _Invalid(f"{prefix}{extra[0]}", "not a field of the schema")

    return check


def _model(value, path):
    _mapping(value, path)
    try:
        config = ModelConfig.from_dict(value)
    except (TypeError, ValueError) as err:
        raise _Invalid(path, f"not a ModelConfig ({err})") from None
    if config.to_dict() != {**value, "image_shape": tuple(value.get("image_shape", ()))}:
        raise _Invalid(path, "does not read back as the same ModelConfig")


# ----------------------------------------------------------------------------------------------------------
# The card

_FILE = {"path": _text, "sha256": _sha256, "size_bytes": _integer(1)}
_NLL_INTERVAL = _list(_nullable(_number), length=2)

_CARD = _object(
    {
        "schema": _one_of(SCHEMA),
        "identity": _object(
            {
                "name": _text,
                "revision": _integer(1),
                "resolved_name": _text,
                "pvpp_version": _text,
                "git_commit": _nullable(_text),
                "git_dirty": _nullable(_boolean),
                "packaged_at": _text,
            }
        ),
        "files": _object(
            {
                "weights": _object({**_FILE, "format": _text}),
                "reference": _object(_FILE),
                "grid": _object({**_FILE, "rows": _list(_text, min_length=1), "seed": _integer(0)}),
                "num_parameters": _integer(1),
                "integrity": _object(
                    {"format": _integer(1), "hash": _text, "leaves": _values(_string)}
                ),
            }
        ),
        "model": _model,
        "data": _object(
            {
                "dataset": _one_of(*DATASET_NAMES),
                "split": _text,
                "split_size": _integer(1),
                "variant": _nullable(_text),
                "validation_size": _nullable(_integer(0)),
                "binarization": _one_of("static", "dynamic", "none"),
                "evaluation_images": _text,
                "data_space": _text,
                "data_note": _string,
                "source_files": _list(
                    _object({"name": _text, "sha256": _sha256, "size_bytes": _integer(1)}), min_length=1
                ),
                "prepared_copy": _nullable(_string),
            }
        ),
        "training": _object(
            {
                "config": _mapping,
                "flag_file": _nullable(_object({"path": _text, "sha256": _sha256, "text": _string})),
                "seed": _integer(0),
                "steps": _integer(0),
                "num_devices": _nullable(_integer(1)),
                "wall_time_s": _nullable(_number),
                "wall_time_basis": _text,
                "machine": _mapping,
                "library_versions": _object({"training": _values(_string), "packaging": _values(_string)}),
            }
        ),
        "result": _object(
            {
                "split": _text,
                "num_images": _integer(1),
                "example_selection": _text,
                "units": _one_of("nats", "bits/dim"),
                "test_log_likelihood": _number,
                "negative_log_likelihood_nats": _number,
                "negative_log_likelihood_interval_nats": _NLL_INTERVAL,
                "negative_log_likelihood_bounds_nats": _nullable(_NLL_INTERVAL),
                "standard_error_nats": _nullable(_number),
                "bits_per_dim": _nullable(_values(_nullable(_typed((int, float, list), "a number or list")))),
                "k": _integer(1),
                "log_partition": _nullable(
                    _object(
                        {
                            "method": _text,
                            "estimate": _number,
                            "lower": _nullable(_number),
                            "upper": _nullable(_number),
                            "effective_sample_size": _nullable(_number),
                            "reverse": _nullable(
                                _object(
                                    {
                                        "estimate": _number,
                                        "lower": _nullable(_number),
                                        "upper": _nullable(_number),
                                        "effective_sample_size": _nullable(_number),
                                        "start": _text,
                                    }
                                )
                            ),
                            "how": _text,
                        }
                    )
                ),
                "kl_nats": _nullable(_number),
                "negative_elbo_nats": _nullable(_number),
                "reconstruction_nats": _nullable(_number),
                "interval_meaning": _nullable(_text),
                "settings": _mapping,
                "command": _text,
                "evaluation_file": _text,
                "evaluation_summary": _mapping,
            }
        ),
        "paper": _object(
            {"test_log_likelihood": _nullable(_number), "units": _text, "source": _text, "label": _text}
        ),
        "budget": _text,
        "check_subset": _object(
            {
                "indices": _list(_integer(0), min_length=1),
                "images_sha256": _sha256,
                "images_shape": _list(_integer(1), length=4),
                "k": _integer(1),
                "chunk_size": _integer(1),
                "batch_size": _integer(1),
                "seed": _integer(0),
                "key": _text,
                "log_partition": _nullable(_number),
                "log_likelihood_unnormalized": _list(_number, min_length=1),
                "log_likelihood": _list(_number, min_length=1),
                "tolerance_nats": _number,
                "tolerance_relative": _number,
                "tolerance_basis": _text,
                "recorded_with": _values(_string),
                "monte_carlo": _nullable(
                    _object({"seeds": _list(_integer(0), min_length=1), "std_nats": _list(_number), "note": _text})
                ),
            }
        ),
        "reference": _object(
            {
                "seed": _integer(0),
                "batch_size": _integer(1),
                "arrays": _list(_text, min_length=1),
                "decoder_pixels": _text,
                "tolerance": _number,
                "how": _text,
            }
        ),
    }
)


def _consistent(card: dict[str, Any]) -> None:
    """What the types cannot say: the name against the data set and prior, and list lengths."""
    identity = card["identity"]
    try:
        names.check_name(identity["name"])
    except UnknownEntryError as err:
        raise _Invalid("identity.name", str(err)) from None
    if identity["resolved_name"] != names.resolved_name(identity["name"], identity["revision"]):
        raise _Invalid("identity.resolved_name", f"expected {identity['name']}@r{identity['revision']}")
    try:
        names.check_agrees(identity["name"], card["data"]["dataset"], card["model"]["prior"])
    except ValueError as err:
        raise _Invalid("identity.name", str(err)) from None
    subset = card["check_subset"]
    n = len(subset["indices"])
    if len(set(subset["indices"])) != n:
        raise _Invalid("check_subset.indices", "indices repeat")
    for field in ("log_likelihood_unnormalized", "log_likelihood"):
        if len(subset[field]) != n:
            raise _Invalid(f"check_subset.{field}", f"expected {n} values (one per index), got {len(subset[field])}")
    if subset["images_shape"][0] != n:
        raise _Invalid("check_subset.images_shape", f"expected {n} images, got {subset['images_shape'][0]}")
    monte_carlo = subset["monte_carlo"]
    if monte_carlo is not None and len(monte_carlo["std_nats"]) != n:
        got = len(monte_carlo["std_nats"])
        raise _Invalid("check_subset.monte_carlo.std_nats", f"expected {n} values, got {got}")
    if card["files"]["num_parameters"] < len(card["files"]["integrity"]["leaves"]):
        raise _Invalid("files.num_parameters", "fewer parameters than arrays")
