"""Training objectives and the importance-weighted log-likelihood (nats per image).

Both receive the prior and the likelihood as objects (`pvpp.priors`, `pvpp.model.likelihoods`), never a config.

- `relaxed_elbo_terms` / `relaxed_elbo_loss`: per example -log p(x | zeta) + beta_kl * KL term, with the KL
  term of the prior (`Prior.relaxed_kl`): GumBolt with path derivatives for the RBM and the factorial
  Bernoulli prior (the RBM's includes the negative phase), the analytic KL for the Gaussian, 0 for 'none'.
  For the RBM, log Z enters only as a constant for the reported value (pass it when known). The loss is a
  training surrogate: never report it as a likelihood.
- `iwae_log_likelihood`: log p(x) ~ logsumexp_j [log p(x | z_j) + log p~(z_j) - log q(z_j | x)] - log k - log Z
  with hard samples z_j ~ q(z | x), computed in chunks of samples; the down path runs once per image.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from pvpp import keys
from pvpp.model import ModelOutput, PixelVAEPP
from pvpp.priors import Prior


def relaxed_elbo_terms(
    prior: Prior,
    likelihood,
    output: ModelOutput,
    x: jax.Array,
    *,
    negative_phase: Any = None,
    log_partition: float | jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """(reconstruction -log p(x | zeta) [B], KL term [B], the prior's extra metrics), nats per example.

    output: one `PixelVAEPP.__call__` pass on x [B, H, W, C] (model space). negative_phase: this step's samples
    from `prior.negative_phase` (the RBM needs them to train). log_partition: log Z if known.
    """
    reconstruction = -likelihood.log_prob(output.decoder_out, x)
    kl, metrics = prior.relaxed_kl(
        output.prior,
        output.posterior,
        output.latents,
        negative_phase=negative_phase,
        log_partition=log_partition,
    )
    return reconstruction, kl, metrics


def relaxed_elbo_loss(
    prior: Prior,
    likelihood,
    output: ModelOutput,
    x: jax.Array,
    *,
    beta_kl: float | jax.Array = 1.0,
    negative_phase: Any = None,
    log_partition: float | jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(scalar loss averaged over the batch, metrics) for one `PixelVAEPP.__call__` output.

    beta_kl: KL-annealing weight. Metrics (batch means, nats per image): 'loss', 'reconstruction'
    (-log p(x|z)), 'kl' (the relaxed KL term; for the RBM without log_partition it excludes log Z), 'beta_kl',
    and the prior's own (the RBM: 'positive_energy', 'negative_energy').
    """
    reconstruction, kl, metrics = relaxed_elbo_terms(
        prior, likelihood, output, x, negative_phase=negative_phase, log_partition=log_partition
    )
    loss = jnp.mean(reconstruction + beta_kl * kl)
    metrics = dict(metrics)
    metrics.update(
        loss=loss,
        reconstruction=jnp.mean(reconstruction),
        kl=jnp.mean(kl),
        beta_kl=jnp.asarray(beta_kl, loss.dtype),
    )
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
    prior, likelihood = model.prior, model.likelihood
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    chunk_size = min(chunk_size or num_samples, num_samples)
    if num_samples % chunk_size:
        raise ValueError(f"num_samples ({num_samples}) must be a multiple of chunk_size ({chunk_size})")
    if not prior.normalized and log_partition is None:
        raise ValueError(
            f"the {prior.name} prior needs log_partition (exact, or from AIS) to give a likelihood"
        )
    down, posterior = model.apply(variables, x, method=PixelVAEPP.encode_with_down_path)
    prior_params = model.apply(variables, method=PixelVAEPP.prior_params)
    if prior.num_latents == 0:  # plain PixelCNN++: one decode gives the exact log-likelihood
        out = model.apply(variables, down, posterior, method=PixelVAEPP.decode_with_down_path)
        exact = likelihood.log_prob(out, x)
        zeros = jnp.zeros_like(exact)
        return dict(log_likelihood=exact, elbo=exact, reconstruction=exact, kl=zeros, log_weights=exact[None])

    batch = x.shape[0]
    tile = lambda a: jnp.broadcast_to(a[None], (chunk_size,) + a.shape).reshape(
        (chunk_size * batch,) + a.shape[1:]
    )
    down_tiled = jax.tree.map(tile, down)
    x_tiled = tile(x)

    def chunk(_, key_chunk):
        z = prior.posterior.sample(key_chunk, posterior, (chunk_size,))  # [C, B, K] hard samples
        log_q = prior.posterior.log_prob(z, posterior)  # [C, B]
        out = model.apply(
            variables, down_tiled, z.reshape(chunk_size * batch, -1), method=PixelVAEPP.decode_with_down_path
        )
        log_px = likelihood.log_prob(out, x_tiled).reshape(chunk_size, batch)
        log_pz = prior.log_prob_unnormalized(prior_params, z)  # [C, B]
        return None, (log_px, log_pz - log_q)

    chunk_keys = keys.fold_in_each(key, jnp.arange(num_samples // chunk_size))  # chunk c: fold_in(key, c)
    _, (log_px, log_ratio) = jax.lax.scan(chunk, None, chunk_keys)
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
