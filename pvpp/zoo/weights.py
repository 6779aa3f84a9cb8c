"""The weight file of an entry: one `.npz` of the 'params' collection, read without pickle and rebuilt against the
template of the card's ModelConfig, so it does not depend on orbax's layout or on flax's tree types.

    weights.npz    one array per parameter, keyed by its '/'-joined tree path ('decoder/up_0/conv/kernel'),
                   float32 as trained; written byte-for-byte the same for the same parameters (sorted members,
                   fixed zip timestamps), so its sha256 is a function of the weights alone

Reading checks the names, shapes and dtypes against `params_template(config)`: a renamed, missing, extra or
mis-shaped array is an error naming the entry and the array's path.
"""

from __future__ import annotations

import functools
import os
import zipfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pvpp.model import ModelConfig, PixelVAEPP
from pvpp.runs.integrity import path_key
from pvpp.zoo.errors import CorruptEntryError

FORMAT = (
    "npz (numpy .npy members, read with allow_pickle=False), one array per parameter keyed by its '/'-joined path"
)
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip member can carry: the file's bytes never vary


def write_weights(path, params: Any) -> None:
    """Writes the 'params' collection `params` (a pytree of arrays) to `path` as described in the module docstring."""
    write_arrays(path, flatten(params))


def write_arrays(path, arrays: dict[str, np.ndarray]) -> None:
    """Writes named numpy arrays as an npz (deflated, sorted members, fixed timestamps: the same arrays give the
    same bytes), readable by `np.load(path, allow_pickle=False)`."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for key in sorted(arrays):
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            with archive.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asarray(arrays[key]), allow_pickle=False)


def read_weights(path, config: ModelConfig, where: str) -> Any:
    """The parameters in `path` as a pytree of numpy arrays shaped like `params_template(config)`.

    where: names the entry in errors. Raises CorruptEntryError for a file that is not a readable npz, or whose
    arrays do not match the template (names, shapes, dtypes).
    """
    try:
        with np.load(path, allow_pickle=False) as archive:
            stored = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as err:
        raise CorruptEntryError(f"{where}: {path} cannot be read as an npz of arrays ({err})") from None
    template = params_template(config)
    flat, treedef = jax.tree_util.tree_flatten_with_path(template)
    expected = {"/".join(path_key(p)): leaf for p, leaf in flat}
    missing = sorted(set(expected) - set(stored))
    extra = sorted(set(stored) - set(expected))
    if missing:
        raise CorruptEntryError(
            f"{where}: array {missing[0]} of the model is missing from {os.path.basename(path)}"
            + (f" ({len(missing)} missing)" if len(missing) > 1 else "")
            + (f"; the file has {extra[0]} instead" if extra else "")
        )
    if extra:
        raise CorruptEntryError(f"{where}: array {extra[0]} of the weight file is not a parameter of the model")
    for key, leaf in expected.items():
        value = stored[key]
        if value.shape != tuple(leaf.shape) or value.dtype != np.dtype(leaf.dtype):
            raise CorruptEntryError(
                f"{where}: array {key} is stored as {value.dtype}{list(value.shape)} but the model has "
                f"{np.dtype(leaf.dtype)}{list(leaf.shape)}"
            )
    return jax.tree_util.tree_unflatten(treedef, [stored["/".join(path_key(p))] for p, _ in flat])


def flatten(params: Any) -> dict[str, np.ndarray]:
    """{'/'-joined tree path: numpy array} of a pytree of arrays (one host copy)."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    values = jax.device_get([leaf for _, leaf in flat])
    return {"/".join(path_key(p)): np.asarray(v) for (p, _), v in zip(flat, values)}


@functools.lru_cache(maxsize=32)
def params_template(config: ModelConfig) -> Any:
    """The 'params' collection of `PixelVAEPP(config)` as jax.ShapeDtypeStructs (traced, nothing computed)."""
    model = PixelVAEPP(config.replace(dropout_rate=0.0))
    x = jnp.zeros((1,) + config.image_shape, jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x, jax.random.key(1))
    return variables["params"]


def count(params: Any) -> int:
    """Number of scalar parameters."""
    return int(sum(np.size(leaf) for leaf in jax.tree.leaves(params)))
