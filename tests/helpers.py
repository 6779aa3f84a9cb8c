"""Test helpers: random parameters without compiling `init`.

Structural tests (causality, dependence on inputs) need random weights, not a data-dependent initialisation; taking
the parameter shapes from `jax.eval_shape(init)` and filling them with NumPy draws avoids compiling the (large)
init graph for every test model.
"""

import jax

from pvpp.bench.common import random_variables  # noqa: F401  (shared with the benchmarks)


def fast_init_key(seed: int) -> jax.Array:
    """A key of the 'rbg' implementation for `init`: XLA compiles its random bits about twice as fast as the inlined
    threefry hash of every parameter initialiser (the implementation travels with the typed key, so only this init
    is affected)."""
    return jax.random.key(seed, impl="rbg")
