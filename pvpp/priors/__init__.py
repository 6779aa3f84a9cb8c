"""Priors over the latent vector: the RBM (`rbm`, AIS in `ais`) and the baselines `gaussian`, `bernoulli`."""

from pvpp.priors import bernoulli, gaussian, rbm
from pvpp.priors.rbm import AISResult, ChainState, RBMParams

__all__ = ["AISResult", "ChainState", "RBMParams", "bernoulli", "gaussian", "rbm"]
