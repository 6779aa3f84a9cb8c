"""The tfds builders and `pvpp.data.load` against independent reads of the real files (../shared/data).

Every data set is prepared once per module into a temporary prepared directory. The expected values (sizes,
checksums, first labels) are copied from the data folder's README and from the published checksum lists, not
from `pvpp.data`.
"""

import dataclasses
import functools
import gzip
import hashlib
import http.server
import io
import logging
import pathlib
import shutil
import sys
import tarfile
import threading

import numpy as np
import pytest
import scipy.io

from pvpp import data
from pvpp.data import raw, sources


@pytest.fixture(scope="module")
def prepared_dir(tmp_path_factory) -> pathlib.Path:
    return tmp_path_factory.mktemp("prepared")


@pytest.fixture(scope="module")
def load(data_dir, prepared_dir):
    def _load(name, split, **kwargs):
        return data.load(name, split, data_dir, prepared_dir=prepared_dir, **kwargs)

    return _load


def _idx(path: pathlib.Path, offset: int) -> np.ndarray:
    return np.frombuffer(gzip.open(path).read(), np.uint8, offset=offset)


def _sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


# --- the five data sets -------------------------------------------------------------------------------------


def test_mnist_matches_the_idx_files(load, data_dir):
    folder = data_dir / "mnist"
    train_images = _idx(folder / "train-images-idx3-ubyte.gz", 16).reshape(60000, 28, 28, 1)
    train_labels = _idx(folder / "train-labels-idx1-ubyte.gz", 8)
    test_images = _idx(folder / "t10k-images-idx3-ubyte.gz", 16).reshape(10000, 28, 28, 1)
    # The canonical checksum of the decompressed training-image file (data README): the pixels are the
    # original ones.
    header = gzip.open(folder / "train-images-idx3-ubyte.gz").read()[:16]
    assert hashlib.sha256(header + train_images.tobytes()).hexdigest() == (
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"
    )

    train, validation, both, test = (
        load("mnist", s) for s in ("train", "validation", "train+validation", "test")
    )
    assert (len(train), len(validation), len(both), len(test)) == (50000, 10000, 60000, 10000)
    assert train.images.dtype == np.uint8 and train.images.shape[1:] == (28, 28, 1)
    np.testing.assert_array_equal(
        train.images, train_images[:50000]
    )  # last 10k of train is the validation split
    np.testing.assert_array_equal(validation.images, train_images[50000:])
    np.testing.assert_array_equal(both.images, train_images)
    np.testing.assert_array_equal(both.labels, train_labels)
    np.testing.assert_array_equal(test.images, test_images)
    np.testing.assert_array_equal(train.labels[:10], [5, 0, 4, 1, 9, 2, 1, 3, 1, 4])  # train[0] is a 5
    assert both.images.mean() / 255 == pytest.approx(0.1306604762738429, abs=1e-12)
    assert train.binarization == "dynamic" and train.note == ""

    other = load("mnist", "validation", validation_size=5000)
    np.testing.assert_array_equal(other.images, train_images[55000:])


def test_binarized_mnist_matches_the_mat_files_and_larochelles_text(load, data_dir):
    folder = data_dir / "binarized_mnist"
    # sha256 of Larochelle's binarized_mnist_{train,valid,test}.amat (the checksums tfds publishes for those
    # downloads).
    larochelle = {
        "train": ("train", "ad693b29f94c14277b095f5238ddefbbdaaae0939789dd2f4f0205278cee3e4d"),
        "validation": ("valid", "1de3d397c40fe8eeb33dafd4099a1f665ec01e96d9be234aaeeac8a34930e2e2"),
        "test": ("test", "e6687bfea3f820c174f33b7865140b2a2dd2930ef786f35d45795fc193b5ab2c"),
    }
    sizes = {"train": 50000, "validation": 10000, "test": 10000}
    for split, (stem, text_sha256) in larochelle.items():
        loaded = load("binarized_mnist", split)
        expected = scipy.io.loadmat(folder / f"binarized_mnist_{stem}.mat")["X"].reshape(
            -1, 28, 28, 1
        )  # row-major
        assert len(loaded) == sizes[split] and loaded.labels is None and loaded.binarization == "static"
        np.testing.assert_array_equal(loaded.images, expected)
        # Rendered as text (784 "0"/"1" separated by spaces, a newline per image) they are Larochelle's files.
        text = np.full((len(loaded), 1568), ord(" "), np.uint8)
        text[:, 0::2] = loaded.images.reshape(-1, 784) + ord("0")
        text[:, -1] = ord("\n")
        assert hashlib.sha256(text.tobytes()).hexdigest() == text_sha256
    assert len(load("binarized_mnist", "train+validation")) == 60000


def test_binarized_mnist_test_set_is_upright_and_sorted_zeros_first(load, data_dir):
    test = load("binarized_mnist", "test").images[..., 0]

    def looks_like_a_zero(x):  # the ink's centre is a hole with ink on its left, right, top and bottom
        r, c = np.argwhere(x).mean(0).round().astype(int)
        return (
            x[r, c] == 0 and x[r, :c].any() and x[r, c + 1 :].any() and x[:r, c].any() and x[r + 1 :, c].any()
        )

    assert all(looks_like_a_zero(test[i]) for i in range(3))
    # Row i is a binarization of the MNIST test image argsort(labels, stable)[i] (data README); upright, it
    # agrees with the thresholded grey image on > 90% of the pixels (the transposed images do for less than a
    # fifth of the rows).
    grey = _idx(data_dir / "mnist" / "t10k-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
    order = np.argsort(_idx(data_dir / "mnist" / "t10k-labels-idx1-ubyte.gz", 8), kind="stable")
    agreement = ((grey[order[:500]] > 127) == test[:500]).mean((1, 2))
    assert (agreement > 0.9).all()


def test_caltech101_silhouettes_upright_with_one_for_the_object(load, data_dir):
    mat = scipy.io.loadmat(data_dir / "caltech101_silhouettes" / "caltech101_silhouettes_28_split1.mat")
    sizes = {"train": 4100, "validation": 2264, "test": 2307}
    for split, key in (("train", "train"), ("validation", "val"), ("test", "test")):
        loaded = load("caltech101_silhouettes", split)
        assert len(loaded) == sizes[split] and loaded.binarization == "static"
        expected = 1 - mat[f"{key}_data"].reshape(
            -1, 28, 28, order="F"
        )  # column-major, 0 = object in the file
        np.testing.assert_array_equal(loaded.images[..., 0], expected)
        np.testing.assert_array_equal(loaded.labels, mat[f"{key}_labels"][:, 0].astype(np.int64) - 1)
    train = load("caltech101_silhouettes", "train")
    assert train.images.mean() == pytest.approx(1 - 0.551, abs=1e-3)  # README: mean 0.551 with 0 = object
    assert str(mat["classnames"][0, train.labels[0]][0]) == "lamp"

    def lamp_upright(
        x,
    ):  # below the widest row (the shade) comes a stem narrower than half the base under it,
        widths = x.sum(1)  # and the base is narrower than the shade
        shade = int(np.argmax(widths))
        last = int(np.nonzero(widths)[0].max())
        stem = shade + int(
            np.argmin(widths[shade:last])
        )  # leaves out the last row, where the base tapers off
        base = widths[stem:].max()
        return widths[stem] < base / 2 and base < widths[shade]

    lamp = train.images[0, ..., 0]
    assert lamp_upright(lamp)
    assert not any(
        lamp_upright(other) for other in (lamp.T, lamp[::-1], lamp.T[::-1])
    )  # the check tells them apart
    assert (
        lamp[:, 0].sum() + lamp[:, -1].sum() + lamp[0].sum() + lamp[-1].sum() == 0
    )  # the border is background (0)


def test_omniglot_from_the_105x105_originals(load, data_dir, caplog):
    with caplog.at_level(logging.WARNING):
        train = load("omniglot", "train")
    assert "DEVIATION" in train.note and "DEVIATION" in caplog.text  # no chardata.mat in the data folder
    test = load("omniglot", "test")
    assert (len(train), len(test)) == (24345, 8115) and train.binarization == "dynamic"

    with np.load(data_dir / "omniglot" / "omniglot_105x105.npz") as npz:
        ink, drawer, alphabet = npz["ink"], npz["drawer"], npz["alphabet"]
    # Independent resize: overlap weights of each 3.75-pixel output cell with the input pixels, in floating
    # point.
    edges = np.arange(28)[:, None] * 3.75
    j = np.arange(105)[None, :]
    weights = np.clip(np.minimum(j + 1, edges + 3.75) - np.maximum(j, edges), 0, None) / 3.75
    for split, rows in (("train", drawer <= 15), ("test", drawer > 15)):
        subset = np.nonzero(rows)[0][::97]  # a spread of characters and drawers
        expected = np.rint(255 * np.einsum("is,nst,jt->nij", weights, ink[subset].astype(float), weights))
        loaded = train if split == "train" else test
        position = np.searchsorted(np.nonzero(rows)[0], subset)
        np.testing.assert_array_equal(loaded.images[position, ..., 0], expected)
        np.testing.assert_array_equal(loaded.labels, alphabet[rows])
    assert train.images.mean() / 255 == pytest.approx(
        ink[drawer <= 15].mean(), abs=2e-4
    )  # area averaging keeps ink
    with pytest.raises(ValueError, match="validation_size"):
        load("omniglot", "validation")


def test_cifar10_matches_the_published_pixel_checksums(load):
    test = load("cifar10", "test")
    assert test.images.shape == (10000, 32, 32, 3) and test.binarization == "none"
    # sha256 of x.tobytes() / y.tobytes() of the original batches (data README, section 7).
    assert _sha256(test.images) == "f9b1e2130bab680db56eb06d886f7f1ad0f1183907ceff4659d1735c890f5b04"
    assert (
        _sha256(test.labels.astype(np.uint8))
        == "cec8a24a1e92aa2ecaa0bbd3dbfa86bf6cd8759fbd209a832824c8cf0afca9d5"
    )
    train = load("cifar10", "train")
    batches = [
        "fc115a3de050d667b88cbd5b0b9612ebf996c54230fe7758f3a14bb5af9a1c27",
        "89e609b642f687bc796fa3bfa4211005582a0e8131d463d996d11ddb297d312e",
        "93a365823e61729490a8801d80864ccd0ab1e8c98f19d71af65644d1c5f1486e",
        "809eb95ecd057a36516318f5023ea619009dd70dd38193db9da43125a928e6fa",
        "d05b7d66d216d6df882cc760cdc0ff2f1f0437abf699ed16005c021ef0add9cb",
    ]
    assert [_sha256(train.images[k * 10000 : (k + 1) * 10000]) for k in range(5)] == batches
    np.testing.assert_array_equal(train.labels[:10], [6, 9, 9, 4, 1, 1, 2, 7, 8, 3])
    np.testing.assert_array_equal(test.labels[:10], [3, 8, 8, 0, 6, 6, 1, 6, 3, 1])
    np.testing.assert_allclose(
        test.images.mean((0, 1, 2)) / 255, [0.49421428, 0.48513139, 0.45040909], atol=1e-8
    )

    held_out = load("cifar10", "validation", validation_size=5000)
    np.testing.assert_array_equal(held_out.images, train.images[45000:])
    with pytest.raises(ValueError, match="no validation split"):
        load("cifar10", "validation")
    assert "tensorflow" not in sys.modules  # nothing on the way imported TensorFlow


# --- other source formats -----------------------------------------------------------------------------------


def test_binarized_mnist_builder_reads_larochelle_text_files(load, data_dir, tmp_path):
    folder = tmp_path / "data" / "binarized_mnist"
    folder.mkdir(parents=True)
    for stem in ("train", "valid", "test"):
        x = np.ascontiguousarray(
            scipy.io.loadmat(data_dir / "binarized_mnist" / f"binarized_mnist_{stem}.mat")["X"]
        )
        lines = [" ".join(map(str, row)) + "\n" for row in x[:5]]  # the text layout, written the plain way
        text = np.full((x.shape[0], 1568), ord(" "), np.uint8)
        text[:, 0::2] = x + ord("0")
        text[:, -1] = ord("\n")
        assert text[:5].tobytes().decode() == "".join(lines)
        (folder / f"binarized_mnist_{stem}.amat").write_bytes(text.tobytes())
    from_text = data.load("binarized_mnist", "test", tmp_path / "data", prepared_dir=tmp_path / "prepared")
    np.testing.assert_array_equal(from_text.images, load("binarized_mnist", "test").images)


def test_omniglot_chardata_layout(tmp_path):
    # chardata.mat is not available here: check the reader against the documented layout ([784, N] columns,
    # each a column-major 28x28 image, floats in [0, 1]) with synthetic images, and that the md5 check rejects
    # a wrong file.
    rng = np.random.default_rng(0)
    images = {"train": rng.random((7, 28, 28)), "test": rng.random((3, 28, 28))}
    images["train"][0, :5, :] = 1.0  # an asymmetric mark: top rows, so that a transposition would show
    columns = {k: v.reshape(len(v), 784, order="F").T for k, v in images.items()}
    path = tmp_path / "chardata.mat"
    scipy.io.savemat(path, {"data": columns["train"], "testdata": columns["test"]})
    splits = raw.read_omniglot_chardata(path)
    for split, expected in images.items():
        np.testing.assert_array_equal(splits[split], np.rint(expected * 255).astype(np.uint8))
    assert splits["train"][0, :5].min() == 255
    with pytest.raises(data.DataFileError, match="md5"):
        raw.read_omniglot_chardata(path, md5="21ecaf34373511aa7691cf2e0802aa3d")


def test_cifar10_binary_archive_reader(load, tmp_path):
    test = load("cifar10", "test")
    records = np.concatenate(
        [test.labels[:, None].astype(np.uint8), test.images.transpose(0, 3, 1, 2).reshape(-1, 3072)], axis=1
    )
    path = tmp_path / "cifar-10-binary.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        member = tarfile.TarInfo("cifar-10-batches-bin/test_batch.bin")
        member.size = records.nbytes
        archive.addfile(member, io.BytesIO(records.tobytes()))
    splits = raw.read_cifar10_binary_archive(path, {"test": ["cifar-10-batches-bin/test_batch.bin"]})
    np.testing.assert_array_equal(splits["test"][0], test.images)
    np.testing.assert_array_equal(splits["test"][1], test.labels)
    with pytest.raises(data.DataFileError, match="no member"):
        raw.read_cifar10_binary_archive(path, {"train": ["cifar-10-batches-bin/data_batch_1.bin"]})
    with pytest.raises(data.DataFileError, match="sha256"):  # not the original archive
        raw.read_cifar10_binary_archive(
            path, {"test": ["cifar-10-batches-bin/test_batch.bin"]}, sha256="0" * 64
        )


def test_builder_downloads_and_checks_the_original_file(data_dir, tmp_path, monkeypatch):
    # No internet here: serve the data folder over HTTP on localhost and point the Caltech address at it.
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(data_dir))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/caltech101_silhouettes/caltech101_silhouettes_28_split1.mat"
        original = sources.CALTECH101_SILHOUETTES_FILE
        monkeypatch.delenv("PVPP_DATA_DIR", raising=False)  # no data folder: the builder downloads
        monkeypatch.setattr(sources, "CALTECH101_SILHOUETTES_FILE", dataclasses.replace(original, url=url))
        loaded = data.load("caltech101_silhouettes", "test", prepared_dir=tmp_path / "a")
        assert len(loaded) == 2307 and any((tmp_path / "a" / "downloads").iterdir())
        wrong = dataclasses.replace(original, url=url, sha256="0" * 64)
        monkeypatch.setattr(sources, "CALTECH101_SILHOUETTES_FILE", wrong)
        with pytest.raises(data.DataFileError, match="sha256"):
            data.load("caltech101_silhouettes", "test", prepared_dir=tmp_path / "b")
    finally:
        server.shutdown()
        server.server_close()


# --- bad input ----------------------------------------------------------------------------------------------


def test_missing_file_names_the_file_and_the_directory(data_dir, tmp_path):
    folder = tmp_path / "data" / "mnist"
    folder.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz"):
        (folder / name).symlink_to(data_dir / "mnist" / name)
    with pytest.raises(FileNotFoundError) as error:
        data.load("mnist", "test", tmp_path / "data", prepared_dir=tmp_path / "prepared")
    assert "t10k-labels-idx1-ubyte.gz" in str(error.value) and str(folder) in str(error.value)

    (tmp_path / "data" / "cifar10").mkdir()
    (tmp_path / "data" / "cifar10" / "cifar10_test.npz").symlink_to(data_dir / "cifar10" / "cifar10_test.npz")
    with pytest.raises(FileNotFoundError, match="cifar10_train_batch3.npz"):
        data.load("cifar10", "test", tmp_path / "data", prepared_dir=tmp_path / "prepared")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        data.load("mnist", "test", tmp_path / "nowhere", prepared_dir=tmp_path / "prepared")


def _truncated(source: pathlib.Path, destination: pathlib.Path, fraction: float = 0.5) -> pathlib.Path:
    destination.parent.mkdir(parents=True, exist_ok=True)
    content = source.read_bytes()
    destination.write_bytes(content[: int(len(content) * fraction)])
    return destination


@pytest.mark.parametrize(
    "relative, reader",
    [
        ("mnist/train-labels-idx1-ubyte.gz", raw.read_idx),
        ("binarized_mnist/binarized_mnist_valid.mat", raw.read_binarized_mnist),
        ("caltech101_silhouettes/caltech101_silhouettes_28_split1.mat", raw.read_caltech101_silhouettes),
        ("omniglot/omniglot_105x105.npz", raw.read_omniglot_105_as_28),
        ("cifar10/cifar10_test.npz", raw.read_cifar10_npz),
    ],
)
def test_truncated_files_raise_a_clear_error(data_dir, tmp_path, relative, reader):
    path = _truncated(data_dir / relative, tmp_path / relative)
    with pytest.raises(data.DataFileError, match=str(path)):
        reader(path)


def test_damaged_content_is_caught(data_dir, tmp_path):
    # An uncompressed IDX file cut at a record boundary, and one with a changed pixel: the layout check and
    # the checksum.
    content = gzip.open(data_dir / "mnist" / "t10k-labels-idx1-ubyte.gz").read()
    short = tmp_path / "t10k-labels-idx1-ubyte"
    short.write_bytes(content[:-100])
    with pytest.raises(data.DataFileError, match="truncated"):
        raw.read_idx(short)
    changed = tmp_path / "changed-idx1-ubyte"
    changed.write_bytes(content[:-1] + bytes([(content[-1] + 1) % 10]))
    np.testing.assert_array_equal(raw.read_idx(changed)[:-1], np.frombuffer(content, np.uint8, offset=8)[:-1])
    with pytest.raises(data.DataFileError, match="canonical"):
        raw.read_idx(
            changed, content_sha256="ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"
        )
    # Larochelle text cut in the middle of a line, and with a stray character.
    x = np.ascontiguousarray(
        scipy.io.loadmat(data_dir / "binarized_mnist" / "binarized_mnist_test.mat")["X"][:20]
    )
    text = np.full((20, 1568), ord(" "), np.uint8)
    text[:, 0::2] = x + ord("0")
    text[:, -1] = ord("\n")
    amat = tmp_path / "binarized_mnist_test.amat"
    amat.write_bytes(text.tobytes()[:-700])
    with pytest.raises(data.DataFileError, match="whole number of lines"):
        raw.read_binarized_mnist(amat)
    text[3, 10] = ord("2")
    amat.write_bytes(text.tobytes())
    with pytest.raises(data.DataFileError, match="line 4"):
        raw.read_binarized_mnist(amat)


def test_truncated_file_fails_preparation_and_leaves_nothing_prepared(data_dir, tmp_path):
    relative = "caltech101_silhouettes/caltech101_silhouettes_28_split1.mat"
    _truncated(data_dir / relative, tmp_path / "data" / relative, fraction=0.8)
    with pytest.raises(data.DataFileError, match="corrupt or truncated"):
        data.load("caltech101_silhouettes", "test", tmp_path / "data", prepared_dir=tmp_path / "prepared")
    shutil.copyfile(data_dir / relative, tmp_path / "data" / relative)  # repaired: now it prepares
    loaded = data.load(
        "caltech101_silhouettes", "test", tmp_path / "data", prepared_dir=tmp_path / "prepared"
    )
    assert len(loaded) == 2307


def test_unknown_names_and_bad_arguments(data_dir, tmp_path):
    with pytest.raises(ValueError) as error:
        data.load("fashion_mnist", "train", data_dir, prepared_dir=tmp_path)
    for name in ("mnist", "binarized_mnist", "caltech101_silhouettes", "omniglot", "cifar10"):
        assert name in str(error.value)
    with pytest.raises(ValueError, match="split must be one of"):
        data.load("mnist", "valid", data_dir, prepared_dir=tmp_path)
    with pytest.raises(ValueError, match="config"):
        data.load("mnist", "train", data_dir, prepared_dir=tmp_path, config="chardata")
    with pytest.raises(ValueError, match="inside data_dir"):
        data.prepare("mnist", tmp_path, prepared_dir=tmp_path / "prepared")
