"""The per-device training and evaluation steps (pmapped with axis name `AXIS`; written to port to
`shard_map` unchanged: only `lax.axis_index`, `lax.pmean` and `lax.psum` see the device axis).

The step: uint8 images -> model space -> relaxed ELBO (`objectives.relaxed_elbo_loss`, KL weight from the
warm-up schedule; the prior's negative phase advanced first) -> gradients averaged over devices with
`lax.pmean` -> Adam, learning-rate decay and the parameter EMA (`optim.make_optimizer`).

Randomness (`pvpp.keys`): the latent noise of example i is fold_in(fold_in(stream 'latent', step), i) with i its
index in the GLOBAL batch (device * per-device batch + row), so 8 devices x batch b and 1 device x batch 8b
draw the same noise and make the same update (without dropout). The negative-phase key is the same on every
device, so the chains stay identical everywhere. The dropout key is folded with the index of the micro-batch
in the global batch (device * micro_batches + micro-batch; the device index when there is one micro-batch): a
dropout mask per example would need the network vmapped over single examples, which is slower
(experiments/fidelity.md).

Micro-batches (`StepConfig.micro_batches`, k): the device's batch is cut into k equal parts whose forward and
backward passes are k independent parts of the one compiled step (a Python loop, unrolled: no `scan`), and the
loss and metrics are their means. XLA's CPU runtime runs independent operations side by side on the cores, so on
a CPU the large models' step gets faster (`pvpp/bench/README.md`); the update equals that of k times as many
devices with one micro-batch each, to float rounding, dropout included.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax import lax

from pvpp import keys
from pvpp.model import ModelOutput, PixelVAEPP, objectives, to_model_space
from pvpp.parallel.devices import AXIS
from pvpp.training.config import StepConfig
from pvpp.training.optim import kl_weight_schedule, learning_rate_schedule
from pvpp.training.state import TrainState


def train_step(
    state: TrainState,
    images: jax.Array,
    *,
    model: PixelVAEPP,
    optimizer: optax.GradientTransformation,
    config: StepConfig,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step on this device's images (uint8 [b, H, W, C]); call under pmap with axis AXIS.

    Returns the new state and metrics averaged over all devices (nats per image; 'finite' is False when the
    loss, the gradient norm or a new parameter is NaN / inf).
    """
    if not isinstance(config, StepConfig):
        raise TypeError(f"config must be a StepConfig (TrainConfig.step_config), got {type(config).__name__}")
    prior, likelihood = model.prior, model.likelihood
    step = state.step
    x = to_model_space(model.config, images)
    latent_keys = example_keys(jax.random.fold_in(keys.stream(state.key, "latent"), step), x.shape[0])
    micro_batches = config.micro_batches
    if x.shape[0] % micro_batches:
        raise ValueError(f"the device batch of {x.shape[0]} images does not split into {micro_batches} micro-batches")
    size = x.shape[0] // micro_batches
    step_dropout_key = jax.random.fold_in(keys.stream(state.key, "dropout"), step)
    # Same key on every device: the chains (and the negative phase) stay identical across devices.
    chains, negative_phase = prior.negative_phase(
        prior.prior_params(state.params),
        jax.random.fold_in(keys.stream(state.key, "negative_phase"), step),
        state.chains,
        config.negative_phase,
    )
    beta_kl = kl_weight_schedule(config.optim)(step)

    def micro_batch_loss(params, i):
        rows = slice(i * size, (i + 1) * size)
        dropout_key = jax.random.fold_in(step_dropout_key, lax.axis_index(AXIS) * micro_batches + i)
        output = forward(model, params, x[rows], latent_keys[rows], dropout_key, train=True)
        return objectives.relaxed_elbo_loss(
            prior, likelihood, output, x[rows], beta_kl=beta_kl, negative_phase=negative_phase
        )

    def loss_fn(params):
        # Equal micro-batches: the mean of their means is the mean over the device's batch.
        parts = [micro_batch_loss(params, i) for i in range(micro_batches)]
        if micro_batches == 1:
            return parts[0]
        return jax.tree.map(lambda *values: sum(values) / micro_batches, *parts)

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

    log_partition: log Z of an unnormalised prior (0 for the others). key: the noise of the evaluation (the same
    at every evaluation makes them comparable); example i of the global batch draws its latents from
    fold_in(key, i). Call under pmap with axis AXIS.
    """
    prior, likelihood = model.prior, model.likelihood
    x = to_model_space(model.config, images)
    relaxed_key, hard_key = jax.random.split(key)
    output = forward(model, params, x, example_keys(relaxed_key, x.shape[0]), relaxed_key, train=False)
    reconstruction, kl, _ = objectives.relaxed_elbo_terms(
        prior, likelihood, output, x, log_partition=None if prior.normalized else log_partition
    )
    hard = objectives.iwae_log_likelihood(
        model,
        {"params": params},
        x,
        jax.random.fold_in(hard_key, lax.axis_index(AXIS)),
        num_samples=1,
        log_partition=None if prior.normalized else log_partition,
    )
    weights = mask.astype(x.dtype)
    sums = {
        "loss": jnp.sum(weights * (reconstruction + kl)),
        "reconstruction": jnp.sum(weights * reconstruction),
        "kl": jnp.sum(weights * kl),
        "negative_elbo": -jnp.sum(weights * hard["elbo"]),
        "count": jnp.sum(weights),
    }
    return lax.psum(sums, AXIS)


def forward(
    model: PixelVAEPP,
    params: Any,
    x: jax.Array,
    latent_keys: jax.Array,
    dropout_key: jax.Array,
    *,
    train: bool,
) -> ModelOutput:
    """`PixelVAEPP.__call__` with one latent-noise key per example: x [B, H, W, C] in [-1, 1], latent_keys
    [B] typed keys. The down path runs once; dropout (train=True) draws from `dropout_key`."""
    variables = {"params": params}
    down_key, up_key = jax.random.split(dropout_key)
    down, posterior = model.apply(
        variables, x, train=train, method=PixelVAEPP.encode_with_down_path, rngs={"dropout": down_key}
    )
    latents = jax.vmap(model.prior.posterior.relaxed_sample)(latent_keys, posterior)
    decoder_out = model.apply(
        variables,
        down,
        latents,
        train=train,
        method=PixelVAEPP.decode_with_down_path,
        rngs={"dropout": up_key},
    )
    return ModelOutput(posterior, latents, decoder_out, model.prior.prior_params(params))


def example_keys(key: jax.Array, per_device: int) -> jax.Array:
    """[per_device] keys fold_in(key, global example index), global index = device * per_device + row."""
    first = lax.axis_index(AXIS) * per_device
    return keys.fold_in_each(key, first + jnp.arange(per_device))


def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)
