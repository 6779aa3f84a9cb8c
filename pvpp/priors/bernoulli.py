"""Factorial Bernoulli prior with learnable logits (baseline); exact KL between factorial Bernoullis (nats).

p(z) = prod_i sigmoid(l_i)^z_i (1 - sigmoid(l_i))^(1 - z_i) over z in {0, 1}^D, given `logits` l. The
prior's parameters are just the logits, batch_shape + [D] (usually [D], from `init_logits`). Shapes follow
`sample_shape + batch_shape + event_shape` with the event the last axis [D]; log-probabilities and KL terms
sum over it.

- `log_prob(z, logits)`: sum_i [z_i l_i - softplus(l_i)]; also the usual proxy at relaxed z in [0, 1].
- `sample(key, logits, sample_shape)`: 0/1 floats in the logits' dtype.
- `kl_divergence(posterior_logits, prior_logits)`: exact
  KL(q || p) = sum_i [q_i (lq_i - lp_i) + softplus(lp_i) - softplus(lq_i)], q_i = sigmoid(lq_i); no sampling.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from pvpp.relax import bernoulli_sample
from pvpp.validation import check_int


def init_logits(num_latents: int, dtype=jnp.float32) -> jax.Array:
    """[num_latents] zeros: the uniform prior, p(z_i = 1) = 1/2."""
    check_int(num_latents, "num_latents", 1)
    return jnp.zeros((num_latents,), dtype)


def log_prob(z: jax.Array, logits: jax.Array) -> jax.Array:
    """log p(z); z sample_shape + batch_shape + [D], logits batch_shape + [D]
    -> sample_shape + batch_shape."""
    z, logits = jnp.asarray(z), _check_logits(logits, "logits")
    _check_trailing(z, logits, "z", "logits")
    logits = _lift(logits, z.ndim)
    # log sigmoid(l) = l - softplus(l), log(1 - sigmoid(l)) = -softplus(l): no log of a rounded probability.
    return jnp.sum(z * logits - jax.nn.softplus(logits), axis=-1)


def sample(key: jax.Array, logits: jax.Array, sample_shape: Sequence[int] = ()) -> jax.Array:
    """z ~ p: sample_shape + batch_shape + [D], 0/1 in the logits' dtype."""
    logits = _check_logits(logits, "logits")
    shape = tuple(sample_shape) + logits.shape
    return bernoulli_sample(key, jnp.broadcast_to(_lift(logits, len(shape)), shape))


def kl_divergence(posterior_logits: jax.Array, prior_logits: jax.Array) -> jax.Array:
    """Exact KL(q || p) of factorial Bernoullis: posterior_logits batch_shape + [D], prior_logits [D] or the
    same shape -> batch_shape (nats)."""
    posterior_logits = _check_logits(posterior_logits, "posterior_logits")
    prior_logits = _check_logits(prior_logits, "prior_logits")
    _check_trailing(posterior_logits, prior_logits, "posterior_logits", "prior_logits")
    prior_logits = _lift(prior_logits, posterior_logits.ndim)
    # q log(q/p) + (1-q) log((1-q)/(1-p)) rewritten with log q = lq - softplus(lq), log(1-q) = -softplus(lq).
    per_unit = (
        jax.nn.sigmoid(posterior_logits) * (posterior_logits - prior_logits)
        + jax.nn.softplus(prior_logits)
        - jax.nn.softplus(posterior_logits)
    )
    return jnp.sum(per_unit, axis=-1)


# ----------------------------------------------------------------------------------------------------------
# Helpers


def _lift(array: jax.Array, ndim: int) -> jax.Array:
    """Prepend unit axes up to `ndim` (explicit broadcasting over sample axes)."""
    return array.reshape((1,) * (ndim - array.ndim) + array.shape)


def _check_logits(logits, name: str) -> jax.Array:
    logits = jnp.asarray(logits)
    if logits.ndim < 1:
        raise ValueError(f"{name} must have an event axis [..., D], got shape {tuple(logits.shape)}")
    if not jnp.issubdtype(logits.dtype, jnp.floating):
        raise TypeError(f"{name} must be floating point, got {logits.dtype}")
    return logits


def _check_trailing(longer: jax.Array, shorter: jax.Array, longer_name: str, shorter_name: str) -> None:
    if longer.ndim < shorter.ndim or longer.shape[longer.ndim - shorter.ndim :] != shorter.shape:
        raise ValueError(
            f"{longer_name} must have shape [...] + {tuple(shorter.shape)} to match {shorter_name}, "
            f"got {tuple(longer.shape)}"
        )
