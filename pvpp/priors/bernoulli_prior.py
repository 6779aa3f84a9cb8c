"""The factorial Bernoulli baseline as a prior object: p(z) = prod_i Bernoulli(sigmoid(l_i)) with learnable
logits l [K]; q(z | x) factorial Bernoulli, relaxed by Gumbel-sigmoid as for the RBM.

Per example, the KL term of the training loss is log q~(zeta | sg(l_q)) - log p~(zeta) with the GumBolt proxy
for both densities at the relaxed sample (path derivatives only, no negative phase: p is normalised). The
mathematics are in `pvpp.priors.bernoulli`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
from flax import linen as nn

from pvpp import relax
from pvpp.priors import bernoulli
from pvpp.priors.base import Prior, required_latents
from pvpp.priors.posteriors import BernoulliPosterior


@dataclasses.dataclass(frozen=True)
class BernoulliPrior(Prior):
    """Factorial Bernoulli over `size` binary latents, logits in the parameter tree ('bernoulli_prior')."""

    size: int
    tau: float = relax.DEFAULT_TAU

    name = "bernoulli"
    param_scope = "bernoulli_prior"

    @classmethod
    def from_config(cls, config) -> BernoulliPrior:
        return cls(required_latents(config, cls.name), config.tau)

    @property
    def num_latents(self) -> int:
        return self.size

    @property
    def posterior(self) -> BernoulliPosterior:
        return BernoulliPosterior(self.tau)

    def param_module(self) -> nn.Module:
        return PriorLogits(self.size)

    def prior_params(self, params: Any) -> jax.Array:
        return params[self.param_scope]["logits"]

    def log_prob_unnormalized(self, prior_params: jax.Array, z: jax.Array) -> jax.Array:
        return bernoulli.log_prob(z, prior_params)

    def relaxed_kl(self, prior_params, posterior, latents, *, negative_phase=None, log_partition=None):
        log_q = self.posterior.log_prob(latents, jax.lax.stop_gradient(posterior))
        log_p = bernoulli.log_prob(latents, prior_params)  # the same proxy at the relaxed sample
        return log_q - log_p, {}

    def sample(self, prior_params, key, num, *, num_sweeps=1) -> jax.Array:
        return bernoulli.sample(key, prior_params, (num,))


class PriorLogits(nn.Module):
    """Learnable prior logits [K] (zeros at init: p(z_i = 1) = 1/2)."""

    num_latents: int

    @nn.compact
    def __call__(self) -> jax.Array:
        return self.param("logits", nn.initializers.zeros, (self.num_latents,))
