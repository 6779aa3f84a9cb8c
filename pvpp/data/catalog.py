"""The data sets' names, the split names and `DataSplit`, without tensorflow_datasets.

    from pvpp.data import catalog
    "mnist" in catalog.DATASET_NAMES  # True
    "validation" in catalog.SPLITS    # True

`pvpp.data.loading.DATASETS` holds the builders for the same names, in the same order; see
`pvpp.data.loading` for the splits and the pixel meanings.
"""

import dataclasses

import numpy as np

DATASET_NAMES = ("mnist", "binarized_mnist", "caltech101_silhouettes", "omniglot", "cifar10")
SPLITS = ("train", "validation", "test", "train+validation")


@dataclasses.dataclass(frozen=True, eq=False)
class DataSplit:
    """One split in memory.

    images: uint8 [N, H, W, C], upright, in source order (see `pvpp.data.loading` for the pixel meaning).
    labels: int64 [N], or None where the source has none (binarized_mnist, omniglot from chardata.mat).
    binarization: "dynamic", "static" or "none" (see `pvpp.data.loading.DatasetSpec`).
    note: empty, or a statement of how this data deviates from the paper's protocol.
    source: where the arrays were read from: the prepared copy, and whether it was prepared now (from which
        folder, or downloaded) or reused as found (empty for splits made in memory).
    """

    name: str
    split: str
    images: np.ndarray
    labels: np.ndarray | None
    binarization: str
    note: str = ""
    source: str = ""

    def __len__(self) -> int:
        return self.images.shape[0]
