"""Entry names: `<dataset>-<prior>-<budget>` with a revision `@r<N>`, and what each part of a name means.

    caltech101-rbm-cpubudget@r1     Caltech-101 silhouettes, RBM prior, trained within a CPU budget, revision 1

A name says what the model is (`DATASET_PARTS`, `PRIOR_PARTS`: the card's data set and prior must agree with it)
and a revision is never re-pointed to other weights. The bare name means its newest revision; the resolved name
`name@rN` is what gets recorded.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from pvpp.zoo.errors import UnknownEntryError

#: The data-set part of a name -> the pvpp data set (`pvpp.data.DATASET_NAMES`).
DATASET_PARTS = {
    "staticmnist": "binarized_mnist",
    "dynamicmnist": "mnist",
    "omniglot": "omniglot",
    "caltech101": "caltech101_silhouettes",
    "cifar10": "cifar10",
}
#: The prior part of a name -> `ModelConfig.prior` ('pixelcnn' is plain PixelCNN++, prior 'none').
PRIOR_PARTS = {"rbm": "rbm", "gaussian": "gaussian", "bernoulli": "bernoulli", "pixelcnn": "none"}

_NAME = re.compile(r"^(?P<dataset>[a-z0-9]+)-(?P<prior>[a-z0-9]+)-(?P<budget>[a-z0-9]+)$")
_REVISION = re.compile(r"^r(?P<number>[1-9][0-9]*)$")


class EntryName(NamedTuple):
    """A parsed name: `name` ('<dataset>-<prior>-<budget>') and `revision` (int >= 1, or None: the newest)."""

    name: str
    revision: int | None


def parse(text: str) -> EntryName:
    """'name' or 'name@rN' -> EntryName; UnknownEntryError for anything that is not a zoo name."""
    if not isinstance(text, str):
        raise UnknownEntryError(f"a zoo name is a string, got {type(text).__name__} {text!r}")
    name, _, revision = text.partition("@")
    check_name(name)
    if not revision:
        if text.endswith("@"):
            raise UnknownEntryError(f"zoo name {text!r}: a revision follows '@' as r<N>, e.g. {name}@r1")
        return EntryName(name, None)
    return EntryName(name, parse_revision(revision, text))


def check_name(name: str) -> None:
    """UnknownEntryError unless `name` is '<dataset>-<prior>-<budget>' with known data-set and prior parts."""
    match = _NAME.match(name)
    if match is None:
        raise UnknownEntryError(
            f"zoo name {name!r} is not '<dataset>-<prior>-<budget>' (lower-case letters and digits, e.g. "
            "caltech101-rbm-cpubudget)"
        )
    if match["dataset"] not in DATASET_PARTS:
        raise UnknownEntryError(
            f"zoo name {name!r}: data-set part {match['dataset']!r} is not one of {sorted(DATASET_PARTS)}"
        )
    if match["prior"] not in PRIOR_PARTS:
        raise UnknownEntryError(
            f"zoo name {name!r}: prior part {match['prior']!r} is not one of {sorted(PRIOR_PARTS)}"
        )


def parse_revision(text: str, where: str) -> int:
    """'r3' -> 3; UnknownEntryError naming `where` otherwise."""
    match = _REVISION.match(text)
    if match is None:
        raise UnknownEntryError(f"zoo name {where!r}: revision {text!r} is not r<N> with N >= 1 (e.g. r1)")
    return int(match["number"])


def parts(name: str) -> tuple[str, str, str]:
    """(pvpp data set, ModelConfig.prior, budget part) of a checked name."""
    check_name(name)
    dataset, prior_part, budget = name.split("-")
    return DATASET_PARTS[dataset], PRIOR_PARTS[prior_part], budget


def check_agrees(name: str, dataset: str, model_prior: str) -> None:
    """ValueError unless the name's data-set and prior parts mean `dataset` and `model_prior` (ModelConfig.prior)."""
    said = parts(name)[:2]
    if said != (dataset, model_prior):
        raise ValueError(
            f"the name {name} says data set {said[0]} and prior {said[1]!r}, the model is {dataset} with prior "
            f"{model_prior!r}"
        )


def resolved_name(name: str, revision: int) -> str:
    return f"{name}@r{revision}"


def revision_folder(revision: int) -> str:
    """The folder of a revision inside its name's folder: 'r<N>'."""
    return f"r{revision}"
