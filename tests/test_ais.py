"""AIS for the RBM log partition function, against exact enumeration of the small side."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pvpp.priors import ais, rbm

from helpers import exact_log_partition as _exact, planted_rbm as _planted_params, random_rbm as _random_params


@pytest.mark.parametrize(
    "num_left, num_right, scale, swap",
    [(18, 200, 0.05, False), (16, 200, 0.6, False), (200, 16, 0.3, False), (200, 16, 0.6, True)],
)
def test_ais_matches_exact_log_partition_on_random_rbms(num_left, num_right, scale, swap):
    """1000 temperatures, 500 chains: within 0.05 nats, and the reported interval covers the exact value.
    `swap` anneals over the right side (the 16 units) instead of the 200."""
    params = _random_params(num_left + int(10 * scale), num_left, num_right, scale)
    exact = _exact(params)
    annealed = rbm.swap_sides(params) if swap else params
    result = ais.ais_log_partition(annealed, jax.random.key(0), num_chains=500, num_betas=1000)
    assert abs(float(result.log_partition) - exact) < 0.05
    assert float(result.log_partition_lower) <= exact <= float(result.log_partition_upper)
    assert 1.0 <= float(result.effective_sample_size) <= 500.0
    assert result.log_weights.shape == (500,)
    assert result.z_left.shape == (500, annealed.weights.shape[0])
    assert result.z_right.shape == (500, annealed.weights.shape[1])


def _mode_index(z_left, patterns_left):
    """Index of the nearest mode: 2 k for +p_k, 2 k + 1 for -p_k."""
    overlaps = (2.0 * np.asarray(z_left) - 1.0) @ patterns_left.T / patterns_left.shape[1]  # [M, K]
    nearest = np.argmax(np.abs(overlaps), axis=1)
    return 2 * nearest + (np.take_along_axis(overlaps, nearest[:, None], 1)[:, 0] < 0)


def test_ais_default_base_finds_every_mode_of_a_planted_rbm():
    params, patterns_left = _planted_params(2, 16, 100, 3, 0.1)
    exact = _exact(params)
    result = ais.ais_log_partition(params, jax.random.key(0), num_chains=500, num_betas=1000)
    assert abs(float(result.log_partition) - exact) < 0.1
    assert float(result.log_partition_lower) <= exact <= float(result.log_partition_upper)
    assert set(_mode_index(result.z_left, patterns_left)) == set(range(6))


def test_ais_base_on_one_mode_misses_the_others_with_a_narrow_interval():
    """The documented failure of a poor base: a0 = 8 p_1 puts the base on the single mode +p_1. The modes are
    separated by barriers the chains never cross, so every run ends in +p_1: the log-weights agree (ESS ~ M,
    interval a few thousandths of a nat wide) and log Z is underestimated by at least log 2 (the mirror mode
    -p_1 has exactly the same mass) - far outside the reported interval."""
    params, patterns_left = _planted_params(2, 16, 100, 3, 0.1)
    exact = _exact(params)
    one_mode_base = jnp.asarray(8.0 * patterns_left[0], jnp.float32)
    result = ais.ais_log_partition(
        params, jax.random.key(0), num_chains=500, num_betas=1000, base_left_bias=one_mode_base
    )
    assert set(_mode_index(result.z_left, patterns_left)) == {0}
    assert float(result.log_partition) < exact - 0.6
    assert float(result.log_partition_upper) < exact - 0.5
    assert float(result.log_partition_upper) - float(result.log_partition_lower) < 0.05
    assert float(result.effective_sample_size) > 450


def test_log_weights_stay_accurate_in_float32_over_10000_temperatures():
    """With no transitions (sweeps_per_beta=0) the increments telescope: log w = log f_1(z) - log f_0(z) at
    the base sample z. Float32 over 9999 steps must agree with float64 to ~1e-5 of log w ~ 100 nats; the naive
    difference of log f values drifts to ~2e-3 here."""
    params = rbm.RBMParams(*(2.0 * v for v in _random_params(11, 20, 200, 0.3)))
    base = jnp.asarray(np.random.default_rng(12).normal(size=20), jnp.float32)
    result = ais.ais_log_partition(
        params, jax.random.key(1), num_chains=64, num_betas=10_000, sweeps_per_beta=0, base_left_bias=base
    )
    a, b, w, a0 = (np.asarray(v, np.float64) for v in (*params, base))
    z = np.asarray(result.z_left, np.float64)
    expected = z @ a + np.logaddexp(0.0, b + z @ w).sum(1) - z @ a0 - 200 * np.log(2.0)
    assert np.max(np.abs(expected)) > 50.0  # the regime where float32 rounding of log f matters
    np.testing.assert_allclose(np.asarray(result.log_weights), expected, rtol=0, atol=1e-4)


def test_final_samples_are_a_weighted_sample_of_the_rbm():
    params = _random_params(13, 8, 10, 0.6)
    result = ais.ais_log_partition(params, jax.random.key(2), num_chains=2000, num_betas=200)
    with jax.enable_x64(True):
        params64 = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), params)
        moments = jax.grad(rbm.exact_log_partition)(params64)  # E[zL], E[zR], E[zL zR^T]
    log_weights = np.asarray(result.log_weights, np.float64)
    weights = np.exp(log_weights - log_weights.max())
    weights /= weights.sum()
    for draws, marginal in ((result.z_left, moments.left_bias), (result.z_right, moments.right_bias)):
        marginal = np.asarray(marginal)
        estimate = weights @ np.asarray(draws, np.float64)
        # Self-normalised importance sampling: standard error ~ sqrt(p (1 - p) / ESS).
        standard_error = np.sqrt(marginal * (1 - marginal) / float(result.effective_sample_size))
        assert np.max(np.abs(estimate - marginal) / standard_error) < 5.0


def test_chains_split_over_devices_draw_the_same_noise_and_estimate():
    """13 chains on 8 devices (padded to 16): each chain draws the bits it draws on one device. Without Gibbs
    sweeps the states are those bits alone, so they are bitwise equal; with sweeps the log-weights agree to the
    rounding of the per-device products, and log Z matches exact enumeration as on one device."""
    params = _random_params(3, 12, 30, 0.3)
    key = jax.random.key(7)
    for sweeps in (0, 1):
        one = ais.ais_log_partition(params, key, num_chains=13, num_betas=200, sweeps_per_beta=sweeps)
        split = ais.ais_log_partition(
            params, key, num_chains=13, num_betas=200, sweeps_per_beta=sweeps, devices=jax.devices()[:8]
        )
        assert split.log_weights.shape == (13,) and split.z_left.shape == (13, 12)
        assert len(split.log_partition.sharding.device_set) == 8
        if sweeps == 0:
            np.testing.assert_array_equal(np.asarray(split.z_left), np.asarray(one.z_left))
        np.testing.assert_allclose(np.asarray(split.log_weights), np.asarray(one.log_weights), rtol=1e-5, atol=1e-5)
        for name in ("log_partition", "log_partition_lower", "log_partition_upper", "effective_sample_size"):
            np.testing.assert_allclose(float(getattr(split, name)), float(getattr(one, name)), rtol=1e-5)
    many = ais.AISConfig(num_chains=200, num_betas=500).run(params, key, devices=jax.devices()[:8])
    assert abs(float(many.log_partition) - _exact(params)) < 0.05


@pytest.mark.parametrize("kind", ais.SCHEDULES)
def test_beta_schedule_runs_from_zero_to_one(kind):
    for num_betas in (2, 3, 10, 1000):
        betas = np.asarray(ais.beta_schedule(num_betas, kind))
        assert betas.shape == (num_betas,)
        assert betas[0] == 0.0 and betas[-1] == 1.0
        assert np.all(np.diff(betas) > 0)


def test_bad_input_raises_clear_errors():
    params = _random_params(0, 4, 6, 0.3)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="num_chains must be >= 1, got 0"):
        ais.ais_log_partition(params, key, num_chains=0, num_betas=10)
    with pytest.raises(ValueError, match="num_betas must be >= 2, got 1"):
        ais.ais_log_partition(params, key, num_chains=4, num_betas=1)
    with pytest.raises(ValueError, match=r"base_left_bias must have shape \[nL\] = \[4\].*got \(6,\)"):
        ais.ais_log_partition(params, key, num_chains=4, num_betas=10, base_left_bias=jnp.zeros(6))
    with pytest.raises(ValueError, match="base_left_bias .* non-finite"):
        ais.ais_log_partition(params, key, num_chains=4, num_betas=10, base_left_bias=jnp.full(4, jnp.nan))
    with pytest.raises(ValueError, match=r"weights \(4, 6\) contains non-finite"):
        ais.ais_log_partition(
            params._replace(weights=params.weights.at[1, 2].set(jnp.inf)), key, num_chains=4, num_betas=10
        )
    with pytest.raises(ValueError, match=r"right_bias \(5,\).*weights \(4, 6\)"):
        ais.ais_log_partition(params._replace(right_bias=jnp.zeros(5)), key, num_chains=4, num_betas=10)
    with pytest.raises(ValueError, match="schedule must be one of"):
        ais.ais_log_partition(params, key, num_chains=4, num_betas=10, schedule="cosine")


def test_the_spread_interval_holds_the_point_estimate_when_the_weights_are_nearly_equal():
    """With weights equal to float32 rounding the 3-s.e. spread vanishes, and log(mean) by its two paths (shifted
    mean, log-sum-exp) differs in the last bits: the interval must still contain the point estimate (before the
    fix it missed it in 29 of these 200 draws)."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        num_chains = int(rng.integers(2, 300))
        log_weights = jnp.asarray(rng.normal() * 50 + rng.normal(size=num_chains) * 1e-7, jnp.float32)
        point = jax.nn.logsumexp(log_weights) - math.log(num_chains)
        estimate, lower, upper = ais._log_mean_interval(log_weights, num_chains)
        assert estimate == point
        assert lower <= point <= upper, (num_chains, float(lower), float(point), float(upper))
