"""The Gaussian baseline as a prior object: p(z) = N(0, I) over continuous z [K], q(z | x) diagonal Gaussian.

The KL term of the training loss is the closed form KL(q || N(0, I)) (no sampling, no negative phase); the
mathematics are in `pvpp.priors.gaussian`.
"""

from __future__ import annotations

import dataclasses

import jax

from pvpp.priors import gaussian
from pvpp.priors.base import Prior, required_latents
from pvpp.priors.posteriors import GaussianPosterior


@dataclasses.dataclass(frozen=True)
class GaussianPrior(Prior):
    """N(0, I) over `size` latents; no parameters."""

    size: int

    name = "gaussian"

    @classmethod
    def from_config(cls, config) -> GaussianPrior:
        return cls(required_latents(config, cls.name))

    @property
    def num_latents(self) -> int:
        return self.size

    @property
    def posterior(self) -> GaussianPosterior:
        return GaussianPosterior()

    def log_prob_unnormalized(self, prior_params, z: jax.Array) -> jax.Array:
        return gaussian.log_prob(z)

    def relaxed_kl(self, prior_params, posterior, latents, *, negative_phase=None, log_partition=None):
        mean, log_scale = self.posterior.split(posterior)
        return gaussian.kl_divergence(mean, log_scale), {}

    def sample(self, prior_params, key, num, *, num_sweeps=1) -> jax.Array:
        return gaussian.sample(key, self.size, (num,))
