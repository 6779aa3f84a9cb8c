"""A seeded, resumable batch iterator over an in-memory split (plain numpy).

    it = batch_iterator(pvpp.data.load("mnist", "train"), 128, seed=0, num_devices=jax.local_device_count())
    batch = next(it)  # {"image": uint8 {0, 1} [D, 128 / D, 28, 28, 1], "mask": bool [D, 128 / D], "label"}
    state = it.get_state()  # {"seed", "epoch", "batch_index"}: int64 numpy scalars (orbax can store them)
    it.set_state(state)  # the next batches are exactly those that followed when the state was taken

Each epoch visits every image once, in a permutation drawn from (seed, epoch) (or in order with
`shuffle=False`). Dynamic binarization (`pvpp.data.binarize`) draws each image's sample from (seed, epoch,
image index).

Output (a dict of numpy arrays):
- "image": uint8 (default) or float32 [B, H, W, C], or [num_devices, B / num_devices, H, W, C] with
  `num_devices`. Binary data sets give {0, 1}; cifar10 gives 0..255 (the model maps it to [-1, 1]).
- "mask": bool [B] (or [num_devices, B / num_devices]): False on padding (only with remainder="pad").
- "label": int64 [B] (or sharded), when labels were given.

The last partial batch of an epoch: remainder="drop" (default, for training) leaves it out; "pad" fills it up
to the batch size with zero images whose mask is False (for evaluation with a fixed batch shape); "keep"
yields it smaller.

Several processes (`process_slice=(index, count)`): every process draws the same global batch (the same
permutation, the same position) and keeps its own contiguous part, rows [index * B / count, (index + 1) * B /
count) (with `num_devices` the global device count: the devices index * D / count, ...). Process i's devices
then hold exactly what devices of a single process would hold at the same global positions, and the saved
position (global) restores on any process count that divides the batch.
"""

from collections.abc import Mapping

import numpy as np

from pvpp.data import binarize
from pvpp.validation import check_divisible, check_int

REMAINDERS = ("drop", "pad", "keep")
_STATE_KEYS = ("seed", "epoch", "batch_index")


class BatchIterator:
    """Seeded per-epoch shuffling, optional dynamic binarization, device sharding and exact save/restore."""

    def __init__(
        self,
        images: np.ndarray,
        batch_size: int,
        *,
        seed: int,
        labels: np.ndarray | None = None,
        dynamic_binarization: bool = False,
        shuffle: bool = True,
        num_devices: int | None = None,
        remainder: str = "drop",
        num_epochs: int | None = None,
        dtype: type = np.uint8,
        process_slice: tuple[int, int] = (0, 1),
    ):
        """Args:
        images: uint8 [N, H, W, C].
        batch_size: images per batch (all devices together); a multiple of num_devices.
        seed: non-negative int; with the epoch it fixes the order and the binarization samples.
        labels: optional [N], yielded as "label".
        dynamic_binarization: yield Bernoulli(x / 255) samples instead of the grey levels.
        shuffle: draw a permutation per epoch (False: source order every epoch).
        num_devices: if given, batches are reshaped to [num_devices, batch_size / num_devices, ...].
        remainder: "drop", "pad" or "keep" (see the module docstring).
        num_epochs: stop after this many epochs (None: never stop).
        dtype: np.uint8 or np.float32, the dtype of "image".
        process_slice: (this process's index, the process count): yield only this process's part of every
            batch, [B / count, ...] or [num_devices / count, B / num_devices, ...]; num_devices (the global
            count) and batch_size must be multiples of the process count.
        """
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4:
            raise TypeError(f"images must be uint8 [N, H, W, C], got {images.dtype} {images.shape}")
        count = images.shape[0]
        if labels is not None and np.shape(labels) != (count,):
            raise ValueError(f"labels must have shape [N] = ({count},), got {np.shape(labels)}")
        check_int(batch_size, "batch_size", 1)
        check_int(seed, "seed", 0)
        if num_devices is not None:
            check_int(num_devices, "num_devices", 1)
            check_divisible(batch_size, "batch_size", num_devices, "devices (num_devices)")
        if num_epochs is not None:
            check_int(num_epochs, "num_epochs", 0)
        if remainder not in REMAINDERS:
            raise ValueError(f"remainder must be one of {REMAINDERS}, got {remainder!r}")
        if np.dtype(dtype) not in (np.dtype(np.uint8), np.dtype(np.float32)):
            raise TypeError(f"dtype must be np.uint8 or np.float32, got {dtype}")
        process, processes = _check_process_slice(process_slice, batch_size, num_devices)
        last = count % batch_size
        parts = num_devices or processes  # the last batch is split into this many equal parts
        if remainder == "keep" and last % parts:
            raise ValueError(
                f"remainder='keep': the last batch holds {last} images ({count} % {batch_size}), "
                f"not a multiple of {'num_devices' if num_devices else 'the process count'} {parts}; use "
                "remainder='pad' or 'drop'"
            )
        self._num_batches = count // batch_size if remainder == "drop" else -(-count // batch_size)
        if self._num_batches == 0:
            raise ValueError(f"no batch of {batch_size} fits in {count} images with remainder='drop'")
        self._images = images
        self._labels = None if labels is None else np.asarray(labels, np.int64)
        self._batch_size = batch_size
        self._dynamic = bool(dynamic_binarization)
        self._shuffle = shuffle
        self._num_devices = num_devices
        self._remainder = remainder
        self._num_epochs = num_epochs
        self._dtype = np.dtype(dtype)
        self._process, self._processes = process, processes
        self._seed, self._epoch, self._batch_index = int(seed), 0, 0
        self._order_epoch, self._order = None, None

    @property
    def num_batches_per_epoch(self) -> int:
        return self._num_batches

    @property
    def process_slice(self) -> tuple[int, int]:
        """(this process's index, the process count) of the batches' parts (see the module docstring)."""
        return self._process, self._processes

    def get_state(self) -> dict[str, np.ndarray]:
        """The position {"seed", "epoch", "batch_index"} as int64 numpy scalars (a pytree orbax stores)."""
        return {
            "seed": np.asarray(self._seed, np.int64),
            "epoch": np.asarray(self._epoch, np.int64),
            "batch_index": np.asarray(self._batch_index, np.int64),
        }

    def set_state(self, state: Mapping) -> None:
        """Restores a position taken by `get_state` (of an iterator over the same images and batch size)."""
        if not isinstance(state, Mapping) or set(state) != set(_STATE_KEYS):
            raise ValueError(f"state must be a mapping with keys {_STATE_KEYS}, got {state!r}")
        values = {key: int(np.asarray(state[key])) for key in _STATE_KEYS}
        if values["seed"] < 0 or values["epoch"] < 0:
            raise ValueError(f"state has a negative seed or epoch: {values}")
        if not 0 <= values["batch_index"] < self._num_batches:
            raise ValueError(
                f"state batch_index {values['batch_index']} is outside [0, {self._num_batches}), the "
                "batches per epoch of this iterator: was it taken with other data or another batch size?"
            )
        self._seed, self._epoch, self._batch_index = values["seed"], values["epoch"], values["batch_index"]
        self._order_epoch = None

    def __iter__(self) -> "BatchIterator":
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._num_epochs is not None and self._epoch >= self._num_epochs:
            raise StopIteration
        order = self._epoch_order()
        start = self._batch_index * self._batch_size
        ids = order[start : start + self._batch_size]
        full = len(ids) == self._batch_size
        if full and self._processes > 1:  # a full batch: read only this process's part of it
            part = self._batch_size // self._processes
            ids = ids[self._process * part : (self._process + 1) * part]
        images = self._images[ids]
        if self._dynamic:
            images = binarize.binarize_dynamically(images, ids, seed=self._seed, epoch=self._epoch)
        batch = {"image": images.astype(self._dtype, copy=False), "mask": np.ones(len(ids), bool)}
        if self._labels is not None:
            batch["label"] = self._labels[ids]
        if self._remainder == "pad" and not full:
            batch = {
                key: _pad(value, self._batch_size) for key, value in batch.items()
            }  # padding: zeros, mask False
        if not full and self._processes > 1:  # a padded or kept last batch: this process's part of it
            part = len(batch["mask"]) // self._processes
            batch = {key: value[self._process * part : (self._process + 1) * part] for key, value in batch.items()}
        if self._num_devices is not None:
            batch = {
                key: value.reshape(self._num_devices // self._processes, -1, *value.shape[1:])
                for key, value in batch.items()
            }
        self._batch_index += 1
        if self._batch_index == self._num_batches:
            self._epoch, self._batch_index = self._epoch + 1, 0
        return batch

    def _epoch_order(self) -> np.ndarray:
        """Example indices of the current epoch, in visiting order (cached for the epoch)."""
        if self._order_epoch != self._epoch:
            count = self._images.shape[0]
            if self._shuffle:
                sequence = np.random.SeedSequence(
                    self._seed, spawn_key=(binarize.SHUFFLE_STREAM, self._epoch)
                )
                self._order = np.random.default_rng(sequence).permutation(count)
            else:
                self._order = np.arange(count)
            self._order_epoch = self._epoch
        return self._order


def batch_iterator(data, batch_size: int, *, seed: int, **kwargs) -> BatchIterator:
    """A `BatchIterator` over a `pvpp.data.DataSplit`, binarizing dynamically where its protocol says so.

    Keyword arguments are those of `BatchIterator` (shuffle, num_devices, remainder, num_epochs, dtype).
    """
    return BatchIterator(
        data.images,
        batch_size,
        seed=seed,
        labels=data.labels,
        dynamic_binarization=data.binarization == "dynamic",
        **kwargs,
    )


def _check_process_slice(process_slice, batch_size: int, num_devices: int | None) -> tuple[int, int]:
    """(index, count) of `process_slice`, checked; ValueError naming what does not divide."""
    if not isinstance(process_slice, tuple) or len(process_slice) != 2:
        raise TypeError(f"process_slice must be a tuple (index, count), got {process_slice!r}")
    index, count = check_int(process_slice[0], "process index", 0), check_int(process_slice[1], "process count", 1)
    if index >= count:
        raise ValueError(f"process index {index} must be below the process count {count}")
    for name, value in (("batch_size", batch_size), ("num_devices", num_devices)):
        if value is not None:
            check_divisible(value, name, count, "processes")
    return index, count


def _pad(value: np.ndarray, size: int) -> np.ndarray:
    padding = np.zeros((size - value.shape[0], *value.shape[1:]), value.dtype)
    return np.concatenate([value, padding])


