"""Test helpers: random parameters without compiling `init`.

Structural tests (causality, dependence on inputs) need random weights, not a data-dependent initialisation; taking
the parameter shapes from `jax.eval_shape(init)` and filling them with NumPy draws avoids compiling the (large)
init graph for every test model.
"""

import jax
import jax.numpy as jnp
import numpy as np


def random_variables(init_fn, *args, seed: int = 0):
    """Variables with the structure of `init_fn(*args)` filled with random values, by parameter name:
    weight-norm scales g ~ U(0.5, 1.5); biases and logits ~ N(0, 0.1^2); kernels and RBM weights ~ N(0, 0.1^2)."""
    shapes = jax.eval_shape(init_fn, *args)
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = jax.tree_util.keystr(path[-1:])
        if "scale" in name:
            value = rng.uniform(0.5, 1.5, leaf.shape)
        else:
            value = rng.normal(0.0, 0.1, leaf.shape)
        return jnp.asarray(value, leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def fast_init_key(seed: int) -> jax.Array:
    """A key of the 'rbg' implementation for `init`: XLA compiles its random bits about twice as fast as the inlined
    threefry hash of every parameter initialiser (the implementation travels with the typed key, so only this init
    is affected)."""
    return jax.random.key(seed, impl="rbg")
