"""Load a split of one of the paper's data sets into memory; its tfds copy is prepared on first use.

    split = pvpp.data.load("mnist", "train")  # DataSplit: images uint8 [50000, 28, 28, 1], labels [50000]
    split = pvpp.data.load("cifar10", "test", data_dir="/path/to/data")

Directories:
- `data_dir` (else env `PVPP_DATA_DIR`): the original files, read only (the builders' manual directory). When
  neither is set, the builders download the original files (with checksums) instead.
- `prepared_dir` (else env `PVPP_PREPARED_DIR`, else `~/.cache/pvpp/tfds`): where the prepared tfds copies are
  written. It must not lie inside `data_dir`. A prepared copy is reused as long as it exists; every accepted
  source file is checked against the canonical checksums first, so copies prepared from different folders hold
  the same data. A damaged copy (array_record files with flipped bytes or cut short, a broken dataset_info.json)
  is reported in one warning naming its folder, removed and prepared again from the original files; a copy still
  unreadable after that is a `PreparedCopyError` naming the folder to remove.

Splits (`SPLITS`, defined in `pvpp.data.catalog` with `DATASET_NAMES` and `DataSplit`): "train", "validation",
"test" and "train+validation".
- binarized_mnist, caltech101_silhouettes: the sources' own train / validation / test (50k/10k/10k,
  4100/2264/2307).
- mnist: the last `validation_size` (default 10,000) of the 60k training images are the validation split and
  the first 50,000 the training split; "train+validation" is all 60k. Test: the 10k MNIST test images.
- omniglot, cifar10: no validation split by default (`validation_size=0`: "train" is the whole training set,
  as in the papers, and "validation" is an error); pass e.g. `validation_size=5000` to hold out the last 5,000
  training images.

Pixels (uint8 [N, H, W, C]): mnist and omniglot grey levels 0..255 (binarization "dynamic": the iterator draws
a fresh Bernoulli(x / 255) image each time an image is used); binarized_mnist and caltech101_silhouettes
{0, 1} with 1 = ink / object (binarization "static"); cifar10 RGB 0..255 (binarization "none"; the model maps
pixels to [-1, 1]).
"""

import contextlib
import dataclasses
import functools
import io
import json
import logging
import os
import pathlib
import shutil

import numpy as np
import tensorflow_datasets as tfds
from google.protobuf import json_format

try:
    import fcntl  # POSIX only: elsewhere data preparation runs without the inter-process lock
except ImportError:
    fcntl = None

from pvpp.data import builders, sources
from pvpp.data.catalog import DATASET_NAMES, DataSplit, SPLITS
from pvpp.data.raw import DataFileError
from pvpp.validation import check_int

DEFAULT_PREPARED_DIR = pathlib.Path("~/.cache/pvpp/tfds")
_LOG = logging.getLogger(__name__)
_READ_CHUNK = 4096  # records decoded per data-source call when loading a split into memory


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What differs between the data sets, for the loader and the iterator."""

    builder: type[tfds.core.GeneratorBasedBuilder]
    binarization: str  # "dynamic" (grey levels, sample at use), "static" ({0, 1} as stored) or "none" (RGB)
    has_validation: bool  # the source defines its own validation split
    default_validation_size: int = 0  # held out from the end of train when the source has no validation split


DATASETS = {
    "mnist": DatasetSpec(builders.PvppMnist, "dynamic", has_validation=False, default_validation_size=10000),
    "binarized_mnist": DatasetSpec(builders.PvppBinarizedMnist, "static", has_validation=True),
    "caltech101_silhouettes": DatasetSpec(builders.PvppCaltech101Silhouettes, "static", has_validation=True),
    "omniglot": DatasetSpec(builders.PvppOmniglot, "dynamic", has_validation=False),
    "cifar10": DatasetSpec(builders.PvppCifar10, "none", has_validation=False),
}
if tuple(DATASETS) != DATASET_NAMES:  # the light catalog names the same data sets, in the same order
    raise RuntimeError(f"DATASETS {tuple(DATASETS)} and catalog.DATASET_NAMES {DATASET_NAMES} disagree")


def load(
    name: str,
    split: str,
    data_dir: str | os.PathLike | None = None,
    *,
    prepared_dir: str | os.PathLike | None = None,
    validation_size: int | None = None,
    config: str | None = None,
) -> DataSplit:
    """Loads split `split` of data set `name` into memory (preparing the tfds copy first if needed).

    Args:
      name: one of `DATASETS`.
      split: one of `SPLITS`.
      data_dir: folder with the original files (default env PVPP_DATA_DIR; neither set: download the
        originals).
      prepared_dir: folder for the prepared tfds copies (default env PVPP_PREPARED_DIR, else
        ~/.cache/pvpp/tfds).
      validation_size: images held out from the end of train as the validation split (mnist default 10000,
        omniglot and cifar10 default 0). Must be None for data sets with their own validation split.
      config: omniglot only: "chardata" (the paper's 28x28 set) or "resized_105" (built from the 105x105
        originals, a deviation). Default: "chardata" when chardata.mat is in the data folder or downloads are
        on, else "resized_105".
    """
    spec = _spec(name)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    builder, origin = _prepare(name, data_dir, prepared_dir=prepared_dir, config=config)
    try:
        num_train = _num_train(builder)
        tfds_split = _tfds_split(name, spec, split, num_train, validation_size)
        images, labels = _read_split(builder, tfds_split, prepared_dir)
    except _DAMAGED_RECORDS as err:  # the prepared copy, not the originals: rebuilt from them once
        _rebuild(pathlib.Path(builder.data_dir), err, _origin(resolve_data_dir(data_dir)), prepared_dir, spec)
        builder, origin = _prepare(name, data_dir, prepared_dir=prepared_dir, config=config)
        try:
            num_train = _num_train(builder)
            tfds_split = _tfds_split(name, spec, split, num_train, validation_size)
            images, labels = _read_split(builder, tfds_split, prepared_dir)
        except _DAMAGED_RECORDS as again:
            raise PreparedCopyError(
                f"the prepared copy {builder.data_dir} is unreadable even after rebuilding it "
                f"({_describe(again)}): remove it (rm -r {builder.data_dir}) and rerun"
            ) from again
    note = (
        builders.OMNIGLOT_DEVIATION
        if builder.builder_config and builder.builder_config.name == "resized_105"
        else ""
    )
    return DataSplit(name, split, images, labels, spec.binarization, note, origin)


class PreparedCopyError(DataFileError):
    """A prepared copy that cannot be read even after it was rebuilt from the original files."""


#: What a damaged array_record file (flipped bytes, truncated, missing: Riegeli's checks) or a dataset_info.json
#: without splits raises when the prepared copy is read.
_DAMAGED_RECORDS = (RuntimeError, KeyError)
#: What a damaged dataset_info.json raises when its builder is made.
_DAMAGED_INFO = (json_format.ParseError, json.JSONDecodeError, UnicodeDecodeError)


def _num_train(builder) -> int:
    """The number of training records the copy's dataset_info.json states (KeyError when it states none)."""
    return builder.info.splits["train"].num_examples


def _read_split(builder, tfds_split: str, prepared_dir) -> tuple[np.ndarray, np.ndarray | None]:
    """The records of `tfds_split` of the prepared copy of `builder`, decoded (see `_read_all`)."""
    source = tfds.data_source(
        f"{builder.name}/{builder.builder_config.name}" if builder.builder_config else builder.name,
        split=tfds_split,
        data_dir=str(resolve_prepared_dir(prepared_dir)),
        download=False,
        builder_kwargs={"file_format": "array_record"},
    )
    return _read_all(source, builder.info.features)


def _rebuild(folder: pathlib.Path, err: BaseException, origin: str, prepared_dir, spec) -> None:
    """Says in one line that the prepared copy `folder` is damaged and removes it, so that it is prepared again
    from `origin`. Under the preparation lock, and only if the copy is still the one found damaged (another
    process may have rebuilt it meanwhile)."""
    found = _identity(folder)
    lock = resolve_prepared_dir(prepared_dir) / f".{spec.builder.name}.lock"
    with _exclusive(lock):
        if found is None or _identity(folder) != found:
            return
        _LOG.warning(
            "The prepared copy %s is damaged (%s); rebuilding it from %s (the original files are not changed).",
            folder, _describe(err), origin,
        )
        shutil.rmtree(folder)


def _identity(folder: pathlib.Path) -> tuple[int, int] | None:
    try:
        status = folder.stat()
    except FileNotFoundError:
        return None
    return status.st_ino, status.st_mtime_ns


def _copy_folder(prepared: pathlib.Path, spec: DatasetSpec, config: str | None) -> pathlib.Path:
    """Where tfds keeps the prepared copy: <prepared>/<builder name>[/<config>]/<version>."""
    folder = prepared / spec.builder.name
    return (folder / config if config else folder) / str(spec.builder.VERSION)


def _origin(data_root: pathlib.Path | None) -> str:
    return f"the files in {data_root}" if data_root else "the originals (downloading them)"


def _describe(err: BaseException) -> str:
    first_line = (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {first_line[:200]}"


def prepare(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    prepared_dir: str | os.PathLike | None = None,
    config: str | None = None,
) -> tfds.core.DatasetBuilder:
    """Prepares (once) the array_record copy of data set `name`; returns its builder. Arguments: `load`."""
    return _prepare(name, data_dir, prepared_dir=prepared_dir, config=config)[0]


def _prepare(name, data_dir, *, prepared_dir, config) -> tuple[tfds.core.DatasetBuilder, str]:
    """`prepare`, and a sentence saying where the data came from (for `DataSplit.source`)."""
    spec = _spec(name)
    data_root = resolve_data_dir(data_dir)
    prepared = resolve_prepared_dir(prepared_dir)
    if data_root is not None and prepared.is_relative_to(data_root):
        raise ValueError(
            f"prepared_dir {prepared} lies inside data_dir {data_root}; the data folder is read only"
        )
    config = _config(name, spec, data_root, config)
    prepared.mkdir(parents=True, exist_ok=True)
    # One process prepares at a time (tfds renames its finished folder into place, which fails if another
    # process did so first); the builder is made under the lock so that it sees a copy another process has
    # just finished.
    with _exclusive(prepared / f".{spec.builder.name}.lock"):
        make = functools.partial(
            spec.builder,
            data_dir=str(prepared),
            config=config,
            file_format="array_record",
            allow_download=data_root is None,
        )
        try:
            builder = make()
        except _DAMAGED_INFO as err:  # the copy's dataset_info.json: the copy is rebuilt from the originals
            folder = _copy_folder(prepared, spec, config)
            _LOG.warning(
                "The prepared copy %s is damaged (%s); rebuilding it from %s (the original files are not "
                "changed).", folder, _describe(err), _origin(data_root),
            )
            shutil.rmtree(folder, ignore_errors=True)
            builder = make()
        reused = os.path.isdir(builder.data_dir)  # tfds renames a finished copy into place: it is complete
        if not reused:
            origin = f"the files in {data_root}" if data_root else "the originals (downloading them)"
            logging.info("Preparing %s once, from %s, into %s.", name, origin, builder.data_dir)
        # tfds prints "Downloading and preparing dataset Unknown size ..." and progress bars even when it only
        # converts local files: our line above says what happens.
        tfds.display_progress_bar(False)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                builder.download_and_prepare(
                    download_config=tfds.download.DownloadConfig(manual_dir=str(data_root) if data_root else None)
                )
        finally:
            tfds.display_progress_bar(True)
    if reused:
        source = f"the prepared copy {builder.data_dir}, reused as found (checksummed when it was prepared)"
    else:
        origin = f"the files in {data_root}" if data_root else "the downloaded originals"
        source = f"the prepared copy {builder.data_dir}, prepared now from {origin}"
    return builder, source


@contextlib.contextmanager
def _exclusive(lock_path: pathlib.Path):
    """An advisory inter-process lock on `lock_path` (POSIX flock; no locking where fcntl is unavailable)."""
    if fcntl is None:  # not POSIX: run unlocked
        yield
        return
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def resolve_data_dir(data_dir: str | os.PathLike | None) -> pathlib.Path | None:
    """`data_dir`, else env PVPP_DATA_DIR, as an absolute path that must exist; None if neither is set."""
    if data_dir is None:
        data_dir = os.environ.get("PVPP_DATA_DIR") or None
    if data_dir is None:
        return None
    path = pathlib.Path(data_dir).expanduser().resolve()
    if not path.is_dir():
        raise FileNotFoundError(
            f"data_dir {path} is not a directory (set data_dir or PVPP_DATA_DIR to the data folder)"
        )
    return path


def resolve_prepared_dir(prepared_dir: str | os.PathLike | None) -> pathlib.Path:
    """`prepared_dir`, else env PVPP_PREPARED_DIR, else ~/.cache/pvpp/tfds, as an absolute path."""
    if prepared_dir is None:
        prepared_dir = os.environ.get("PVPP_PREPARED_DIR") or DEFAULT_PREPARED_DIR
    return pathlib.Path(prepared_dir).expanduser().resolve()


def _spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; known data sets: {', '.join(DATASETS)}")
    return DATASETS[name]


def _config(name: str, spec: DatasetSpec, data_root: pathlib.Path | None, config: str | None) -> str | None:
    """The builder config: only omniglot has configs (see `load`)."""
    names = [c.name for c in spec.builder.BUILDER_CONFIGS]
    if not names:
        if config is not None:
            raise ValueError(f"data set {name!r} has no configs, got config={config!r}")
        return None
    if config is not None:
        if config not in names:
            raise ValueError(f"config of {name!r} must be one of {names}, got {config!r}")
        return config
    chardata = sources.OMNIGLOT_CHARDATA_FILE.filename
    if data_root is None or any(
        (d / chardata).is_file() for d in (data_root / spec.builder.SUBFOLDER, data_root)
    ):
        return "chardata"
    logging.getLogger(__name__).warning(
        "omniglot: %s not in %s; using config resized_105. %s",
        chardata,
        data_root,
        builders.OMNIGLOT_DEVIATION,
    )
    return "resized_105"


def _tfds_split(name: str, spec: DatasetSpec, split: str, num_train: int, validation_size: int | None) -> str:
    """The tfds split string for a standard split name."""
    if spec.has_validation:
        if validation_size is not None:
            raise ValueError(
                f"{name} has its own validation split; validation_size must be None, got {validation_size}"
            )
        return split
    size = spec.default_validation_size if validation_size is None else validation_size
    check_int(size, "validation_size", 0)
    if size >= num_train:
        raise ValueError(
            f"validation_size must be an int in [0, {num_train}) for {name}, got {validation_size!r}"
        )
    if split == "test":
        return "test"
    if split == "train+validation" or (split == "train" and size == 0):
        return "train"
    if split == "train":
        return f"train[:{num_train - size}]"
    if size == 0:
        raise ValueError(
            f"{name} has no validation split by default; pass validation_size (e.g. 5000) to hold out "
            "the last images of the training set"
        )
    return f"train[{num_train - size}:]"


def _read_all(source, features) -> tuple[np.ndarray, np.ndarray | None]:
    """Decodes all records of a tfds data source to (images uint8 [N, H, W, C], labels int64 [N] or None)."""
    count = len(source)
    images = np.empty((count, *features["image"].shape), np.uint8)
    labels = np.empty((count,), np.int64) if "label" in features else None
    for start in range(
        0, count, _READ_CHUNK
    ):  # chunks: single-record reads are slow, one list of all is memory-heavy
        records = source.__getitems__(list(range(start, min(start + _READ_CHUNK, count))))
        for offset, record in enumerate(records):
            images[start + offset] = record["image"]
            if labels is not None:
                labels[start + offset] = record["label"]
    return images, labels
