"""Test helpers: random parameters without compiling `init`; random RBMs; the tiny training run many tests share;
tree comparisons that fail on a missing or extra leaf.

Structural tests (causality, dependence on inputs) need random weights, not a data-dependent initialisation; taking
the parameter shapes from `jax.eval_shape(init)` and filling them with NumPy draws avoids compiling the (large)
init graph for every test model.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np

from pvpp import data, train
from pvpp.model import ModelConfig

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


# The tiny training run (8x8 binary images, nr_resnet 1, 8 filters, 8 latents, RBM 4 + 4, dropout off) and the
# step settings that tests share, so that the compiled functions (`pvpp.train` caches them) are shared too.
MODEL = ModelConfig(
    image_shape=(8, 8, 1),
    nr_resnet=1,
    nr_filters=8,
    dropout_rate=0.0,
    num_concat_latents=8,
    rbm_num_left=4,
    encoder_filters=8,
    latent_map_channels=4,
)
TRAIN = train.TrainConfig(
    batch_size=8,
    num_steps=6,
    num_devices=1,
    num_chains=4,
    log_every=2,
    eval_every=3,
    eval_examples=16,
    checkpoint_every=2,
    keep_checkpoints=3,
    log_z_ais=train.AISConfig(num_chains=16, num_betas=20),
)
NUM_IMAGES = 64


def synthetic_splits() -> tuple[data.DataSplit, data.DataSplit]:
    """Random binary 8x8 images (a static binary data set); the runner script below rebuilds the same ones."""
    images = (np.random.default_rng(0).uniform(size=(NUM_IMAGES, 8, 8, 1)) < 0.4).astype(np.uint8)
    return (
        data.DataSplit("synthetic", "train", images, None, "static"),
        data.DataSplit("synthetic", "test", images[:16], None, "static"),
    )


def run(workdir, *, allow_changed_settings: bool = True, **changes) -> train.TrainState:
    """The tiny run with TRAIN's settings replaced by `changes`, in `workdir`. Tests resume runs with another
    length or other periods on purpose, so changed settings are allowed unless allow_changed_settings=False."""
    train_data, eval_data = synthetic_splits()
    return train.run_training(
        MODEL, TRAIN.replace(**changes), train_data, eval_data, workdir, allow_changed_settings=allow_changed_settings
    )


def assert_states_equal(got: train.TrainState, want: train.TrainState, exact: bool = True) -> None:
    """Every leaf of the two states (params, optimizer state with the EMA, chains, step, key) is equal."""
    got_leaves = jax.tree_util.tree_flatten_with_path(with_key_data(got))[0]
    want_leaves = jax.tree_util.tree_flatten_with_path(with_key_data(want))[0]
    assert [p for p, _ in got_leaves] == [p for p, _ in want_leaves]
    for (path, a), (_, b) in zip(got_leaves, want_leaves):
        if exact:
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=jax.tree_util.keystr(path))
        else:
            # Adam divides by sqrt(v): for entries with near-zero gradients float-rounding differences are
            # amplified up to a fraction of the learning rate (1e-3), hence the absolute tolerance.
            np.testing.assert_allclose(
                np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5, err_msg=jax.tree_util.keystr(path)
            )


def with_key_data(state):
    """The state with its typed PRNG key as raw key data (comparable with numpy)."""
    return state.replace(key=jax.random.key_data(state.key))


def assert_trees_equal(got, want) -> None:
    """The two pytrees have the same structure (no leaf missing or extra) and bitwise-equal leaves."""
    chex.assert_trees_all_equal_structs(got, want)
    chex.assert_trees_all_equal(got, want)
