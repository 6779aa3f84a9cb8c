"""Readers of the original data files, with numpy (and `scipy.io.loadmat` for MATLAB files) only.

Each reader checks the layout it parses (magic numbers, sizes, keys, shapes, value ranges) and, when given
one, a checksum of the file or of its decoded content, so that a truncated or corrupt file raises
`DataFileError` naming the file instead of returning a wrong array. Images come back as uint8 [N, H, W]
(binary and grey-level sets) or [N, H, W, 3] (CIFAR-10), upright, in the original order of their source. Pixel
meanings are stated per reader.
"""

import gzip
import hashlib
import math
import pathlib
import tarfile
import zlib

import numpy as np
import scipy.io

PathLike = str | pathlib.Path

_MAT_MAGIC = b"MATLAB"
_LAROCHELLE_LINE_BYTES = 28 * 28 * 2  # 784 values, each followed by a space or (the last one) a newline
_CIFAR10_RECORD_BYTES = 1 + 32 * 32 * 3  # label byte, then the R, G and B planes
_CIFAR10_BATCH_SIZE = 10000


class DataFileError(ValueError):
    """A data file is corrupt, truncated, or not the version the protocol expects."""


def file_digest(path: PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_file_digest(path: PathLike, expected: str | None, algorithm: str = "sha256") -> None:
    """Raises `DataFileError` if the file's digest is not `expected` (no check if `expected` is None)."""
    if expected is None:
        return
    actual = file_digest(path, algorithm)
    if actual != expected:
        raise DataFileError(
            f"{path}: {algorithm} {actual} does not match the original file's {expected}; "
            "the file is corrupt, truncated or a different version"
        )


# --- MNIST --------------------------------------------------------------------------------------------------


def read_idx(path: PathLike, *, content_sha256: str | None = None) -> np.ndarray:
    """Reads a uint8 IDX file (MNIST images [N, 28, 28] 0..255 or labels [N] 0..9), gzip-compressed or not.

    `content_sha256` is the checksum of the decompressed bytes, so a re-compressed copy of a canonical file is
    accepted.
    """
    path = pathlib.Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":  # the gzip magic number: decompress whatever the file is called
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataFileError(f"{path}: corrupt or truncated gzip stream ({e})") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataFileError(f"{path}: not an IDX file (bad magic number {raw[:4].hex()})")
    if raw[2] != 0x08:
        raise DataFileError(f"{path}: IDX element type 0x{raw[2]:02x}, expected 0x08 (unsigned byte)")
    ndim = raw[3]
    header_bytes = 4 + 4 * ndim
    if len(raw) < header_bytes:
        raise DataFileError(f"{path}: truncated IDX header ({len(raw)} bytes)")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected_bytes = header_bytes + int(np.prod(dims))
    if len(raw) != expected_bytes:
        raise DataFileError(
            f"{path}: the IDX header announces shape {dims} ({expected_bytes} bytes with the header) "
            f"but the data hold {len(raw)} bytes; the file is truncated or corrupt"
        )
    _check_digest(path, raw, content_sha256, "decompressed content")
    return np.frombuffer(raw, np.uint8, offset=header_bytes).reshape(dims)


# --- Statically binarized MNIST -----------------------------------------------------------------------------


def read_binarized_mnist(
    path: PathLike, *, num_examples: int | None = None, content_sha256: str | None = None
) -> np.ndarray:
    """Reads one split of Larochelle's statically binarized MNIST: uint8 [N, 28, 28], 1 = ink, upright.

    Accepts the original text `.amat` (one image a line, 784 space-separated `0`/`1` values) and the MATLAB v5
    copies (key `X`, [N, 784]); the format is told from the content, not the file name. `content_sha256` is
    the sha256 of the text layout, i.e. of the original `.amat` file, whichever format was read.
    """
    path = pathlib.Path(path)
    raw = path.read_bytes()
    if raw.startswith(_MAT_MAGIC):
        x = _load_mat(path, ["X"])["X"]
        if x.ndim != 2 or x.shape[1] != 28 * 28:
            raise DataFileError(f"{path}: key 'X' has shape {x.shape}, expected [N, 784]")
        x = np.ascontiguousarray(x)
        _check_binary(path, x)
        x = x.astype(np.uint8)
        text = None
    else:
        x = _parse_larochelle_text(path, raw)
        text = raw
    if num_examples is not None and x.shape[0] != num_examples:
        raise DataFileError(
            f"{path}: {x.shape[0]} images, expected {num_examples}; the file is truncated or corrupt"
        )
    if content_sha256 is not None:
        _check_digest(path, text if text is not None else _larochelle_text(x), content_sha256, "content")
    return x.reshape(-1, 28, 28)


def _parse_larochelle_text(path: pathlib.Path, raw: bytes) -> np.ndarray:
    """Parses the strict Larochelle layout: `v v ... v\\n`, 1568 bytes a line, v in {0, 1}."""
    layout = "784 space-separated 0/1 values and a newline per line (1568 bytes)"
    if len(raw) == 0 or len(raw) % _LAROCHELLE_LINE_BYTES:
        raise DataFileError(
            f"{path}: {len(raw)} bytes is not a whole number of lines of {layout}; "
            "the file is truncated or not an .amat file"
        )
    lines = np.frombuffer(raw, np.uint8).reshape(-1, _LAROCHELLE_LINE_BYTES)
    values, separators = lines[:, 0::2], lines[:, 1::2]
    bad_value = ~np.isin(values, (ord("0"), ord("1")))
    bad_separator = np.zeros(separators.shape, bool)
    bad_separator[:, :-1] = separators[:, :-1] != ord(" ")
    bad_separator[:, -1] = separators[:, -1] != ord("\n")
    if bad_value.any() or bad_separator.any():
        line = int(np.argmax(bad_value.any(1) | bad_separator.any(1)))
        raise DataFileError(f"{path}: line {line + 1} does not follow the layout of {layout}")
    return values - np.uint8(ord("0"))


def _larochelle_text(x: np.ndarray) -> bytes:
    """Renders uint8 {0, 1} [N, 784] in the Larochelle text layout (used to checksum a MATLAB copy)."""
    text = np.full((x.shape[0], _LAROCHELLE_LINE_BYTES), ord(" "), np.uint8)
    text[:, 0::2] = x + np.uint8(ord("0"))
    text[:, -1] = ord("\n")
    return text.tobytes()


# --- Caltech-101 Silhouettes --------------------------------------------------------------------------------


def read_caltech101_silhouettes(
    path: PathLike, *, sha256: str | None = None
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[str]]:
    """Reads `caltech101_silhouettes_28_split1.mat`.

    Returns ({split: (images uint8 [N, 28, 28], labels int64 [N])}, class_names) with splits train /
    validation / test (4100 / 2264 / 2307). The file stores 0 = object in column-major order; the images
    returned here are upright with **1 = object** (the VAE papers' convention, `1 - x`), and labels are
    0-based (the file's 1..101 minus one).
    """
    path = pathlib.Path(path)
    keys = {"train": "train", "validation": "val", "test": "test"}
    mat = _load_mat(
        path, [f"{k}_data" for k in keys.values()] + [f"{k}_labels" for k in keys.values()] + ["classnames"]
    )
    class_names = [str(np.asarray(c).ravel()[0]) for c in np.asarray(mat["classnames"]).ravel()]
    if len(class_names) != 101:
        raise DataFileError(f"{path}: {len(class_names)} class names, expected 101")
    splits = {}
    for split, key in keys.items():
        x, y = mat[f"{key}_data"], mat[f"{key}_labels"]
        if x.ndim != 2 or x.shape[1] != 28 * 28 or y.shape != (x.shape[0], 1):
            raise DataFileError(
                f"{path}: {key}_data has shape {x.shape} and {key}_labels {y.shape}, "
                "expected [N, 784] and [N, 1]"
            )
        _check_binary(path, x)
        if y.min() < 1 or y.max() > 101:
            raise DataFileError(f"{path}: {key}_labels outside 1..101")
        # Column-major (MATLAB) images: order='F' makes them upright.
        images = 1 - np.asarray(x, np.uint8).reshape(-1, 28, 28, order="F")
        splits[split] = (np.ascontiguousarray(images), y[:, 0].astype(np.int64) - 1)
    check_file_digest(path, sha256)
    return splits, class_names


# --- Omniglot -----------------------------------------------------------------------------------------------

OMNIGLOT_105_TRAIN_DRAWERS = (
    15  # drawers 1..15 of every character train, 16..20 test (see read_omniglot_105_as_28)
)


def read_omniglot_chardata(path: PathLike, *, md5: str | None = None) -> dict[str, np.ndarray]:
    """Reads the IWAE `chardata.mat`: {split: uint8 [N, 28, 28]} for train (24,345) / test (8,070), 255 = ink.

    The file holds grey levels in [0, 1], one image a column ([784, N]) in column-major order. They are stored
    here as round(255 x), which moves a pixel's Bernoulli probability by at most 1/510.
    """
    path = pathlib.Path(path)
    mat = _load_mat(path, ["data", "testdata"])
    splits = {}
    for split, key in (("train", "data"), ("test", "testdata")):
        x = np.asarray(mat[key])
        if x.ndim != 2 or x.shape[0] != 28 * 28:
            raise DataFileError(f"{path}: key {key!r} has shape {x.shape}, expected [784, N]")
        if not np.all(np.isfinite(x)) or x.min() < 0 or x.max() > 1:
            raise DataFileError(f"{path}: key {key!r} has values outside [0, 1]")
        images = x.T.reshape(-1, 28, 28, order="F")  # one column-major image a column
        splits[split] = np.ascontiguousarray(np.rint(images * 255.0).astype(np.uint8))
    check_file_digest(path, md5, "md5")
    return splits


def read_omniglot_105_as_28(
    path: PathLike, *, sha256: str | None = None
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A 28x28 grey-level Omniglot made from the 105x105 originals (`omniglot_105x105.npz`): a DEVIATION.

    Returns {split: (images uint8 [N, 28, 28], alphabet labels int64 [N] in 0..49)}, 255 = ink.
    - Resize: exact area averaging (`area_resize`). An output pixel is the fraction of its 3.75 x 3.75
      input-pixel footprint covered by ink, stored as round(255 * fraction) (numpy rounding: halves to even).
      (IWAE's `chardata.mat` used its own downsampling, which is not documented.)
    - Split: for each of the 1623 characters (all 50 alphabets), drawers 1..15 are train (24,345 images, the
      size of the IWAE training set) and drawers 16..20 test (8,115 images; IWAE's test set has 8,070). IWAE's
      split is not known.
    Numbers obtained on this set are not directly comparable with those of the papers.
    """
    path = pathlib.Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in ("ink", "drawer", "alphabet")}
    except KeyError as e:
        raise DataFileError(f"{path}: missing key {e}; expected ink, drawer and alphabet") from e
    except Exception as e:  # zipfile, zlib and numpy raise several types on a damaged archive
        raise DataFileError(
            f"{path}: cannot read the .npz archive, it is corrupt or truncated ({e!r})"
        ) from e
    ink = arrays["ink"]
    count = ink.shape[0]
    if (
        ink.dtype != np.bool_
        or ink.shape[1:] != (105, 105)
        or any(a.shape != (count,) for a in arrays.values() if a is not ink)
    ):
        raise DataFileError(
            f"{path}: unexpected layout (ink {ink.dtype} {ink.shape}); expected bool [N, 105, 105]"
        )
    drawer = arrays["drawer"].astype(np.int64)
    if drawer.min() < 1 or drawer.max() > 20:
        raise DataFileError(f"{path}: drawer numbers outside 1..20")
    check_file_digest(path, sha256)
    images = np.rint(area_resize(ink, 28) * 255.0).astype(np.uint8)
    labels = arrays["alphabet"].astype(np.int64)
    train = drawer <= OMNIGLOT_105_TRAIN_DRAWERS
    return {"train": (images[train], labels[train]), "test": (images[~train], labels[~train])}


def area_resize(images: np.ndarray, size: int, chunk: int = 2048) -> np.ndarray:
    """Exact area-average resize of binary square images bool [N, S, S] to float64 [N, size, size] in [0, 1].

    Each output pixel is the fraction of its footprint (S / size input pixels on a side, 3.75 for 105 -> 28)
    covered by ink, computed exactly with integers: repeat every input pixel `up` times per axis so that the
    grid of side lcm(S, size) splits into size x size blocks of side `block`, and count the ink in each block.
    """
    source = images.shape[1]
    side = math.lcm(source, size)
    up, block = side // source, side // size
    counts = np.empty((images.shape[0], size, size), np.int64)
    for start in range(0, images.shape[0], chunk):  # chunks keep the upsampled copies small
        x = images[start : start + chunk].astype(np.uint16)
        x = np.repeat(x, up, axis=1).reshape(x.shape[0], size, block, source).sum(2, dtype=np.uint16)
        x = np.repeat(x, up, axis=2).reshape(x.shape[0], size, size, block).sum(3, dtype=np.uint16)
        counts[start : start + chunk] = x
    return counts / float(block * block)


# --- CIFAR-10 -----------------------------------------------------------------------------------------------


def read_cifar10_npz(
    path: PathLike, *, content_sha256: tuple[str, str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Reads an offline CIFAR-10 shard (data README, section 7): (uint8 RGB [N, 32, 32, 3], int64 labels).

    `content_sha256` = (sha256 of `x.tobytes()`, sha256 of `y.tobytes()`).
    """
    path = pathlib.Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            x, y = npz["x"], npz["y"]
    except KeyError as e:
        raise DataFileError(f"{path}: missing key {e}; expected 'x' and 'y'") from e
    except Exception as e:  # zipfile, lzma and numpy raise several types on a damaged archive
        raise DataFileError(
            f"{path}: cannot read the .npz archive, it is corrupt or truncated ({e!r})"
        ) from e
    if x.dtype != np.uint8 or x.shape[1:] != (32, 32, 3) or y.shape != (x.shape[0],):
        raise DataFileError(
            f"{path}: x {x.dtype} {x.shape} and y {y.shape}; expected uint8 [N, 32, 32, 3] and [N]"
        )
    _check_cifar_labels(path, y)
    if content_sha256 is not None:
        _check_digest(path, x.tobytes(), content_sha256[0], "pixel content")
        _check_digest(path, np.asarray(y, np.uint8).tobytes(), content_sha256[1], "label content")
    return x, y.astype(np.int64)


def read_cifar10_binary_archive(
    path: PathLike, members: dict[str, list[str]], *, sha256: str | None = None
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Reads `cifar-10-binary.tar.gz`: {split: (images uint8 [N, 32, 32, 3] RGB, labels int64 [N])}.

    `members` maps each split to the archive members to concatenate, in order (see
    `sources.CIFAR10_BINARY_MEMBERS`).
    """
    path = pathlib.Path(path)
    check_file_digest(path, sha256)
    out = {}
    try:
        with tarfile.open(path, "r:*") as archive:
            for split, names in members.items():
                parts = []
                for name in names:
                    try:
                        member = archive.extractfile(name)
                    except KeyError as e:
                        raise DataFileError(f"{path}: the archive has no member {name}") from e
                    parts.append(parse_cifar10_binary_batch(member.read(), f"{path}:{name}"))
                out[split] = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DataFileError(f"{path}: cannot read the archive, it is corrupt or truncated ({e!r})") from e
    return out


def parse_cifar10_binary_batch(data: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Parses a binary-version batch (10000 records: label byte, 3072 CHW pixels) to ([N, 32, 32, 3], [N])."""
    if len(data) != _CIFAR10_BATCH_SIZE * _CIFAR10_RECORD_BYTES:
        raise DataFileError(
            f"{name}: {len(data)} bytes, expected {_CIFAR10_BATCH_SIZE} records of {_CIFAR10_RECORD_BYTES} "
            "bytes; the batch is truncated or corrupt"
        )
    records = np.frombuffer(data, np.uint8).reshape(_CIFAR10_BATCH_SIZE, _CIFAR10_RECORD_BYTES)
    labels = records[:, 0]
    _check_cifar_labels(name, labels)
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels.astype(np.int64)


# --- helpers ------------------------------------------------------------------------------------------------


def _load_mat(path: pathlib.Path, keys: list[str]) -> dict[str, np.ndarray]:
    try:
        mat = scipy.io.loadmat(path)
    except (
        Exception
    ) as e:  # scipy raises ValueError, TypeError, OSError, zlib.error, MatReadError... on damaged files
        raise DataFileError(f"{path}: cannot read the MATLAB file, it is corrupt or truncated ({e!r})") from e
    missing = [k for k in keys if k not in mat]
    if missing:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise DataFileError(f"{path}: missing MATLAB variables {missing} (found {found})")
    return {k: mat[k] for k in keys}


def _check_binary(path: pathlib.Path, x: np.ndarray) -> None:
    if not np.isin(x, (0, 1)).all():
        raise DataFileError(f"{path}: values other than 0 and 1 in a binary data set")


def _check_cifar_labels(name, labels: np.ndarray) -> None:
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataFileError(f"{name}: labels outside 0..9")


def _check_digest(path: pathlib.Path, data: bytes, expected: str | None, what: str) -> None:
    if expected is None:
        return
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise DataFileError(
            f"{path}: sha256 of the {what} is {actual}, not the canonical {expected}; "
            "the file is corrupt, truncated or a different version"
        )
