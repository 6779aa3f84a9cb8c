"""Prior 'none': no latents at all, so PixelVAEPP is a plain PixelCNN++ (the paper's baseline).

The latent vector is empty ([B, 0]), the KL term is 0 and log p(x) is exact (no importance sampling).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from pvpp.priors.base import Prior
from pvpp.priors.posteriors import BernoulliPosterior


@dataclasses.dataclass(frozen=True)
class NoPrior(Prior):
    """The empty prior of plain PixelCNN++ (every latent group is turned off whatever the config says)."""

    name = "none"
    uses_latents = False

    @classmethod
    def from_config(cls, config) -> NoPrior:
        return cls()

    @property
    def num_latents(self) -> int:
        return 0

    @property
    def posterior(self) -> BernoulliPosterior:
        return BernoulliPosterior()  # over zero latents: every sample is [..., 0]

    def log_prob_unnormalized(self, prior_params, z: jax.Array) -> jax.Array:
        return jnp.zeros(z.shape[:-1], z.dtype)

    def relaxed_kl(self, prior_params, posterior, latents, *, negative_phase=None, log_partition=None):
        return jnp.zeros(latents.shape[:-1], latents.dtype), {}

    def sample(self, prior_params, key, num, *, num_sweeps=1) -> jax.Array:
        return jnp.zeros((num, 0), jnp.float32)
