"""The integrity record of checkpoints and exports: a digest of every array as written, checked on every read.

A damaged file can read back without an error (flipped bytes of the same size decode to other values): the
digests catch that. `record(tree)` is stored beside the arrays when they are written (`pvpp.runs.checkpoint`), and
`verify(tree, record, where)` compares what was read, and also refuses NaN / inf in any floating-point array.
The digest of an array is blake2b (16 bytes) of its dtype, shape and bytes; typed PRNG keys by their key data.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from absl import logging

PyTree = Any
FORMAT = 1


class CorruptCheckpointError(RuntimeError):
    """A checkpoint or export read back other values than were written, or holds NaN / inf."""


def record(tree: PyTree) -> dict[str, Any]:
    """The integrity record written with a checkpoint or export: {"format", "hash", "leaves": fingerprints}."""
    return {"format": FORMAT, "hash": "blake2b-128 of dtype, shape and bytes", "leaves": fingerprints(tree)}


def verify(tree: PyTree, written: Mapping[str, Any] | None, where: str) -> None:
    """CorruptCheckpointError unless `tree` matches the integrity record `written` with it (None: an old file
    without one, accepted with a warning) and every floating-point leaf is finite."""
    leaves = _host_leaves(tree)
    if written is None:
        logging.warning(
            "%s has no integrity record (written before pvpp 0.2): checked for finiteness only.", where
        )
    else:
        expected = written.get("leaves", {})
        found = {path: _digest(value) for path, value in leaves.items()}
        changed = sorted(path for path in set(expected) | set(found) if expected.get(path) != found.get(path))
        if changed:
            raise CorruptCheckpointError(
                f"{where}: {len(changed)} array(s) read back differ from what was written (e.g. {changed[0]}); "
                "the files were changed or damaged after they were written"
            )
    for path, value in leaves.items():
        if np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value)):
            raise CorruptCheckpointError(f"{where}: array {path} holds NaN or inf values")


def fingerprints(tree: PyTree) -> dict[str, str]:
    """{tree path: blake2b digest (hex) of the leaf's dtype, shape and bytes} of a pytree of arrays and scalars
    (typed PRNG keys by their key data); one host copy of the whole tree."""
    return {path: _digest(value) for path, value in _host_leaves(tree).items()}


def tree_digest(tree: PyTree) -> str:
    """sha256 (hex) of the tree's `fingerprints`, sorted by path: one name for all of its arrays' contents."""
    return fingerprints_digest(fingerprints(tree))


def fingerprints_digest(found: Mapping[str, str]) -> str:
    """`tree_digest` from fingerprints already computed."""
    return hashlib.sha256(json.dumps(dict(found), sort_keys=True).encode()).hexdigest()


def path_key(path) -> tuple[str, ...]:
    """A tree path as strings, so that dict keys, indices and NamedTuple fields compare with orbax's tree."""
    parts = []
    for entry in path:
        for attr in ("key", "idx", "name"):
            if hasattr(entry, attr):
                parts.append(str(getattr(entry, attr)))
                break
        else:
            parts.append(str(entry))
    return tuple(parts)


def _host_leaves(tree: PyTree) -> dict[str, np.ndarray]:
    """{path: numpy copy} of every leaf (one device-to-host transfer for all; typed keys as key data)."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]

    def raw(leaf):
        if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            return jax.random.key_data(leaf)
        return leaf

    values = jax.device_get([raw(leaf) for _, leaf in flat])
    return {"/".join(path_key(path)): np.asarray(value) for (path, _), value in zip(flat, values)}


def _digest(value: np.ndarray) -> str:
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{value.dtype.str}{value.shape}".encode())
    digest.update(np.ascontiguousarray(value).tobytes())
    return digest.hexdigest()
