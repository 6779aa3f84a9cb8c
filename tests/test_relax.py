"""pvpp.relax: the one Bernoulli sampler is the tau -> 0 limit of the Gumbel-sigmoid relaxation with the same noise,
and it has the right frequencies."""

import jax
import jax.numpy as jnp
import numpy as np

from pvpp import relax


def test_bernoulli_sample_is_the_hard_limit_of_the_relaxed_sample_with_the_same_noise():
    logits = 4.0 * jax.random.normal(jax.random.key(0), (500, 64))
    key = jax.random.key(1)
    hard = relax.bernoulli_sample(key, logits)
    np.testing.assert_array_equal(hard, relax.hard_from_noise(logits, relax.logistic_noise(key, logits.shape)))
    relaxed = relax.gumbel_sigmoid(key, logits, 1e-3)
    assert float(jnp.mean(jnp.abs(relaxed - hard))) < 1e-3


def test_bernoulli_sample_frequencies_are_sigmoid_of_the_logits():
    logits = jnp.array([-3.0, -0.5, 0.0, 1.0, 4.0])
    z = relax.bernoulli_sample(jax.random.key(2), jnp.broadcast_to(logits, (40000, 5)))
    assert z.dtype == logits.dtype and set(np.unique(np.asarray(z))) <= {0.0, 1.0}
    p = np.asarray(jax.nn.sigmoid(logits))
    np.testing.assert_array_less(np.abs(np.asarray(z).mean(0) - p), 5 * np.sqrt(p * (1 - p) / 40000) + 1e-4)
