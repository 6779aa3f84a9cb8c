"""Generation: the jitted sampler against a naive loop, key-stream causality, recompiles, energy distance."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import random_variables
from pvpp.generation import sample
from pvpp.model import likelihoods
from pvpp.model.pixelcnn import PixelCNNPP

# name -> (likelihood, shape [B, H, W, C], decoder out_channels)
SETTINGS = {
    "bernoulli": ("bernoulli", (3, 8, 8, 1), 1),
    "logistic_mixture": ("logistic_mixture", (2, 8, 8, 3), likelihoods.num_mixture_params(3, nr_mix=2)),
}


@functools.lru_cache(maxsize=None)
def _setting(name):
    """(likelihood, shape, model, randomised variables, decode, trace counter); decode is built once."""
    likelihood, shape, out_channels = SETTINGS[name]
    model = PixelCNNPP(nr_resnet=1, nr_filters=8, out_channels=out_channels, dropout_rate=0.0)
    x = jax.random.uniform(jax.random.key(0), shape, minval=-1.0, maxval=1.0)
    variables = random_variables(model.init, jax.random.key(1), x, seed=2)  # random weights, no init compile
    traces = {"decode": 0}

    def decode(x, variables):
        traces["decode"] += 1  # runs only while jax traces decode
        return model.apply(variables, x)

    return likelihood, shape, model, variables, decode, traces


def _naive_sample(model, variables, key, shape, likelihood):
    """Reference: a Python loop in raster order running the whole network once per pixel, same key stream.

    Pixels not yet sampled hold random junk (the jitted sampler holds zeros there): a decoder that is causal
    in raster order cannot see them, so the result must not change.
    """
    _, height, width, channels = shape
    apply = jax.jit(model.apply)
    if likelihood == "bernoulli":
        draw = jax.jit(lambda k, logits: 2.0 * likelihoods.bernoulli_sample(k, logits) - 1.0)
    else:
        draw = jax.jit(lambda k, params: likelihoods.logistic_mixture_sample(k, params, channels))
    x = np.array(jax.random.uniform(jax.random.key(123), shape, minval=-1.0, maxval=1.0), dtype=np.float32)
    for p in range(height * width):
        i, j = divmod(p, width)
        outputs = apply(variables, jnp.asarray(x))
        x[:, i, j] = np.asarray(draw(jax.random.fold_in(key, p), outputs[:, i, j]))
    return x


@pytest.mark.parametrize("name", list(SETTINGS))
def test_jitted_sampler_equals_naive_per_pixel_loop(name):
    likelihood, shape, model, variables, decode, _ = _setting(name)
    key = jax.random.key(7)
    fast = np.asarray(sample.autoregressive_sample(decode, key, shape, likelihood, variables))
    slow = _naive_sample(model, variables, key, shape, likelihood)
    np.testing.assert_array_equal(fast, slow)
    # The samples are real samples: in the model's value set and not degenerate.
    if likelihood == "bernoulli":
        assert set(np.unique(fast)) == {-1.0, 1.0}
    else:
        np.testing.assert_allclose(fast, np.asarray(likelihoods.quantize(jnp.asarray(fast))), atol=1e-6)
        assert fast.min() >= -1.0 and fast.max() <= 1.0 + 1e-6
        assert len(np.unique(np.round((fast + 1) * 127.5))) > 20


def test_changing_the_key_of_pixel_p_changes_only_pixels_from_p_on():
    likelihood, shape, _, variables, decode, _ = _setting("logistic_mixture")
    _, height, width, _ = shape
    keys = sample.pixel_key_stream(jax.random.key(11), height * width)
    base = np.asarray(sample.autoregressive_sample_with_keys(decode, keys, shape, likelihood, variables))
    raster = np.arange(height * width).reshape(height, width)
    for p in (0, 9, 37, height * width - 1):
        other = jnp.concatenate([keys[:p], jax.random.key(1000 + p)[None], keys[p + 1 :]])
        changed = sample.autoregressive_sample_with_keys(decode, other, shape, likelihood, variables)
        changed = np.asarray(changed)
        differs = np.any(changed != base, axis=(0, 3))  # [H, W]
        assert not differs[raster < p].any(), f"a new key for pixel {p} changed an earlier pixel"
        assert differs[raster == p].all(), f"a new key for pixel {p} did not change pixel {p}"
        if p < height * width - 1:
            assert differs[raster > p].any(), f"later pixels ignore the new value of pixel {p}"


def test_partial_sampling_is_a_prefix_of_the_full_sample():
    likelihood, shape, _, variables, decode, _ = _setting("bernoulli")
    _, height, width, _ = shape
    key = jax.random.key(5)
    full = np.asarray(sample.autoregressive_sample(decode, key, shape, likelihood, variables))
    part = np.asarray(sample.autoregressive_sample(decode, key, shape, likelihood, variables, num_pixels=21))
    sampled = (np.arange(height * width) < 21).reshape(height, width)
    np.testing.assert_array_equal(part[:, sampled], full[:, sampled])
    assert np.all(part[:, ~sampled] == 0.0)


def test_new_parameters_and_keys_reuse_the_compiled_sampler():
    likelihood, shape, model, variables, decode, traces = _setting("bernoulli")
    first = sample.autoregressive_sample(decode, jax.random.key(0), shape, likelihood, variables)
    count = traces["decode"]
    other_variables = random_variables(model.init, jax.random.key(1), jnp.zeros(shape), seed=3)
    second = sample.autoregressive_sample(decode, jax.random.key(1), list(shape), likelihood, other_variables)
    assert traces["decode"] == count, "a new key or new parameters retraced the sampler"
    assert first.shape == second.shape == shape


def test_invalid_arguments_fail_loudly():
    likelihood, shape, _, variables, decode, _ = _setting("logistic_mixture")
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="likelihood must be one of"):
        sample.autoregressive_sample(decode, key, shape, "gaussian", variables)
    with pytest.raises(ValueError, match="'bernoulli' needs K = C = 3"):
        sample.autoregressive_sample(decode, key, shape, "bernoulli", variables)
    with pytest.raises(ValueError, match=r"shape must be \(B, H, W, C\)"):
        sample.autoregressive_sample(decode, key, shape[:3], likelihood, variables)
    with pytest.raises(ValueError, match="num_pixels must be"):
        sample.autoregressive_sample(decode, key, shape, likelihood, variables, num_pixels=65)
    with pytest.raises(ValueError, match="pixel_keys must hold H \\* W = 64"):
        sample.autoregressive_sample_with_keys(decode, jax.random.split(key, 9), shape, likelihood, variables)


# ------------------------------------------------------------------------------------------------------------
# Energy distance


def _energy_distance_numpy(a, b):
    """Brute force: 2 mean|a_i - b_j| - mean|a_i - a_k| - mean|b_j - b_l| over all pairs, in float64."""
    a = np.asarray(a, np.float64).reshape(len(a), -1)
    b = np.asarray(b, np.float64).reshape(len(b), -1)

    def mean_dist(u, v):
        return np.mean([[np.linalg.norm(x - y) for y in v] for x in u])

    return 2 * mean_dist(a, b) - mean_dist(a, a) - mean_dist(b, b)


def test_energy_distance_matches_brute_force_and_is_a_divergence():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(7, 3, 4, 2))
    b = rng.normal(loc=0.7, size=(5, 3, 4, 2))
    with jax.enable_x64(True):
        value = float(sample.energy_distance(a, b))
        np.testing.assert_allclose(value, _energy_distance_numpy(a, b), rtol=1e-12)
        np.testing.assert_allclose(float(sample.energy_distance(b, a)), value, rtol=1e-12)
        assert value > 0.0
        assert float(sample.energy_distance(a, a)) == 0.0
        # Order of the samples inside a set does not matter.
        shuffled = float(sample.energy_distance(a[::-1], b[rng.permutation(5)]))
        np.testing.assert_allclose(shuffled, value, rtol=1e-12)
        # Two point masses: 2 |x - y|.
        x, y = a[:1], b[:1]
        np.testing.assert_allclose(float(sample.energy_distance(x, y)), 2 * np.linalg.norm(x - y), rtol=1e-12)


def test_energy_distance_separates_distributions_better_than_it_separates_samples_of_one():
    rng = np.random.default_rng(1)
    same_1, same_2 = rng.normal(size=(2, 200, 16))
    shifted = rng.normal(loc=0.5, size=(200, 16))
    within = float(sample.energy_distance(same_1, same_2))
    between = float(sample.energy_distance(same_1, shifted))
    assert 0.0 <= within < between / 5


def test_energy_distance_matrix_entries_are_pairwise_energy_distances():
    rng = np.random.default_rng(2)
    groups = rng.normal(size=(4, 6, 3, 3, 1)) + rng.normal(size=(4, 1, 1, 1, 1))
    with jax.enable_x64(True):
        matrix = np.asarray(sample.energy_distance_matrix(groups))
        for r in range(4):
            for q in range(4):
                expected = _energy_distance_numpy(groups[r], groups[q])
                np.testing.assert_allclose(matrix[r, q], expected, atol=1e-12)
    np.testing.assert_array_equal(np.diag(matrix), 0.0)


def test_sort_by_energy_distance_is_the_greedy_chain_and_keeps_clusters_together():
    rng = np.random.default_rng(3)
    # Six rows of 5 "images": three near 0, three near 6 (interleaved), each row with its own offset.
    centres = np.array([0.0, 6.0, 0.3, 6.4, 0.7, 5.8])
    groups = centres[:, None, None] + 0.3 * rng.normal(size=(6, 5, 8))
    sorted_groups, order = sample.sort_by_energy_distance(groups)
    assert sorted(order.tolist()) == list(range(6))
    np.testing.assert_array_equal(sorted_groups, groups[order])

    with jax.enable_x64(True):
        brute = np.array([[_energy_distance_numpy(groups[r], groups[q]) for q in range(6)] for r in range(6)])
    assert order[0] == np.argmin(brute.sum(axis=1)), "the chain must start at the medoid row"
    for step in range(1, 6):
        remaining = [r for r in range(6) if r not in order[:step]]
        nearest = min(remaining, key=lambda r: brute[order[step - 1], r])
        assert order[step] == nearest, f"step {step} did not take the nearest unplaced row"
    # The two clusters occupy contiguous blocks of the ordering.
    labels = (centres[order] > 3).astype(int)
    assert np.count_nonzero(np.diff(labels)) == 1, f"clusters interleaved in order {order}"
