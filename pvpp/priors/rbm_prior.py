"""The RBM prior of PixelVAE++ as a prior object: p(z) = exp(-E(z_left, z_right)) / Z over binary z.

z [..., K] splits into z_left = z[..., :num_left] and z_right = z[..., num_left:] (`split`). The posterior is
factorial Bernoulli, relaxed by Gumbel-sigmoid (GumBolt). Per example, the KL term of the training loss is

    log q~(zeta | sg(l)) + E(zeta) + log Z - (N - sg(N)),      N = sum_s w_s E(sg(z_s)),

with path derivatives only (the proxy log q sees stopped logits) and N the negative phase: its value is 0 and
its gradient -d log Z / d theta, from samples (z_s, w_s) of the RBM (`NegativePhase`): persistent chains
(PCD, equal weights) or fresh AIS samples (self-normalised importance weights). log Z itself enters only as a
constant when known; without it the reported KL lacks log Z.

The RBM mathematics (energies, Gibbs sweeps, exact log Z) are in `pvpp.priors.rbm`, AIS in `pvpp.priors.ais`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import linen as nn

from pvpp.priors import rbm, reverse_ais
from pvpp.priors.ais import AISConfig, AISResult
from pvpp.priors.base import LogPartition, NegativePhaseConfig, Prior, required_latents
from pvpp.priors.posteriors import BernoulliPosterior
from pvpp.relax import DEFAULT_TAU


class NegativePhase(NamedTuple):
    """Samples of the RBM for the negative phase: z_left [S, nL], z_right [S, nR], weights [S] summing to 1."""

    z_left: jax.Array
    z_right: jax.Array
    weights: jax.Array


@dataclasses.dataclass(frozen=True)
class RBMPrior(Prior):
    """An RBM with `num_left` + `num_right` binary units over z = [z_left, z_right]."""

    num_left: int
    num_right: int
    tau: float = DEFAULT_TAU
    init_scale: float = 0.01

    name = "rbm"
    param_scope = "rbm"
    normalized = False

    @classmethod
    def from_config(cls, config) -> RBMPrior:
        num_latents = required_latents(config, cls.name)
        if not 0 < config.rbm_num_left < num_latents:
            raise ValueError(
                f"rbm_num_left must split the {num_latents} latents into two non-empty sides, "
                f"got {config.rbm_num_left}"
            )
        return cls(config.rbm_num_left, num_latents - config.rbm_num_left, config.tau, config.rbm_init_scale)

    @property
    def num_latents(self) -> int:
        return self.num_left + self.num_right

    @property
    def posterior(self) -> BernoulliPosterior:
        return BernoulliPosterior(self.tau)

    def param_module(self) -> nn.Module:
        return RBMParameters(self.num_left, self.num_right, self.init_scale)

    def prior_params(self, params: Any) -> rbm.RBMParams:
        return rbm_params(params)

    def split(self, z: jax.Array) -> tuple[jax.Array, jax.Array]:
        """z [..., K] -> (z_left [..., nL], z_right [..., nR])."""
        return z[..., : self.num_left], z[..., self.num_left :]

    def log_prob_unnormalized(self, prior_params: rbm.RBMParams, z: jax.Array) -> jax.Array:
        return -rbm.energy(prior_params, *self.split(z))

    def relaxed_kl(self, prior_params, posterior, latents, *, negative_phase=None, log_partition=None):
        """See the module docstring. negative_phase (a `NegativePhase`) is required to train: it carries the
        gradient of log Z. Without it (evaluation) log_partition must be given and the value is the same."""
        if negative_phase is None and log_partition is None:
            raise ValueError(
                "the RBM prior needs a negative_phase (persistent chains or AIS samples) to train, or "
                "log_partition to evaluate"
            )
        log_q = self.posterior.log_prob(latents, jax.lax.stop_gradient(posterior))
        positive = rbm.energy(prior_params, *self.split(latents))  # [B]
        kl = log_q + positive
        metrics = {"positive_energy": jnp.mean(positive)}
        if negative_phase is not None:
            sg = jax.lax.stop_gradient
            energies = rbm.energy(prior_params, sg(negative_phase.z_left), sg(negative_phase.z_right))
            negative = jnp.sum(sg(negative_phase.weights) * energies)
            kl = kl + (sg(negative) - negative)  # value 0, gradient d E_p[E] / d theta = -d log Z / d theta
            metrics["negative_energy"] = negative
        if log_partition is not None:
            kl = kl + jax.lax.stop_gradient(log_partition)
        return kl, metrics

    def negative_phase_settings(self, settings: NegativePhaseConfig) -> NegativePhaseConfig:
        default = NegativePhaseConfig()
        if settings.kind == "pcd":  # AIS settings unused
            return dataclasses.replace(settings, ais=default.ais)
        return dataclasses.replace(
            settings, num_chains=default.num_chains, sweeps_per_step=default.sweeps_per_step
        )

    def init_chains(self, prior_params, key, settings: NegativePhaseConfig) -> rbm.ChainState | None:
        if settings.kind != "pcd":
            return None
        return rbm.init_chains(prior_params, key, settings.num_chains)

    def negative_phase(self, prior_params, key, chains, settings: NegativePhaseConfig):
        """PCD: every chain advanced `sweeps_per_step` sweeps under the current parameters, equal weights.
        AIS: fresh samples with self-normalised importance weights."""
        if settings.kind == "pcd":
            chains = rbm.advance_chains(prior_params, key, chains, settings.sweeps_per_step)
            return chains, negative_phase_from_chains(chains)
        return chains, negative_phase_from_ais(settings.ais.run(prior_params, key))

    def check_log_partition(self, method: str) -> None:
        super().check_log_partition(method)
        smaller = min(self.num_left, self.num_right)
        if method == "exact" and smaller > rbm.MAX_ENUMERATED_UNITS:
            raise ValueError(
                f"log_partition='exact' enumerates 2^n states of the RBM's smaller side; it has n = {smaller} "
                f"units (max {rbm.MAX_ENUMERATED_UNITS}): use log_partition='ais'"
            )

    def log_partition(self, prior_params, key, *, method="ais", ais=AISConfig(), devices=None) -> LogPartition:
        self.check_log_partition(method)
        if method == "exact":
            value = rbm.exact_log_partition(prior_params)
            return LogPartition(value, value, value, None, value, value, value, None, "exact enumeration")
        forward, reverse = reverse_ais.two_sided_log_partition(ais, prior_params, key, devices=devices)
        result = LogPartition(
            forward.log_partition,
            forward.log_partition_lower,
            forward.log_partition_upper,
            forward.effective_sample_size,
        )
        if reverse is None:
            return result
        return result._replace(
            reverse_estimate=reverse.log_partition,
            reverse_lower=reverse.log_partition_lower,
            reverse_upper=reverse.log_partition_upper,
            reverse_effective_sample_size=reverse.effective_sample_size,
            reverse_start=ais.reverse_start,
        )

    def sample(self, prior_params, key, num, *, num_sweeps=1) -> jax.Array:
        """num independent block-Gibbs chains from uniformly random states, num_sweeps sweeps each: [num, K]."""
        z_left, z_right = rbm.sample(prior_params, key, num, num_sweeps)
        return jnp.concatenate([z_left, z_right], axis=-1)


class RBMParameters(nn.Module):
    """The RBM's parameters in PixelVAEPP's parameter tree ('rbm': left_bias, right_bias, weights); calling it
    returns RBMParams."""

    num_left: int
    num_right: int
    init_scale: float = 0.01

    @nn.compact
    def __call__(self) -> rbm.RBMParams:
        return rbm.RBMParams(
            self.param("left_bias", nn.initializers.zeros, (self.num_left,)),
            self.param("right_bias", nn.initializers.zeros, (self.num_right,)),
            self.param("weights", nn.initializers.normal(self.init_scale), (self.num_left, self.num_right)),
        )


def rbm_params(params: Any) -> rbm.RBMParams:
    """The RBM inside a PixelVAEPP 'params' collection (under `RBMPrior.param_scope`)."""
    tree = params[RBMPrior.param_scope]
    return rbm.RBMParams(tree["left_bias"], tree["right_bias"], tree["weights"])


def negative_phase_from_chains(chains: rbm.ChainState) -> NegativePhase:
    """Equal weights over persistent chains (PCD)."""
    num = chains.z_left.shape[0]
    return NegativePhase(chains.z_left, chains.z_right, jnp.full((num,), 1.0 / num, chains.z_left.dtype))


def negative_phase_from_ais(result: AISResult) -> NegativePhase:
    """AIS final samples weighted by the softmax of their log-weights."""
    return NegativePhase(result.z_left, result.z_right, jax.nn.softmax(result.log_weights))


def exact_negative_phase(params: rbm.RBMParams) -> NegativePhase:
    """The exact negative phase of a small RBM: every state of the left side weighted by p(z_left), with z_right
    at its conditional mean sigmoid(b + W^T z_left). The energy is linear in z_right, so sum_s w_s E(z_s) =
    E_p[E(z)] and its gradient are exact. Enumerates 2^nL states (nL <= 20)."""
    num_left = params.left_bias.shape[0]
    if num_left > 20:
        raise ValueError(
            f"exact_negative_phase enumerates the left side: {num_left} units is too many (max 20)"
        )
    states = ((jnp.arange(2**num_left)[:, None] >> jnp.arange(num_left)[None, :]) & 1).astype(
        params.weights.dtype
    )
    log_weights = -rbm.free_energy_left(params, states)
    z_right = jax.nn.sigmoid(states @ params.weights + params.right_bias[None, :])
    return NegativePhase(states, z_right, jax.nn.softmax(log_weights))
