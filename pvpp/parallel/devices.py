"""Arrays across the devices of a run: which devices (`run_devices`), the pmap layout, replication, reading
replicated scalars, and a thread that draws batches and copies them to the devices ahead of the step.

With several processes the pmapped step runs over the devices of all processes (`pvpp.parallel.distributed`),
while every array here is local: each process replicates the state on, and copies its part of each batch to,
its own devices, and pmap joins them into one step."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from pvpp.parallel import distributed
from pvpp.validation import check_divisible

#: The name of the device axis of every pmapped function (training, evaluation, sampling).
AXIS = "batch"
_PREFETCH = 2  # batches drawn and copied to the devices ahead of the step


def run_devices(num_devices: int | None) -> tuple[tuple[jax.Device, ...], tuple[jax.Device, ...]]:
    """(the devices of the step, this process's share of them) for `num_devices` devices over all processes
    (None: every local device of every process). ValueError when the processes cannot share them equally.

    One process: the first `num_devices` local devices, twice. Several: the first num_devices / P local devices
    of each of the P processes, process by process (`distributed.global_devices`), and this process's ones.
    """
    processes, local = jax.process_count(), jax.local_devices()
    num_devices = num_devices or len(local) * processes
    check_divisible(num_devices, "num_devices", processes, "processes")
    per_process = num_devices // processes
    if per_process > len(local):
        problem = f"exceeds the {len(local)} local devices" if processes == 1 else (
            f"needs {per_process} devices on each of the {processes} processes; process {jax.process_index()} "
            f"has {len(local)}"
        )
        raise ValueError(
            f"num_devices {num_devices} {problem} (on a CPU, XLA_FLAGS=--xla_force_host_platform_device_count="
            f"{per_process} gives that many)"
        )
    if processes == 1:
        return tuple(local[:num_devices]), tuple(local[:num_devices])
    return distributed.global_devices(per_process), tuple(local[:per_process])


def device_sharding(devices: Sequence[jax.Device]) -> NamedSharding:
    """Arrays with a leading device axis, split over `devices` (the layout pmap takes and returns)."""
    return NamedSharding(Mesh(np.array(devices), (AXIS,)), PartitionSpec(AXIS))


def replicate(tree, sharding: NamedSharding):
    """One copy per device: every leaf gets a leading device axis, split over the mesh of `sharding`."""
    num_devices = sharding.mesh.size

    def copy_to_devices(leaf):
        leaf = jnp.asarray(leaf)
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            key_data = jax.random.key_data(leaf)
            stacked = jnp.broadcast_to(key_data[None], (num_devices,) + key_data.shape)
            return jax.random.wrap_key_data(jax.device_put(stacked, sharding), impl=jax.random.key_impl(leaf))
        return jax.device_put(jnp.broadcast_to(leaf[None], (num_devices,) + leaf.shape), sharding)

    return jax.tree.map(copy_to_devices, tree)


def unreplicate(tree):
    """The first device's copy of a replicated tree (a new array on that device)."""
    return jax.tree.map(lambda leaf: leaf.addressable_shards[0].data[0], tree)


def first_copy_scalars(values: dict[str, jax.Array]) -> dict[str, float]:
    """Host floats of replicated scalars [D] (the copy on the first device; one transfer for all)."""
    fetched = jax.device_get({name: value.addressable_shards[0].data for name, value in values.items()})
    return {name: float(np.asarray(value).reshape(-1)[0]) for name, value in fetched.items()}


class Prefetcher:
    """Draws batches and copies them to the devices in a background thread, `_PREFETCH` batches ahead.

    Yields (images [D, b, H, W, C] sharded over the devices, the iterator position after this batch).
    """

    def __init__(self, iterator: Iterator, sharding: NamedSharding):
        self._iterator = iterator
        self._sharding = sharding
        self._queue: queue.Queue = queue.Queue(maxsize=_PREFETCH)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pvpp-prefetch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                batch = next(self._iterator)
                item = (jax.device_put(batch["image"], self._sharding), self._iterator.get_state())
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as err:  # noqa: BLE001 -- handed to the consumer, raised there
            self._queue.put(err)

    def __next__(self):
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        while True:  # unblock a producer waiting on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout=10)
