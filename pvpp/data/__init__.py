"""Data: TF-free tfds builders for the paper's five data sets, an in-memory loader, a resumable iterator.

    from pvpp import data
    train = data.load("mnist", "train")                       # DataSplit, images uint8 [50000, 28, 28, 1]
    it = data.batch_iterator(train, 128, seed=0)               # dynamic binarization for mnist / omniglot
    batch = next(it)["image"]                                  # uint8 {0, 1} [128, 28, 28, 1]

See `catalog` for the names (`DATASET_NAMES`, `SPLITS`) and `DataSplit`, `loading` for directories, splits and
pixel meanings, `builders` for the tfds builders, `iterator` for the batches. `import pvpp.data` does not import
tensorflow_datasets: the names that need it (`load`, `prepare`, `DATASETS`, `DatasetSpec`, the builders, ...)
are imported on first use.
"""

import importlib
import typing

from pvpp.data.binarize import binarize_dynamically
from pvpp.data.catalog import DATASET_NAMES, DataSplit, SPLITS
from pvpp.data.iterator import batch_iterator, BatchIterator

if typing.TYPE_CHECKING:  # for type checkers and IDEs only; at run time `__getattr__` imports these
    from pvpp.data import builders as builders
    from pvpp.data import loading as loading
    from pvpp.data import raw as raw
    from pvpp.data import sources as sources
    from pvpp.data.builders import PvppBinarizedMnist
    from pvpp.data.builders import PvppCaltech101Silhouettes
    from pvpp.data.builders import PvppCifar10
    from pvpp.data.builders import PvppMnist
    from pvpp.data.builders import PvppOmniglot
    from pvpp.data.loading import DATASETS
    from pvpp.data.loading import DatasetSpec
    from pvpp.data.loading import load
    from pvpp.data.loading import prepare
    from pvpp.data.raw import DataFileError

__all__ = [
    "BatchIterator",
    "DATASETS",
    "DATASET_NAMES",
    "DataFileError",
    "DataSplit",
    "DatasetSpec",
    "PvppBinarizedMnist",
    "PvppCaltech101Silhouettes",
    "PvppCifar10",
    "PvppMnist",
    "PvppOmniglot",
    "SPLITS",
    "batch_iterator",
    "binarize_dynamically",
    "load",
    "prepare",
]

# Lazy names (PEP 562): these exist to keep `import pvpp.data` (and so every user of the names, splits and
# iterator) free of tensorflow_datasets, which `builders` and `loading` import at their top. Each name below is
# imported from its module on first access (`data.load`, `from pvpp.data import load`), then cached.
_LAZY = {
    "DATASETS": "pvpp.data.loading",
    "DatasetSpec": "pvpp.data.loading",
    "load": "pvpp.data.loading",
    "prepare": "pvpp.data.loading",
    "DataFileError": "pvpp.data.raw",
    "PvppBinarizedMnist": "pvpp.data.builders",
    "PvppCaltech101Silhouettes": "pvpp.data.builders",
    "PvppCifar10": "pvpp.data.builders",
    "PvppMnist": "pvpp.data.builders",
    "PvppOmniglot": "pvpp.data.builders",
}
_SUBMODULES = ("builders", "loading", "raw", "sources")  # `data.loading.resolve_data_dir(...)` without an import


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later accesses skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, *_SUBMODULES})
