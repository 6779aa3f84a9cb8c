"""The training loop: data in, steps dispatched, metrics, evaluations and checkpoints out.

    train_and_evaluate(model_config, train_config, data_config, workdir)     # what the entry points call
    run_training(model_config, train_config, train_data, eval_data, workdir)  # same, on DataSplits in memory

The loop dispatches step N + 1 before it reads the metrics of step N (at most two steps in flight: more queued
collectives can deadlock XLA's CPU devices), draws and copies batches in a background thread, and checks every
step's loss, gradient norm and new parameters: a non-finite value raises `FloatingPointError` naming the step,
and since a checkpoint of step N is written only after step N was checked, no bad state is ever saved.
Logging, evaluation and checkpoints fire on their periods and on the final step. The files it writes are
described in `pvpp.runs.workdir`; config.json is written only once the resume checks have passed and the state is
restored (a refused resume leaves the workdir as it was), with the settings of every segment of the run.
SIGTERM or SIGINT (`pvpp.runs.stopping`) let the running step finish; it is logged and checkpointed, and the loop
raises `stopping.TrainingStopped`; with several processes all stop at the same step (JAX's preemption service).

Several processes (`pvpp.parallel.distributed`): every process runs this loop over its own devices and its own part of
each global batch; the step's collectives make every process hold the same state and take the same decisions
(the NaN check included). Process 0 alone holds the workdir's lock and writes config.json, the metrics, the
progress lines and the export; every process takes part in saving and restoring the checkpoints.

Metrics names. 'train/kl' is the relaxed KL for normalised priors; for the RBM it lacks log Z (unknown during
the step) and is logged as 'train/kl_minus_log_z'. The training loss is a surrogate, never a likelihood.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from collections.abc import Mapping
from typing import Any, NamedTuple

import flax
import jax
import numpy as np
import optax
from absl import logging

from pvpp import data
from pvpp.model import ModelConfig, PixelVAEPP
from pvpp.nn import conv_forms
from pvpp.parallel import distributed
from pvpp.parallel.devices import (
    Prefetcher,
    device_sharding,
    first_copy_scalars,
    replicate,
    run_devices,
    unreplicate,
)
from pvpp.runs import checkpoint, stopping, workdir as workdir_files
from pvpp.runs.metrics import MetricsWriter, ProgressLogger
from pvpp.training import grids, periodic_eval, resume, saving
from pvpp.training.compiled import step_functions
from pvpp.training.config import DataConfig, SettingError, TrainConfig
from pvpp.training.optim import ema_params
from pvpp.training.state import TrainState
from pvpp.validation import check_divisible

#: The convolution forms the train step was traced with (`pvpp.nn.conv_forms.metadata`), written at the first step
#: of every segment.
CONV_FORMS_FILENAME = "conv_forms.json"


def train_and_evaluate(
    model_config: ModelConfig,
    train_config: TrainConfig,
    data_config: DataConfig,
    workdir: str | os.PathLike,
    *,
    allow_changed_settings: bool = False,
    setting_names: Mapping[str, str] | None = None,
) -> TrainState:
    """Loads the data of `data_config` and trains (see `run_training`, which takes the keyword arguments).
    Returns the final state."""
    if not isinstance(data_config, DataConfig):
        raise TypeError(f"data_config must be a DataConfig, got {type(data_config).__name__}")
    data_dir = data.loading.resolve_data_dir(data_config.data_dir)
    data_config = dataclasses.replace(data_config, data_dir=None if data_dir is None else str(data_dir))
    kwargs = dict(data_dir=data_dir, config=data_config.variant, validation_size=data_config.validation_size)
    train_data = data.load(data_config.name, data_config.train_split, **kwargs)
    eval_data = data.load(data_config.name, data_config.eval_split, **kwargs)
    if train_data.note:
        logging.warning("Data: %s", train_data.note)
    logging.info("Data: %s read from %s.", data_config.name, train_data.source)
    # What was actually read, next to what was asked for (a data_dir without the files still finds the cache).
    description = {**data_config.to_dict(), "source": train_data.source}
    return run_training(
        model_config,
        train_config,
        train_data,
        eval_data,
        workdir,
        data_description=description,
        allow_changed_settings=allow_changed_settings,
        setting_names=setting_names,
    )


def run_training(
    model_config: ModelConfig,
    train_config: TrainConfig,
    train_data: data.DataSplit,
    eval_data: data.DataSplit,
    workdir: str | os.PathLike,
    *,
    data_description: Mapping[str, Any] | None = None,
    allow_changed_settings: bool = False,
    setting_names: Mapping[str, str] | None = None,
) -> TrainState:
    """Trains `model_config` on `train_data`, resuming from the latest readable checkpoint in `workdir`.

    Everything is validated before anything is written, the resume included (`resume.check_resumable`: the
    FIXED settings of `pvpp.settings` must match config.json's; CHANGEABLE ones may differ only with
    allow_changed_settings, and config.json then records the new segment with the step it starts from, and
    metrics.jsonl / TensorBoard a note at that step). setting_names: how messages name each setting (path ->
    e.g. '--flag', see `pvpp.training.resume.name_of`). Returns the final state (one copy, on the first device).
    Raises FloatingPointError when a step produces a non-finite loss, gradient or parameter (nothing after the
    last good checkpoint is saved), and `pvpp.runs.stopping.TrainingStopped` after SIGTERM or SIGINT (the checkpoint
    of the step that was running is saved first).
    """
    devices, local_devices, micro_batches = _check_run(
        model_config, train_config, train_data, eval_data, workdir, setting_names
    )
    num_devices = len(devices)
    train_iter = data.batch_iterator(
        train_data,
        train_config.batch_size,
        seed=train_config.seed,
        num_devices=num_devices,
        process_slice=(jax.process_index(), jax.process_count()),  # this process's part of each batch
    )
    num_steps = train_config.num_steps or train_config.num_epochs * train_iter.num_batches_per_epoch
    run_description = {
        "model": model_config.to_dict(),
        "train": train_config.to_dict(),
        "data": dict(data_description or {"name": train_data.name}),
        "num_devices": num_devices,
        "micro_batches": micro_batches,
        "num_steps": num_steps,
        "versions": {"jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__},
    }
    recorded, changes = resume.check_resumable(
        workdir, run_description, allow_changed_settings=allow_changed_settings, names=setting_names
    )
    resumed = _Resume(recorded, changes, setting_names)

    # -- validation passed: from here on the workdir is written, by this process only (process 0 of several).
    # The step is traced with the run's convolution policy; the process's policy is restored afterwards.
    with workdir_files.lock(workdir) if distributed.is_primary() else contextlib.nullcontext(), conv_forms.policy(
        train_config.conv_forms
    ):
        return _train(
            model_config,
            train_config,
            train_data,
            eval_data,
            workdir,
            run_description,
            (devices, local_devices),
            train_iter,
            resumed,
        )


class _Resume(NamedTuple):
    """What `resume.check_resumable` found: config.json's record (None: a new run), the settings that differ
    from it, and how messages name the settings."""

    recorded: dict[str, Any] | None
    changes: list
    names: Mapping[str, str] | None


def _train(
    model_config, train_config, train_data, eval_data, workdir, run_description, devices, train_iter, resumed
):
    """`run_training` after validation, holding the workdir's lock. devices: (the step's, this process's)."""
    devices, local_devices = devices
    num_devices = len(devices)
    num_steps = run_description["num_steps"]
    model = PixelVAEPP(model_config)
    primary = distributed.is_primary()
    fns = step_functions(model_config, train_config, tuple(devices))
    mesh_sharding = device_sharding(local_devices)
    init_images = next(
        data.batch_iterator(
            train_data, train_config.init_batch_size or train_config.batch_size, seed=train_config.seed
        )
    )["image"]
    root_key = jax.random.key(train_config.seed)
    eval_batches = periodic_eval.eval_batches(
        eval_data, train_config, num_devices, mesh_sharding, process_slice=train_iter.process_slice
    )
    distributed.check_same_on_all_processes(
        (train_data.images, eval_data.images, init_images), "the training or evaluation data"
    )
    distributed.warm_up_collectives(tuple(devices))  # while the processes are in step, before the long compiles

    # Asynchronous saves: the `finally` below closes the manager, so the last save completes.
    manager = checkpoint.CheckpointManager(
        os.path.join(workdir, workdir_files.CHECKPOINT_DIRNAME),
        max_to_keep=train_config.keep_checkpoints,
        async_save=True,
    )
    writer = prefetcher = None
    stack = contextlib.ExitStack()
    try:
        template = saving.checkpoint_template(model_config, train_config, local_devices[0])
        state, last_saved = saving.restore_or_init(
            manager,
            template,
            fns.init,
            root_key,
            init_images,
            train_iter,
            recorded_template=_recorded_template(model_config, train_config, resumed.recorded, local_devices[0]),
        )
        step = start_step = int(state.step)
        distributed.check_same_on_all_processes(state, f"the training state at step {step}")
        if primary:  # the checks passed and the state is restored: now the record is written
            writer = _write_record(workdir, run_description, resumed, start_step)
        logging.info(
            "Training %s (prior %s, %.2f M parameters) on %s: steps %d -> %d, batch %d on %d device(s).",
            model_config.image_shape,
            model_config.prior,
            _count(state.params) / 1e6,
            train_data.name,
            step,
            num_steps,
            train_config.batch_size,
            num_devices,
        )
        state = replicate(state, mesh_sharding)
        prefetcher = Prefetcher(train_iter, mesh_sharding)
        progress = ProgressLogger(num_steps, train_config.batch_size, start_step=step)
        period = _MeanOfSteps()
        log_z = log_z_step = None  # the last periodic evaluation's log Z (RBM) and its step
        pending = None  # (step, metrics, data position) of the last dispatched step, not yet checked
        stop_request = stack.enter_context(stopping.graceful_stop())  # SIGTERM / SIGINT: save this step, stop
        stop_now = False

        def check(item: tuple[int, dict[str, jax.Array], Any]) -> None:
            """Reads one step's metrics (waits for that step); raises if anything was not finite."""
            checked_step, metrics, _ = item
            values = first_copy_scalars(metrics)
            if not values.pop("finite"):
                if last_saved is None:
                    saved = "No checkpoint has been saved yet: a rerun starts from step 0."
                else:
                    saved = (
                        f"Nothing after step {last_saved} was saved; the last good checkpoint is step "
                        f"{last_saved} in {manager.directory} (checked finite, with its integrity record), "
                        "and a rerun resumes from it."
                    )
                raise FloatingPointError(
                    f"non-finite training value at step {checked_step}: loss {values['loss']}, gradient norm "
                    f"{values['grad_norm']} (or a NaN / inf parameter). {saved} Rerun with a lower "
                    "--learning_rate or a --grad_clip_norm, and --allow_changed_settings (the change is recorded)."
                )
            period.add(values)

        while step < num_steps:
            images, position = next(prefetcher)
            first = step == start_step
            # The first step traces the step: record which form each convolution uses (only then).
            with conv_forms.recording() if first else contextlib.nullcontext() as traced_convs:
                state, metrics = fns.train(state, images)
            step += 1
            if first:  # the first step compiles: leave it out of the rates and the ETA
                jax.block_until_ready(metrics)
                progress = ProgressLogger(num_steps, train_config.batch_size, start_step=step)
                if primary and traced_convs:
                    workdir_files.write_json(
                        os.path.join(workdir, CONV_FORMS_FILENAME), conv_forms.metadata(traced_convs)
                    )
            manager.check_for_errors()  # a failed background checkpoint write stops the run now, not later
            if pending is not None:
                check(pending)  # step N - 1's metrics, read while step N runs
            pending = (step, metrics, position)
            is_last = step == num_steps
            stop_now = stop_request.reached(step) and not is_last  # asked every step, on every process
            do_log = step % train_config.log_every == 0 or is_last or stop_now
            do_eval = step % train_config.eval_every == 0 or is_last
            do_save = step % train_config.checkpoint_every == 0 or is_last or stop_now
            if not (do_log or do_eval or do_save):
                continue
            check(pending)
            pending = None
            if do_log and primary:
                means = _rename_train_metrics(model, period.pop())
                writer.write(step, {f"train/{k}": v for k, v in means.items()})
                shown = {k: means[k] for k in ("loss", "reconstruction") if k in means}
                shown.update({k: v for k, v in means.items() if k.startswith("kl")})
                if log_z is not None:
                    shown.update(log_Z=log_z, log_Z_step=log_z_step)
                progress(step, shown)
            if do_eval:
                results = periodic_eval.evaluate(fns, state, step, eval_batches, model)
                log_z, log_z_step = results.get("log_partition"), step
                if primary:
                    writer.write(step, results)
                    logging.info("%s", _format(step, results))
                    if train_config.eval_grids:  # this process's first evaluation images, its EMA copy
                        first_images = np.asarray(eval_batches[0][0]).reshape((-1,) + model_config.image_shape)
                        ema = unreplicate(ema_params(state.opt_state))
                        writer.write_images(
                            step,
                            grids.evaluation_grids(
                                model_config, ema, first_images, root_key, step, train_config.eval_grids
                            ),
                        )
                # Rates of the next progress line: training steps only, not the evaluation.
                progress = ProgressLogger(num_steps, train_config.batch_size, start_step=step)
            if do_save:
                manager.save(step, {"train_state": unreplicate(state), "data_position": position})
                last_saved = step
            if stop_now:
                break
        if pending is not None:
            check(pending)
        if stop_now:
            manager.wait_until_finished()  # a failed save is reported as such, not as a stop
            raise stopping.TrainingStopped(step, stop_request.reason, manager.directory)
        final = unreplicate(state)
        manager.wait_until_finished()
        if primary:
            _export(workdir, model_config, final, finished_before=start_step == num_steps)
        return final
    finally:
        if prefetcher is not None:
            prefetcher.close()
        _close(manager, failing=sys.exc_info()[1] is not None)  # waits for a save in flight
        if writer is not None:
            writer.close()
        stack.close()  # the signals' previous handlers, once the last save is complete


def _recorded_template(model_config, train_config, recorded, device):
    """A function giving the checkpoint template of the recorded training settings when they differ from
    `train_config` (`saving.restore_or_init` converts checkpoints of another optimizer structure), else None."""
    if recorded is None:
        return None
    try:
        recorded_config = TrainConfig.from_dict(recorded["train"])
    except (KeyError, TypeError, ValueError):  # a record of another version: only the given settings apply
        return None
    if recorded_config == train_config:
        return None
    return lambda: saving.checkpoint_template(model_config, recorded_config, device)


def _write_record(workdir, run_description, resumed, start_step: int) -> MetricsWriter:
    """Writes config.json (the settings, and the segments with the one starting at `start_step`) and opens the
    metrics, which note the changed settings at `start_step` when a segment starts there. Returns the writer."""
    document, started = resume.record(resumed.recorded, run_description, start_step)
    workdir_files.write_config(workdir, document)
    # What a killed run logged after this step is removed, so that no step appears twice.
    writer = MetricsWriter(workdir, start_step=start_step)
    text = resume.note(resumed.changes, start_step, resumed.names) if started else None
    if text is not None:
        writer.write_note(start_step, text)
        logging.warning("%s", text)
    return writer


def _export(workdir, model_config: ModelConfig, final: TrainState, *, finished_before: bool) -> None:
    """Writes the EMA export, unless the run had finished before this call and its export is intact."""
    step = int(final.step)
    if finished_before and workdir_files.export_is_intact(workdir, step):
        logging.info("The run had already finished at step %d; its intact export is left as it is.", step)
    else:
        path = saving.export_ema(workdir, model_config, final)
        logging.info("Done: step %d; EMA parameters in %s.", step, path)


def _close(manager: checkpoint.CheckpointManager, *, failing: bool) -> None:
    """Closes the checkpoint manager; while another error propagates, a write error of its own is logged, not
    raised over it."""
    try:
        manager.close()
    except checkpoint.CheckpointWriteError as err:
        if not failing:
            raise
        logging.warning("%s", err)


def _check_run(
    model_config, train_config, train_data, eval_data, workdir, names=None
) -> tuple[tuple, tuple, int]:
    """Validates the arguments of `run_training`; returns the devices of the step, this process's ones and the
    micro-batches in use. names: how messages name the settings (`resume.name_of`)."""
    if not isinstance(model_config, ModelConfig):
        raise TypeError(f"model_config must be a ModelConfig, got {type(model_config).__name__}")
    if not isinstance(train_config, TrainConfig):
        raise TypeError(f"train_config must be a TrainConfig, got {type(train_config).__name__}")
    devices, local_devices = run_devices(train_config.num_devices)
    num_devices = len(devices)
    check_divisible(train_config.batch_size, resume.name_of("train.batch_size", names), num_devices)
    micro_batches = train_config.micro_batches_in_use(model_config.nr_filters, num_devices, devices[0].platform)
    check_divisible(
        train_config.batch_size // num_devices,
        f"the device batch ({resume.name_of('train.batch_size', names)} / {num_devices} devices)",
        micro_batches,
        f"micro-batches ({resume.name_of('train.micro_batches', names)})",
    )
    for name, split in (("train_data", train_data), ("eval_data", eval_data)):
        if not isinstance(split, data.DataSplit):
            raise TypeError(f"{name} must be a pvpp.data.DataSplit, got {type(split).__name__}")
        if tuple(split.images.shape[1:]) != model_config.image_shape:
            raise ValueError(
                f"{name} images are {tuple(split.images.shape[1:])} but model_config.image_shape is "
                f"{model_config.image_shape}"
            )
    eval_batch_size = train_config.eval_batch_size or train_config.batch_size
    check_divisible(eval_batch_size, resume.name_of("train.eval_batch_size", names), num_devices)
    if len(train_data) < train_config.batch_size:
        raise SettingError(
            f"{resume.name_of('train.batch_size', names)}={train_config.batch_size} exceeds the "
            f"{len(train_data)} training images (split {train_data.split!r} of {train_data.name}): a batch must "
            "fit in one epoch"
        )
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ValueError(f"workdir {workdir} exists and is not a directory")
    return devices, local_devices, micro_batches


def _rename_train_metrics(model: PixelVAEPP, means: dict[str, float]) -> dict[str, float]:
    """An unnormalised prior's training KL lacks log Z: it is logged as 'kl_minus_log_z'."""
    if not model.prior.normalized and "kl" in means:
        means = dict(means)
        means["kl_minus_log_z"] = means.pop("kl")
    return means


class _MeanOfSteps:
    """Running means of the per-step scalars since the last `pop`."""

    def __init__(self):
        self._sums: dict[str, float] = {}
        self._count = 0

    def add(self, values: Mapping[str, float]) -> None:
        for name, value in values.items():
            self._sums[name] = self._sums.get(name, 0.0) + value
        self._count += 1

    def pop(self) -> dict[str, float]:
        means = {name: total / max(self._count, 1) for name, total in self._sums.items()}
        self._sums, self._count = {}, 0
        return means


def _count(tree) -> int:
    return int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(tree)))


def _format(step: int, results: Mapping[str, float]) -> str:
    """The periodic evaluation as two short lines (current and EMA parameters), in nats per image: -ELBO with one
    hard sample, reconstruction, the relaxed KL at beta 1, and log Z with its AIS spread where the prior has one."""
    lines = [f"eval step {step}:"]
    for prefix, suffix, label in (("eval", "", "parameters"), ("eval_ema", "_ema", "EMA")):
        parts = [f"-ELBO {results[f'{prefix}/negative_elbo']:.2f}"] if f"{prefix}/negative_elbo" in results else []
        for name, shown in (("reconstruction", "reconstruction"), ("kl", "relaxed KL")):
            if f"{prefix}/{name}" in results:
                parts.append(f"{shown} {results[f'{prefix}/{name}']:.2f}")
        if f"log_partition{suffix}" in results:
            parts.append(
                f"log Z {results[f'log_partition{suffix}']:.2f} in [{results[f'log_partition_lower{suffix}']:.2f}, "
                f"{results[f'log_partition_upper{suffix}']:.2f}]"
            )
        lines.append(f"  {label:>10}: " + ", ".join(parts) + " nats")
    return "\n".join(lines)
