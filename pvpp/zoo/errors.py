"""The errors a user of the zoo can cause: each is one line naming the entry, the file or the card field."""

from __future__ import annotations


class ZooError(ValueError):
    """Base of the zoo's errors (a ValueError: a bad name, file or card, not a bug of pvpp)."""


class UnknownEntryError(ZooError):
    """No entry of that name, or no such revision of it."""


class CardError(ZooError):
    """A card.json that is missing, not JSON, or fails the schema; the message names the field."""


class CorruptEntryError(ZooError):
    """An entry's files differ from its card (digest, size, arrays) or hold NaN / inf."""


class EntryExistsError(ZooError):
    """`package` would overwrite a revision that exists: revisions are never re-pointed."""


__all__ = ["CardError", "CorruptEntryError", "EntryExistsError", "UnknownEntryError", "ZooError"]
