"""What a prior offers the model, the objectives, training, evaluation and generation.

A prior is one small frozen object, built from the model configuration by `pvpp.priors.make_prior` (the only
code that looks at a prior's name; building one is cheap, so code builds it where it needs it). Nothing else
asks which prior it has: it asks the object. Every prior derives from `Prior` below and overrides what
differs; shapes follow `sample_shape + batch_shape + [K]` with K the number of latents, and every
log-probability is in nats.

    the posterior family  prior.posterior: q(z | x) from the encoders' outputs (`pvpp.priors.posteriors`):
                          relaxed_sample (training), sample (hard: evaluation, generation), log_prob
    its parameters        prior.param_module() / prior.param_scope: the Linen module that holds them inside
                          PixelVAEPP and its name there; prior.prior_params(params) reads them from a
                          PixelVAEPP 'params' tree (RBMParams, [K] logits, or None)
    densities             log_prob_unnormalized(prior_params, z [..., K]) -> [...]: log p(z) + log Z;
                          `normalized` says whether log Z = 0, and log_partition(...) estimates it otherwise
    the KL term           relaxed_kl(prior_params, posterior [B, P], latents [B, K], negative_phase=,
                          log_partition=) -> ([B] nats, extra metrics): the per-example KL of the training loss
    the negative phase    init_chains(prior_params, key, settings) -> state or None, and
                          negative_phase(prior_params, key, state, settings) -> (state, samples or None):
                          persistent chains carried in the train state (an RBM), or nothing
    generation            sample(prior_params, key, num, num_sweeps=) -> z [num, K]

Adding a prior: one new file with a frozen dataclass deriving from `Prior` (`from_config` and the methods that
differ from the defaults below), and one entry in `pvpp/priors/build.py`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Sequence

import jax
from flax import linen as nn

from pvpp.priors.ais import AISConfig
from pvpp.validation import check_choice, check_int

#: Ways to get log Z of an unnormalised prior: annealed importance sampling, or exact enumeration (small RBMs).
LOG_PARTITION_METHODS = ("ais", "exact")
#: Where the negative phase of a Boltzmann-machine prior comes from: persistent chains, or fresh AIS samples.
NEGATIVE_PHASES = ("pcd", "ais")


class LogPartition(NamedTuple):
    """log Z of an unnormalised prior (nats, scalars): the estimate, an interval around it, and, when reverse AIS
    ran, a second estimate from above.

    AIS: estimate = forward AIS (low in expectation); lower / upper = log Z_0 + log(mean(w) -/+ 3 std(w) /
    sqrt(M)) over its M chains (the estimator's spread only), effective_sample_size in [1, M]. reverse_estimate
    (high in expectation when its start states are exact samples), reverse_lower / reverse_upper its spread,
    reverse_effective_sample_size, and reverse_start (where its chains started) are None without reverse AIS.
    Exact enumeration: every estimate and end equals log Z, effective sample sizes None.
    """

    estimate: jax.Array
    lower: jax.Array
    upper: jax.Array
    effective_sample_size: jax.Array | None
    reverse_estimate: jax.Array | None = None
    reverse_lower: jax.Array | None = None
    reverse_upper: jax.Array | None = None
    reverse_effective_sample_size: jax.Array | None = None
    reverse_start: str | None = None


@dataclasses.dataclass(frozen=True)
class NegativePhaseConfig:
    """How a prior whose log Z has a gradient (a Boltzmann machine) gets its negative-phase samples during
    training; priors without one ignore it.

    kind: 'pcd' (`num_chains` persistent chains, advanced by `sweeps_per_step` block-Gibbs sweeps every step
    under the current parameters) or 'ais' (fresh samples of `ais` every step, weighted by their importance).
    """

    kind: str = "pcd"
    num_chains: int = 100
    sweeps_per_step: int = 1
    ais: AISConfig = AISConfig(num_chains=100, num_betas=100)

    def __post_init__(self):
        check_choice(self.kind, "negative_phase", NEGATIVE_PHASES)
        check_int(self.num_chains, "num_chains", 1)
        check_int(self.sweeps_per_step, "sweeps_per_step", 0)
        if not isinstance(self.ais, AISConfig):
            raise TypeError(f"ais must be an AISConfig, got {type(self.ais).__name__}")


class Prior:
    """The base of every prior: the defaults of a normalised prior with no negative phase (see the module
    docstring). Subclasses are frozen dataclasses (hashable: they are static arguments of compiled code)."""

    #: The configuration's name of this prior (`ModelConfig.prior`).
    name: str = ""
    #: Name of the prior's parameters inside PixelVAEPP's parameter tree (None: it has none).
    param_scope: str | None = None
    #: True when log_prob_unnormalized is log p(z) itself (log Z = 0).
    normalized: bool = True
    #: False for a prior without latents (plain PixelCNN++): the model then has no encoders.
    uses_latents: bool = True

    @classmethod
    def from_config(cls, config) -> Prior:
        """The prior of a `ModelConfig` (any object with its fields): raises ValueError naming the field at fault."""
        raise NotImplementedError

    @property
    def num_latents(self) -> int:
        """K, the length of z."""
        raise NotImplementedError

    @property
    def posterior(self):
        """The family of q(z | x) (`pvpp.priors.posteriors`)."""
        raise NotImplementedError

    def param_module(self) -> nn.Module | None:
        """A fresh Linen module holding the prior's parameters (PixelVAEPP stores it under `param_scope`)."""
        return None

    def prior_params(self, params: Any) -> Any:
        """The prior's parameters from a PixelVAEPP 'params' collection (None when it has none)."""
        return None

    def log_prob_unnormalized(self, prior_params: Any, z: jax.Array) -> jax.Array:
        """log p(z) + log Z: z [..., K] -> [...] nats."""
        raise NotImplementedError

    def relaxed_kl(
        self,
        prior_params: Any,
        posterior: jax.Array,
        latents: jax.Array,
        *,
        negative_phase: Any = None,
        log_partition: jax.Array | float | None = None,
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """The KL term of the training loss per example, [B] nats, and extra batch-mean metrics.

        posterior: [B, P] the encoders' outputs; latents: [B, K] the relaxed sample drawn from them.
        negative_phase: what `negative_phase` returned this step (None for priors without one).
        log_partition: log Z if known (a constant of the value; without it an unnormalised prior's KL lacks it).
        """
        raise NotImplementedError

    def negative_phase_settings(self, settings: NegativePhaseConfig) -> NegativePhaseConfig:
        """`settings` reduced to what this prior reads (defaults for the rest), so that compiled functions are
        shared by runs whose settings differ only in what the prior ignores."""
        return NegativePhaseConfig()

    def init_chains(self, prior_params: Any, key: jax.Array, settings: NegativePhaseConfig) -> Any:
        """The negative-phase state at step 0 (persistent chains) or None."""
        return None

    def negative_phase(
        self, prior_params: Any, key: jax.Array, chains: Any, settings: NegativePhaseConfig
    ) -> tuple[Any, Any]:
        """(the new negative-phase state, this step's negative-phase samples for `relaxed_kl`), or (chains, None)."""
        return chains, None

    def check_log_partition(self, method: str) -> None:
        """ValueError unless log Z can be computed with `method` ('ais' or 'exact') for this prior."""
        check_choice(method, "log_partition", LOG_PARTITION_METHODS)

    def log_partition(
        self,
        prior_params: Any,
        key: jax.Array,
        *,
        method: str = "ais",
        ais: AISConfig = AISConfig(),
        devices: Sequence[jax.Device] | None = None,
    ) -> LogPartition | None:
        """log Z by `method` ('ais' with the effort `ais`, or 'exact'); None for a normalised prior. devices:
        where a sampling estimator may split its work (all processes' devices, the same on every process; None:
        the default device); every process gets the whole result."""
        return None

    def sample(self, prior_params: Any, key: jax.Array, num: int, *, num_sweeps: int = 1) -> jax.Array:
        """num samples z [num, K] of the prior. Markov-chain samplers (an RBM) run `num_sweeps` sweeps from
        uniformly random states; exact samplers ignore it."""
        raise NotImplementedError


def required_latents(config, name: str) -> int:
    """config.num_latents, which a prior with latents needs to be >= 1 (ValueError naming the prior)."""
    if config.num_latents < 1:
        raise ValueError(f"prior {name!r} needs latents: every latent group has size 0")
    return config.num_latents
