"""pvpp.training.optim: Adam with the configured settings, the learning-rate formula, the parameter EMA, KL warm-up."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from pvpp.training import optim


def _random_tree(rng, dtype):
    return {
        "conv": {"kernel": rng.normal(size=(3, 2)).astype(dtype)},
        "bias": rng.normal(size=(4,)).astype(dtype),
    }


def test_defaults_are_those_of_the_design():
    config = optim.OptimConfig()
    assert (config.learning_rate, config.lr_decay_per_step) == (1e-3, 0.999995)
    assert (config.adam_b1, config.adam_b2) == (0.95, 0.9995)
    assert config.ema_decay == 0.9995
    assert config.grad_clip_norm is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.learning_rate = 1.0


@pytest.mark.parametrize(
    "field, value",
    [("learning_rate", 0.0), ("lr_decay_per_step", 1.5), ("adam_b1", 1.0), ("adam_b2", -0.1),
     ("adam_eps", 0.0), ("grad_clip_norm", 0.0), ("ema_decay", 1.0), ("kl_warmup_steps", -1),
     ("kl_warmup_steps", 2.5), ("kl_start", 1.5)],
)
def test_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        optim.OptimConfig(**{field: value})


def test_learning_rate_schedule_matches_the_formula_over_a_million_steps():
    config = optim.OptimConfig(learning_rate=2e-3, lr_decay_per_step=0.999995)
    schedule = jax.jit(optim.learning_rate_schedule(config))
    for step in [0, 1, 7, 1000, 123_457, 1_000_000, 3_000_000]:
        expected = 2e-3 * 0.999995**step  # float64 reference
        # rtol 2e-6: float32 rounding (optax.exponential_decay is off by 7e-3 at 10^6 steps).
        np.testing.assert_allclose(float(schedule(jnp.asarray(step, jnp.int32))), expected, rtol=2e-6)


def _adam_reference(grads_seq, config, clip_norm=None):
    """Hand-written Adam in float64 numpy: the updates for each gradient in `grads_seq` (flat arrays)."""
    m = np.zeros_like(grads_seq[0])
    v = np.zeros_like(grads_seq[0])
    updates = []
    for t, g in enumerate(grads_seq, start=1):
        if clip_norm is not None:
            norm = np.sqrt(np.sum(g**2))
            g = g * min(1.0, clip_norm / norm)
        m = config.adam_b1 * m + (1 - config.adam_b1) * g
        v = config.adam_b2 * v + (1 - config.adam_b2) * g**2
        m_hat = m / (1 - config.adam_b1**t)
        v_hat = v / (1 - config.adam_b2**t)
        lr = config.learning_rate * config.lr_decay_per_step ** (t - 1)  # the first update uses lr(0)
        updates.append(-lr * m_hat / (np.sqrt(v_hat) + config.adam_eps))
    return updates


@pytest.mark.parametrize(
    "config",
    [optim.OptimConfig(),
     # Settings far from the defaults, so that a hard-coded value or a swapped b1 / b2 would show.
     optim.OptimConfig(learning_rate=0.05, lr_decay_per_step=0.9, adam_b1=0.5, adam_b2=0.8, adam_eps=1e-3)],
)
def test_adam_updates_equal_a_hand_computation(config):
    rng = np.random.default_rng(0)
    grads_seq = [rng.normal(size=5) * scale for scale in (1.0, 3.0, 0.2, 1.5)]
    # float64: in float32, Adam's bias correction 1 - 0.9995**t alone carries a 6e-5 relative rounding error.
    with jax.enable_x64(True):
        tx = optim.make_optimizer(config)
        params = {"w": jnp.zeros(5, jnp.float64)}
        state = tx.init(params)
        for g, expected in zip(grads_seq, _adam_reference(grads_seq, config)):
            updates, state = tx.update({"w": jnp.asarray(g, jnp.float64)}, state, params)
            np.testing.assert_allclose(np.asarray(updates["w"]), expected, rtol=1e-9, atol=1e-15)
            params = optax.apply_updates(params, updates)


def test_gradient_clipping_rescales_by_the_global_norm():
    config = optim.OptimConfig(grad_clip_norm=1.0, learning_rate=0.1, lr_decay_per_step=1.0)
    # The first gradient (norm 10) is clipped, the second (norm 0.5) is not; Adam's second step shows it.
    grads_seq = [np.array([6.0, 8.0, 0.0]), np.array([0.0, 0.3, 0.4])]
    with jax.enable_x64(True):
        tx = optim.make_optimizer(config)
        params = {"w": jnp.zeros(3, jnp.float64)}
        state = tx.init(params)
        got = []
        for g in grads_seq:
            updates, state = tx.update({"w": jnp.asarray(g, jnp.float64)}, state, params)
            got.append(np.asarray(updates["w"]))
    for actual, expected in zip(got, _adam_reference(grads_seq, config, clip_norm=1.0)):
        np.testing.assert_allclose(actual, expected, rtol=1e-9, atol=1e-15)
    unclipped = _adam_reference(grads_seq, config, clip_norm=None)
    assert not np.allclose(got[1], unclipped[1], rtol=1e-3)


def test_params_ema_equals_the_numpy_recursion():
    decay = 0.9
    with jax.enable_x64(True):
        rng = np.random.default_rng(1)
        params = jax.tree.map(jnp.asarray, _random_tree(rng, np.float64))
        tx = optim.make_optimizer(optim.OptimConfig(ema_decay=decay, learning_rate=0.1))
        state = tx.init(params)
        ema_ref = jax.tree.map(np.asarray, params)  # the average starts at the initial parameters
        for _ in range(6):
            grads = jax.tree.map(jnp.asarray, _random_tree(rng, np.float64))
            updates, state = tx.update(grads, state, params)
            params = optax.apply_updates(params, updates)
            ema_ref = jax.tree.map(lambda e, p: decay * e + (1 - decay) * np.asarray(p), ema_ref, params)
            jax.tree.map(
                lambda got, want: np.testing.assert_allclose(np.asarray(got), want, rtol=1e-13, atol=1e-15),
                optim.ema_params(state),
                ema_ref,
            )
        # The average lags the parameters: after several steps they differ.
        assert not np.allclose(np.asarray(optim.ema_params(state)["bias"]), np.asarray(params["bias"]))


def test_ema_update_is_the_convex_combination_and_keeps_the_dtype():
    ema = {"a": jnp.array([1.0, 2.0], jnp.float32)}
    new = {"a": jnp.array([3.0, -2.0], jnp.float32)}
    out = optim.ema_update(ema, new, 0.75)
    np.testing.assert_allclose(np.asarray(out["a"]), [1.5, 1.0], rtol=1e-7)
    assert out["a"].dtype == jnp.float32


def test_params_ema_needs_params_and_ema_params_finds_exactly_one_state():
    tx = optim.params_ema(0.5)
    params = {"w": jnp.ones(2)}
    state = tx.init(params)
    with pytest.raises(ValueError, match="params"):
        tx.update(params, state)
    with pytest.raises(ValueError, match="exactly one"):
        optim.ema_params(optax.scale_by_adam().init(params))
    with pytest.raises(ValueError, match="decay"):
        optim.params_ema(1.0)


def test_ema_params_is_a_copy_not_an_alias_of_the_initial_params():
    params = {"w": jnp.ones(3)}
    state = optim.params_ema(0.5).init(params)
    assert optim.ema_params(state)["w"] is not params["w"]
    np.testing.assert_array_equal(np.asarray(optim.ema_params(state)["w"]), np.ones(3))


def test_kl_weight_ramps_linearly_from_start_to_one():
    warmup, start = 400, 0.2
    steps = np.array([0, 1, 100, 200, 399, 400, 401, 10_000])
    expected = start + (1 - start) * np.minimum(steps / warmup, 1.0)
    got = jax.jit(lambda s: optim.kl_weight(s, warmup, start))(jnp.asarray(steps, jnp.int32))
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-6)
    schedule = optim.kl_weight_schedule(optim.OptimConfig(kl_warmup_steps=warmup, kl_start=start))
    np.testing.assert_allclose(float(schedule(100)), start + (1 - start) * 0.25, rtol=1e-6)


def test_kl_weight_without_warmup_is_one_and_bad_arguments_raise():
    np.testing.assert_array_equal(np.asarray(optim.kl_weight(jnp.arange(3), 0, start=0.0)), np.ones(3))
    with pytest.raises(ValueError, match="kl_warmup_steps"):
        optim.kl_weight(1, -5)
    with pytest.raises(ValueError, match="kl_start"):
        optim.kl_weight(1, 10, start=-0.5)
    assert math.isclose(float(optim.kl_weight(10, 10, start=0.3)), 1.0)
