"""The families of the approximate posterior q(z | x) that the priors pair with.

A family turns the encoders' outputs into samples and log-probabilities; the prior object holds one
(`prior.posterior`). `params` are the encoders' outputs for a batch, [..., P] with P = params_per_latent * K.

- `BernoulliPosterior(tau)`: factorial Bernoulli with logits l [..., K] (RBM, factorial Bernoulli and the
  latent-free 'none' prior). Training uses the Gumbel-sigmoid relaxation at temperature tau, evaluation and
  generation the hard sample; both come from the same logistic noise (`pvpp.relax`), so the hard sample is
  the tau -> 0 limit of the relaxed one. log_prob is sum_i z_i l_i - softplus(l_i): exact for binary z, the
  GumBolt proxy for relaxed z.
- `GaussianPosterior()`: diagonal Gaussian, params = [means (K), log-scales (K)]; the relaxed and the hard
  sample are the same reparameterised sample.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from pvpp import relax
from pvpp.priors import gaussian


@dataclasses.dataclass(frozen=True)
class BernoulliPosterior:
    """Factorial Bernoulli q(z | x) with logits [..., K]; relaxed by Gumbel-sigmoid at temperature `tau`."""

    tau: float = relax.DEFAULT_TAU
    params_per_latent: int = 1

    def join(self, groups: Sequence[jax.Array]) -> jax.Array:
        """The encoders' outputs of the latent groups, each [B, n_g], as one [B, K] in group order."""
        return jnp.concatenate(list(groups), axis=-1)

    def relaxed_sample(
        self, key: jax.Array, logits: jax.Array, tau: float | jax.Array | None = None
    ) -> jax.Array:
        """zeta in (0, 1) [..., K], differentiable in the logits (tau: None = self.tau)."""
        return relax.gumbel_sigmoid(key, logits, self.tau if tau is None else tau)

    def sample(self, key: jax.Array, logits: jax.Array, sample_shape: Sequence[int] = ()) -> jax.Array:
        """Hard z in {0, 1}: sample_shape + logits.shape."""
        shape = tuple(sample_shape) + logits.shape
        return relax.bernoulli_sample(key, jnp.broadcast_to(logits, shape))

    def log_prob(self, z: jax.Array, logits: jax.Array) -> jax.Array:
        """log q(z | x) [...] nats for z sample_shape + logits.shape (the proxy at relaxed z)."""
        return relax.proxy_log_q(z, jnp.broadcast_to(logits, z.shape))


@dataclasses.dataclass(frozen=True)
class GaussianPosterior:
    """Diagonal Gaussian q(z | x): params [..., 2K] = [means, log standard deviations]."""

    params_per_latent: int = 2

    def join(self, groups: Sequence[jax.Array]) -> jax.Array:
        """Each group's [B, 2 n_g] = [means, log-scales] -> [B, 2K] = [all means, all log-scales]."""
        means = [g[:, : g.shape[1] // 2] for g in groups]
        log_scales = [g[:, g.shape[1] // 2 :] for g in groups]
        return jnp.concatenate(means + log_scales, axis=-1)

    def split(self, params: jax.Array) -> tuple[jax.Array, jax.Array]:
        """[..., 2K] -> (mean [..., K], log_scale [..., K])."""
        return tuple(jnp.split(params, 2, axis=-1))

    def relaxed_sample(self, key: jax.Array, params: jax.Array, tau=None) -> jax.Array:
        """The reparameterised z = mean + exp(log_scale) * eps [..., K] (no relaxation: tau is ignored)."""
        return self.sample(key, params)

    def sample(self, key: jax.Array, params: jax.Array, sample_shape: Sequence[int] = ()) -> jax.Array:
        """z: sample_shape + [..., K]."""
        mean, log_scale = self.split(params)
        return gaussian.posterior_sample(key, mean, log_scale, sample_shape)

    def log_prob(self, z: jax.Array, params: jax.Array) -> jax.Array:
        """log q(z | x) [...] nats."""
        mean, log_scale = self.split(params)
        return gaussian.posterior_log_prob(z, mean, log_scale)
