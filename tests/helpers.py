"""Test helpers: random parameters without compiling `init`.

Structural tests (causality, dependence on inputs) need random weights, not a data-dependent initialisation; taking
the parameter shapes from `jax.eval_shape(init)` and filling them with NumPy draws avoids compiling the (large)
init graph for every test model.
"""

import jax
import jax.numpy as jnp
import numpy as np

from pvpp.priors import rbm

from pvpp.bench.common import random_variables  # noqa: F401  (shared with the benchmarks)


def fast_init_key(seed: int) -> jax.Array:
    """A key of the 'rbg' implementation for `init`: XLA compiles its random bits about twice as fast as the inlined
    threefry hash of every parameter initialiser (the implementation travels with the typed key, so only this init
    is affected)."""
    return jax.random.key(seed, impl="rbg")


def random_rbm(seed, num_left, num_right, scale):
    """Biases ~ N(0, 0.25), weights ~ N(0, scale^2)."""
    rng = np.random.default_rng(seed)
    return rbm.RBMParams(
        jnp.asarray(rng.normal(size=num_left) * 0.5, jnp.float32),
        jnp.asarray(rng.normal(size=num_right) * 0.5, jnp.float32),
        jnp.asarray(scale * rng.normal(size=(num_left, num_right)), jnp.float32),
    )


def planted_rbm(seed, num_left, num_right, num_patterns, coupling):
    """A Hopfield-like RBM with 2 * num_patterns modes zL = (1 +- p_k) / 2.

    In spin variables s = 2 z - 1 the energy is -s_L^T J s_R with J = coupling * sum_k pL_k pR_k^T
    (random +-1 patterns); rewritten for 0/1 units: W = 4 J, a = -2 J 1, b = -2 J^T 1 (plus a constant).
    The flip s -> -s of both sides is a symmetry, so the modes +p_k and -p_k have exactly equal mass."""
    rng = np.random.default_rng(seed)
    patterns_left = rng.choice([-1.0, 1.0], (num_patterns, num_left))
    patterns_right = rng.choice([-1.0, 1.0], (num_patterns, num_right))
    coupling_matrix = coupling * patterns_left.T @ patterns_right
    params = rbm.RBMParams(
        jnp.asarray(-2.0 * coupling_matrix.sum(1), jnp.float32),
        jnp.asarray(-2.0 * coupling_matrix.sum(0), jnp.float32),
        jnp.asarray(4.0 * coupling_matrix, jnp.float32),
    )
    return params, patterns_left


def exact_log_partition(params):
    """log Z by enumeration in float64."""
    with jax.enable_x64(True):
        return float(rbm.exact_log_partition(jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), params)))
