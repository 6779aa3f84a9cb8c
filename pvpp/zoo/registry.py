"""Where entries live and how a name finds its folder: the shipped models and the folders of `PVPP_ZOO_PATH`.

    <root>/<name>/r<N>/card.json, weights.npz, reference.npz, grid.png

Roots: `SHIPPED_DIR` (pvpp/zoo/models, package data) first, then each folder of the environment variable
`PVPP_ZOO_PATH` (os.pathsep-separated), holding a user's own packaged runs in the same layout and under the same
checks. A name@revision may exist in one root only. Nothing here reads weights: listing is cheap.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any, NamedTuple

from pvpp.zoo import names
from pvpp.zoo.errors import CardError, UnknownEntryError, ZooError
from pvpp.zoo.schema import validate_card

SHIPPED_DIR = pathlib.Path(__file__).resolve().parent / "models"
PATH_VARIABLE = "PVPP_ZOO_PATH"
CARD_FILENAME = "card.json"
WEIGHTS_FILENAME = "weights.npz"
REFERENCE_FILENAME = "reference.npz"
GRID_FILENAME = "grid.png"


class Entry(NamedTuple):
    """One revision of one name: `folder` holds its files; `shipped` is False for a `PVPP_ZOO_PATH` entry."""

    name: str
    revision: int
    folder: pathlib.Path
    shipped: bool

    @property
    def resolved(self) -> str:
        """'name@rN'."""
        return names.resolved_name(self.name, self.revision)


def roots() -> list[tuple[pathlib.Path, bool]]:
    """[(folder, shipped)]: the shipped models, then the `PVPP_ZOO_PATH` folders (each must exist)."""
    found = [(SHIPPED_DIR, True)]
    for part in os.environ.get(PATH_VARIABLE, "").split(os.pathsep):
        if not part:
            continue
        folder = pathlib.Path(part).expanduser().resolve()
        if not folder.is_dir():
            raise ZooError(f"{PATH_VARIABLE} names {part!r}, which is not a folder")
        if folder != SHIPPED_DIR and folder not in [f for f, _ in found]:
            found.append((folder, False))
    return found


def entries() -> list[Entry]:
    """Every entry of every root, sorted by name then revision; ZooError for a folder that breaks the layout
    or a name@revision found in two roots."""
    found: dict[tuple[str, int], Entry] = {}
    for root, shipped in roots():
        for entry in _entries_in(root, shipped):
            key = (entry.name, entry.revision)
            if key in found:
                raise ZooError(
                    f"zoo entry {entry.resolved} exists twice, in {found[key].folder} and {entry.folder}; "
                    "a revision is never re-pointed: remove or rename one"
                )
            found[key] = entry
    return [found[key] for key in sorted(found)]


def shipped_entries() -> list[Entry]:
    """The entries under `SHIPPED_DIR` alone (whatever PVPP_ZOO_PATH says), sorted by name then revision."""
    return _entries_in(SHIPPED_DIR, True)


def resolve(text: str) -> Entry:
    """'name' (its newest revision) or 'name@rN' -> Entry; UnknownEntryError naming what is known instead."""
    wanted = names.parse(text)
    everything = entries()
    revisions = [e for e in everything if e.name == wanted.name]
    if not revisions:
        known = sorted({e.name for e in everything})
        listed = ", ".join(known) if known else "none"
        raise UnknownEntryError(
            f"no zoo entry named {wanted.name!r} (entries: {listed}; user entries come from {PATH_VARIABLE})"
        )
    if wanted.revision is None:
        return revisions[-1]
    for entry in revisions:
        if entry.revision == wanted.revision:
            return entry
    have = ", ".join(f"r{e.revision}" for e in revisions)
    raise UnknownEntryError(f"zoo entry {wanted.name!r} has no revision r{wanted.revision} (revisions: {have})")


def read_card(entry: Entry) -> dict[str, Any]:
    """The entry's card.json, schema-checked and matching the entry's folder; CardError naming the file."""
    path = entry.folder / CARD_FILENAME
    where = f"zoo entry {entry.resolved} ({path})"
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CardError(f"{where}: card.json is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CardError(f"{where}: card.json cannot be read as JSON ({err})") from None
    validate_card(card, where)
    identity = card["identity"]
    if (identity["name"], identity["revision"]) != (entry.name, entry.revision):
        raise CardError(
            f"{where}: field identity names {names.resolved_name(identity['name'], identity['revision'])}, "
            f"but the card lies in the folder of {entry.resolved}"
        )
    return card


def next_revision(name: str, extra_roots: list[pathlib.Path] = ()) -> int:
    """1 + the newest revision of `name` in the zoo and in `extra_roots` (1 for a new name)."""
    numbers = [e.revision for e in entries() if e.name == name]
    for root in extra_roots:
        numbers.extend(e.revision for e in _entries_in(pathlib.Path(root), False) if e.name == name)
    return max(numbers, default=0) + 1


def _entries_in(root: pathlib.Path, shipped: bool) -> list[Entry]:
    """The entries under one root: <root>/<name>/r<N>/ with a card.json. Hidden and '_' folders and plain files
    (a README) are skipped; any other folder that is not a zoo name or revision is an error naming it."""
    found = []
    if not root.is_dir():
        return found
    for name_dir in sorted(root.iterdir()):
        if not name_dir.is_dir() or name_dir.name.startswith((".", "_")):
            continue
        try:
            names.check_name(name_dir.name)
        except UnknownEntryError as err:
            raise ZooError(f"{name_dir} is not a zoo entry folder: {err}") from None
        for revision_dir in sorted(name_dir.iterdir()):
            if not revision_dir.is_dir() or revision_dir.name.startswith((".", "_")):
                continue
            revision = names.parse_revision(revision_dir.name, f"{name_dir.name}@{revision_dir.name}")
            if not (revision_dir / CARD_FILENAME).exists():
                raise ZooError(f"zoo entry folder {revision_dir} has no {CARD_FILENAME}")
            found.append(Entry(name_dir.name, revision, revision_dir, shipped))
    return found
