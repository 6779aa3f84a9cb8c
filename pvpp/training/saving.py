"""Saving and restoring a run's train state: what a checkpoint holds (`checkpoint_template`), resuming from the
latest readable checkpoint or initialising (`restore_or_init`), the EMA export at the end (`export_ema`) and the
EMA parameters inside a checkpoint (`ema_from_checkpoint`). The files and their names are `pvpp.runs.workdir`'s.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from pvpp.model import ModelConfig
from pvpp.runs import checkpoint
from pvpp.runs.workdir import EMA_PARAMS_DIRNAME
from pvpp.training.config import TrainConfig
from pvpp.training.optim import ema_params
from pvpp.training.state import TrainState, state_initializer

_POSITION_KEYS = ("seed", "epoch", "batch_index")  # a data iterator's position (`BatchIterator.get_state`)


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


def export_ema(workdir, model_config: ModelConfig, state: TrainState) -> str:
    """Writes the EMA parameters of `state` to `<workdir>/ema_params` (replacing an older export); its path."""
    path = os.path.join(os.fspath(workdir), EMA_PARAMS_DIRNAME)
    export = {"model": model_config.to_dict(), "step": int(state.step)}
    checkpoint.export_params(path, ema_params(state.opt_state), export, overwrite=True)
    return path


def ema_from_checkpoint(model_config: ModelConfig, train_config: TrainConfig, directory) -> tuple[Any, int]:
    """The EMA parameters inside the latest readable training checkpoint in `directory`: (params, step)."""
    template = checkpoint_template(model_config, train_config, jax.local_devices()[0])
    with checkpoint.CheckpointManager(directory, read_only=True) as manager:
        restored = manager.restore_latest(template)
    if restored is None:
        raise FileNotFoundError(f"no checkpoint in {directory}")
    step, saved = restored
    return ema_params(saved["train_state"].opt_state), int(step)
