"""The files of a training run: every name in a workdir, what each holds, and how to read them back.

    <workdir>/config.json        {"model": ModelConfig.to_dict(), "train": TrainConfig.to_dict(),
                                  "data": DataConfig.to_dict(), "num_devices", "num_steps", "versions"}: the
                                 settings in force, and under "segments" those of every segment of the run
                                 with the step it started from (`pvpp.training.resume`); written once the
                                 resume checks passed and the state is restored, never before
    <workdir>/metrics.jsonl      one line per log period ("train/...") and per evaluation ("eval/...",
                                 "eval_ema/...", "log_partition..."), written by `pvpp.metrics.MetricsWriter`
    <workdir>/tensorboard/       the same scalars as TensorBoard event files (`tensorboard --logdir <workdir>`)
    <workdir>/checkpoints/<step> orbax checkpoints, the last `keep_checkpoints` (`checkpoint_template`):
                                 {"train_state": TrainState (one copy), "data_position": {"seed", "epoch",
                                 "batch_index"}}
    <workdir>/ema_params         at the end: the EMA parameters and {"model": ..., "step": ...}
                                 (`checkpoint.export_params`)
    <workdir>/eval/, samples/    written by `python -m pvpp.experiments.evaluate` / `sample`
    <workdir>/.lock              held (flock) by the training process while it runs: its pid and host (`lock`)

A resumed run must keep the FIXED settings of `pvpp.settings` and may change the CHANGEABLE ones only when asked
(`check_resumable`). Training (`pvpp.training.loop`) writes through `write_config`, `restore_or_init` and `export_ema`;
evaluation and generation read through `load_for_inference`. Nothing here imports the training loop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import time
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from pvpp import checkpoint, settings
from pvpp.model import ModelConfig
from pvpp.optim import ema_params
from pvpp.results import atomic_write_bytes
from pvpp.training import resume
from pvpp.training.config import TrainConfig
from pvpp.training.state import TrainState, state_initializer

try:
    import fcntl  # POSIX only: elsewhere a workdir is not locked
except ImportError:
    fcntl = None

CONFIG_FILENAME = "config.json"
LOCK_FILENAME = ".lock"
CHECKPOINT_DIRNAME = "checkpoints"
EMA_PARAMS_DIRNAME = "ema_params"
_POSITION_KEYS = ("seed", "epoch", "batch_index")  # a data iterator's position (`BatchIterator.get_state`)


class WorkdirConflictError(ValueError):
    """The workdir holds another run (a FIXED setting of `pvpp.settings` differs), or parameters of another
    model than the workdir's run were given."""


class ChangedSettingsError(WorkdirConflictError):
    """A resume changes settings a researcher may change on purpose, but that was not asked for."""


class UnreadableConfigError(ValueError):
    """A workdir's config.json is not a JSON object (damaged or edited by hand)."""


class WorkdirBusyError(RuntimeError):
    """Another live process is training in this workdir."""


# ----------------------------------------------------------------------------------------------------------
# The run's configuration


def write_config(workdir, description: Mapping[str, Any]) -> None:
    """Writes `<workdir>/config.json` atomically (the workdir is created if needed)."""
    os.makedirs(workdir, exist_ok=True)
    write_json(os.path.join(workdir, CONFIG_FILENAME), description)


def read_config(workdir) -> dict[str, Any] | None:
    """The run description in `<workdir>/config.json`, or None when there is none. UnreadableConfigError naming
    the file when it is not a JSON object."""
    path = os.path.join(os.fspath(workdir), CONFIG_FILENAME)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UnreadableConfigError(_unreadable_config(workdir, f"is not valid JSON ({err})")) from None
    if not isinstance(value, dict) or not all(isinstance(value.get(k), dict) for k in ("model", "train")):
        raise UnreadableConfigError(_unreadable_config(workdir, "does not hold a run description"))
    return value


def _unreadable_config(workdir, problem: str) -> str:
    return (
        f"workdir {os.fspath(workdir)}: its {CONFIG_FILENAME} {problem}; it records the run's settings: restore it "
        "(e.g. from a backup), or use a new workdir"
    )


def check_resumable(
    workdir,
    description: Mapping[str, Any],
    *,
    allow_changed_settings: bool = False,
    names: Mapping[str, str] | None = None,
) -> tuple[dict[str, Any] | None, list[resume.Change]]:
    """Compares the run `description` with the one recorded in `<workdir>/config.json` (`pvpp.settings` kinds).

    A FIXED setting that differs is another run: WorkdirConflictError. A CHANGEABLE one: ChangedSettingsError
    unless allow_changed_settings. names: how the messages name each setting (path -> e.g. '--flag'; the entry
    points give their flags; 'allow_changed_settings' and 'workdir' name those arguments). Returns (the record or
    None, every difference found: the changes to record). Reads only.
    """
    recorded = read_config(workdir)
    changes = resume.differences(recorded, description)
    fixed = [c for c in changes if c.kind == settings.FIXED]
    if fixed:
        sections = [s for s in resume.SECTIONS if any(c.path.split(".")[0] == s for c in fixed)] or ["run"]
        raise WorkdirConflictError(
            f"{_named_workdir(workdir, names)} holds a run with another {' and '.join(sections)} configuration "
            f"({'; '.join(c.describe(names) for c in fixed)}; recorded -> given), which a resumed run cannot "
            f"change: use a new {resume.name_of('workdir', names)}, or the recorded values to resume"
        )
    changed = [c for c in changes if c.kind == settings.CHANGEABLE]
    if changed and not allow_changed_settings:
        allow = (names or {}).get("allow_changed_settings", "allow_changed_settings=True")
        raise ChangedSettingsError(
            f"{_named_workdir(workdir, names)} was trained with other settings "
            f"({'; '.join(c.describe(names) for c in changed)}; recorded -> given): pass {allow} to resume with "
            "the new ones (config.json then keeps both, with the step where the change starts), or the recorded "
            "values to resume as before"
        )
    return recorded, changes


def _named_workdir(workdir, names: Mapping[str, str] | None) -> str:
    return f"{resume.name_of('workdir', names)} {os.fspath(workdir)}"


def write_json(path: str, value: Mapping[str, Any]) -> None:
    """Atomically (a temporary file, flushed to disk, renamed), so a killed process never leaves a half-written
    file."""
    text = json.dumps(value, indent=2, sort_keys=True) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def lock(workdir):
    """Holds `<workdir>/.lock` for the duration of the block: a second run on the same workdir stops at once
    with WorkdirBusyError naming the process that holds it.

    The lock is an advisory `flock` on the file, which the kernel releases when its process dies (however it
    dies), so the lock of a killed run is taken over without any clean-up. The file keeps the holder's pid,
    host and start time for the message. Without fcntl (not POSIX) the block runs unlocked.
    """
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(os.fspath(workdir), LOCK_FILENAME)
    if fcntl is None:
        yield
        return
    with open(path, "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "an unknown process"
            raise WorkdirBusyError(
                f"workdir {workdir} is in use by {holder}; wait for that run to end or stop it, or use another "
                "--workdir"
            ) from None
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()} on {socket.gethostname()} (started {started})\n")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)


# ----------------------------------------------------------------------------------------------------------
# Checkpoints


def checkpoint_template(model_config: ModelConfig, train_config: TrainConfig, device: jax.Device) -> dict:
    """What a checkpoint of this run holds, as shapes and dtypes on `device` (nothing computed or compiled).

    {"train_state": TrainState of jax.ShapeDtypeStruct, "data_position": {"seed", "epoch", "batch_index"}}.
    Pass it to `checkpoint.CheckpointManager.restore_latest` to read a run's checkpoints.
    """
    init = state_initializer(model_config, train_config.optim, train_config.step_config.negative_phase)
    images = jax.ShapeDtypeStruct(
        (train_config.init_batch_size or train_config.batch_size,) + model_config.image_shape, jnp.uint8
    )
    shapes = jax.eval_shape(init, jax.random.key(train_config.seed), images)
    sharding = jax.sharding.SingleDeviceSharding(device)
    state = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)
    return {"train_state": state, "data_position": {k: np.zeros((), np.int64) for k in _POSITION_KEYS}}


def restore_or_init(
    manager, template: dict, init, root_key, init_images, train_iter, *, recorded_template=None
) -> tuple[TrainState, int | None]:
    """The latest readable checkpoint of `manager` (the iterator `train_iter` set to its position), else
    `init(root_key, init_images)`. Returns (state, the restored step or None).

    recorded_template: None, or a function giving the template of the recorded settings; when the checkpoints
    have the structure of those (gradient clipping switched on or off, which adds or removes a leafless piece of
    the optimizer state), the restored state is rebuilt in the structure of `template`.
    """
    try:
        restored = manager.restore_latest(template)
    except checkpoint.CheckpointMismatchError:
        if recorded_template is None:
            raise
        restored = manager.restore_latest(recorded_template())
        if restored is not None:
            step, saved = restored
            state = restructured(saved["train_state"], template["train_state"], f"the checkpoint of step {step}")
            restored = step, {**saved, "train_state": state}
    if restored is None:
        logging.info("Initialising from one batch of %d images (data-dependent init).", len(init_images))
        return init(root_key, init_images), None
    step, saved = restored
    train_iter.set_state(saved["data_position"])
    logging.info("Resumed from the checkpoint of step %d in %s.", step, manager.directory)
    return saved["train_state"], step


def restructured(state, template, what: str):
    """`state`'s leaves in the tree structure of `template` (a pytree of arrays or `jax.ShapeDtypeStruct`s with
    the same leaves in the same order, e.g. an optimizer state with or without a leafless clipping piece);
    CheckpointMismatchError naming `what` when the leaves do not match one for one."""
    leaves, wanted = jax.tree.leaves(state), jax.tree.leaves(template)
    signature = [(tuple(x.shape), x.dtype) for x in leaves]
    if signature != [(tuple(x.shape), x.dtype) for x in wanted]:
        raise checkpoint.CheckpointMismatchError(
            f"{what} cannot be converted to the state of the given settings (its arrays differ)"
        )
    return jax.tree.unflatten(jax.tree.structure(template), leaves)


def export_is_intact(workdir, step: int) -> bool:
    """Whether `<workdir>/ema_params` exists, reads back as written (integrity record, finite) and is of `step`."""
    path = os.path.join(os.fspath(workdir), EMA_PARAMS_DIRNAME)
    if not os.path.exists(path):
        return False
    try:
        _, exported = checkpoint.load_params(path)
    except Exception as err:  # noqa: BLE001 -- any failure to read it back means: write it again
        logging.warning(
            "The export %s is damaged (%s); it will be written again.", path, checkpoint.describe(err)
        )
        return False
    return exported.get("step") == step


def export_ema(workdir, model_config: ModelConfig, state: TrainState) -> str:
    """Writes the EMA parameters of `state` to `<workdir>/ema_params` (replacing an older export); its path."""
    path = os.path.join(os.fspath(workdir), EMA_PARAMS_DIRNAME)
    export = {"model": model_config.to_dict(), "step": int(state.step)}
    checkpoint.export_params(path, ema_params(state.opt_state), export, overwrite=True)
    return path


# ----------------------------------------------------------------------------------------------------------
# Loading for inference (evaluation, generation, notebooks)


class InferenceModel(NamedTuple):
    """What evaluation and sampling need from a training run or an export.

    model_config: the architecture. params: the 'params' collection (EMA parameters of a training run).
    data: the run's `DataConfig.to_dict()` ({'name', 'data_dir', 'variant', 'validation_size', ...}) or None for a
    bare export. source: where the parameters came from ({'kind', 'path', 'step'}), for the results.
    """

    model_config: ModelConfig
    params: Any
    data: dict[str, Any] | None
    source: dict[str, Any]


def load_for_inference(workdir=None, checkpoint_path=None) -> InferenceModel:
    """Loads the parameters to evaluate or sample from (EMA parameters).

    checkpoint_path given: an export directory (`checkpoint.export_params`: the training run's
    `<workdir>/ema_params`, or `export_for_inference`); its config is {'model': ..., ...} or a bare
    ModelConfig dict. The workdir's config.json, if there is one, still provides the data description.
    Otherwise workdir: `<workdir>/config.json` gives the model and data; the parameters are the newest of
    `<workdir>/ema_params` (written at the end of training) and the EMA inside the latest checkpoint of
    `<workdir>/checkpoints` (a run still going, or stopped before its end).
    Raises FileNotFoundError naming what is missing.
    """
    if workdir is None and checkpoint_path is None:
        raise ValueError("give a workdir or a checkpoint_path")
    run = None
    if workdir is not None:
        run = read_config(workdir)
        if run is None and checkpoint_path is None:
            raise FileNotFoundError(
                f"workdir {os.fspath(workdir)!r} has no {CONFIG_FILENAME}: not a training workdir "
                "(give an exported parameter directory as checkpoint_path instead)"
            )
    data_description = None if run is None else dict(run["data"])
    if checkpoint_path is not None:
        model_config, params, exported = load_exported(checkpoint_path)
        if run is not None and ModelConfig.from_dict(run["model"]) != model_config:
            differ = resume.differences({"model": run["model"]}, {"model": model_config.to_dict()})
            shown = "; ".join(f"{c.path.split('.', 1)[1]}: {c.recorded!r} vs {c.given!r}" for c in differ)
            raise WorkdirConflictError(
                f"checkpoint_path {os.fspath(checkpoint_path)} holds the parameters of another model than the run "
                f"in workdir {os.fspath(workdir)} ({shown}; the run's vs the export's)"
            )
        if data_description is None and exported.get("dataset") is not None:
            data_description = {"name": exported["dataset"]}
        source = {"kind": "export", "path": os.path.abspath(checkpoint_path), "step": exported.get("step")}
        return InferenceModel(model_config, params, data_description, source)

    model_config = ModelConfig.from_dict(run["model"])
    export_path = os.path.join(os.fspath(workdir), EMA_PARAMS_DIRNAME)
    export, export_step = None, None
    if os.path.exists(export_path):
        try:
            export = load_exported(export_path)
            export_step = export[2].get("step")
        except Exception as err:  # noqa: BLE001 -- a damaged export: the checkpoints still hold the EMA
            logging.warning(
                "The export %s cannot be used (%s); falling back to the EMA of the latest good checkpoint.",
                export_path,
                checkpoint.describe(err),
            )
    checkpoints_path = os.path.join(os.fspath(workdir), CHECKPOINT_DIRNAME)
    latest = None
    if os.path.isdir(checkpoints_path):
        with checkpoint.CheckpointManager(checkpoints_path, read_only=True) as manager:
            latest = manager.latest_step()
    if export is not None and (latest is None or (export_step is not None and export_step >= latest)):
        params = export[1]
        source = {"kind": "ema_export", "path": os.path.abspath(export_path), "step": export_step}
    elif latest is not None:
        params, step = ema_from_checkpoint(
            model_config, TrainConfig.from_dict(run["train"]), checkpoints_path
        )
        source = {"kind": "checkpoint_ema", "path": os.path.abspath(checkpoints_path), "step": step}
    else:
        raise FileNotFoundError(
            f"workdir {os.fspath(workdir)!r} has neither {EMA_PARAMS_DIRNAME} nor checkpoints"
        )
    return InferenceModel(model_config, params, data_description, source)


def load_exported(path) -> tuple[ModelConfig, Any, dict[str, Any]]:
    """(model config, params, the exported config dict) from a `checkpoint.export_params` directory.

    The exported config is either a dict with a `ModelConfig.to_dict()` under 'model' (training's ema_params,
    `export_for_inference`) or that dict itself.
    """
    params, exported = checkpoint.load_params(path)
    model_dict = exported.get("model", exported) if isinstance(exported, Mapping) else None
    if not isinstance(model_dict, Mapping):
        raise ValueError(f"the parameters exported at {path} carry no model configuration")
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    return ModelConfig.from_dict({k: v for k, v in model_dict.items() if k in fields}), params, dict(exported)


def export_for_inference(
    path,
    model_config: ModelConfig,
    params: Any,
    *,
    dataset: str | None,
    step: int | None = None,
    overwrite: bool = False,
) -> None:
    """Exports parameters (e.g. EMA ones) with {'model', 'dataset', 'step'}, readable by `load_for_inference`."""
    checkpoint.export_params(
        path, params, {"model": model_config.to_dict(), "dataset": dataset, "step": step}, overwrite=overwrite
    )


def ema_from_checkpoint(model_config: ModelConfig, train_config: TrainConfig, directory) -> tuple[Any, int]:
    """The EMA parameters inside the latest readable training checkpoint in `directory`: (params, step)."""
    template = checkpoint_template(model_config, train_config, jax.local_devices()[0])
    with checkpoint.CheckpointManager(directory, read_only=True) as manager:
        restored = manager.restore_latest(template)
    if restored is None:
        raise FileNotFoundError(f"no checkpoint in {directory}")
    step, saved = restored
    return ema_params(saved["train_state"].opt_state), int(step)
