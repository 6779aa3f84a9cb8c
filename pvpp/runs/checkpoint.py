"""Checkpoints of the training state (an orbax `CheckpointManager` wrapper), and export / load of parameters.

Training checkpoints: `CheckpointManager(directory)` saves a pytree state at a step and keeps the last N. The
state may hold jax arrays (including typed PRNG keys from `jax.random.key`), numpy arrays and numpy / Python
scalars (e.g. a data iterator's position). `save` is synchronous by default. With `async_save=True` (training
does this) it returns once the arrays are copied to host memory and the files are written in the background;
`wait_until_finished`, `restore_latest` and `close` (run by the `with` block) wait for them. Asynchronous saving
is for code that owns the manager's lifetime and closes it; a manager left open is closed by an exit hook that
runs before Python stops the thread pools orbax's background write needs, so a save in flight is finished (were
it to fail, the error names the step, which the next writable manager discards; the earlier steps are intact).
A write goes to a temporary directory that orbax renames to `<directory>/<step>` only when
complete, so a process killed mid-save leaves the previous checkpoints intact, and the half-written temporary
directory is removed when the next writable manager opens.

Integrity. Every step (and every export) carries an integrity record written with it: a blake2b digest of each
array's bytes, dtype and shape, by tree path (`pvpp.runs.integrity`). A restore recomputes the digests of what
it read and compares, and checks that every floating-point array is finite: a step whose files changed after they were
written (flipped bytes of the same size), or that holds NaN / inf, is not used (`CorruptCheckpointError`).
Steps and exports written before pvpp 0.2 have no record: they are read with a warning, finiteness checked.

`restore_latest(template)` restores the newest good step onto a template pytree (structure, shapes and
dtypes come from the template, and are checked against the stored metadata). An unreadable or corrupt newest
step (e.g. a truncated data file) is reported with a warning naming the step and the error, and the previous
step is tried. Such a step is moved aside to `<step>.unreadable` (never deleted) when this manager next saves,
so that training can write that step number again.

Inference: `export_params(path, params, config)` writes parameters (typically the EMA ones) and the model
config (a JSON-able dict) to an orbax checkpoint directory; `load_params(path)` reads them back. Several
processes: see `pvpp.parallel.distributed` (checkpoints are saved once by all, exports by process 0 alone).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import threading
import weakref
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from pvpp.parallel import distributed
from pvpp.runs import integrity
from pvpp.runs.integrity import CorruptCheckpointError, path_key  # noqa: F401 -- the error is part of this API
from pvpp.validation import check_int

PyTree = Any

_STATE = "state"  # item name of the training state inside a step directory
_PARAMS = "params"  # item names inside an exported-parameters directory
_CONFIG = "config"
_INTEGRITY = "integrity"  # item of both: the digests of the arrays (`fingerprints`)
_UNREADABLE_SUFFIX = ".unreadable"


class UnreadableCheckpointError(RuntimeError):
    """Checkpoints exist but none of them could be read (or an export cannot be read)."""


class CheckpointMismatchError(ValueError):
    """A readable checkpoint does not match the template (tree structure, shapes or dtypes)."""


class CheckpointWriteError(OSError):
    """Writing a checkpoint failed (a full disk, missing permissions, ...); the message names the step, the
    directory and the cause. The partial step stays in a temporary directory that the next run removes."""


class CheckpointManager:
    """Saves and restores a training state at steps in one directory, keeping the last `max_to_keep`.

    Args:
      directory: where the step directories `<directory>/<step>` live (created if missing, unless read_only).
      max_to_keep: number of most recent checkpoints kept; older ones are deleted after each save.
      async_save: write in a background thread (`save` returns after the device-to-host copy); then close the
        manager (or use `with`) before the program ends, or the last save may be lost (see the module notes).
      read_only: never write, delete or clean up anything (e.g. an evaluator watching a training run).

    Use as a context manager, or call `close()`, so that the last save is complete before the program goes on.
    The state passed to `save` must be unreplicated (one copy per array, as on a single device).
    """

    def __init__(self, directory, *, max_to_keep: int = 3, async_save: bool = False, read_only: bool = False):
        check_int(max_to_keep, "max_to_keep", 1)
        self._directory = _absolute(directory)
        self._read_only = read_only
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.LatestN(int(max_to_keep)),
            enable_async_checkpointing=async_save,
            # A temporary directory left by a killed save is garbage: remove it, but only as the writer.
            cleanup_tmp_directories=not read_only,
            save_interval_steps=0 if read_only else 1,  # orbax warns when read_only meets a save interval
            read_only=read_only,
            create=not read_only,
        )
        handlers = _step_handlers()
        self._manager = ocp.CheckpointManager(self._directory, options=options, handler_registry=handlers)
        if not read_only:  # orbax removes a killed save's temp directory in a thread that only `save` awaits:
            # wait, so a restore-and-close removes it too (older orbax: synchronous, no such method)
            getattr(self._manager, "_maybe_await_cleanup_tmp_directory", lambda: None)()
        self._unreadable_steps: set[int] = set()
        self._step_in_flight: int | None = None
        self._closed = False
        _OPEN_MANAGERS.add(self)

    @property
    def directory(self) -> epath.Path:
        return self._directory

    def all_steps(self) -> list[int]:
        """The steps with a complete checkpoint, ascending (as last seen; see `reload`)."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The newest step with a complete checkpoint, or None."""
        return self._manager.latest_step()

    def reload(self) -> None:
        """Re-reads the directory listing (steps written or deleted by another process)."""
        self._manager.reload()

    def save(self, step: int, state: PyTree) -> None:
        """Starts saving `state` as the checkpoint of `step` (in the background when async_save=True).

        Args:
          step: int >= 0, larger than every step already saved in the directory.
          state: a pytree of jax arrays (typed PRNG keys included), numpy arrays and numpy / Python scalars.
        Raises:
          ValueError: a bad or non-increasing step.
          RuntimeError: the manager is read-only or closed.
        """
        check_int(step, "step", 0)
        step = int(step)
        self._check_writable()
        self._move_aside_unreadable_steps()
        latest = self._manager.latest_step()
        if latest is not None and step <= latest:
            raise ValueError(
                f"step {step} is not after the latest checkpoint (step {latest}) in {self._directory}; "
                "restore the latest checkpoint and continue from there, or use a new directory"
            )
        # Orbax waits for the previous save before it starts this one: wait here, so that a failure of that
        # earlier write is reported under its own step.
        self.wait_until_finished()
        # force=True: the caller decides when to save; orbax's interval policy is not consulted.
        args = ocp.args.Composite(
            **{
                _STATE: ocp.args.StandardSave(distributed.to_replicated(_savable(state))),
                _INTEGRITY: ocp.args.JsonSave(integrity.record(state)),
            }
        )
        with self._write_errors(step):
            self._manager.save(step, args=args, force=True)
        self._step_in_flight = step

    def check_for_errors(self) -> None:
        """Raises CheckpointWriteError if a background save has failed (cheap: call it every step)."""
        with self._write_errors(self._step_in_flight):
            self._manager.check_for_errors()

    def wait_until_finished(self) -> None:
        """Blocks until every started save is on disk; CheckpointWriteError if one failed."""
        with self._write_errors(self._step_in_flight):
            self._manager.wait_until_finished()
        self._step_in_flight = None

    @contextlib.contextmanager
    def _write_errors(self, step: int | None):
        """Turns orbax's errors while writing into one CheckpointWriteError naming the step, path and cause."""
        try:
            yield
        except Exception as err:  # noqa: BLE001 -- orbax and tensorstore raise many types for one failed write
            cause = err
            while cause.__cause__ is not None and isinstance(cause, RuntimeError):
                cause = cause.__cause__
            where = "a checkpoint" if step is None else f"the checkpoint of step {step}"
            raise CheckpointWriteError(
                f"writing {where} to {self._directory} failed: {describe(cause)}"
            ) from err

    def restore_latest(self, template: PyTree) -> tuple[int, PyTree] | None:
        """Restores the newest readable checkpoint onto `template`, falling back to older ones.

        Args:
          template: a pytree like the saved state: concrete arrays / scalars or `jax.ShapeDtypeStruct`s give
            the structure, shapes and dtypes; restored jax arrays take the sharding of the template's arrays.
        Returns:
          (step, state), or None if the directory holds no checkpoint at all.
        Raises:
          CheckpointMismatchError: a readable checkpoint has another structure, shape or dtype than the
            template.
          UnreadableCheckpointError: checkpoints exist but none could be read (the errors are listed).
        """
        self._check_open()
        self._manager.wait_until_finished()  # one of our own saves may still be in flight
        self._manager.reload()
        steps = sorted(self._manager.all_steps(), reverse=True)
        if not steps:
            return None
        failures = []
        for step in steps:
            try:
                state = self._restore_step(step, template)
            except CheckpointMismatchError:
                raise  # the template is wrong, not the file: falling back would hide the mistake
            except Exception as err:  # noqa: BLE001 -- any failure to read is "unreadable": try the previous
                logging.warning(
                    "Checkpoint at step %d in %s is unreadable (%s); trying the previous checkpoint.",
                    step,
                    self._directory,
                    describe(err),
                )
                failures.append((step, err))
                self._unreadable_steps.add(step)
                continue
            if failures:
                logging.warning(
                    "Restored step %d from %s after skipping unreadable step(s) %s.",
                    step,
                    self._directory,
                    [s for s, _ in failures],
                )
            return step, state
        details = "; ".join(f"step {s}: {describe(e)}" for s, e in failures)
        raise UnreadableCheckpointError(
            f"none of the checkpoints in {self._directory} (steps {steps}) could be read: {details}"
        ) from failures[0][1]

    def restore(self, step: int, template: PyTree) -> PyTree:
        """Restores the checkpoint of `step` onto `template` (no fallback); see `restore_latest`."""
        self._check_open()
        self._manager.wait_until_finished()
        self._manager.reload()
        if step not in self._manager.all_steps():
            raise FileNotFoundError(
                f"no checkpoint for step {step} in {self._directory}; steps: {self.all_steps()}"
            )
        return self._restore_step(step, template)

    def close(self) -> None:
        """Waits for the saves in flight, then releases orbax's threads. Idempotent."""
        if self._closed:
            return
        self._closed = True
        _OPEN_MANAGERS.discard(self)
        with self._write_errors(self._step_in_flight):
            self._manager.close()

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- helpers ------------------------------------------------------------

    def _restore_step(self, step: int, template: PyTree) -> PyTree:
        stored = self._manager.item_metadata(step)[_STATE]
        if stored is None:
            raise FileNotFoundError(f"step {step} has no readable metadata for item {_STATE!r}")
        _check_against_metadata(template, stored, f"checkpoint step {step} in {self._directory}")
        target = distributed.replicated_targets(jax.tree.map(_restore_target, template))
        where = f"checkpoint step {step} in {self._directory}"
        items = {_STATE: ocp.args.StandardRestore(target)}
        has_record = (self._directory / str(step) / _INTEGRITY).exists()
        if has_record:
            items[_INTEGRITY] = ocp.args.JsonRestore()
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        state = jax.tree.map(_like_template, distributed.from_replicated(restored[_STATE]), template)
        integrity.verify(state, restored[_INTEGRITY] if has_record else None, where)
        return state

    def _move_aside_unreadable_steps(self) -> None:
        """Renames the step directories found unreadable by `restore_latest` to `<step>.unreadable[.n]` (process
        0 renames; every process found the same steps and waits for it)."""
        steps = sorted(self._unreadable_steps & set(self._manager.all_steps()))
        self._unreadable_steps.clear()
        for step in steps if distributed.is_primary() else ():
            target, n = self._directory / f"{step}{_UNREADABLE_SUFFIX}", 1
            while target.exists():
                target, n = self._directory / f"{step}{_UNREADABLE_SUFFIX}.{n}", n + 1
            (self._directory / str(step)).rename(target)
            logging.warning("Moved the unreadable checkpoint of step %d aside to %s.", step, target)
        if steps:
            distributed.sync("pvpp_checkpoint_moved_aside")
            self._manager.reload()

    def _check_writable(self) -> None:
        self._check_open()
        if self._read_only:
            raise RuntimeError(f"this CheckpointManager of {self._directory} is read-only")

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"this CheckpointManager of {self._directory} is closed")


def export_params(path, params: PyTree, config: Mapping[str, Any], *, overwrite: bool = False) -> None:
    """Writes `params` (a pytree of arrays, e.g. the EMA parameters) and `config` to the directory `path`.

    Args:
      path: directory to create (its parent must exist); an existing one is replaced only if overwrite=True.
      params: pytree of jax / numpy arrays.
      config: JSON-serialisable mapping (e.g. `dataclasses.asdict(model_config)`); tuples come back as lists.
    """
    path = _absolute(path)
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a mapping (JSON object), got {type(config).__name__}")
    try:
        json.dumps(dict(config))
    except (TypeError, ValueError) as err:
        raise TypeError(f"config must be JSON-serialisable: {err}") from err
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    leaves = jax.tree.leaves(params)
    if not leaves or not all(isinstance(x, (jax.Array, np.ndarray)) for x in leaves):
        raise TypeError("params must be a non-empty pytree whose leaves are jax or numpy arrays")
    params = jax.device_get(params) if distributed.is_multiprocess() else params  # orbax: numpy from one process
    items = {
        _PARAMS: ocp.args.StandardSave(params),
        _CONFIG: ocp.args.JsonSave(dict(config)),
        _INTEGRITY: ocp.args.JsonSave(integrity.record(params)),
    }
    with _params_checkpointer() as checkpointer:
        checkpointer.save(path, args=ocp.args.Composite(**items), force=overwrite)


def is_export(path) -> bool:
    """Whether the directory `path` looks like an `export_params` directory (it has the parameters' item)."""
    return (_absolute(path) / _PARAMS).is_dir()


def load_params(path, template: PyTree | None = None) -> tuple[PyTree, dict[str, Any]]:
    """Reads a directory written by `export_params`.

    Args:
      path: the directory.
      template: optional pytree of arrays / `jax.ShapeDtypeStruct`s; checked against the stored shapes and
        dtypes, and restored arrays take its shardings. Without it, the stored tree is restored onto the first
        local device.
    Returns:
      (params, config): params as jax arrays, config as the JSON dict that was exported.
    Raises:
      UnreadableCheckpointError: the files cannot be read (e.g. truncated).
      CorruptCheckpointError: the arrays read back differ from the integrity record, or are not finite.
    """
    path = _absolute(path)
    if not is_export(path):
        raise FileNotFoundError(f"no exported parameters at {path} (no {_PARAMS}/ folder)")
    has_record = (path / _INTEGRITY).exists()
    try:
        restored = _read_export(path, template, has_record)
    except CheckpointMismatchError:
        raise  # the template is wrong, not the files
    except Exception as err:  # noqa: BLE001 -- orbax and tensorstore raise many types for one bad file
        raise UnreadableCheckpointError(
            f"the exported parameters at {path} cannot be read: {describe(err)}"
        ) from err
    integrity.verify(
        restored[_PARAMS], restored[_INTEGRITY] if has_record else None, f"exported parameters at {path}"
    )
    return restored[_PARAMS], restored[_CONFIG]


def _read_export(path: epath.Path, template: PyTree | None, has_record: bool) -> dict[str, Any]:
    """The items of an export directory as orbax restores them (no verification)."""
    with _params_checkpointer() as checkpointer:
        stored = checkpointer.metadata(path).item_metadata[_PARAMS]
        if template is None:
            device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
            target = jax.tree.map(
                lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), stored.tree
            )
        else:
            _check_against_metadata(template, stored, f"exported parameters at {path}")
            target = jax.tree.map(_restore_target, template)
        items = {_PARAMS: ocp.args.StandardRestore(target), _CONFIG: ocp.args.JsonRestore()}
        if has_record:
            items[_INTEGRITY] = ocp.args.JsonRestore()
        return checkpointer.restore(path, args=ocp.args.Composite(**items))


# Managers not yet closed: the exit hook closes them, and reports a save it could not finish.
_OPEN_MANAGERS: weakref.WeakSet[CheckpointManager] = weakref.WeakSet()


def _close_open_managers() -> None:
    """Closes the managers a program left open, finishing a save in flight (run before Python stops its thread
    pools; where it cannot be, a failed save names its step, which the next writable manager discards)."""
    for manager in list(_OPEN_MANAGERS):
        in_flight = manager._step_in_flight
        try:
            manager.close()
        except Exception as err:  # noqa: BLE001 -- report every manager's failure, keep closing the others
            logging.error(
                "The checkpoint manager of %s was not closed before the program ended%s: %s. Close it (or use "
                "`with`) after the last save.",
                manager.directory,
                "" if in_flight is None else f", and the save of step {in_flight} could not be finished",
                describe(err),
            )


# Python runs threading's exit hooks, newest first, before it stops the thread pools (concurrent.futures registers
# its own when imported, above): registered there, the hook can still finish a save. Else `atexit` (too late).
getattr(threading, "_register_atexit", atexit.register)(_close_open_managers)


def _step_handlers() -> ocp.handlers.DefaultCheckpointHandlerRegistry:
    """The items of a step directory: the state (StandardSave / StandardRestore) and its integrity record (JSON)."""
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    for args in (ocp.args.StandardSave, ocp.args.StandardRestore):
        registry.add(_STATE, args)
    for args in (ocp.args.JsonSave, ocp.args.JsonRestore):
        registry.add(_INTEGRITY, args)
    return registry


def _params_checkpointer() -> ocp.Checkpointer:
    """Exports are written by process 0 alone and read by each process on its own: no barrier with the others."""
    me = jax.process_index() if distributed.is_multiprocess() else None
    mp = {} if me is None else {"multiprocessing_options": ocp.options.MultiprocessingOptions(me, {me})}
    handlers = {_PARAMS: ocp.StandardCheckpointHandler(**mp)}
    handlers.update({name: ocp.JsonCheckpointHandler(**mp) for name in (_CONFIG, _INTEGRITY)})
    options = {} if me is None else {"composite_options": ocp.CompositeOptions(**mp)}
    return ocp.Checkpointer(ocp.CompositeCheckpointHandler(**options, **handlers), **mp)


def _absolute(directory) -> epath.Path:
    """Local paths are made absolute (orbax expects it); URLs (gs://...) are kept as they are."""
    text = os.fspath(directory)
    return epath.Path(text if "://" in text else os.path.abspath(text))


def _savable(state: PyTree) -> PyTree:
    """numpy leaves are copied (an asynchronous save reads them later; the caller may mutate them meanwhile);
    numpy scalars become 0-d arrays, which orbax stores."""
    return jax.tree.map(lambda x: np.array(x) if isinstance(x, (np.ndarray, np.generic)) else x, state)


def _restore_target(leaf):
    """The orbax restore target of a template leaf: numpy scalars become 0-d arrays (orbax rejects them)."""
    return np.asarray(leaf) if isinstance(leaf, np.generic) else leaf


def _like_template(restored, leaf):
    """Gives a restored value the Python type of a scalar template leaf (numpy scalar, bool, int, float)."""
    if isinstance(leaf, (np.generic, bool, int, float)):
        return type(leaf)(restored)
    return restored


def _stored_signature(leaf) -> tuple[tuple[int, ...], np.dtype]:
    """The (shape, dtype) a template leaf is stored with: typed PRNG keys are stored as uint32 key data."""
    is_jax = isinstance(leaf, (jax.Array, jax.ShapeDtypeStruct))
    if is_jax and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        data = jax.eval_shape(jax.random.key_data, leaf)
        return tuple(data.shape), np.dtype(data.dtype)
    if isinstance(leaf, (jax.Array, jax.ShapeDtypeStruct, np.ndarray, np.generic)):
        return tuple(leaf.shape), np.dtype(leaf.dtype)
    if isinstance(leaf, (bool, int, float)):
        return (), np.asarray(leaf).dtype
    raise TypeError(f"unsupported template leaf of type {type(leaf).__name__}")


def _check_against_metadata(template: PyTree, stored: PyTree, where: str) -> None:
    """Raises CheckpointMismatchError unless `template` has the stored tree paths, shapes and dtypes."""
    flat_template = jax.tree_util.tree_flatten_with_path(template)[0]
    flat_stored = jax.tree_util.tree_flatten_with_path(stored)[0]
    expected = {path_key(p): _stored_signature(x) for p, x in flat_template}
    found = {path_key(p): (tuple(m.shape), np.dtype(m.dtype)) for p, m in flat_stored}
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    if missing or extra:
        raise CheckpointMismatchError(
            f"{where} has another tree structure than the template: paths only in the template "
            f"{missing[:10]}, paths only in the checkpoint {extra[:10]}"
        )
    for key, (shape, dtype) in expected.items():
        stored_shape, stored_dtype = found[key]
        if shape != stored_shape or dtype != stored_dtype:
            raise CheckpointMismatchError(
                f"{where}: leaf {'/'.join(key)} is stored as {stored_dtype}{list(stored_shape)} but the "
                f"template has {dtype}{list(shape)}"
            )


def describe(err: BaseException) -> str:
    """One line naming the error: its type and the first line of its message, shortened."""
    first_line = (str(err).strip().splitlines() or [""])[0]
    if len(first_line) > 300:
        first_line = first_line[:300] + "..."
    return f"{type(err).__name__}: {first_line}"
