"""Browsing the zoo without loading weights: `list` (cards, printable as a table) and `card`.

    print(pvpp.zoo.list())                          # entry, data set, prior, parameters, test LL, paper, k
    pvpp.zoo.list(dataset="caltech101", prior="rbm")  # name parts or pvpp names both work
    pvpp.zoo.card("caltech101-rbm-cpubudget")         # the newest revision's card (a dict)
"""

from __future__ import annotations

import builtins
from typing import Any

from pvpp.zoo import names, registry
from pvpp.zoo.errors import ZooError

_COLUMNS = ("entry", "data set", "prior", "parameters", "test LL", "paper", "k", "budget", "where")


class Cards(builtins.list):
    """A list of cards (dicts) whose str() is a table, one row per entry."""

    def table(self) -> str:
        """One header line and one line per card: resolved name, data set, prior, parameters, test LL (nats
        per image, or bits/dim for RGB), the paper's number, k, the budget part of the name, shipped or user."""
        rows = [_COLUMNS] + [_row(card) for card in self]
        widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
        lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
        if not self:
            lines.append("(no entries)")
        return "\n".join(lines)

    def markdown(self) -> str:
        """The same rows as a Markdown table (for a README generated from the cards)."""
        rows = [_row(card) for card in self]
        lines = ["| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def list(dataset: str | None = None, prior: str | None = None) -> Cards:  # noqa: A001 -- the issue's name
    """The card of the newest revision of every entry (shipped first, then `PVPP_ZOO_PATH`), optionally only
    those of a data set and / or prior. dataset: a name part ('caltech101') or a pvpp data set
    ('caltech101_silhouettes'); prior: a name part ('pixelcnn') or a ModelConfig prior ('none')."""
    wanted_dataset = _full(dataset, names.DATASET_PARTS, "dataset")
    wanted_prior = _full(prior, names.PRIOR_PARTS, "prior")
    newest: dict[str, registry.Entry] = {}
    for entry in registry.entries():
        newest[entry.name] = entry  # sorted by revision: the last is the newest
    cards = Cards()
    for entry in newest.values():
        found = registry.read_card(entry)
        if wanted_dataset is not None and found["data"]["dataset"] != wanted_dataset:
            continue
        if wanted_prior is not None and found["model"]["prior"] != wanted_prior:
            continue
        cards.append(found)
    return cards


def card(name: str) -> dict[str, Any]:
    """The card of 'name' (newest revision) or 'name@rN', schema-checked."""
    return registry.read_card(registry.resolve(name))


def where(name: str) -> registry.Entry:
    """The resolved entry (name, revision, folder, shipped) of 'name' or 'name@rN'."""
    return registry.resolve(name)


def headline(result: dict[str, Any]) -> str:
    """'-81.23 nats' (log-likelihood per image) or '3.512 bits/dim' (RGB: the NLL, as the papers report it)."""
    if result["units"] == "bits/dim":
        text = f"{-result['test_log_likelihood']:.3f} bits/dim"
    else:
        text = f"{result['test_log_likelihood']:.2f} nats"
    return text if result["split"] == "test" else f"{text} ({result['split']})"


def _full(value: str | None, mapping: dict[str, str], what: str) -> str | None:
    if value is None:
        return None
    if value in mapping:
        return mapping[value]
    if value in mapping.values():
        return value
    raise ZooError(f"{what} must be one of {sorted(mapping)} (or {sorted(mapping.values())}), got {value!r}")


def _row(card: dict[str, Any]) -> tuple[str, ...]:
    identity, result = card["identity"], card["result"]
    paper_value = card["paper"]["test_log_likelihood"]
    entry = registry.resolve(identity["resolved_name"])
    return (
        identity["resolved_name"],
        card["data"]["dataset"],
        card["model"]["prior"],
        f"{card['files']['num_parameters']:,}",
        headline(result),
        "n/a" if paper_value is None else f"{paper_value:.2f}",
        str(result["k"]),
        names.parts(identity["name"])[2],
        "shipped" if entry.shipped else "user",
    )
