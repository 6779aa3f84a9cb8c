"""pvpp's model zoo: trained models that ship inside the package, each with a card that its tests re-derive.

    print(pvpp.zoo.list())                                  # every entry: data set, prior, parameters, test LL
    card = pvpp.zoo.card("caltech101-rbm-cpubudget")        # newest revision; or "caltech101-rbm-cpubudget@r1"
    config, params = pvpp.zoo.get("caltech101-rbm-cpubudget")   # verified: digests, integrity, finiteness
    m = pvpp.load("zoo:caltech101-rbm-cpubudget")           # a pvpp.inference.LoadedModel, m.card attached
    pvpp.zoo.verify("caltech101-rbm-cpubudget")             # also recomputes the card's reference outputs
    pvpp.zoo.export("caltech101-rbm-cpubudget", "out/")     # an orbax export for the commands' --checkpoint
    pvpp.zoo.package(workdir, eval_json, "caltech101-rbm-mine", destination="my_zoo", budget="...")

    python -m pvpp.zoo list | show NAME | verify [NAME] | export NAME DIR | package ...

Names are '<dataset>-<prior>-<budget>' with revisions '@rN' that are never re-pointed (`pvpp.zoo.names`); the
entries live in pvpp/zoo/models and in the folders of PVPP_ZOO_PATH (`pvpp.zoo.registry`); the card's fields:
`pvpp.zoo.sections`; the checks of a card against real data: `pvpp.zoo.check_subset`. The whole shipped zoo stays
within SIZE_BUDGET_BYTES.
"""

import importlib

from pvpp.zoo.access import Verified, export, get, verify
from pvpp.zoo.catalog import Cards, card, list, where
from pvpp.zoo.errors import CardError, CorruptEntryError, EntryExistsError, UnknownEntryError, ZooError
from pvpp.zoo.registry import PATH_VARIABLE, SHIPPED_DIR, Entry

#: The most the shipped entries (everything under pvpp/zoo/models) may weigh together, bytes.
SIZE_BUDGET_BYTES = 16 * 2**20

__all__ = [
    "PATH_VARIABLE", "SHIPPED_DIR", "SIZE_BUDGET_BYTES", "CardError", "Cards", "CorruptEntryError", "Entry",
    "EntryExistsError", "UnknownEntryError", "Verified", "ZooError", "card", "export", "get", "list", "package",
    "verify", "where",
]


def __getattr__(name: str):
    """`package` (`pvpp.zoo.packaging.package`), imported on first use: it needs `pvpp.inference`, which itself
    imports this package."""
    if name == "package":
        value = importlib.import_module("pvpp.zoo.packaging").package
        globals()[name] = value
        return value
    raise AttributeError(f"module 'pvpp.zoo' has no attribute {name!r}")
