"""Standard normal prior N(0, I) and the diagonal Gaussian posterior of the Gaussian baseline (nats).

Shapes follow `sample_shape + batch_shape + event_shape`: the event is the last axis [D] (the latent vector);
log-probabilities and KL terms sum over it and keep the leading axes. The prior has no batch shape. A
posterior is given by `mean` and `log_scale` (the log standard deviation), both batch_shape + [D].

- `log_prob(z)`, `sample(key, num_latents, sample_shape)`: the prior N(0, I).
- `posterior_log_prob(z, mean, log_scale)`, `posterior_sample(key, mean, log_scale, sample_shape)`:
  q(z | x) = N(mean, diag(exp(2 log_scale))); the sample is reparameterised, z = mean + exp(log_scale) * eps,
  so gradients flow into mean and log_scale. For the path-derivative estimator (Roeder et al. 2017) evaluate
  `posterior_log_prob(z, stop_gradient(mean), stop_gradient(log_scale)) - log_prob(z)`.
- `kl_divergence(mean, log_scale)`: KL(q || N(0, I)) in closed form.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from pvpp.validation import check_int

_LOG_2PI = math.log(2.0 * math.pi)


def log_prob(z: jax.Array) -> jax.Array:
    """log N(z; 0, I) summed over the event axis: [..., D] -> [...] (nats)."""
    z = _check_event(z, "z")
    return -0.5 * jnp.sum(jnp.square(z) + _LOG_2PI, axis=-1)


def sample(
    key: jax.Array, num_latents: int, sample_shape: Sequence[int] = (), dtype=jnp.float32
) -> jax.Array:
    """z ~ N(0, I): sample_shape + [num_latents]."""
    check_int(num_latents, "num_latents", 1)
    return jax.random.normal(key, tuple(sample_shape) + (num_latents,), dtype)


def posterior_log_prob(z: jax.Array, mean: jax.Array, log_scale: jax.Array) -> jax.Array:
    """log N(z; mean, diag(exp(log_scale)^2)) summed over the event axis.

    z: sample_shape + batch_shape + [D];  mean, log_scale: batch_shape + [D]  ->  sample_shape + batch_shape.
    """
    z = _check_event(z, "z")
    mean, log_scale = _check_posterior(mean, log_scale)
    if z.ndim < mean.ndim or z.shape[z.ndim - mean.ndim :] != mean.shape:
        raise ValueError(
            f"z must have shape sample_shape + {tuple(mean.shape)} to match mean, got {tuple(z.shape)}"
        )
    mean, log_scale = _lift(mean, z.ndim), _lift(log_scale, z.ndim)
    standardized = (z - mean) * jnp.exp(-log_scale)
    return -0.5 * jnp.sum(jnp.square(standardized) + _LOG_2PI, axis=-1) - jnp.sum(log_scale, axis=-1)


def posterior_sample(
    key: jax.Array, mean: jax.Array, log_scale: jax.Array, sample_shape: Sequence[int] = ()
) -> jax.Array:
    """Reparameterised z = mean + exp(log_scale) * eps, eps ~ N(0, I): sample_shape + batch_shape + [D]."""
    mean, log_scale = _check_posterior(mean, log_scale)
    shape = tuple(sample_shape) + mean.shape
    noise = jax.random.normal(key, shape, mean.dtype)
    return _lift(mean, len(shape)) + _lift(jnp.exp(log_scale), len(shape)) * noise


def kl_divergence(mean: jax.Array, log_scale: jax.Array) -> jax.Array:
    """KL(N(mean, diag(sigma^2)) || N(0, I)) = 1/2 sum (mean^2 + sigma^2 - 1 - 2 log sigma).

    mean, log_scale: batch_shape + [D] -> batch_shape (nats).
    """
    mean, log_scale = _check_posterior(mean, log_scale)
    # expm1(2 log sigma) - 2 log sigma keeps precision when sigma ~ 1 (sigma^2 - 1 would cancel).
    return 0.5 * jnp.sum(jnp.square(mean) + jnp.expm1(2.0 * log_scale) - 2.0 * log_scale, axis=-1)


# ----------------------------------------------------------------------------------------------------------
# Helpers


def _lift(array: jax.Array, ndim: int) -> jax.Array:
    """Prepend unit axes up to `ndim` (explicit broadcasting over sample axes)."""
    return array.reshape((1,) * (ndim - array.ndim) + array.shape)


def _check_event(z, name: str) -> jax.Array:
    z = jnp.asarray(z)
    if z.ndim < 1:
        raise ValueError(f"{name} must have an event axis [..., D], got shape {tuple(z.shape)}")
    if not jnp.issubdtype(z.dtype, jnp.floating):
        raise TypeError(f"{name} must be floating point, got {z.dtype}")
    return z


def _check_posterior(mean, log_scale) -> tuple[jax.Array, jax.Array]:
    mean, log_scale = _check_event(mean, "mean"), _check_event(log_scale, "log_scale")
    if mean.shape != log_scale.shape:
        raise ValueError(
            f"mean and log_scale must have the same shape, got mean {tuple(mean.shape)} and "
            f"log_scale {tuple(log_scale.shape)}"
        )
    return mean, log_scale
