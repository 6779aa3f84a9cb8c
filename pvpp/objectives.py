"""Training objectives and the importance-weighted log-likelihood (nats per image).

- `relaxed_elbo_loss`: GumBolt (RBM and factorial Bernoulli priors) with path derivatives only, the Gaussian-prior
  ELBO (analytic KL), or plain PixelCNN++ NLL for prior 'none'. Per example, for the RBM:

      -log p(x | zeta) + beta_kl * [ log q~(zeta | sg(l)) + E(zeta) + log Z - (N - sg(N)) ],
      N = sum_s w_s E(sg(z_s))                    (the negative phase; value 0, gradient -d log Z / d theta)

  zeta is the relaxed sample computed from the un-stopped logits l, so the encoder gets path derivatives through
  zeta only: the score-function term d log q / d l is absent. log Z enters only as a constant for the reported
  value (pass it when known); without it the reported 'kl' is the KL up to log Z. The loss is a training
  surrogate: never report it as a likelihood.
- `iwae_log_likelihood`: log p(x) ~ logsumexp_j [log p(x | z_j) + log p~(z_j) - log q(z_j | x)] - log k - log Z with
  hard samples z_j ~ q(z | x), computed in chunks of samples; the down path runs once per image.
- `exact_negative_phase`: the RBM negative phase by enumerating the smaller side (small RBMs, tests).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from pvpp import likelihoods, relax
from pvpp.model import ModelConfig, ModelOutput, PixelVAEPP, split_rbm_sides
from pvpp.optim import kl_weight  # noqa: F401  (KL annealing lives with the optimizer schedules)
from pvpp.priors import bernoulli as bernoulli_prior
from pvpp.priors import gaussian
from pvpp.priors import rbm


class NegativePhase(NamedTuple):
    """Samples of the RBM for the negative phase: z_left [S, nL], z_right [S, nR], weights [S] summing to 1."""

    z_left: jax.Array
    z_right: jax.Array
    weights: jax.Array


def negative_phase_from_chains(chains: rbm.ChainState) -> NegativePhase:
    """Equal weights over persistent chains (PCD)."""
    num = chains.z_left.shape[0]
    return NegativePhase(chains.z_left, chains.z_right, jnp.full((num,), 1.0 / num, chains.z_left.dtype))


def negative_phase_from_ais(result) -> NegativePhase:
    """AIS final samples weighted by the softmax of their log-weights."""
    return NegativePhase(result.z_left, result.z_right, jax.nn.softmax(result.log_weights))


def exact_negative_phase(params: rbm.RBMParams) -> NegativePhase:
    """Exact negative phase of a small RBM: every state of the left side weighted by p(z_left), with z_right at its
    conditional mean sigmoid(b + W^T z_left). The energy is linear in z_right, so sum_s w_s E(z_s) = E_p[E(z)]
    and its gradient are exact. Enumerates 2^nL states (nL <= 20)."""
    num_left = params.left_bias.shape[0]
    if num_left > 20:
        raise ValueError(f"exact_negative_phase enumerates the left side: {num_left} units is too many (max 20)")
    states = ((jnp.arange(2**num_left)[:, None] >> jnp.arange(num_left)[None, :]) & 1).astype(params.weights.dtype)
    log_weights = -rbm.free_energy_left(params, states)
    z_right = jax.nn.sigmoid(states @ params.weights + params.right_bias[None, :])
    return NegativePhase(states, z_right, jax.nn.softmax(log_weights))


def decoder_log_prob(config: ModelConfig, decoder_out: jax.Array, x: jax.Array) -> jax.Array:
    """log p(x | z) in nats, [B]: x in model space [-1, 1], decoder_out [B, H, W, out_channels]."""
    if config.likelihood == "bernoulli":
        return likelihoods.bernoulli_log_prob(decoder_out, (x + 1.0) * 0.5)
    return likelihoods.logistic_mixture_log_prob(decoder_out, x)


def relaxed_elbo_loss(
    config: ModelConfig,
    output: ModelOutput,
    x: jax.Array,
    *,
    beta_kl: float | jax.Array = 1.0,
    negative_phase: NegativePhase | None = None,
    log_partition: float | jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(scalar loss averaged over the batch, metrics) for one `PixelVAEPP.__call__` output.

    x: [B, H, W, C] model space. beta_kl: KL-annealing weight. negative_phase: required for the RBM prior.
    Metrics (batch means, nats per image): 'loss', 'reconstruction' (-log p(x|z)), 'kl' (the relaxed KL term;
    for the RBM without log_partition it excludes log Z), 'beta_kl', and for the RBM 'positive_energy' and
    'negative_energy'.
    """
    recon = decoder_log_prob(config, output.decoder_out, x)  # [B]
    metrics: dict[str, jax.Array] = {}
    if config.prior == "none":
        kl = jnp.zeros_like(recon)
    elif config.prior == "gaussian":
        mean, log_scale = jnp.split(output.posterior, 2, axis=-1)
        kl = gaussian.kl_divergence(mean, log_scale)
    else:
        log_q = relax.proxy_log_q(output.latents, jax.lax.stop_gradient(output.posterior))
        if config.prior == "bernoulli":
            kl = log_q - relax.proxy_log_q(output.latents, _rows(output.prior, output.latents.shape[0]))
        else:
            if negative_phase is None:
                raise ValueError("the RBM prior needs a negative_phase (persistent chains or AIS samples)")
            z_left, z_right = split_rbm_sides(config, output.latents)
            positive = rbm.energy(output.prior, z_left, z_right)  # [B]
            negative_energies = rbm.energy(
                output.prior,
                jax.lax.stop_gradient(negative_phase.z_left),
                jax.lax.stop_gradient(negative_phase.z_right),
            )
            negative = jnp.sum(jax.lax.stop_gradient(negative_phase.weights) * negative_energies)
            # Value 0, gradient d E_p[E] / d theta = -d log Z / d theta.
            log_z_surrogate = jax.lax.stop_gradient(negative) - negative
            log_z = 0.0 if log_partition is None else jax.lax.stop_gradient(log_partition)
            kl = log_q + positive + log_z + log_z_surrogate
            metrics["positive_energy"] = jnp.mean(positive)
            metrics["negative_energy"] = negative
    loss = jnp.mean(-recon + beta_kl * kl)
    metrics.update(loss=loss, reconstruction=-jnp.mean(recon), kl=jnp.mean(kl), beta_kl=jnp.asarray(beta_kl, loss.dtype))
    return loss, metrics


def iwae_log_likelihood(
    model: PixelVAEPP,
    variables: dict,
    x: jax.Array,
    key: jax.Array,
    *,
    num_samples: int,
    chunk_size: int | None = None,
    log_partition: float | jax.Array | None = None,
) -> dict[str, jax.Array]:
    """Importance-weighted log-likelihood with hard samples, per image (nats). x [B, H, W, C] model space.

    Samples are drawn and decoded `chunk_size` at a time (memory ~ chunk_size * B decoder passes); the log-weights
    of all chunks are combined with a max-shifted logsumexp. For the RBM prior log_partition (log Z) is required.
    Returns [B] arrays: 'log_likelihood' (the IWAE bound, k = num_samples), 'elbo' (the k = 1 bound averaged over the
    samples), 'reconstruction' (E_q log p(x|z)), 'kl' (E_q[log q(z|x) - log p(z)]) and 'log_weights' [k, B].
    Prior 'none': the exact log-likelihood of the PixelCNN++ (no sampling).
    """
    config = model.config
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    chunk_size = min(chunk_size or num_samples, num_samples)
    if num_samples % chunk_size:
        raise ValueError(f"num_samples ({num_samples}) must be a multiple of chunk_size ({chunk_size})")
    if config.prior == "rbm" and log_partition is None:
        raise ValueError("the RBM prior needs log_partition (exact, or from AIS) to give a likelihood")
    down, posterior = model.apply(variables, x, method=PixelVAEPP.encode_with_down_path)
    prior = model.apply(variables, method=PixelVAEPP.prior_params)
    if config.prior == "none":
        out = model.apply(variables, down, posterior, method=PixelVAEPP.decode_with_down_path)
        exact = decoder_log_prob(config, out, x)
        zeros = jnp.zeros_like(exact)
        return dict(log_likelihood=exact, elbo=exact, reconstruction=exact, kl=zeros, log_weights=exact[None])

    batch = x.shape[0]
    tile = lambda a: jnp.broadcast_to(a[None], (chunk_size,) + a.shape).reshape((chunk_size * batch,) + a.shape[1:])
    down_tiled = jax.tree.map(tile, down)
    x_tiled = tile(x)

    def chunk(_, key_chunk):
        z, log_q = _hard_posterior_sample(config, key_chunk, posterior, chunk_size)  # [C, B, K], [C, B]
        out = model.apply(variables, down_tiled, z.reshape(chunk_size * batch, -1), method=PixelVAEPP.decode_with_down_path)
        log_px = decoder_log_prob(config, out, x_tiled).reshape(chunk_size, batch)
        log_pz = _log_prior_unnormalized(config, prior, z)  # [C, B]
        return None, (log_px, log_pz - log_q)

    keys = jax.random.split(key, num_samples // chunk_size)
    _, (log_px, log_ratio) = jax.lax.scan(chunk, None, keys)
    log_px = log_px.reshape(num_samples, batch)
    log_ratio = log_ratio.reshape(num_samples, batch)
    log_z = 0.0 if log_partition is None else log_partition
    log_weights = log_px + log_ratio - log_z
    return dict(
        log_likelihood=jax.nn.logsumexp(log_weights, axis=0) - math.log(num_samples),
        elbo=jnp.mean(log_weights, axis=0),
        reconstruction=jnp.mean(log_px, axis=0),
        kl=-jnp.mean(log_ratio, axis=0) + log_z,
        log_weights=log_weights,
    )


def _hard_posterior_sample(config: ModelConfig, key: jax.Array, posterior: jax.Array, num: int):
    """num samples from q(z | x): ([num, B, K], log q [num, B])."""
    if config.prior == "gaussian":
        mean, log_scale = jnp.split(posterior, 2, axis=-1)
        z = gaussian.posterior_sample(key, mean, log_scale, (num,))
        return z, gaussian.posterior_log_prob(z, mean, log_scale)
    logits = jnp.broadcast_to(posterior[None], (num,) + posterior.shape)
    z = relax.bernoulli_sample(key, logits)
    return z, relax.proxy_log_q(z, logits)


def _log_prior_unnormalized(config: ModelConfig, prior, z: jax.Array) -> jax.Array:
    """log p~(z) (the RBM's -E(z); exact log p(z) for the baselines): [..., K] -> [...]."""
    if config.prior == "gaussian":
        return gaussian.log_prob(z)
    if config.prior == "bernoulli":
        return bernoulli_prior.log_prob(z, prior)
    z_left, z_right = split_rbm_sides(config, z)
    return -rbm.energy(prior, z_left, z_right)


def _rows(v: jax.Array, n: int) -> jax.Array:
    """[K] -> [n, K] (explicit broadcast; strict rank promotion)."""
    return jnp.broadcast_to(v[None], (n,) + v.shape)
