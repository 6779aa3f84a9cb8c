"""Baseline priors: N(0, I) with a diagonal Gaussian posterior, and the factorial Bernoulli prior."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

from pvpp.priors import bernoulli, gaussian

# ------------------------------------------------------------------------------------------------------------
# Gaussian


def test_gaussian_log_probs_are_normalised_densities():
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        mean, log_scale = rng.normal(size=(3, 4)), 0.5 * rng.normal(size=(3, 4))
        z = rng.normal(size=(5, 3, 4))  # sample_shape [5] + batch_shape [3] + event [4]
        expected = stats.norm.logpdf(z, mean, np.exp(log_scale)).sum(-1)
        log_prob = np.asarray(gaussian.posterior_log_prob(z, mean, log_scale))
        np.testing.assert_allclose(log_prob, expected, rtol=1e-12)
        np.testing.assert_allclose(np.asarray(gaussian.log_prob(z)), stats.norm.logpdf(z).sum(-1), rtol=1e-12)
        # A one-dimensional event integrates to one.
        def density(t):
            log_density = gaussian.posterior_log_prob(jnp.array([t]), jnp.array([0.3]), jnp.array([-0.7]))
            return float(jnp.exp(log_density))

        np.testing.assert_allclose(integrate.quad(density, -np.inf, np.inf)[0], 1.0, rtol=1e-9)


def test_gaussian_kl_equals_the_integral_of_q_log_q_over_p():
    with jax.enable_x64(True):
        mean, log_scale = np.array([[0.0, 1.5, -2.0]]), np.array([[0.0, -1.0, 0.7]])
        kl = np.asarray(gaussian.kl_divergence(mean, log_scale))
        assert kl.shape == (1,)
        per_dim = []
        for m, s in zip(mean[0], np.exp(log_scale[0])):
            q = stats.norm(m, s)
            integrand = lambda t, q=q: q.pdf(t) * (q.logpdf(t) - stats.norm.logpdf(t))
            per_dim.append(integrate.quad(integrand, -30, 30)[0])
        np.testing.assert_allclose(kl[0], sum(per_dim), rtol=1e-8)
        assert float(gaussian.kl_divergence(np.zeros(3), np.zeros(3))) == 0.0


def test_gaussian_samples_have_the_stated_shapes_and_moments():
    z = gaussian.sample(jax.random.key(0), 6, sample_shape=(20000,))
    assert z.shape == (20000, 6)
    np.testing.assert_allclose(np.asarray(z).mean(0), 0.0, atol=5 / np.sqrt(20000))
    mean, log_scale = jnp.array([[1.0, -2.0], [0.0, 3.0]]), jnp.array([[0.0, -1.0], [0.5, 0.2]])
    draws = gaussian.posterior_sample(jax.random.key(1), mean, log_scale, sample_shape=(20000,))
    assert draws.shape == (20000, 2, 2)
    scale = np.exp(np.asarray(log_scale))
    assert np.max(np.abs(np.asarray(draws).mean(0) - np.asarray(mean)) / (scale / np.sqrt(20000))) < 5
    np.testing.assert_allclose(np.asarray(draws).std(0), scale, rtol=0.03)
    # Reparameterised: dz/dmean = 1, dz/dlog_scale = z - mean.
    grad_mean = jax.grad(lambda m: gaussian.posterior_sample(jax.random.key(2), m, log_scale).sum())(mean)
    np.testing.assert_allclose(np.asarray(grad_mean), 1.0)
    draw_sum = lambda s: gaussian.posterior_sample(jax.random.key(2), mean, s).sum()
    grad_log_scale = jax.grad(draw_sum)(log_scale)
    draw = gaussian.posterior_sample(jax.random.key(2), mean, log_scale)
    np.testing.assert_allclose(np.asarray(grad_log_scale), np.asarray(draw - mean), rtol=1e-6)


def test_gaussian_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"mean \(2, 3\) and log_scale \(2, 4\)"):
        gaussian.kl_divergence(jnp.zeros((2, 3)), jnp.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"sample_shape \+ \(2, 3\).*got \(5, 3\)"):
        gaussian.posterior_log_prob(jnp.zeros((5, 3)), jnp.zeros((2, 3)), jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match="num_latents must be >= 1"):
        gaussian.sample(jax.random.key(0), 0)


# ------------------------------------------------------------------------------------------------------------
# Factorial Bernoulli


def _all_states(num_units):
    return np.array(list(itertools.product([0.0, 1.0], repeat=num_units)))


def test_bernoulli_log_prob_sums_to_one_over_all_states():
    with jax.enable_x64(True):
        logits = np.random.default_rng(1).normal(size=(3, 5)) * 3  # batch [3], event [5]
        states = _all_states(5)[:, None, :].repeat(3, 1)  # [32, 3, 5]
        log_prob = np.asarray(bernoulli.log_prob(states, logits))
        assert log_prob.shape == (32, 3)
        np.testing.assert_allclose(np.exp(log_prob).sum(0), 1.0, rtol=1e-12)


def test_bernoulli_kl_equals_the_sum_over_all_states():
    with jax.enable_x64(True):
        rng = np.random.default_rng(2)
        posterior_logits, prior_logits = rng.normal(size=(4, 6)) * 3, rng.normal(size=6) * 3
        posterior_logits[0, 0], prior_logits[1] = 40.0, -35.0  # near-deterministic units stay exact
        states = _all_states(6)
        log_q = np.asarray(bernoulli.log_prob(states[:, None, :].repeat(4, 1), posterior_logits))  # [64, 4]
        log_p = np.asarray(bernoulli.log_prob(states, prior_logits))[:, None]  # [64, 1]
        expected = (np.exp(log_q) * (log_q - log_p)).sum(0)
        kl = np.asarray(bernoulli.kl_divergence(posterior_logits, prior_logits))
        np.testing.assert_allclose(kl, expected, rtol=1e-10)
        self_kl = np.asarray(bernoulli.kl_divergence(prior_logits, prior_logits))
        np.testing.assert_allclose(self_kl, 0.0, atol=1e-12)


def test_bernoulli_samples_have_the_stated_shapes_and_means():
    logits = jnp.asarray(np.random.default_rng(3).normal(size=(2, 7)), jnp.float32)
    z = bernoulli.sample(jax.random.key(0), logits, sample_shape=(10000,))
    assert z.shape == (10000, 2, 7) and z.dtype == jnp.float32
    assert set(np.unique(np.asarray(z))) <= {0.0, 1.0}
    p = np.asarray(jax.nn.sigmoid(logits))
    assert np.max(np.abs(np.asarray(z).mean(0) - p) / np.sqrt(p * (1 - p) / 10000)) < 5
    np.testing.assert_array_equal(np.asarray(bernoulli.init_logits(4)), np.zeros(4))


def test_bernoulli_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"posterior_logits must have shape \[\.\.\.\] \+ \(5,\).*\(2, 4\)"):
        bernoulli.kl_divergence(jnp.zeros((2, 4)), jnp.zeros(5))
    with pytest.raises(ValueError, match=r"z must have shape .* \(3,\).*got \(2, 4\)"):
        bernoulli.log_prob(jnp.zeros((2, 4)), jnp.zeros(3))
