"""Training: the train state, the pmap train step, and the loop with checkpoints, evaluation and metrics.

    train_and_evaluate(model_config, train_config, data_config, workdir)     # what the entry points call
    run_training(model_config, train_config, train_data, eval_data, workdir)  # same, on DataSplits in memory

The step (`train_step`, pmapped over the devices with axis name 'batch'): uint8 images -> model space ->
relaxed ELBO (`objectives.relaxed_elbo_loss`, KL weight from the warm-up schedule) -> gradients averaged over
devices with `lax.pmean` -> Adam, learning-rate decay and the parameter EMA (`optim.make_optimizer`). For the
RBM prior the negative phase comes from persistent chains (PCD) advanced every step under the current
parameters, or from fresh AIS samples. The state is donated.

Randomness. One root key from `TrainConfig.seed`, split once into the named streams of `STREAMS`. Inside the
step each stream is folded with the step number, so a resumed run draws exactly the randomness of an
uninterrupted one. The latent noise of example i is `fold_in(fold_in(latent, step), i)` with i its index in
the GLOBAL batch (device * per-device batch + row): 8 devices x batch b and 1 device x batch 8b draw the same
noise and make the same update (without dropout). The chains' key is the same on every device, so the chains
and the negative phase are identical everywhere. The dropout key is folded with the device index
(`lax.axis_index`): a dropout mask per example would need the network vmapped over single examples, measured
13% slower on CPU.

The loop dispatches step N + 1 before it reads the metrics of step N (at most two steps in flight: more queued
collectives can deadlock XLA's CPU devices), draws and copies batches in a background thread, and checks every
step's loss, gradient norm and new parameters: a non-finite value raises `FloatingPointError` naming the step,
and since a checkpoint of step N is written only after step N was checked, no bad state is ever saved.
Logging, evaluation and checkpoints fire on their periods and on the final step.

Evaluation (every `eval_every` steps, a cheap estimate; the full IWAE evaluation is `pvpp.evaluate`): on a
fixed subset of the evaluation split, with fixed noise, for the current and the EMA parameters: log Z by AIS,
the relaxed loss with beta 1 including log Z ('loss', 'reconstruction', 'kl'), and the ELBO with one hard
sample ('negative_elbo', an upper bound on the NLL given log Z; 'negative_elbo_bpd' for RGB). All in nats per
image.

Workdir layout::

    <workdir>/config.json        {"model": ModelConfig.to_dict(), "train": TrainConfig.to_dict(),
                                  "data": DataConfig.to_dict(), "num_devices", "num_steps", "versions"}
                                 (rebuild the model with ModelConfig.from_dict(config["model"]))
    <workdir>/metrics.jsonl      one line per log period ("train/...") and per evaluation ("eval/...",
                                 "eval_ema/...", "log_partition...")
    <workdir>/checkpoints/<step> orbax checkpoints, the last `keep_checkpoints`: {"train_state":
                                 TrainState (one copy, not replicated), "data_position": {"seed", "epoch",
                                 "batch_index"}}
    <workdir>/ema_params         at the end: the EMA parameters and {"model": ..., "step": ...}, written by
                                 `checkpoint.export_params` (read with `checkpoint.load_params`)

Metrics names. 'train/kl' is the relaxed KL for the baselines; for the RBM it lacks log Z (unknown during the
step) and is logged as 'train/kl_minus_log_z'. The training loss is a surrogate, never a likelihood.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import queue
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from pvpp import checkpoint, data, objectives, relax
from pvpp.metrics import MetricsWriter, ProgressLogger
from pvpp.model import ModelConfig, ModelOutput, PixelVAEPP, rbm_params, to_model_space
from pvpp.optim import OptimConfig, ema_params, kl_weight_schedule, learning_rate_schedule, make_optimizer
from pvpp.priors import gaussian
from pvpp.priors import rbm as rbm_lib

AXIS = "batch"
NEGATIVE_PHASES = ("pcd", "ais")
#: Named key streams, split once from the root key (the order is part of the format: append only).
STREAMS = ("init", "latent", "dropout", "chains", "negative_ais", "log_z", "eval")
CONFIG_FILENAME = "config.json"
CHECKPOINT_DIRNAME = "checkpoints"
EMA_PARAMS_DIRNAME = "ema_params"
_PREFETCH = 2  # batches drawn and copied to the devices ahead of the step
_POSITION_KEYS = ("seed", "epoch", "batch_index")  # a data iterator's position (`BatchIterator.get_state`)


# ----------------------------------------------------------------------------------------------------------
# Configuration


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class AISConfig:
    """Settings of one use of AIS (`priors.ais.ais_log_partition`): M chains, K inverse temperatures."""

    num_chains: int = 100
    num_betas: int = 1000
    sweeps_per_beta: int = 1
    schedule: str = "linear"

    def __post_init__(self):
        _check_int("num_chains", self.num_chains, 1)
        _check_int("num_betas", self.num_betas, 2)
        _check_int("sweeps_per_beta", self.sweeps_per_beta, 0)
        if self.schedule not in ("linear", "dense_near_one"):
            raise ValueError(f"schedule must be 'linear' or 'dense_near_one', got {self.schedule!r}")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which data: a name of `pvpp.data.DATASETS`, the folder of the original files, the splits.

    data_dir: None means env PVPP_DATA_DIR (or downloads when that is unset too). variant: the loader's
    `config` (omniglot: 'chardata' or 'resized_105'; None: the loader's default). validation_size: see
    `pvpp.data.load`.
    """

    name: str
    data_dir: str | None = None
    train_split: str = "train"
    eval_split: str = "test"
    variant: str | None = None
    validation_size: int | None = None

    def __post_init__(self):
        if self.name not in data.DATASETS:
            raise ValueError(f"data set name must be one of {sorted(data.DATASETS)}, got {self.name!r}")
        for name in ("train_split", "eval_split"):
            if getattr(self, name) not in data.SPLITS:
                raise ValueError(f"{name} must be one of {data.SPLITS}, got {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything about a training run except the model and the data. Variants: `config.replace(...)`.

    batch_size: global (all devices), a multiple of the device count. num_steps or num_epochs: exactly one is
    set.
    num_devices: None = all local devices. optim: Adam, lr decay, EMA, KL warm-up (`optim.OptimConfig`).
    negative_phase: 'pcd' (`num_chains` persistent chains, `sweeps_per_step` block-Gibbs sweeps per step) or
    'ais' (fresh `negative_ais` samples each step). log_z_ais: AIS for log Z at each evaluation.
    init_batch_size: images for the data-dependent init (None: batch_size). eval_examples: the fixed
    evaluation subset (the first images of the evaluation split). eval_batch_size: None means batch_size.
    """

    batch_size: int = 128
    num_steps: int | None = 500_000
    num_epochs: int | None = None
    num_devices: int | None = None
    seed: int = 0
    optim: OptimConfig = OptimConfig()
    negative_phase: str = "pcd"
    num_chains: int = 100
    sweeps_per_step: int = 1
    negative_ais: AISConfig = AISConfig(num_chains=100, num_betas=100)
    log_z_ais: AISConfig = AISConfig(num_chains=100, num_betas=1000)
    init_batch_size: int | None = None
    log_every: int = 100
    eval_every: int = 10_000
    eval_examples: int = 1000
    eval_batch_size: int | None = None
    checkpoint_every: int = 2000
    keep_checkpoints: int = 3

    def __post_init__(self):
        if (self.num_steps is None) == (self.num_epochs is None):
            raise ValueError(
                "exactly one of num_steps and num_epochs must be set, "
                f"got {self.num_steps} and {self.num_epochs}"
            )
        for name, minimum in (
            ("batch_size", 1),
            ("seed", 0),
            ("num_chains", 1),
            ("sweeps_per_step", 0),
            ("log_every", 1),
            ("eval_every", 1),
            ("eval_examples", 1),
            ("checkpoint_every", 1),
            ("keep_checkpoints", 1),
        ):
            _check_int(name, getattr(self, name), minimum)
        for name in ("num_steps", "num_epochs", "num_devices", "init_batch_size", "eval_batch_size"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), 1)
        if self.negative_phase not in NEGATIVE_PHASES:
            raise ValueError(f"negative_phase must be one of {NEGATIVE_PHASES}, got {self.negative_phase!r}")
        for name in ("optim", "negative_ais", "log_z_ais"):
            expected = OptimConfig if name == "optim" else AISConfig
            if not isinstance(getattr(self, name), expected):
                raise TypeError(
                    f"{name} must be a {expected.__name__}, got {type(getattr(self, name)).__name__}"
                )
        if self.num_devices is not None and self.batch_size % self.num_devices:
            raise ValueError(
                f"batch_size {self.batch_size} is not a multiple of num_devices {self.num_devices}"
            )

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        values = dict(values)
        values["optim"] = OptimConfig(**values["optim"])
        values["negative_ais"] = AISConfig(**values["negative_ais"])
        values["log_z_ais"] = AISConfig(**values["log_z_ais"])
        return cls(**values)


# ----------------------------------------------------------------------------------------------------------
# State


@flax.struct.dataclass
class TrainState:
    """Everything the step changes (a pytree; one copy per device inside the loop, one in checkpoints).

    step: int32 [] optimizer steps done. params: the model's 'params' collection. opt_state: the optax state,
    the parameter EMA included (`optim.ema_params(opt_state)`). chains: persistent RBM chains (PCD), z_left
    [C, nL] and z_right [C, nR], or None. key: the root PRNG key of the run (`named_keys(key)` gives the
    streams).
    """

    step: jax.Array
    params: Any
    opt_state: Any
    chains: rbm_lib.ChainState | None
    key: jax.Array


def named_keys(root: jax.Array) -> dict[str, jax.Array]:
    """The run's named key streams (`STREAMS`), split once from the root key."""
    return dict(zip(STREAMS, jax.random.split(root, len(STREAMS))))


def init_train_state(
    model: PixelVAEPP,
    optimizer: optax.GradientTransformation,
    key: jax.Array,
    images: jax.Array,
    *,
    num_chains: int | None = None,
) -> TrainState:
    """The state at step 0 for the root key `key` (`jax.random.key(seed)`).

    Data-dependent init of the model on `images` (uint8 [B, H, W, C], one batch), the optimizer state (the EMA
    starts at the initial parameters), and for PCD (`num_chains` not None, RBM prior) persistent chains drawn
    under the initial RBM.
    """
    params_key, noise_key, chains_key = jax.random.split(named_keys(key)["init"], 3)
    # The ~100 parameter initialisers draw from an 'rbg' key (XLA's RngBitGenerator): with threefry each one
    # unrolls its own threefry circuit and the init compiles 2-4x slower on CPU. rbg bits are deterministic on
    # one backend but may differ between backends (the same seed may give another init on CPU and GPU).
    params_key = jax.random.wrap_key_data(jax.random.bits(params_key, (4,), jnp.uint32), impl="rbg")
    x = to_model_space(model.config, jnp.asarray(images))
    params = model.init(params_key, x, noise_key)["params"]
    chains = None
    if num_chains is not None:
        if model.config.prior != "rbm":
            raise ValueError(
                f"num_chains is for the RBM prior's persistent chains; the prior is {model.config.prior!r}"
            )
        chains = rbm_lib.init_chains(rbm_params(params), chains_key, num_chains)
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params), chains=chains, key=key
    )


# ----------------------------------------------------------------------------------------------------------
# The step (per-device code; pmapped with axis name AXIS)


def train_step(
    state: TrainState,
    images: jax.Array,
    *,
    model: PixelVAEPP,
    optimizer: optax.GradientTransformation,
    config: TrainConfig,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step on this device's images (uint8 [b, H, W, C]); call under pmap with axis AXIS.

    Returns the new state and metrics averaged over all devices (nats per image; 'finite' is False when the
    loss, the gradient norm or a new parameter is NaN / inf).
    """
    model_config = model.config
    keys = named_keys(state.key)
    step = state.step
    x = to_model_space(model_config, images)
    example_keys = _example_keys(jax.random.fold_in(keys["latent"], step), x.shape[0])
    dropout_key = jax.random.fold_in(jax.random.fold_in(keys["dropout"], step), lax.axis_index(AXIS))

    chains, negative_phase = state.chains, None
    if model_config.prior == "rbm":
        rbm = rbm_params(state.params)
        if config.negative_phase == "pcd":
            # Same key on every device: the chains stay identical across devices.
            chains = rbm_lib.advance_chains(
                rbm, jax.random.fold_in(keys["chains"], step), state.chains, config.sweeps_per_step
            )
            negative_phase = objectives.negative_phase_from_chains(chains)
        else:
            result = _ais(rbm, jax.random.fold_in(keys["negative_ais"], step), config.negative_ais)
            negative_phase = objectives.negative_phase_from_ais(result)
    beta_kl = kl_weight_schedule(config.optim)(step)

    def loss_fn(params):
        output = forward(model, params, x, example_keys, dropout_key, train=True)
        return objectives.relaxed_elbo_loss(
            model_config, output, x, beta_kl=beta_kl, negative_phase=negative_phase
        )

    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    # Equal per-device batches: the mean of the device means is the mean over the global batch.
    grads = lax.pmean(grads, AXIS)
    metrics = lax.pmean(metrics, AXIS)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics["grad_norm"] = optax.tree.norm(grads)
    metrics["learning_rate"] = learning_rate_schedule(config.optim)(step)
    metrics["finite"] = (
        jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"]) & _all_finite(params)
    )
    new_state = state.replace(step=step + 1, params=params, opt_state=opt_state, chains=chains)
    return new_state, metrics


def forward(
    model: PixelVAEPP,
    params: Any,
    x: jax.Array,
    example_keys: jax.Array,
    dropout_key: jax.Array,
    *,
    train: bool,
) -> ModelOutput:
    """`PixelVAEPP.__call__` with one latent-noise key per example: x [B, H, W, C] in [-1, 1], example_keys
    [B] typed keys. The down path runs once; dropout (train=True) draws from `dropout_key`."""
    variables = {"params": params}
    down_key, up_key = jax.random.split(dropout_key)
    down, posterior = model.apply(
        variables, x, train=train, method=PixelVAEPP.encode_with_down_path, rngs={"dropout": down_key}
    )
    latents = sample_latents(model.config, example_keys, posterior)
    decoder_out = model.apply(
        variables,
        down,
        latents,
        train=train,
        method=PixelVAEPP.decode_with_down_path,
        rngs={"dropout": up_key},
    )
    prior = model.apply(variables, method=PixelVAEPP.prior_params)
    return ModelOutput(posterior, latents, decoder_out, prior)


def sample_latents(config: ModelConfig, example_keys: jax.Array, posterior: jax.Array) -> jax.Array:
    """The reparameterised sample [B, K] of `PixelVAEPP`, example b drawn with example_keys[b] only:
    Gumbel-sigmoid (binary priors, temperature config.tau), Gaussian, or the empty posterior (prior
    'none')."""
    if config.prior == "none":
        return posterior
    if config.prior == "gaussian":
        mean, log_scale = jnp.split(posterior, 2, axis=-1)
        return jax.vmap(gaussian.posterior_sample)(example_keys, mean, log_scale)
    return jax.vmap(lambda key, logits: relax.gumbel_sigmoid(key, logits, config.tau))(
        example_keys, posterior
    )


def eval_step(
    params: Any,
    log_partition: jax.Array,
    key: jax.Array,
    images: jax.Array,
    mask: jax.Array,
    *,
    model: PixelVAEPP,
) -> dict[str, jax.Array]:
    """Sums over this device's images (uint8 [b, H, W, C], mask bool [b]), psum-ed over devices: the relaxed
    loss with beta 1 and its parts, and the one-sample hard ELBO, nats per image times the count; 'count'.

    key: the noise of the evaluation (the same at every evaluation makes them comparable); example i of the
    global batch draws its latents from fold_in(key, i). Call under pmap with axis AXIS.
    """
    model_config = model.config
    x = to_model_space(model_config, images)
    relaxed_key, hard_key = jax.random.split(key)
    output = forward(model, params, x, _example_keys(relaxed_key, x.shape[0]), relaxed_key, train=False)
    negative_phase = None
    if model_config.prior == "rbm":
        # The negative-phase term has value 0 (it only carries the gradient of log Z): one dummy sample.
        num_left = model_config.rbm_num_left
        num_right = model_config.num_latents - num_left
        negative_phase = objectives.NegativePhase(
            jnp.zeros((1, num_left)), jnp.zeros((1, num_right)), jnp.ones((1,))
        )

    def per_example(out: ModelOutput, x_one: jax.Array) -> dict[str, jax.Array]:
        one = ModelOutput(out.posterior[None], out.latents[None], out.decoder_out[None], out.prior)
        _, metrics = objectives.relaxed_elbo_loss(
            model_config,
            one,
            x_one[None],
            beta_kl=1.0,
            negative_phase=negative_phase,
            log_partition=log_partition,
        )
        return {name: metrics[name] for name in ("loss", "reconstruction", "kl")}

    relaxed = jax.vmap(per_example, in_axes=(ModelOutput(0, 0, 0, None), 0))(output, x)
    hard = objectives.iwae_log_likelihood(
        model,
        {"params": params},
        x,
        jax.random.fold_in(hard_key, lax.axis_index(AXIS)),
        num_samples=1,
        log_partition=log_partition if model_config.prior == "rbm" else None,
    )
    weights = mask.astype(x.dtype)
    sums = {name: jnp.sum(weights * value) for name, value in relaxed.items()}
    sums["negative_elbo"] = -jnp.sum(weights * hard["elbo"])
    sums["count"] = jnp.sum(weights)
    return lax.psum(sums, AXIS)


# ----------------------------------------------------------------------------------------------------------
# Entry


def train_and_evaluate(
    model_config: ModelConfig, train_config: TrainConfig, data_config: DataConfig, workdir: str | os.PathLike
) -> TrainState:
    """Loads the data of `data_config` and trains (see `run_training`). Returns the final state."""
    if not isinstance(data_config, DataConfig):
        raise TypeError(f"data_config must be a DataConfig, got {type(data_config).__name__}")
    data_dir = data.loading.resolve_data_dir(data_config.data_dir)
    data_config = dataclasses.replace(data_config, data_dir=None if data_dir is None else str(data_dir))
    kwargs = dict(data_dir=data_dir, config=data_config.variant, validation_size=data_config.validation_size)
    train_data = data.load(data_config.name, data_config.train_split, **kwargs)
    eval_data = data.load(data_config.name, data_config.eval_split, **kwargs)
    if train_data.note:
        logging.warning("Data: %s", train_data.note)
    return run_training(
        model_config, train_config, train_data, eval_data, workdir, data_description=data_config.to_dict()
    )


def run_training(
    model_config: ModelConfig,
    train_config: TrainConfig,
    train_data: data.DataSplit,
    eval_data: data.DataSplit,
    workdir: str | os.PathLike,
    *,
    data_description: Mapping[str, Any] | None = None,
) -> TrainState:
    """Trains `model_config` on `train_data`, resuming from the latest readable checkpoint in `workdir`.

    Everything is validated before anything is written. Returns the final state (one copy, on the first
    device).
    Raises FloatingPointError when a step produces a non-finite loss, gradient or parameter (nothing after the
    last good checkpoint is saved).
    """
    devices = _check_run(model_config, train_config, train_data, eval_data, workdir)
    num_devices = len(devices)
    train_iter = data.batch_iterator(
        train_data, train_config.batch_size, seed=train_config.seed, num_devices=num_devices
    )
    num_steps = train_config.num_steps or train_config.num_epochs * train_iter.num_batches_per_epoch
    run_description = {
        "model": model_config.to_dict(),
        "train": train_config.to_dict(),
        "data": dict(data_description or {"name": train_data.name}),
        "num_devices": num_devices,
        "num_steps": num_steps,
        "versions": {"jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__},
    }
    _check_resumable(workdir, run_description)

    # -- validation passed: from here on the workdir is written.
    os.makedirs(workdir, exist_ok=True)
    _write_json(os.path.join(workdir, CONFIG_FILENAME), run_description)
    fns = step_functions(model_config, train_config, tuple(devices))
    mesh_sharding = device_sharding(devices)
    init_images = next(
        data.batch_iterator(
            train_data, train_config.init_batch_size or train_config.batch_size, seed=train_config.seed
        )
    )["image"]
    root_key = jax.random.key(train_config.seed)
    eval_batches = _eval_batches(eval_data, train_config, num_devices, mesh_sharding)

    manager = checkpoint.CheckpointManager(
        os.path.join(workdir, CHECKPOINT_DIRNAME), max_to_keep=train_config.keep_checkpoints
    )
    writer = MetricsWriter(workdir)
    prefetcher = None
    try:
        state, last_saved = _restore_or_init(
            manager, fns, model_config, train_config, root_key, init_images, train_iter, devices[0]
        )
        step = int(state.step)
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
        prefetcher = _Prefetcher(train_iter, mesh_sharding)
        progress = ProgressLogger(num_steps, train_config.batch_size, start_step=step)
        period = _MeanOfSteps()
        log_z = None
        pending = None  # (step, metrics, data position) of the last dispatched step, not yet checked

        def check(item: tuple[int, dict[str, jax.Array], Any]) -> None:
            """Reads one step's metrics (waits for that step); raises if anything was not finite."""
            checked_step, metrics, _ = item
            values = _first_copy_scalars(metrics)
            if not values.pop("finite"):
                where = "none" if last_saved is None else f"step {last_saved} in {manager.directory}"
                raise FloatingPointError(
                    f"non-finite training value at step {checked_step}: loss {values['loss']}, gradient norm "
                    f"{values['grad_norm']} (or a NaN / inf parameter). Nothing after step {last_saved} was "
                    f"saved; the last good checkpoint is {where}. Lower --learning_rate or set "
                    "--grad_clip_norm, then rerun (it resumes from there)."
                )
            period.add(values)

        while step < num_steps:
            images, position = next(prefetcher)
            state, metrics = fns.train(state, images)
            step += 1
            if pending is not None:
                check(pending)  # step N - 1's metrics, read while step N runs
            pending = (step, metrics, position)
            is_last = step == num_steps
            do_log = step % train_config.log_every == 0 or is_last
            do_eval = step % train_config.eval_every == 0 or is_last
            do_save = step % train_config.checkpoint_every == 0 or is_last
            if not (do_log or do_eval or do_save):
                continue
            check(pending)
            pending = None
            if do_log:
                means = _rename_train_metrics(model_config, period.pop())
                writer.write(step, {f"train/{k}": v for k, v in means.items()})
                shown = {k: means[k] for k in ("loss", "reconstruction") if k in means}
                shown.update({k: v for k, v in means.items() if k.startswith("kl")})
                if log_z is not None:
                    shown["log_Z"] = log_z
                progress(step, shown)
            if do_eval:
                results = _evaluate(fns, state, step, eval_batches, model_config)
                writer.write(step, results)
                log_z = results.get("log_partition")
                logging.info("eval step %d: %s", step, _format(results))
                # Rates of the next progress line: training steps only, not the evaluation.
                progress = ProgressLogger(num_steps, train_config.batch_size, start_step=step)
            if do_save:
                manager.save(step, {"train_state": unreplicate(state), "data_position": position})
                last_saved = step
        if pending is not None:
            check(pending)
        final = unreplicate(state)
        manager.wait_until_finished()
        export = {"model": model_config.to_dict(), "step": int(final.step)}
        checkpoint.export_params(
            os.path.join(workdir, EMA_PARAMS_DIRNAME), ema_params(final.opt_state), export, overwrite=True
        )
        logging.info(
            "Done: step %d; EMA parameters in %s.", int(final.step), os.path.join(workdir, EMA_PARAMS_DIRNAME)
        )
        return final
    finally:
        if prefetcher is not None:
            prefetcher.close()
        manager.close()  # waits for a save in flight
        writer.close()


# ----------------------------------------------------------------------------------------------------------
# Compiled functions (cached per model, step settings and devices, so repeated runs in one process reuse them)


@dataclasses.dataclass(frozen=True)
class StepFunctions:
    """The compiled functions of a run (see `step_functions`)."""

    init: Any  # (root key, uint8 images [B, H, W, C]) -> TrainState (jit, one device)
    train: Any  # (state [D, ...], images [D, b, ...]) -> (state, metrics [D]) (pmap, state donated)
    evaluate: Any  # (params [D, ...], log_partition [], key, images, mask) -> sums [D] (pmap)
    ais: Any  # (RBMParams, key) -> AISResult (jit, first device)


def step_functions(model_config: ModelConfig, config: TrainConfig, devices: tuple) -> StepFunctions:
    """The compiled functions of a run for `devices` (a tuple of jax devices).

    Each is cached on the settings it reads (configs are frozen, hashable), so runs in one process that differ
    in anything else (length, periods, seed) reuse the compilations.
    """
    num_chains = config.num_chains if _uses_chains(model_config, config) else None
    step_settings = (
        config.optim,
        config.negative_phase,
        num_chains,
        config.sweeps_per_step,
        config.negative_ais,
    )
    return StepFunctions(
        init=_init_function(model_config, config.optim, num_chains),
        train=_train_function(model_config, step_settings, devices),
        evaluate=_eval_function(model_config, devices),
        ais=_ais_function(config.log_z_ais),
    )


@functools.lru_cache(maxsize=8)
def _init_function(model_config: ModelConfig, optim: OptimConfig, num_chains: int | None):
    init = functools.partial(
        init_train_state, PixelVAEPP(model_config), make_optimizer(optim), num_chains=num_chains
    )
    return jax.jit(init)


@functools.lru_cache(maxsize=8)
def _train_function(model_config: ModelConfig, step_settings: tuple, devices: tuple):
    optim, negative_phase, num_chains, sweeps_per_step, negative_ais = step_settings
    config = TrainConfig(
        num_steps=1,
        optim=optim,
        negative_phase=negative_phase,
        num_chains=num_chains or 1,
        sweeps_per_step=sweeps_per_step,
        negative_ais=negative_ais,
    )
    step = functools.partial(
        train_step, model=PixelVAEPP(model_config), optimizer=make_optimizer(optim), config=config
    )
    return jax.pmap(step, axis_name=AXIS, devices=devices, donate_argnums=(0,))


@functools.lru_cache(maxsize=8)
def _eval_function(model_config: ModelConfig, devices: tuple):
    step = functools.partial(eval_step, model=PixelVAEPP(model_config))
    return jax.pmap(step, axis_name=AXIS, devices=devices, in_axes=(0, None, None, 0, 0))


@functools.lru_cache(maxsize=8)
def _ais_function(config: AISConfig):
    return jax.jit(functools.partial(_ais, config=config))


def _ais(rbm: rbm_lib.RBMParams, key: jax.Array, config: AISConfig) -> rbm_lib.AISResult:
    return rbm_lib.ais_log_partition(
        rbm,
        key,
        num_chains=config.num_chains,
        num_betas=config.num_betas,
        sweeps_per_beta=config.sweeps_per_beta,
        schedule=config.schedule,
    )


# ----------------------------------------------------------------------------------------------------------
# Evaluation


def _evaluate(
    fns: StepFunctions, state: TrainState, step: int, eval_batches: list, model_config: ModelConfig
) -> dict[str, float]:
    """Metrics of the current and the EMA parameters on the fixed evaluation batches."""
    results: dict[str, float] = {}
    keys = named_keys(unreplicate(state.key))
    key = jax.random.fold_in(keys["log_z"], step)
    for prefix, params in (("eval", state.params), ("eval_ema", ema_params(state.opt_state))):
        log_z = jnp.zeros(())
        if model_config.prior == "rbm":
            ais = fns.ais(rbm_params(unreplicate(params)), key)
            log_z = ais.log_partition
            suffix = "" if prefix == "eval" else "_ema"
            results.update(
                {
                    f"log_partition{suffix}": float(ais.log_partition),
                    f"log_partition_lower{suffix}": float(ais.log_partition_lower),
                    f"log_partition_upper{suffix}": float(ais.log_partition_upper),
                    f"ais_effective_sample_size{suffix}": float(ais.effective_sample_size),
                }
            )
        totals: dict[str, float] = {}
        pending = None
        for images, mask in eval_batches:
            sums = fns.evaluate(params, log_z, keys["eval"], images, mask)
            if pending is not None:
                _accumulate(totals, pending)  # read batch k - 1 while batch k runs
            pending = sums
        _accumulate(totals, pending)
        count = totals.pop("count")
        for name, total in totals.items():
            results[f"{prefix}/{name}"] = total / count
        if model_config.likelihood == "logistic_mixture":
            dims = math.prod(model_config.image_shape)
            results[f"{prefix}/negative_elbo_bpd"] = results[f"{prefix}/negative_elbo"] / (
                dims * math.log(2.0)
            )
    return results


def _accumulate(totals: dict[str, float], sums: dict[str, jax.Array]) -> None:
    for name, value in _first_copy_scalars(sums).items():
        totals[name] = totals.get(name, 0.0) + value


def _first_copy_scalars(values: dict[str, jax.Array]) -> dict[str, float]:
    """Host floats of replicated scalars [D] (the copy on the first device; one transfer for all)."""
    fetched = jax.device_get({name: value.addressable_shards[0].data for name, value in values.items()})
    return {name: float(np.asarray(value).reshape(-1)[0]) for name, value in fetched.items()}


def _eval_batches(eval_data, config: TrainConfig, num_devices: int, sharding) -> list:
    """The fixed evaluation subset as device batches (images, mask), binarized once with a fixed seed."""
    count = min(config.eval_examples, len(eval_data))
    subset = dataclasses.replace(
        eval_data,
        images=eval_data.images[:count],
        labels=None if eval_data.labels is None else eval_data.labels[:count],
    )
    batch_size = config.eval_batch_size or config.batch_size
    batch_size = min(batch_size, -(-count // num_devices) * num_devices)  # no batch larger than the subset
    iterator = data.batch_iterator(
        subset,
        batch_size,
        seed=config.seed,
        shuffle=False,
        num_epochs=1,
        remainder="pad",
        num_devices=num_devices,
    )
    return [(jax.device_put(b["image"], sharding), jax.device_put(b["mask"], sharding)) for b in iterator]


# ----------------------------------------------------------------------------------------------------------
# Helpers


def _uses_chains(model_config: ModelConfig, config: TrainConfig) -> bool:
    return model_config.prior == "rbm" and config.negative_phase == "pcd"


def _example_keys(key: jax.Array, per_device: int) -> jax.Array:
    """[per_device] keys fold_in(key, global example index), global index = device * per_device + row."""
    first = lax.axis_index(AXIS) * per_device
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(first + jnp.arange(per_device))


def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def _rename_train_metrics(model_config: ModelConfig, means: dict[str, float]) -> dict[str, float]:
    if model_config.prior == "rbm" and "kl" in means:
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


def checkpoint_template(model_config: ModelConfig, train_config: TrainConfig, device: jax.Device) -> dict:
    """What a checkpoint of this run holds, as shapes and dtypes on `device` (nothing computed or compiled).

    {"train_state": TrainState of jax.ShapeDtypeStruct, "data_position": {"seed", "epoch", "batch_index"}}.
    Pass it to `checkpoint.CheckpointManager.restore_latest` to read a run's checkpoints (e.g. to evaluate).
    """
    fns = step_functions(model_config, train_config, (device,))
    images = jax.ShapeDtypeStruct(
        (train_config.init_batch_size or train_config.batch_size,) + model_config.image_shape, jnp.uint8
    )
    shapes = jax.eval_shape(fns.init, jax.random.key(train_config.seed), images)
    sharding = jax.sharding.SingleDeviceSharding(device)
    state = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)
    return {"train_state": state, "data_position": {k: np.zeros((), np.int64) for k in _POSITION_KEYS}}


def _restore_or_init(manager, fns, model_config, train_config, root_key, init_images, train_iter, device):
    """The latest readable checkpoint (the iterator set to its position), else the initial state.

    Returns (state on `device`, the restored step or None).
    """
    restored = manager.restore_latest(checkpoint_template(model_config, train_config, device))
    if restored is None:
        logging.info("Initialising from one batch of %d images (data-dependent init).", len(init_images))
        return fns.init(root_key, init_images), None
    step, saved = restored
    train_iter.set_state(saved["data_position"])
    logging.info("Resumed from the checkpoint of step %d in %s.", step, manager.directory)
    return saved["train_state"], step


class _Prefetcher:
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


def _check_run(model_config, train_config, train_data, eval_data, workdir) -> list:
    """Validates the arguments of `run_training`; returns the devices to use."""
    if not isinstance(model_config, ModelConfig):
        raise TypeError(f"model_config must be a ModelConfig, got {type(model_config).__name__}")
    if not isinstance(train_config, TrainConfig):
        raise TypeError(f"train_config must be a TrainConfig, got {type(train_config).__name__}")
    available = jax.local_devices()
    num_devices = train_config.num_devices or len(available)
    if num_devices > len(available):
        raise ValueError(f"num_devices {num_devices} exceeds the {len(available)} local devices")
    if train_config.batch_size % num_devices:
        raise ValueError(
            f"batch_size {train_config.batch_size} is not a multiple of the {num_devices} devices"
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
    if eval_batch_size % num_devices:
        raise ValueError(f"eval_batch_size {eval_batch_size} is not a multiple of the {num_devices} devices")
    if len(train_data) < train_config.batch_size:
        raise ValueError(
            f"batch_size {train_config.batch_size} exceeds the {len(train_data)} training images"
        )
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ValueError(f"workdir {workdir} exists and is not a directory")
    return available[:num_devices]


def _check_resumable(workdir, description: Mapping[str, Any]) -> None:
    """A workdir holding another run (model, data, batch size or seed differ) is an error, not a restart."""
    path = os.path.join(workdir, CONFIG_FILENAME)
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as f:
        stored = json.load(f)
    new = json.loads(json.dumps(description))  # tuples -> lists, as stored
    for part, keys in (("model", None), ("data", ("name", "train_split")), ("train", ("batch_size", "seed"))):
        old_part, new_part = stored.get(part, {}), new[part]
        names = keys or sorted(set(old_part) | set(new_part))
        differ = [
            f"{k}: {old_part.get(k)!r} -> {new_part.get(k)!r}"
            for k in names
            if old_part.get(k) != new_part.get(k)
        ]
        if differ:
            raise ValueError(
                f"workdir {workdir} holds a run with another {part} configuration ({'; '.join(differ)}); "
                "use a new workdir, or the original settings to resume"
            )


def _write_json(path: str, value: Mapping[str, Any]) -> None:
    """Atomically (write then rename), so a killed process never leaves a half-written file."""
    temporary = f"{path}.tmp"
    with open(temporary, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(temporary, path)


def _count(tree) -> int:
    return int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(tree)))


def _format(results: Mapping[str, float]) -> str:
    return ", ".join(f"{name} {value:.4g}" for name, value in results.items())
