"""The cheap evaluation during training (every `eval_every` steps; the full IWAE evaluation is
`pvpp.evaluation.evaluate`).

On a fixed subset of the evaluation split, with fixed noise, for the current and the EMA parameters: log Z of an
unnormalised prior by AIS ('log_partition', its interval and effective sample size; '_ema' for the EMA
parameters), the relaxed loss with beta 1 including log Z ('loss', 'reconstruction', 'kl'), and the ELBO with
one hard sample ('negative_elbo', an upper bound on the NLL given log Z; 'negative_elbo_bpd' for RGB). All in
nats per image.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from pvpp import data, keys
from pvpp.model import PixelVAEPP
from pvpp.parallel.devices import first_copy_scalars, unreplicate
from pvpp.training.compiled import StepFunctions
from pvpp.training.config import TrainConfig
from pvpp.training.optim import ema_params
from pvpp.training.state import TrainState


def evaluate(
    fns: StepFunctions, state: TrainState, step: int, eval_batches: list, model: PixelVAEPP
) -> dict[str, float]:
    """Metrics of the current and the EMA parameters (replicated `state`) on the fixed evaluation batches."""
    prior, likelihood = model.prior, model.likelihood
    results: dict[str, float] = {}
    root = unreplicate(state.key)
    log_z_key = jax.random.fold_in(keys.stream(root, "log_partition"), step)
    for prefix, params in (("eval", state.params), ("eval_ema", ema_params(state.opt_state))):
        log_z = jnp.zeros(())
        estimate = fns.log_partition(unreplicate(prior.prior_params(params)), log_z_key)
        if estimate is not None:
            log_z = estimate.estimate
            suffix = "" if prefix == "eval" else "_ema"
            results.update(
                {
                    f"log_partition{suffix}": float(estimate.estimate),
                    f"log_partition_lower{suffix}": float(estimate.lower),
                    f"log_partition_upper{suffix}": float(estimate.upper),
                    f"ais_effective_sample_size{suffix}": float(estimate.effective_sample_size),
                }
            )
        totals: dict[str, float] = {}
        pending = None
        for images, mask in eval_batches:
            sums = fns.evaluate(params, log_z, keys.stream(root, "eval_noise"), images, mask)
            if pending is not None:
                _accumulate(totals, pending)  # read batch k - 1 while batch k runs
            pending = sums
        _accumulate(totals, pending)
        count = totals.pop("count")
        for name, total in totals.items():
            results[f"{prefix}/{name}"] = total / count
        if likelihood.reports_bits_per_dim:
            dims = math.prod(model.config.image_shape)
            results[f"{prefix}/negative_elbo_bpd"] = results[f"{prefix}/negative_elbo"] / (
                dims * math.log(2.0)
            )
    return results


def eval_batches(eval_data, config: TrainConfig, num_devices: int, sharding, *, process_slice=(0, 1)) -> list:
    """The fixed evaluation subset as device batches (images, mask), binarized once with a fixed seed.

    num_devices: over all processes; process_slice: (this process's index, the process count), whose part of
    each batch goes to the local devices of `sharding`."""
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
        process_slice=process_slice,
    )
    return [(jax.device_put(b["image"], sharding), jax.device_put(b["mask"], sharding)) for b in iterator]


def _accumulate(totals: dict[str, float], sums: dict[str, jax.Array]) -> None:
    for name, value in first_copy_scalars(sums).items():
        totals[name] = totals.get(name, 0.0) + value
