"""Result files that are never half-written, never mixed and never silently replaced.

An evaluation's result is a pair: a JSON summary and an .npz of per-image arrays. The JSON is the commit point:

    write_results(path, summary, per_image)   # -> (json path, npz path)
    summary, per_image = read_results(path)   # checks that the pair belongs together

1. The arrays go to `<stem>.<digest>.npz`, a name derived from their content (a new file: nothing is replaced),
   written to a temporary file, flushed to disk and renamed into place.
2. The JSON, which names that file and records a digest of every array, is written the same way and renamed over
   `<stem>.json` in one atomic step. A reader sees the old pair or the new one, never a mix, whatever moment a
   crash or kill strikes; the superseded .npz is removed only after the rename.

An existing result is replaced only when asked (`overwrite=True`) or when the new one is the same result (same
summary apart from `command`, same arrays: a rerun of the same evaluation); otherwise `ResultExistsError` names
the file, before anything is written.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from pvpp.runs.integrity import fingerprints, fingerprints_digest

#: Summary keys that may differ between two runs of the same evaluation (how it was invoked).
VOLATILE_KEYS = ("command",)


class ResultExistsError(FileExistsError):
    """A result file exists with other content and overwriting was not asked for."""


class InconsistentResultError(RuntimeError):
    """A JSON summary and its per-image arrays do not belong together (changed or damaged files)."""


def write_results(
    path, summary: Mapping[str, Any], per_image: Mapping[str, np.ndarray], *, overwrite: bool = False
) -> tuple[str, str]:
    """Writes the pair (see the module docstring); returns (json path, npz path)."""
    path = os.fspath(path)
    arrays = {name: np.asarray(value) for name, value in per_image.items()}
    digests = fingerprints(arrays)
    content_digest = fingerprints_digest(digests)[:16]
    stem = os.path.splitext(path)[0]
    arrays_path = f"{stem}.{content_digest}.npz"
    document = {**summary, "per_image": {"file": os.path.basename(arrays_path), "digests": digests}}
    encoded = (json.dumps(document, indent=2, allow_nan=False) + "\n").encode("utf-8")
    previous = _existing(path)
    if previous is not None and not overwrite:
        if _comparable(previous) != _comparable(document):
            raise ResultExistsError(
                f"{path} already holds another result (different settings, parameters or values); "
                "choose another --output or pass --overwrite to replace it"
            )
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if not os.path.exists(arrays_path):
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        atomic_write_bytes(arrays_path, buffer.getvalue())
    atomic_write_bytes(path, encoded)
    old_arrays = None if previous is None else (previous.get("per_image") or {}).get("file")
    if old_arrays and old_arrays != os.path.basename(arrays_path):
        try:
            os.remove(os.path.join(os.path.dirname(os.path.abspath(path)), old_arrays))
        except FileNotFoundError:
            pass
    return path, arrays_path


def check_replaceable(path, expected: Mapping[str, Any], *, overwrite: bool = False) -> None:
    """Before long work: ResultExistsError when `path` holds a result whose entries named in `expected` (e.g. the
    settings and the parameters' identity) differ from these, unless overwrite. A rerun of the same evaluation
    passes (`write_results` then compares the whole result)."""
    previous = _existing(os.fspath(path))
    if previous is None or overwrite:
        return
    normal = json.loads(json.dumps(dict(expected)))
    differing = sorted(key for key, value in normal.items() if previous.get(key) != value)
    if differing:
        raise ResultExistsError(
            f"{os.fspath(path)} already holds a result with other {', '.join(differing)}; choose another --output "
            "or pass --overwrite to replace it"
        )


def read_results(path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(summary, per-image arrays) of a result written by `write_results`; InconsistentResultError when the arrays
    are missing or are not the ones the JSON recorded."""
    path = os.fspath(path)
    with open(path, encoding="utf-8") as f:
        summary = json.load(f)
    record = summary.get("per_image")
    if not isinstance(record, Mapping) or "file" not in record:
        raise InconsistentResultError(f"{path} names no per-image file (not written by pvpp.runs.results)")
    arrays_path = os.path.join(os.path.dirname(os.path.abspath(path)), record["file"])
    if not os.path.exists(arrays_path):
        raise InconsistentResultError(f"{path}: its per-image file {record['file']} is missing")
    with np.load(arrays_path, allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    if fingerprints(arrays) != record.get("digests"):
        raise InconsistentResultError(f"{path}: {record['file']} does not hold the arrays the summary recorded")
    return summary, arrays


def atomic_write_bytes(path, data: bytes) -> None:
    """Writes `data` to `path` through a temporary file in the same folder, flushed to disk, then renamed."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes 0600: give the file the permissions open() would
        with os.fdopen(handle, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
    _fsync_folder(folder)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _existing(path: str) -> dict[str, Any] | None:
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {"unreadable": True}


def _comparable(document: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in document.items() if key not in VOLATILE_KEYS}


def _fsync_folder(folder: str) -> None:
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
