"""Several processes (JAX's multi-controller runtime, `jax.distributed`): start-up and what the rest of pvpp
asks about the processes of a run.

    config = DistributedConfig(coordinator_address="10.0.0.1:1234", num_processes=2, process_id=0)
    initialize(config)             # before anything touches a device; DistributedConfig(auto=True): SLURM, ...
    is_primary()                   # process 0: the one that writes config.json, metrics, exports, results
    global_devices(k)              # the first k local devices of every process, process by process (pmap's order)

Every process runs the same program on its own local devices; collectives (`lax.pmean` / `psum` inside a pmap
over `global_devices`) span the devices of all processes. With one process (no `initialize`) every function
here answers for that one process and costs nothing.

Checkpoints (`pvpp.runs.checkpoint`): orbax refuses to save arrays that live on one process only, so a state that
every process holds identically (one copy on each process's first device) is saved as one array replicated
over a mesh of one device per process (`to_replicated` / `from_replicated`); orbax writes the copy of process
0 once, and every process reads it back.

Start-up connects the processes' collectives at once (`warm_up_collectives`; training does it again for its
step's devices), so that no first collective after a long compilation waits on gloo's 30 s rendezvous.

Failure. `pvpp.parallel.liveness` watches the processes through the coordination service's key-value store: when one
dies, freezes or stops on an error, the others stop within `heartbeat_timeout` (at once for an error) with a
message naming it. JAX's coordination service is the backstop, with twice that timeout and at least 10 minutes
(its wall-clock check would otherwise end a healthy run when the machine is paused, `pvpp.parallel.liveness`). A
process that stops on an error of its own says so and exits without the shutdown barrier (`pvpp.experiments.errors`).
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from pvpp.parallel import liveness
from pvpp.validation import check_int


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """How this process joins a multi-process run (the `--coordinator_address`, ... flags).

    coordinator_address: "HOST:PORT" of process 0's coordination service. num_processes, process_id: the
    number of processes and this one's index in 0..N-1. auto: let jax detect what is unset from the cluster
    environment (SLURM, Open MPI, TPU). heartbeat_timeout: seconds without a heartbeat after which a process
    counts as dead and the others are stopped (`pvpp.parallel.liveness`; JAX's own heartbeat check waits
    twice as long, at least `liveness.BACKSTOP_FLOOR` s).
    initialization_timeout: seconds to wait for every process to connect. shutdown_timeout: seconds JAX's exit
    barrier waits for every process. Not `enabled` (nothing set): a single-process run, `initialize` does nothing.
    """

    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    auto: bool = False
    heartbeat_timeout: int = 100
    initialization_timeout: int = 300
    shutdown_timeout: int = 300

    def __post_init__(self):
        check_int(self.heartbeat_timeout, "heartbeat_timeout", 1)
        check_int(self.initialization_timeout, "initialization_timeout", 1)
        check_int(self.shutdown_timeout, "shutdown_timeout", 1)
        explicit = (self.coordinator_address, self.num_processes, self.process_id)
        if not self.auto and any(v is not None for v in explicit) and None in explicit:
            raise ValueError(
                "coordinator_address, num_processes and process_id go together (or set auto to detect the "
                f"missing ones), got {explicit}"
            )
        if self.num_processes is not None:
            check_int(self.num_processes, "num_processes", 1)
        if self.process_id is not None:
            check_int(self.process_id, "process_id", 0)
            if self.num_processes is not None and self.process_id >= self.num_processes:
                raise ValueError(
                    f"process_id must be below num_processes {self.num_processes}, got {self.process_id}"
                )
        if self.coordinator_address is not None and not _is_host_port(self.coordinator_address):
            raise ValueError(f"coordinator_address must be HOST:PORT, got {self.coordinator_address!r}")

    @property
    def enabled(self) -> bool:
        return self.auto or self.coordinator_address is not None


def initialize(config: DistributedConfig) -> None:
    """Joins the run described by `config` (nothing when it is not enabled) and logs this process's place.

    Must run before anything touches a device. Raises RuntimeError when CPU devices would have to talk across
    processes without a CPU collectives implementation (set JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo).
    """
    if not config.enabled:
        return
    jax.distributed.initialize(
        config.coordinator_address,
        config.num_processes,
        config.process_id,
        initialization_timeout=config.initialization_timeout,
        heartbeat_timeout_seconds=liveness.backstop_timeout(config.heartbeat_timeout),
        shutdown_timeout_seconds=config.shutdown_timeout,
    )
    logging.info(
        "Process %d of %d: %d local device(s) of %d (%s).",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
        jax.default_backend(),
    )
    collectives = jax.config.jax_cpu_collectives_implementation
    if jax.process_count() > 1 and jax.default_backend() == "cpu" and collectives in (None, "", "none"):
        raise RuntimeError(
            "CPU devices of several processes need a CPU collectives implementation: set "
            "JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo (or jax.config.update('jax_cpu_collectives_implementation', "
            "'gloo') before the backend starts)"
        )
    liveness.start(config.heartbeat_timeout, config.shutdown_timeout)
    warm_up_collectives(tuple(jax.devices()))  # the processes are in step here: they just exchanged topologies


def warm_up_collectives(devices: tuple[jax.Device, ...]) -> None:
    """Opens the connections of the collectives over `devices` (global devices, in the order of a pmap over
    them) with one tiny collective, now. Every process must call it at the same point. Nothing with one process.

    With gloo (CPU) the first collective over a set of devices first connects the processes, and that rendezvous
    waits only 30 s for the others (a later collective waits far longer): a process that reaches its first step
    after a compilation 30 s shorter than another's (a cold compilation cache, busy cores) would fail with
    "Gloo context initialization failed: DEADLINE_EXCEEDED". Called where the processes are in step (after
    start-up, after a check that every process holds the same data), the rendezvous is immediate.
    """
    if not is_multiprocess():
        return
    local = [d for d in devices if d.process_index == jax.process_index()]
    ones = np.ones((len(local),), np.float32)
    total = jax.pmap(lambda x: jax.lax.psum(x, "devices"), axis_name="devices", devices=devices)(ones)
    jax.block_until_ready(total)


def is_primary() -> bool:
    """Whether this is process 0, the one that writes the files of a run."""
    return jax.process_index() == 0


def is_multiprocess() -> bool:
    """Whether `jax.distributed` joined this process to others (False before the backend starts and with one
    process; does not start the backend)."""
    return jax.distributed.is_initialized() and jax.process_count() > 1


def global_devices(per_process: int) -> tuple[jax.Device, ...]:
    """The first `per_process` local devices of every process, process 0's first (pmap's device order: global
    device i * per_process + j is device j of process i). ValueError if a process has fewer."""
    devices = []
    for process in range(jax.process_count()):
        local = jax.local_devices(process_index=process)
        if len(local) < per_process:
            raise ValueError(f"process {process} has {len(local)} devices, fewer than {per_process}")
        devices.extend(local[:per_process])
    return tuple(devices)


def to_replicated(tree: Any) -> Any:
    """Single-device jax arrays (the same values on every process, one copy each on a local device) -> arrays
    replicated over a mesh of those devices, one per process, which orbax can save from several processes.
    Other leaves (numpy, scalars) are kept. Identity with one process."""
    if not is_multiprocess():
        return tree
    sharding = replicated_sharding()

    def convert(leaf):
        if not isinstance(leaf, jax.Array):
            return leaf
        local = jax.device_put(leaf, sharding.mesh.local_devices[0])
        return jax.make_array_from_single_device_arrays(leaf.shape, sharding, [local])

    return jax.tree.map(convert, tree)


def from_replicated(tree: Any) -> Any:
    """The inverse of `to_replicated`: this process's copy of every replicated array (a single-device array)."""
    if not is_multiprocess():
        return tree
    return jax.tree.map(
        lambda leaf: leaf.addressable_shards[0].data if isinstance(leaf, jax.Array) else leaf, tree
    )


def replicated_targets(tree: Any) -> Any:
    """Restore targets (`jax.ShapeDtypeStruct`s or arrays) for a `to_replicated` checkpoint: the same shapes and
    dtypes, replicated over the processes; `from_replicated` of what orbax restores is then this process's
    copy. Identity with one process."""
    if not is_multiprocess():
        return tree
    sharding = replicated_sharding()

    def target(leaf):
        if isinstance(leaf, (jax.Array, jax.ShapeDtypeStruct)):
            return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding)
        return leaf

    return jax.tree.map(target, tree)


def replicated_sharding() -> NamedSharding:
    """Replicated over the first local device of every process (what `to_replicated` makes)."""
    return NamedSharding(Mesh(np.array(global_devices(1)), ("process",)), PartitionSpec())


def check_same_on_all_processes(tree: Any, what: str) -> None:
    """RuntimeError naming `what` and the processes unless every process holds the same values in `tree`
    (a pytree of arrays; compared by digest, one small collective). Nothing with one process."""
    if not is_multiprocess():
        return
    digest = hashlib.blake2b(digest_size=8)
    for leaf in jax.tree.leaves(jax.device_get(_key_data(tree))):
        array = np.ascontiguousarray(np.asarray(leaf))
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    mine = np.frombuffer(digest.digest(), np.uint32)
    everyone = np.asarray(multihost_utils.process_allgather(mine))
    differ = [p for p in range(everyone.shape[0]) if not np.array_equal(everyone[p], everyone[0])]
    if differ:
        raise RuntimeError(
            f"{what} differs between process 0 and process(es) {differ}: every process must read the same "
            "data and settings"
        )


def process_part(num: int, batch_size: int) -> np.ndarray:
    """This process's share of `num` items dealt in whole batches: indices [part] with part = the same number of
    batches for every process, contiguous, in order; the last ones repeat item num - 1 (padding, dropped by
    `gather_parts`). With one process: arange(num). The batches are those a single process would run."""
    if not is_multiprocess():
        return np.arange(num)
    batches = -(-num // (batch_size * jax.process_count()))
    part = batches * batch_size
    return np.arange(jax.process_index() * part, (jax.process_index() + 1) * part).clip(max=num - 1)


def gather_parts(arrays: dict[str, np.ndarray], num: int) -> dict[str, np.ndarray]:
    """Every process's `process_part` results ({name: [part, ...]}) in item order, the padding dropped: [num,
    ...] on every process (one collective). Identity with one process."""
    if not is_multiprocess():
        return arrays
    # Through the devices: float64 travels as float32, exact for results computed in float32 (as evaluation's).
    gathered = multihost_utils.process_allgather(arrays, tiled=True)
    return {name: np.asarray(value, arrays[name].dtype)[:num] for name, value in gathered.items()}


def sync(name: str) -> None:
    """Waits until every process reaches this point (`name` must be the same on all). Nothing with one process."""
    if is_multiprocess():
        multihost_utils.sync_global_devices(name)


def _key_data(tree: Any) -> Any:
    def raw(leaf):
        if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            return jax.random.key_data(leaf)
        return leaf

    return jax.tree.map(raw, tree)


def _is_host_port(address: str) -> bool:
    host, _, port = address.rpartition(":")
    return bool(host) and port.isdigit()
