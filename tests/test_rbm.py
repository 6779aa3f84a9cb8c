"""RBM prior: energies, exact log Z and its moments against enumeration; Gibbs vs exact moments."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp

from pvpp.priors import rbm


def _random_params(seed, num_left, num_right, scale, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    return rbm.RBMParams(
        jnp.asarray(rng.normal(size=num_left), dtype),
        jnp.asarray(rng.normal(size=num_right), dtype),
        jnp.asarray(scale * rng.normal(size=(num_left, num_right)), dtype),
    )


def _all_states(num_units):
    """[2^n, n] float64: every 0/1 vector."""
    return ((np.arange(2**num_units)[:, None] >> np.arange(num_units)[None, :]) & 1).astype(np.float64)


def _brute_force(params):
    """Joint enumeration in NumPy float64, independent of the implementation: log Z and the exact moments."""
    a, b, w = (np.asarray(v, np.float64) for v in params)
    z_left, z_right = _all_states(a.shape[0]), _all_states(b.shape[0])
    neg_energy = (z_left @ a)[:, None] + (z_right @ b)[None, :] + z_left @ w @ z_right.T  # [2^nL, 2^nR]
    log_partition = logsumexp(neg_energy)
    prob = np.exp(neg_energy - log_partition)
    return {
        "log_partition": log_partition,
        "left": prob.sum(1) @ z_left,
        "right": prob.sum(0) @ z_right,
        "pair": z_left.T @ prob @ z_right,
    }


# ------------------------------------------------------------------------------------------------------------
# Energies and exact log Z


def test_free_energies_sum_out_the_other_side():
    with jax.enable_x64(True):
        params = _random_params(0, 3, 4, 0.8, jnp.float64)
        z_left, z_right = _all_states(3), _all_states(4)
        pairs_left, pairs_right = z_left[:, None, :].repeat(16, 1), z_right[None].repeat(8, 0)  # [8, 16, n]
        neg_energy = -np.asarray(rbm.energy(params, pairs_left, pairs_right))  # [8, 16]
        free_left = -np.asarray(rbm.free_energy_left(params, z_left))
        free_right = -np.asarray(rbm.free_energy_right(params, z_right))
        np.testing.assert_allclose(free_left, logsumexp(neg_energy, 1), rtol=1e-12)
        np.testing.assert_allclose(free_right, logsumexp(neg_energy, 0), rtol=1e-12)
        log_prob = np.asarray(rbm.log_prob_unnormalized(params, pairs_left, pairs_right))
        np.testing.assert_allclose(log_prob, neg_energy, rtol=1e-12)


def test_log_partition_with_zero_weights_is_the_closed_form():
    with jax.enable_x64(True):
        rng = np.random.default_rng(1)
        a, b = rng.normal(size=14) * 2, rng.normal(size=5) * 2  # 14 units: 4 chunks of 2^12 when enumerated
        params = rbm.RBMParams(jnp.asarray(a), jnp.asarray(b), jnp.zeros((14, 5)))
        expected = np.logaddexp(0, a).sum() + np.logaddexp(0, b).sum()
        for side in ("smaller", "left", "right"):
            log_partition = float(rbm.exact_log_partition(params, side=side))
            np.testing.assert_allclose(log_partition, expected, rtol=1e-13)


@pytest.mark.parametrize("num_left, num_right", [(5, 7), (7, 5), (14, 3)])
def test_log_partition_matches_joint_enumeration_from_either_side(num_left, num_right):
    with jax.enable_x64(True):
        params = _random_params(num_left, num_left, num_right, 0.7, jnp.float64)
        expected = _brute_force(params)["log_partition"]
        for side in ("smaller", "left", "right"):
            log_partition = float(rbm.exact_log_partition(params, side=side))
            np.testing.assert_allclose(log_partition, expected, rtol=1e-12)
        # Swapping the sides is the same RBM.
        swapped = float(rbm.exact_log_partition(rbm.swap_sides(params)))
        np.testing.assert_allclose(swapped, expected, rtol=1e-12)


@pytest.mark.parametrize("side", ["left", "right"])
def test_log_partition_gradient_is_the_exact_moments(side):
    with jax.enable_x64(True):
        params = _random_params(3, 4, 6, 0.9, jnp.float64)
        exact = _brute_force(params)
        grads = jax.grad(lambda p: rbm.exact_log_partition(p, side=side))(params)
        np.testing.assert_allclose(np.asarray(grads.left_bias), exact["left"], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(np.asarray(grads.right_bias), exact["right"], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(np.asarray(grads.weights), exact["pair"], rtol=1e-10, atol=1e-12)


def test_log_partition_refuses_large_sides():
    params = rbm.init_rbm_params(jax.random.key(0), 25, 30)
    with pytest.raises(ValueError, match=r"n=25.*\(25, 30\)"):
        rbm.exact_log_partition(params)
    with pytest.raises(ValueError, match="n=30"):
        rbm.exact_log_partition(_random_params(0, 3, 30, 0.1), side="right")


# ------------------------------------------------------------------------------------------------------------
# Block Gibbs


def _z_scores(per_chain, exact):
    """(mean - exact) / standard error, with the standard error taken across independent chains.

    Each chain's time average is one draw; the chains are independent, so their spread gives the standard
    error of the grand mean without any assumption about autocorrelation inside a chain (batch means with one
    batch per chain)."""
    per_chain = np.asarray(per_chain, np.float64).reshape(per_chain.shape[0], -1)
    standard_error = per_chain.std(0, ddof=1) / np.sqrt(per_chain.shape[0])
    return (per_chain.mean(0) - np.ravel(exact)) / standard_error


def _max_z(per_chain_moments, exact):
    return max(np.max(np.abs(_z_scores(per_chain_moments[k], exact[k]))) for k in ("left", "right", "pair"))


# 8 + 8 + 80 = 96 statistics: under the null each z-score is ~N(0, 1); P(max |z| > 5) < 96 * 6e-7 = 6e-5.
_Z_LIMIT = 5.0


def test_persistent_chains_reproduce_exact_moments():
    params = _random_params(4, 8, 10, 0.6)
    exact = _brute_force(params)
    num_chains, num_samples, thin = 256, 150, 4
    state = rbm.init_chains(params, jax.random.key(0), num_chains)
    state = rbm.advance_chains(params, jax.random.key(1), state, 100)  # burn-in
    sums = {"left": 0.0, "right": 0.0, "pair": 0.0}
    for t in range(num_samples):
        state = rbm.advance_chains(params, jax.random.fold_in(jax.random.key(2), t), state, thin)
        z_left, z_right = np.asarray(state.z_left), np.asarray(state.z_right)
        sums["left"] += z_left
        sums["right"] += z_right
        sums["pair"] += z_left[:, :, None] * z_right[:, None, :]
    per_chain = {k: v / num_samples for k, v in sums.items()}
    # The test has power: the standard errors are small next to the moments' spread.
    assert np.max(per_chain["left"].std(0) / np.sqrt(num_chains)) < 0.01
    assert _max_z(per_chain, exact) < _Z_LIMIT


def test_tempered_sweeps_reproduce_the_tempered_rbm():
    """gibbs_sweep at beta samples exp(-beta E): compare with the exact moments of beta * params; the same
    statistic rejects the untempered moments, so it can tell a wrong stationary distribution."""
    params = _random_params(5, 8, 10, 0.8)
    beta = 0.5
    num_chains, burn_in, num_sweeps = 256, 50, 600

    @jax.jit
    def run(key):
        init_key = jax.random.fold_in(key, num_sweeps)
        z_left = jax.random.bernoulli(init_key, 0.5, (num_chains, 8)).astype(jnp.float32)

        def step(carry, t):
            z_left, sums = carry
            z_left, z_right = rbm.gibbs_sweep(params, jax.random.fold_in(key, t), z_left, beta)
            keep = (t >= burn_in).astype(jnp.float32)
            sums = jax.tree.map(
                lambda s, v: s + keep * v, sums, (z_left, z_right, z_left[:, :, None] * z_right[:, None, :])
            )
            return (z_left, sums), None

        zeros = (jnp.zeros((num_chains, 8)), jnp.zeros((num_chains, 10)), jnp.zeros((num_chains, 8, 10)))
        (_, sums), _ = jax.lax.scan(step, (z_left, zeros), jnp.arange(num_sweeps))
        return sums

    sums = run(jax.random.key(3))
    per_chain = dict(zip(("left", "right", "pair"), (np.asarray(s) / (num_sweeps - burn_in) for s in sums)))
    tempered = _brute_force(jax.tree.map(lambda v: beta * v, params))
    assert _max_z(per_chain, tempered) < _Z_LIMIT
    assert _max_z(per_chain, _brute_force(params)) > 3 * _Z_LIMIT


def test_sample_gives_independent_draws_of_the_marginals():
    params = _random_params(6, 8, 10, 0.6)
    exact = _brute_force(params)
    z_left, z_right = rbm.sample(params, jax.random.key(4), num_chains=4000, num_sweeps=60)
    assert z_left.shape == (4000, 8) and z_right.shape == (4000, 10) and z_left.dtype == jnp.float32
    assert set(np.unique(np.asarray(z_left))) <= {0.0, 1.0}
    # Chains are independent draws: the standard error of each marginal is sqrt(p (1 - p) / C).
    for draws, marginal in ((np.asarray(z_left), exact["left"]), (np.asarray(z_right), exact["right"])):
        standard_error = np.sqrt(marginal * (1 - marginal) / draws.shape[0])
        assert np.max(np.abs(draws.mean(0) - marginal) / standard_error) < _Z_LIMIT


def test_sample_starts_from_init_left_and_compiles_once_per_shape():
    params = _random_params(7, 5, 7, 0.3)
    before = rbm._advance_jit._cache_size()
    for num_sweeps in (1, 4, 9):
        rbm.sample(params, jax.random.key(num_sweeps), num_chains=3, num_sweeps=num_sweeps)
    assert rbm._advance_jit._cache_size() - before == 1  # num_sweeps is traced, not static
    # Huge biases make every conditional deterministic: one sweep from anywhere gives all ones / all zeros.
    forced = rbm.RBMParams(jnp.full((5,), 50.0), jnp.full((7,), -50.0), jnp.zeros((5, 7)))
    z_left, z_right = rbm.sample(forced, jax.random.key(0), 3, 1, init_left=jnp.zeros((3, 5)))
    np.testing.assert_array_equal(np.asarray(z_left), 1.0)
    np.testing.assert_array_equal(np.asarray(z_right), 0.0)


def test_advance_chains_traces_once_inside_jit():
    params = _random_params(8, 4, 6, 0.3)
    state = rbm.init_chains(params, jax.random.key(0), 9)
    step = jax.jit(chex.assert_max_traces(rbm.advance_chains, n=1))
    for num_sweeps in (0, 2, 5):
        new_state = step(params, jax.random.key(num_sweeps), state, jnp.int32(num_sweeps))
        if num_sweeps == 0:
            chex.assert_trees_all_equal(new_state, state)
    chex.assert_shape(new_state.z_left, (9, 4))
    chex.assert_shape(new_state.z_right, (9, 6))


def test_gibbs_sweep_is_vmap_consistent():
    """vmap over chains with one key per chain gives, chain by chain, what a single-chain call gives."""
    params = _random_params(10, 4, 6, 0.5)
    keys = jax.random.split(jax.random.key(5), 7)
    z_left = jax.random.bernoulli(jax.random.key(6), 0.5, (7, 4)).astype(jnp.float32)
    batched = jax.vmap(lambda k, z: rbm.gibbs_sweep(params, k, z, 0.7))(keys, z_left)
    for chain in range(7):
        single = rbm.gibbs_sweep(params, keys[chain], z_left[chain], 0.7)
        np.testing.assert_array_equal(np.asarray(batched[0][chain]), np.asarray(single[0]))
        np.testing.assert_array_equal(np.asarray(batched[1][chain]), np.asarray(single[1]))


# ------------------------------------------------------------------------------------------------------------
# Bad input


def test_bad_input_raises_clear_errors():
    params = _random_params(9, 4, 6, 0.3)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match=r"left_bias \(5,\).*weights \(4, 6\)"):
        rbm.exact_log_partition(params._replace(left_bias=jnp.zeros(5)))
    with pytest.raises(ValueError, match=r"weights \(4, 6\) contains non-finite"):
        rbm.sample(params._replace(weights=params.weights.at[0, 0].set(jnp.nan)), key, 2, 1)
    with pytest.raises(ValueError, match=r"right_bias \(6,\) contains non-finite"):
        bad = params._replace(right_bias=params.right_bias.at[1].set(jnp.inf))
        rbm.free_energy_left(bad, jnp.zeros((2, 4)))
    with pytest.raises(ValueError, match="num_chains must be >= 1, got 0"):
        rbm.sample(params, key, 0, 1)
    with pytest.raises(ValueError, match="num_chains must be >= 1"):
        rbm.init_chains(params, key, 0)
    with pytest.raises(ValueError, match=r"z_left must have shape \[\.\.\., 4\].*got \(2, 5\)"):
        rbm.gibbs_sweep(params, key, jnp.zeros((2, 5)))
    with pytest.raises(ValueError, match=r"z_right must have shape \[\.\.\., 6\]"):
        rbm.energy(params, jnp.zeros((2, 4)), jnp.zeros((2, 4)))
    with pytest.raises(ValueError, match="share leading axes"):
        rbm.energy(params, jnp.zeros((2, 4)), jnp.zeros((3, 6)))
    with pytest.raises(ValueError, match=r"init_left must have shape \[num_chains, nL\] = \[3, 4\]"):
        rbm.sample(params, key, 3, 1, init_left=jnp.zeros((2, 4)))
    with pytest.raises(ValueError, match="0/1"):
        rbm.sample(params, key, 2, 1, init_left=jnp.full((2, 4), 0.5))
    state = rbm.init_chains(params, key, 3)
    with pytest.raises(ValueError, match=r"state.z_right must have shape \[num_chains, nR\] = \[3, 6\]"):
        rbm.advance_chains(params, key, state._replace(z_right=jnp.zeros((2, 6))), 1)
    with pytest.raises(ValueError, match="num_sweeps must be >= 0"):
        rbm.advance_chains(params, key, state, -1)
    with pytest.raises(ValueError, match="beta must be finite"):
        rbm.gibbs_sweep(params, key, state.z_left, float("nan"))
    with pytest.raises(TypeError, match="RBMParams"):
        rbm.exact_log_partition((params.left_bias, params.right_bias, params.weights))
