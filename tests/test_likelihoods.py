"""The pixel likelihoods are proper distributions with stable gradients, and the samplers follow them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from pvpp.model import likelihoods

GRID = np.arange(256) / 127.5 - 1.0


def test_bernoulli_log_prob_matches_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=4.0, size=(3, 5, 4, 1)).astype(np.float32)
    x = (rng.uniform(size=logits.shape) < 0.4).astype(np.float32)
    p = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    expected = np.sum(np.where(x == 1, np.log(p), np.log1p(-p)).reshape(3, -1), axis=1)
    np.testing.assert_allclose(likelihoods.bernoulli_log_prob(jnp.asarray(logits), jnp.asarray(x)), expected, rtol=1e-5)


def test_bernoulli_log_prob_is_finite_for_extreme_logits():
    logits = jnp.array([[-200.0, 200.0, 0.0]])
    x = jnp.array([[1.0, 0.0, 1.0]])
    value, grad = jax.value_and_grad(lambda l: likelihoods.bernoulli_log_prob(l, x)[0])(logits)
    np.testing.assert_allclose(value, -200.0 - 200.0 - np.log(2.0), rtol=1e-6)
    assert np.all(np.isfinite(grad))


def test_bernoulli_log_prob_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="logits and x"):
        likelihoods.bernoulli_log_prob(jnp.zeros((2, 3)), jnp.zeros((2, 4)))


def test_bernoulli_sample_frequencies():
    logits = jnp.array([-2.0, 0.0, 1.5])
    samples = likelihoods.bernoulli_sample(jax.random.key(0), jnp.broadcast_to(logits, (20000, 3)))
    p = jax.nn.sigmoid(logits)
    se = np.sqrt(p * (1 - p) / 20000)
    assert np.all(np.abs(samples.mean(0) - p) < 5 * se)


def _pixel_probs_rgb(params):
    """All 256^3 probabilities of one RGB pixel, float64, summed in slabs over the red value."""
    g, b = jnp.meshgrid(jnp.asarray(GRID), jnp.asarray(GRID), indexing="ij")

    def slab(r):
        x = jnp.stack([jnp.full_like(g, r), g, b], axis=-1)
        lp = likelihoods.logistic_mixture_pixel_log_prob(jnp.broadcast_to(params, x.shape[:2] + params.shape), x)
        return jnp.sum(jnp.exp(lp))

    return jax.lax.map(slab, jnp.asarray(GRID))


@pytest.mark.parametrize("seed,scale", [(0, 1.0), (1, 3.0)])
def test_rgb_pixel_probabilities_sum_to_one(seed, scale):
    with jax.enable_x64(True):
        params = scale * jax.random.normal(jax.random.key(seed), (30,), jnp.float64)  # 3 components
        total = float(jnp.sum(_pixel_probs_rgb(params)))
    assert abs(total - 1.0) < 1e-4


def test_rgb_pixel_probabilities_sum_to_one_in_float32():
    params = jax.random.normal(jax.random.key(7), (50,), jnp.float32)
    assert abs(float(jnp.sum(_pixel_probs_rgb(params))) - 1.0) < 1e-4


def test_edge_bins_take_the_tails():
    # One component, mean far left: value 0 must hold almost all the mass, and the tail bins are
    # cdf(-1 + 1/255) and 1 - cdf(1 - 1/255) exactly.
    with jax.enable_x64(True):
        mean, log_scale = -0.99, np.log(0.05)
        params = jnp.array([[0.0, mean, log_scale, 0.0]], jnp.float64)
        x = jnp.asarray(GRID)[:, None]
        lp = likelihoods.logistic_mixture_pixel_log_prob(jnp.broadcast_to(params[0], (256, 4)), x)
        dist = stats.logistic(loc=mean, scale=np.exp(log_scale))
        cdf = dist.cdf
        np.testing.assert_allclose(np.exp(lp[0]), cdf(-1 + 1 / 255), rtol=1e-10)
        np.testing.assert_allclose(lp[-1], dist.logsf(1 - 1 / 255), rtol=1e-6)
        lo, hi = GRID[1:-1] - 1 / 255, GRID[1:-1] + 1 / 255
        # Right of the mean the survival function avoids the cancellation of 1 - 1 in scipy's reference.
        middle = np.where(lo > mean, dist.sf(lo) - dist.sf(hi), cdf(hi) - cdf(lo))
        np.testing.assert_allclose(np.exp(lp[1:-1]), middle, rtol=1e-6)


@pytest.mark.parametrize("log_scale", [-7.0, 7.0, -20.0])
@pytest.mark.parametrize("pixel", [0, 1, 128, 254, 255])
def test_gradients_finite_for_extreme_parameters(log_scale, pixel):
    k = 2
    key = jax.random.key(pixel)
    params = jax.random.normal(key, (1, 2, 2, 10 * k)) * 5.0
    params = params.at[..., k + 3 * k : k + 6 * k].set(log_scale)  # every log-scale
    params = params.at[..., k : k + 3 * k].set(jnp.where(pixel > 128, -1.0, 1.0) * 0.999)  # means far from x
    x = jnp.full((1, 2, 2, 3), GRID[pixel], jnp.float32)
    value, grad = jax.value_and_grad(lambda p: likelihoods.logistic_mixture_log_prob(p, x)[0])(params)
    assert np.isfinite(value) and value <= 0
    assert np.all(np.isfinite(grad))


def test_mixture_log_prob_sums_over_pixels():
    params = jax.random.normal(jax.random.key(0), (2, 3, 4, 20))
    x = jnp.asarray(np.random.default_rng(0).choice(GRID, size=(2, 3, 4, 3)), jnp.float32)
    total = likelihoods.logistic_mixture_log_prob(params, x)
    per_pixel = likelihoods.logistic_mixture_pixel_log_prob(params, x)
    np.testing.assert_allclose(total, per_pixel.sum((1, 2)), rtol=1e-6)


def test_mixture_rejects_wrong_parameter_count():
    with pytest.raises(ValueError, match="nr_mix"):
        likelihoods.logistic_mixture_log_prob(jnp.zeros((1, 2, 2, 11)), jnp.zeros((1, 2, 2, 3)))


def test_single_channel_samples_follow_the_distribution():
    params = jnp.array([0.3, -0.5, 0.2, 0.6, np.log(0.2), np.log(0.05), 0.0, 0.0])  # 2 components, C=1
    n = 40000
    samples = likelihoods.logistic_mixture_sample(jax.random.key(3), jnp.broadcast_to(params, (n, 8)), 1)[:, 0]
    assert samples.min() >= -1.0 and samples.max() <= 1.0
    values = np.asarray(likelihoods.to_uint8(samples))
    np.testing.assert_allclose(np.asarray(samples), values / 127.5 - 1.0, atol=1e-6)  # on the grid
    probs = np.exp(likelihoods.logistic_mixture_pixel_log_prob(jnp.broadcast_to(params, (256, 8)), jnp.asarray(GRID, jnp.float32)[:, None]))
    probs = np.asarray(probs, np.float64)
    counts = np.bincount(values, minlength=256)
    # Merge bins with small expected counts into their neighbours before the chi-square test.
    expected = probs / probs.sum() * n
    obs_b, exp_b, acc_o, acc_e = [], [], 0.0, 0.0
    for o, e in zip(counts, expected):
        acc_o, acc_e = acc_o + o, acc_e + e
        if acc_e >= 20:
            obs_b.append(acc_o), exp_b.append(acc_e)
            acc_o = acc_e = 0.0
    obs_b[-1] += acc_o
    exp_b[-1] += acc_e
    _, p_value = stats.chisquare(obs_b, exp_b)
    assert p_value > 1e-3


def test_rgb_samples_land_on_grid_and_follow_channel_dependence():
    # Strong positive coefficient from R to G: sampled G must correlate with sampled R.
    k = 1
    params = jnp.zeros((10 * k,))
    params = params.at[1 + 3:1 + 6].set(np.log(0.3))  # log-scales for R, G, B
    params = params.at[1 + 6].set(3.0)  # tanh(3) ~ 0.995: mu_G += c0 * x_R
    x = likelihoods.logistic_mixture_sample(jax.random.key(0), jnp.broadcast_to(params, (20000, 10)))
    assert x.shape == (20000, 3) and x.min() >= -1 and x.max() <= 1
    corr = np.corrcoef(np.asarray(x[:, 0]), np.asarray(x[:, 1]))[0, 1]
    corr_rb = np.corrcoef(np.asarray(x[:, 0]), np.asarray(x[:, 2]))[0, 1]
    assert corr > 0.5 and abs(corr_rb) < 0.05
