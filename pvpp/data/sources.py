"""Where the original files come from, and the checksums that identify their canonical content.

Two kinds of checksum live here:

* `RemoteFile.sha256` / `RemoteFile.md5`: the bytes of a file as downloaded from its original address (checked
  after a download, and for files whose bytes are canonical, such as the Caltech `.mat` file, also when they
  come from the manual directory).
* `*_CONTENT_SHA256`: the decoded content (decompressed IDX bytes, the Larochelle text layout, the pixel
  array's bytes). These do not depend on how a copy was compressed or converted, so a re-compressed MNIST
  `.gz` or the MATLAB copy of the binarized MNIST text files are accepted exactly when they hold the canonical
  data.

Values are taken from /work/shared/data/README.md and from the checksum lists that tensorflow-datasets ships
for its own `mnist`, `binarized_mnist`, `cifar10` and `omniglot` builders. The MATLAB copies of binarized
MNIST were checked here to render to byte-identical copies of Larochelle's text files (same sha256 as tfds
lists for the `.amat` downloads).
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class RemoteFile:
    """One original file: its name in a manual directory, its download address and its bytes' checksum."""

    filename: str
    url: str
    num_bytes: int | None = None
    sha256: str | None = None
    md5: str | None = None


# --- MNIST (LeCun et al.): big-endian IDX files, gzip-compressed. -------------------------------------------
_MNIST_URL = "https://storage.googleapis.com/cvdf-datasets/mnist/"
MNIST_FILES = {
    "train_images": RemoteFile(
        "train-images-idx3-ubyte.gz",
        _MNIST_URL + "train-images-idx3-ubyte.gz",
        9912422,
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    ),
    "train_labels": RemoteFile(
        "train-labels-idx1-ubyte.gz",
        _MNIST_URL + "train-labels-idx1-ubyte.gz",
        28881,
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    ),
    "test_images": RemoteFile(
        "t10k-images-idx3-ubyte.gz",
        _MNIST_URL + "t10k-images-idx3-ubyte.gz",
        1648877,
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    ),
    "test_labels": RemoteFile(
        "t10k-labels-idx1-ubyte.gz",
        _MNIST_URL + "t10k-labels-idx1-ubyte.gz",
        4542,
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    ),
}
# sha256 of the decompressed IDX files (the canonical MNIST checksums).
MNIST_CONTENT_SHA256 = {
    "train_images": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train_labels": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "test_images": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "test_labels": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}

# --- Statically binarized MNIST (Larochelle & Murray 2011): text, one image a line, 784 space-separated 0/1 v
_BINARIZED_URL = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/"
BINARIZED_MNIST_FILES = {
    split: RemoteFile(
        f"binarized_mnist_{stem}.amat", f"{_BINARIZED_URL}binarized_mnist_{stem}.amat", size, sha
    )
    for split, stem, size, sha in [
        ("train", "train", 78400000, "ad693b29f94c14277b095f5238ddefbbdaaae0939789dd2f4f0205278cee3e4d"),
        ("validation", "valid", 15680000, "1de3d397c40fe8eeb33dafd4099a1f665ec01e96d9be234aaeeac8a34930e2e2"),
        ("test", "test", 15680000, "e6687bfea3f820c174f33b7865140b2a2dd2930ef786f35d45795fc193b5ab2c"),
    ]
}
# The text files are their own canonical rendering: the content checksum of a split (whatever the file format
# it was read from) is the sha256 of the text layout, i.e. the sha256 of the original `.amat` file.
BINARIZED_MNIST_CONTENT_SHA256 = {split: f.sha256 for split, f in BINARIZED_MNIST_FILES.items()}
BINARIZED_MNIST_NUM_EXAMPLES = {"train": 50000, "validation": 10000, "test": 10000}

# --- Caltech-101 Silhouettes 28x28, split 1 (Marlin et al. 2010): one MATLAB v5 file. -----------------------
CALTECH101_SILHOUETTES_FILE = RemoteFile(
    "caltech101_silhouettes_28_split1.mat",
    "https://people.cs.umass.edu/~marlin/data/caltech101_silhouettes_28_split1.mat",
    872124,
    "eb6735e8d84b1850fabc5590124aab1755e90c9fd28123585324398405e1e42a",
)

# --- Omniglot. ----------------------------------------------------------------------------------------------
# The 28x28 grey-level version of the IWAE paper (Burda et al. 2016), used by the VAE literature.
OMNIGLOT_CHARDATA_FILE = RemoteFile(
    "chardata.mat",
    "https://raw.githubusercontent.com/yburda/iwae/master/datasets/OMNIGLOT/chardata.mat",
    md5="21ecaf34373511aa7691cf2e0802aa3d",
)
# The 105x105 originals of Lake et al., assembled into one array file (see the data README, section 6). There
# is no download address for this assembled file; with internet the builder downloads `chardata.mat` instead.
OMNIGLOT_105_FILE = RemoteFile(
    "omniglot_105x105.npz",
    url="",
    num_bytes=5758045,
    sha256="7a06dab46ca5f04871d13f6b364104d98291b2a164c6804a34ec93e8c2313ccf",
)

# --- CIFAR-10 (Krizhevsky 2009). ----------------------------------------------------------------------------
CIFAR10_BINARY_ARCHIVE = RemoteFile(
    "cifar-10-binary.tar.gz",
    "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
    170052171,
    "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
)
# Members of the archive, in the order that makes the usual 50,000-image training set.
CIFAR10_BINARY_MEMBERS = {
    "train": [f"cifar-10-batches-bin/data_batch_{k}.bin" for k in range(1, 6)],
    "test": ["cifar-10-batches-bin/test_batch.bin"],
}
# The offline shards (data README, section 7): same pixels and order as the original batches.
CIFAR10_NPZ_SHARDS = {
    "train": [f"cifar10_train_batch{k}.npz" for k in range(1, 6)],
    "test": ["cifar10_test.npz"],
}
# sha256 of `x.tobytes()` (uint8 [10000, 32, 32, 3]) and `y.tobytes()` (uint8 [10000]) of each shard.
CIFAR10_NPZ_CONTENT_SHA256 = {
    "cifar10_test.npz": (
        "f9b1e2130bab680db56eb06d886f7f1ad0f1183907ceff4659d1735c890f5b04",
        "cec8a24a1e92aa2ecaa0bbd3dbfa86bf6cd8759fbd209a832824c8cf0afca9d5",
    ),
    "cifar10_train_batch1.npz": (
        "fc115a3de050d667b88cbd5b0b9612ebf996c54230fe7758f3a14bb5af9a1c27",
        "d829dbdf32167c9d7b3687cee66d92d80d46c441308b5aca0d11e8b69e27dac9",
    ),
    "cifar10_train_batch2.npz": (
        "89e609b642f687bc796fa3bfa4211005582a0e8131d463d996d11ddb297d312e",
        "5d18f7371ed35ea9ade77952fe958b0660a45cd6c8b8a8970030f21612cfd7e3",
    ),
    "cifar10_train_batch3.npz": (
        "93a365823e61729490a8801d80864ccd0ab1e8c98f19d71af65644d1c5f1486e",
        "32cf77b0ee2e790b1c4384d2d82e42dc1571b87e67f6da8f444b2725b2973f65",
    ),
    "cifar10_train_batch4.npz": (
        "809eb95ecd057a36516318f5023ea619009dd70dd38193db9da43125a928e6fa",
        "d2815e3f8f656272864920fc0edde56b04ec9cf81bf397c0dd3069f4aea51aeb",
    ),
    "cifar10_train_batch5.npz": (
        "d05b7d66d216d6df882cc760cdc0ff2f1f0437abf699ed16005c021ef0add9cb",
        "2ddf3ab27d5d04409c94ce7b56849c243129c10de1058ae0bfe14c77e934800c",
    ),
}
CIFAR10_LABEL_NAMES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
