"""Data: TF-free tfds builders for the paper's five data sets, an in-memory loader, a resumable iterator.

    from pvpp import data
    train = data.load("mnist", "train")                       # DataSplit, images uint8 [50000, 28, 28, 1]
    it = data.batch_iterator(train, 128, seed=0)               # dynamic binarization for mnist / omniglot
    batch = next(it)["image"]                                  # uint8 {0, 1} [128, 28, 28, 1]

See `loading` for directories, splits and pixel meanings, `builders` for the tfds builders, `iterator` for the
batches.
"""

from pvpp.data.binarize import binarize_dynamically
from pvpp.data.builders import PvppBinarizedMnist
from pvpp.data.builders import PvppCaltech101Silhouettes
from pvpp.data.builders import PvppCifar10
from pvpp.data.builders import PvppMnist
from pvpp.data.builders import PvppOmniglot
from pvpp.data.iterator import BatchIterator
from pvpp.data.iterator import batch_iterator
from pvpp.data.loading import DATASETS
from pvpp.data.loading import SPLITS
from pvpp.data.loading import DataSplit
from pvpp.data.loading import DatasetSpec
from pvpp.data.loading import load
from pvpp.data.loading import prepare
from pvpp.data.raw import DataFileError

__all__ = [
    "BatchIterator",
    "DATASETS",
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
