"""Choosing a prior by name: the one place in pvpp that looks at `ModelConfig.prior`.

To add a prior, write its file (a frozen dataclass deriving from `pvpp.priors.base.Prior`) and add one entry
to `PRIOR_TYPES` below.
"""

from __future__ import annotations

from pvpp.priors.base import Prior
from pvpp.priors.bernoulli_prior import BernoulliPrior
from pvpp.priors.gaussian_prior import GaussianPrior
from pvpp.priors.no_prior import NoPrior
from pvpp.priors.rbm_prior import RBMPrior

PRIOR_TYPES: dict[str, type[Prior]] = {
    "rbm": RBMPrior,
    "gaussian": GaussianPrior,
    "bernoulli": BernoulliPrior,
    "none": NoPrior,
}
#: The names `ModelConfig.prior` (and the --prior flag) accept.
PRIORS = tuple(PRIOR_TYPES)


def prior_type(prior: str) -> type[Prior]:
    """The class of the prior named `prior` (a name of `PRIORS`); ValueError for any other name."""
    if prior in PRIOR_TYPES:
        return PRIOR_TYPES[prior]
    raise ValueError(f"prior must be one of {PRIORS}, got {prior!r}")


def make_prior(config) -> Prior:
    """The prior object of a `ModelConfig` (built from its fields; ValueError naming a field that does not fit)."""
    return prior_type(config.prior).from_config(config)
