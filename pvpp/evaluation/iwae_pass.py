"""The importance-weighted pass of the evaluation (`pvpp.evaluation.evaluate`, its step 2) and the checks of its images:
per-image IWAE quantities without log Z, one batch per device on every local device of every process."""

from __future__ import annotations

import functools
import sys
from typing import Any, Sequence

import jax
import numpy as np
from tqdm import tqdm

from pvpp.model import ModelConfig, PixelVAEPP, objectives, to_model_space
from pvpp.model.likelihoods import make_likelihood
from pvpp.parallel import distributed
from pvpp.parallel.devices import device_sharding, replicate
from pvpp.parallel.tracing import TraceCounter

#: Per-image quantities of the importance-weighted pass (all nats, [N]).
PER_IMAGE = ("log_likelihood_unnormalized", "elbo_unnormalized", "reconstruction", "kl_unnormalized")


def importance_weighted_pass(
    model_config: ModelConfig,
    params: Any,
    images: np.ndarray,
    example_indices: np.ndarray,
    key: jax.Array,
    *,
    num_samples: int,
    chunk_size: int,
    batch_size: int,
    progress: bool = False,
    devices: Sequence[jax.Device] | None = None,
    across_processes: bool = False,
) -> dict[str, np.ndarray]:
    """Per-image IWAE quantities without log Z, each [N] float64 numpy, nats (keys: `PER_IMAGE`).

    'log_likelihood_unnormalized' = log p(x) + log Z (the k-sample IWAE estimate), 'elbo_unnormalized' = the
    k = 1 bound averaged over the k samples, + log Z; 'reconstruction' = E_q[-log p(x | z)];
    'kl_unnormalized' = E_q[log q(z | x) - log p~(z)] = KL - log Z. For priors other than the RBM log Z = 0.

    Where the work runs: the images are dealt in batches of `batch_size`, and a process runs its batches on up to
    all of its local devices (or of `devices`, this process's) at once, one batch per device (`pmap`; an image's
    k samples stay on its device). The last round is padded by repeating the last image, and the padding is
    dropped. across_processes: the processes of a multi-process run take the same number of whole batches each
    (`distributed.process_part`) and all get every result; every process must then make the same call. Image
    i's samples use fold_in(key, example_indices[i]), so no result depends on where its image ran: the per-device
    program is the same for every device tuple.
    """
    check_example_images(model_config, images, example_indices)
    total = images.shape[0]
    part = distributed.process_part(total, batch_size) if across_processes else np.arange(total)
    images, example_indices = images[part], example_indices[part]
    num = images.shape[0]
    config = model_config.replace(dropout_rate=0.0)  # no dropout at evaluation (train=False also skips it)
    num_batches = -(-num // batch_size)
    devices = tuple(jax.local_devices() if devices is None else devices)[:num_batches]
    per_round = batch_size * len(devices)
    run = iwae_program(config, num_samples, chunk_size, devices)
    variables = replicate({"params": params}, device_sharding(devices))
    results: list[dict[str, jax.Array]] = []
    bar = _progress_bar(num, progress)
    pending = None  # (the last dispatched round, its number of real images)
    try:
        for start in range(0, num, per_round):
            index = np.arange(start, start + per_round).clip(max=num - 1)  # pad by repeating the last image
            x = np.asarray(images[index]).reshape(len(devices), batch_size, *images.shape[1:])
            indices = np.asarray(example_indices[index], np.int32).reshape(len(devices), batch_size)
            result = run(variables, x, indices, key)
            results.append(result)
            # Wait for the previous round only after dispatching this one, so the devices never wait for Python.
            if pending is not None:
                jax.block_until_ready(pending[0])
                bar.update(pending[1])
            pending = (result, min(per_round, num - start))
        jax.block_until_ready(pending[0])
        bar.update(pending[1])
    finally:
        bar.close()
    merged = {
        name: np.concatenate([np.asarray(r[name], np.float64).reshape(-1) for r in results])[:num]
        for name in PER_IMAGE
    }
    return distributed.gather_parts(merged, total) if across_processes else merged


@functools.lru_cache(maxsize=16)
def iwae_program(model_config: ModelConfig, num_samples: int, chunk_size: int, devices: tuple[jax.Device, ...]):
    """The compiled evaluation of one batch per device: run(variables, images, example_indices, key) with
    variables replicated over `devices` (`pvpp.parallel.devices.replicate`), images [D, B, H, W, C] uint8 data space,
    example_indices [D, B] int32 and the key of the 'importance_samples' stream -> dict of [D, B] float32
    (`PER_IMAGE`). One program per settings and device tuple; `run.counter.count` says how often it was traced."""
    counter = TraceCounter(
        "iwae",
        functools.partial(_iwae_batch, model_config=model_config, num_samples=num_samples, chunk_size=chunk_size),
    )
    run = jax.pmap(counter, in_axes=(0, 0, 0, None), devices=list(devices))
    run.counter = counter
    return run


def _iwae_batch(variables, images, example_indices, key, *, model_config, num_samples, chunk_size):
    """One device's batch: images [B, H, W, C] uint8 data space -> dict of [B] (see `importance_weighted_pass`)."""
    x = to_model_space(model_config, images)
    model = PixelVAEPP(model_config)
    log_partition = 0.0  # applied afterwards (module docstring, step 3)

    def one_image(x_HWC, index):
        result = objectives.iwae_log_likelihood(
            model, variables, x_HWC[None], jax.random.fold_in(key, index),
            num_samples=num_samples, chunk_size=chunk_size, log_partition=log_partition,
        )
        return dict(
            log_likelihood_unnormalized=result["log_likelihood"][0],
            elbo_unnormalized=result["elbo"][0],
            reconstruction=-result["reconstruction"][0],
            kl_unnormalized=result["kl"][0],
        )

    return jax.vmap(one_image)(x, example_indices)


def check_images(model_config: ModelConfig, images) -> np.ndarray:
    """`images` as a numpy array, after checking that they are uint8 data-space pixels [N, H, W, C] this model
    takes ({0, 1} for the Bernoulli likelihood: grey levels must be binarized first); ValueError / TypeError."""
    images = np.asarray(images)
    if images.ndim != 4 or tuple(images.shape[1:]) != model_config.image_shape:
        raise ValueError(
            f"images must be [N, {', '.join(map(str, model_config.image_shape))}] for this model, got {images.shape}"
        )
    if images.dtype != np.uint8:
        raise TypeError(f"images must be uint8 data-space pixels, got {images.dtype}")
    highest = make_likelihood(model_config).value_range[1]
    if images.size and images.max() > highest:
        raise ValueError(
            f"the {model_config.likelihood} likelihood needs pixels in 0..{highest}, got {images.max()}: "
            "binarize grey levels first (evaluation_images, or pvpp.data.binarize_dynamically)"
        )
    return images


def check_example_images(model_config: ModelConfig, images: np.ndarray, example_indices: np.ndarray) -> None:
    images = check_images(model_config, images)
    if np.shape(example_indices) != images.shape[:1]:
        raise ValueError(f"example_indices must be [N] = {images.shape[:1]}, got {np.shape(example_indices)}")
    if images.shape[0] == 0:
        raise ValueError("no images to evaluate")


def _progress_bar(total: int, enabled: bool):
    """A tqdm bar on stderr; redrawn at most every 30 s when stderr is a file (a log), not a terminal."""
    interactive = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
    return tqdm(
        total=total, unit="img", desc="IWAE", disable=not enabled, dynamic_ncols=True,
        mininterval=0.1 if interactive else 30.0,
    )
