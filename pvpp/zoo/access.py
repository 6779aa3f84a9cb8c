"""Reading entries: `get` (verified weights), `verify` (every data-free check of an entry) and `export` (a
normal orbax export, for the commands' --checkpoint).

`get(name)` checks, in this order: the card's schema; weights.npz's size and sha256 against the card; every
array's name, shape and dtype against the card's ModelConfig; the per-array integrity record; finiteness; the
number of parameters. `verify` adds the other files' digests and recomputes the reference outputs.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import jax
import numpy as np

from pvpp.data.raw import file_digest
from pvpp.model import ModelConfig
from pvpp.runs import integrity, workdir
from pvpp.zoo import reference, registry, weights
from pvpp.zoo.errors import CorruptEntryError
from pvpp.zoo.registry import GRID_FILENAME, REFERENCE_FILENAME, WEIGHTS_FILENAME


class Verified(NamedTuple):
    """What `verify` checked of one entry: its resolved name, folder, and the largest reference deviation."""

    name: str
    folder: str
    reference_error: float


def get(name: str) -> tuple[ModelConfig, Any]:
    """(ModelConfig as trained, the 'params' collection as jax arrays) of a zoo entry, verified (module docstring).

    name: 'name' (newest revision) or 'name@rN'. Raises UnknownEntryError, CardError or CorruptEntryError, each
    naming the entry.
    """
    entry = registry.resolve(name)
    card = registry.read_card(entry)
    return load_verified(entry, card)


def load_verified(entry: registry.Entry, card: dict[str, Any]) -> tuple[ModelConfig, Any]:
    """`get` for a resolved entry and its (schema-checked) card."""
    where = f"zoo entry {entry.resolved}"
    files = card["files"]
    check_file(entry, files["weights"], WEIGHTS_FILENAME)
    config = ModelConfig.from_dict(card["model"])
    params = weights.read_weights(entry.folder / WEIGHTS_FILENAME, config, where)
    try:
        integrity.verify(params, files["integrity"], where)
    except integrity.CorruptCheckpointError as err:
        raise CorruptEntryError(str(err)) from None
    if weights.count(params) != files["num_parameters"]:
        raise CorruptEntryError(
            f"{where}: the weights hold {weights.count(params)} parameters, the card says {files['num_parameters']}"
        )
    return config, jax.device_put(params)


def verify(name: str) -> Verified:
    """Every check that needs no data: `get`'s, the digests of reference.npz and grid.png, and the reference
    outputs recomputed within the card's tolerance. Raises the error of the first failed check."""
    entry = registry.resolve(name)
    card = registry.read_card(entry)
    config, params = load_verified(entry, card)
    check_file(entry, card["files"]["reference"], REFERENCE_FILENAME)
    check_file(entry, card["files"]["grid"], GRID_FILENAME)
    stored = read_reference(entry)
    error = reference.compare(
        config, params, stored, f"zoo entry {entry.resolved}", card["reference"]["tolerance"]
    )
    return Verified(entry.resolved, str(entry.folder), error)


def read_reference(entry: registry.Entry) -> dict[str, np.ndarray]:
    """The arrays of the entry's reference.npz (no pickle)."""
    path = entry.folder / REFERENCE_FILENAME
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except (OSError, ValueError, EOFError, KeyError) as err:
        raise CorruptEntryError(f"zoo entry {entry.resolved}: {path} cannot be read ({err})") from None


def check_file(entry: registry.Entry, record: dict[str, Any], filename: str) -> None:
    """CorruptEntryError naming the entry and file unless the file has the card's path, size and sha256."""
    where = f"zoo entry {entry.resolved}"
    if record["path"] != filename:
        raise CorruptEntryError(f"{where}: the card names {record['path']!r} where {filename!r} is expected")
    path = entry.folder / filename
    if not path.is_file():
        raise CorruptEntryError(f"{where}: {filename} is missing from {entry.folder}")
    size = path.stat().st_size
    if size != record["size_bytes"]:
        raise CorruptEntryError(f"{where}: {filename} is {size} bytes, the card says {record['size_bytes']}")
    digest = file_digest(path)
    if digest != record["sha256"]:
        raise CorruptEntryError(
            f"{where}: {filename} has sha256 {digest[:16]}..., the card says {record['sha256'][:16]}...: the file "
            "was changed or damaged after it was packaged"
        )


def export(name: str, directory, *, overwrite: bool = False) -> str:
    """Writes the entry's verified weights as a normal export (`pvpp.runs.workdir.export_for_inference`) to
    `directory`, readable by `pvpp.load(directory)` and the commands' --checkpoint. Returns the directory."""
    entry = registry.resolve(name)
    card = registry.read_card(entry)
    config, params = load_verified(entry, card)
    workdir.export_for_inference(
        directory, config, params, dataset=card["data"]["dataset"], step=card["training"]["steps"],
        overwrite=overwrite,
    )
    return os.path.abspath(directory)
