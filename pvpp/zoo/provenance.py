"""Where an entry came from: the code's version and commit, the library versions, the machine, the data files'
digests and the training run's wall time. Used when a run is packaged (`pvpp.zoo.package`)."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import pathlib
import platform
import subprocess
from typing import Any

import jax

from pvpp import __version__
from pvpp.data.raw import file_digest
from pvpp.runs import metrics
from pvpp.zoo.errors import ZooError

#: Distributions whose versions a card records.
LIBRARIES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "tensorflow-datasets")
_REPOSITORY = pathlib.Path(__file__).resolve().parents[2]

# The original files each data set is read from (`pvpp.data.builders`): one group per file, each group the names
# the builder accepts for it, in the order it looks for them; the folders searched are <data_dir>/<data set> then
# <data_dir> (the builders' SUBFOLDER is the data set's name).
_MNIST = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_CIFAR_SHARDS = [f"cifar10_train_batch{k}.npz" for k in range(1, 6)] + ["cifar10_test.npz"]
SOURCE_FILES: dict[str, list[tuple[str, ...]]] = {
    "mnist": [(f"{stem}.gz", stem) for stem in _MNIST],
    "binarized_mnist": [
        (f"binarized_mnist_{stem}.amat", f"binarized_mnist_{stem}.mat") for stem in ("train", "valid", "test")
    ],
    "caltech101_silhouettes": [("caltech101_silhouettes_28_split1.mat",)],
    "omniglot": [("chardata.mat", "omniglot_105x105.npz")],
    "cifar10": [(name,) for name in _CIFAR_SHARDS],
}
_CIFAR_ARCHIVE = "cifar-10-binary.tar.gz"
_OMNIGLOT_VARIANT_FILE = {"chardata": "chardata.mat", "resized_105": "omniglot_105x105.npz"}


def code_version() -> dict[str, Any]:
    """{'pvpp_version', 'git_commit', 'git_dirty'}: the commit of the checkout pvpp runs from (None when it is
    not a git checkout, e.g. an installed wheel) and whether tracked files differ from it."""
    commit = _git("rev-parse", "HEAD")
    dirty = None
    if commit is not None:
        status = _git("status", "--porcelain", "--untracked-files=no")
        dirty = None if status is None else bool(status.strip())
    return {"pvpp_version": __version__, "git_commit": commit, "git_dirty": dirty}


def library_versions() -> dict[str, str]:
    """{distribution: version} of `LIBRARIES` and Python, as installed now."""
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def machine() -> dict[str, Any]:
    """The machine this process runs on: platform, processor, CPU count, jax backend and devices."""
    devices = jax.local_devices()
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "jax_backend": jax.default_backend(),
        "devices": sorted({d.device_kind for d in devices}),
        "num_devices": len(devices),
    }


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


def file_record(path) -> dict[str, Any]:
    """{'name', 'sha256', 'size_bytes'} of one file."""
    path = pathlib.Path(path)
    return {"name": path.name, "sha256": file_digest(path), "size_bytes": path.stat().st_size}


def source_files(dataset: str, data_dir, variant: str | None = None) -> list[dict[str, Any]]:
    """The records (`file_record`) of the original files of `dataset` under `data_dir`, one per file the
    builder reads. ZooError naming the data set and the folder when a file is not there."""
    root = pathlib.Path(data_dir)
    groups = list(SOURCE_FILES[dataset])
    if dataset == "omniglot" and variant in _OMNIGLOT_VARIANT_FILE:
        groups = [(_OMNIGLOT_VARIANT_FILE[variant],)]
    if dataset == "cifar10" and not _find(root, dataset, groups[0]):
        groups = [(_CIFAR_ARCHIVE,)]
    records = []
    for names in groups:
        found = _find(root, dataset, names)
        if found is None:
            raise ZooError(
                f"data set {dataset}: none of {list(names)} is in {root / dataset} or {root}; the card records "
                "the digests of the original files (pass data_dir)"
            )
        records.append(file_record(found))
    return records


def wall_time(workdir) -> tuple[float | None, str]:
    """(seconds between the first and the last record of <workdir>/metrics.jsonl, how it was measured), or
    (None, why) when there are fewer than two records."""
    path = pathlib.Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return None, "no metrics.jsonl in the workdir"
    stamped = [r for r in metrics.read_metrics(path) if isinstance(r.get("wall_time"), (int, float))]
    if len(stamped) < 2:
        return None, "metrics.jsonl has fewer than two timestamped records"
    first, last = stamped[0], stamped[-1]
    seconds = float(last["wall_time"] - first["wall_time"])
    basis = (
        f"metrics.jsonl: wall_time of the last record (step {last.get('step')}) minus that of the first "
        f"(step {first.get('step')}); the time before the first record is not counted, a resumed run's pause is"
    )
    return seconds, basis


def _find(root: pathlib.Path, dataset: str, names: tuple[str, ...]) -> pathlib.Path | None:
    for folder in (root / dataset, root):
        for name in names:
            if (folder / name).is_file():
                return folder / name
    return None


def _git(*args: str) -> str | None:
    if not (_REPOSITORY / ".git").exists():
        return None
    try:
        done = subprocess.run(
            ["git", "-C", str(_REPOSITORY), *args], capture_output=True, text=True, timeout=30, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()
