"""The files of a training run: every name in a workdir, what each holds, and how to read them back.

    <workdir>/config.json        {"model": ModelConfig.to_dict(), "train": TrainConfig.to_dict(),
                                  "data": DataConfig.to_dict(), "num_devices", "num_steps", "versions"}: the
                                 settings in force, and under "segments" those of every segment of the run
                                 with the step it started from (`pvpp.training.resume`); written once the
                                 resume checks passed and the state is restored, never before
    <workdir>/metrics.jsonl      one line per log period ("train/...") and per evaluation ("eval/...",
                                 "eval_ema/...", "log_partition..."), written by `pvpp.runs.metrics.MetricsWriter`
    <workdir>/conv_forms.json    the form of each convolution layer and direction the train step was traced with
                                 (`pvpp.nn.conv_forms.metadata`), written at the first step of each segment
    <workdir>/tensorboard/       the same scalars as TensorBoard event files (`tensorboard --logdir <workdir>`)
    <workdir>/checkpoints/<step> orbax checkpoints, the last `keep_checkpoints`
                                 (`pvpp.training.saving.checkpoint_template`):
                                 {"train_state": TrainState (one copy), "data_position": {"seed", "epoch",
                                 "batch_index"}}
    <workdir>/ema_params         at the end: the EMA parameters and {"model": ..., "step": ...}
                                 (`checkpoint.export_params`)
    <workdir>/eval/, samples/    written by `python -m pvpp.experiments.evaluate` / `sample`
    <workdir>/.lock              held (flock) by the training process while it runs: its pid and host (`lock`)

A resumed run must keep the FIXED settings of `pvpp.settings` and may change the CHANGEABLE ones only when asked
(`pvpp.training.resume.check_resumable`). Training writes config.json through `write_config` and the state through
`pvpp.training.saving`; `pvpp.inference.load_model` reads a workdir or an export for evaluation, generation and
notebooks. Nothing here imports `pvpp.training`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import time
from collections.abc import Mapping
from typing import Any

from absl import logging

from pvpp.model import ModelConfig
from pvpp.runs import checkpoint
from pvpp.runs.results import atomic_write_bytes

try:
    import fcntl  # POSIX only: elsewhere a workdir is not locked
except ImportError:
    fcntl = None

CONFIG_FILENAME = "config.json"
LOCK_FILENAME = ".lock"
CHECKPOINT_DIRNAME = "checkpoints"
EMA_PARAMS_DIRNAME = "ema_params"


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
    """Exports parameters (e.g. EMA ones) with {'model', 'dataset', 'step'}, readable by `pvpp.inference.load_model`."""
    checkpoint.export_params(
        path, params, {"model": model_config.to_dict(), "dataset": dataset, "step": step}, overwrite=overwrite
    )


