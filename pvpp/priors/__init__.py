"""Priors over the latent vector, each one object chosen once by name (`make_prior`).

    base.py             what every prior offers (`Prior`), `LogPartition`, `NegativePhaseConfig`
    build.py            name -> prior class: the only place that reads ModelConfig.prior
    posteriors.py       the families of q(z | x): factorial Bernoulli (relaxed by Gumbel-sigmoid), Gaussian
    rbm_prior.py        the RBM prior (GumBolt KL, persistent chains or AIS negative phase, log Z)
    gaussian_prior.py   N(0, I), analytic KL          bernoulli_prior.py   learnable factorial Bernoulli
    no_prior.py         'none': no latents (plain PixelCNN++)
    rbm.py, ais.py      RBM mathematics: energies, block Gibbs, exact log Z; AIS (`AISConfig`)
    gaussian.py, bernoulli.py   the baselines' densities, samplers and KL divergences
"""

from pvpp.priors import ais, bernoulli, gaussian, rbm
from pvpp.priors.ais import AISConfig, AISResult
from pvpp.priors.base import LogPartition, NegativePhaseConfig, Prior
from pvpp.priors.build import PRIORS, make_prior, prior_type
from pvpp.priors.posteriors import BernoulliPosterior, GaussianPosterior
from pvpp.priors.rbm import ChainState, RBMParams

__all__ = [
    "AISConfig",
    "AISResult",
    "BernoulliPosterior",
    "ChainState",
    "GaussianPosterior",
    "LogPartition",
    "NegativePhaseConfig",
    "PRIORS",
    "Prior",
    "RBMParams",
    "ais",
    "bernoulli",
    "gaussian",
    "make_prior",
    "prior_type",
    "rbm",
]
