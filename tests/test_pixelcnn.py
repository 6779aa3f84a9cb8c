"""PixelCNN++: causality by gradients, conditioning, the skip lists, data-dependent init, learning."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from helpers import fast_init_key, random_variables
from pvpp.model import likelihoods
from pvpp.model.pixelcnn import PixelCNNPP
from pvpp.nn.resnet import concat_elu
from pvpp.nn.weightnorm import WNConv, WNConvTranspose, WNDense

CONFIGS = {
    "28x28x1_down": ((1, 28, 28, 1), True),
    "28x28x1_flat": ((1, 28, 28, 1), False),
    "32x32x3_down": ((1, 32, 32, 3), True),
    "32x32x3_flat": ((1, 32, 32, 3), False),
}


def _model(downsample, out_channels=4):
    return PixelCNNPP(nr_resnet=1, nr_filters=8, out_channels=out_channels, dropout_rate=0.0, downsample=downsample)


@functools.lru_cache(maxsize=None)
def _trained_like(name, with_cond=False):
    """Model, random variables, a random input and conditioning kwargs."""
    shape, downsample = CONFIGS[name]
    model = _model(downsample)
    x = jax.random.uniform(jax.random.key(0), shape, minval=-1.0, maxval=1.0)
    kwargs = {}
    if with_cond:
        kwargs = dict(cond_map=jax.random.normal(jax.random.key(5), shape[:3] + (2,)), h=jnp.ones((1, 3)))
    # Random weights everywhere (no weight at a structured initial value), without compiling init.
    variables = random_variables(lambda x, kw: model.init(jax.random.key(1), x, **kw), x, kwargs)
    return model, variables, x, kwargs


@functools.partial(jax.jit, static_argnames=("model", "positions"))
def _input_gradients(model, variables, x, kwargs, positions):
    """Gradients of a random projection of the output at each (i, j) in positions, with respect to x and every
    conditioning input: a dict of [P, ...] arrays (batch index 0 dropped)."""
    proj = jax.random.normal(jax.random.key(3), (model.out_channels,))
    inputs = dict(kwargs, x=x)

    def f(inputs):
        inputs = dict(inputs)
        return model.apply(variables, inputs.pop("x"), **inputs)

    y, vjp = jax.vjp(f, inputs)
    cts = jnp.stack([jnp.zeros_like(y).at[0, i, j].set(proj) for i, j in positions])
    return jax.tree.map(lambda g: g[:, 0], jax.vmap(vjp)(cts)[0])


def _positions(h, w):
    return ((0, 0), (0, 5), (3, 0), (1, 1), (h // 2, w // 2), (h // 2 + 1, w - 1), (h - 1, w - 1), (h - 1, 0), (7, 13))


def _assert_causal(grads_x, positions, h, w):
    raster = np.arange(h * w).reshape(h, w)
    for (i, j), g in zip(positions, np.abs(np.asarray(grads_x)).sum(-1)):
        assert np.all(g[raster >= i * w + j] == 0.0), f"output ({i},{j}) depends on its own or a later pixel"
        if i > 0:
            assert g[i - 1, j] > 0, f"output ({i},{j}) ignores the pixel above"
        if j > 0:
            assert g[i, j - 1] > 0, f"output ({i},{j}) ignores the pixel to the left"


@pytest.mark.parametrize("name", list(CONFIGS))
def test_output_depends_only_on_earlier_pixels(name):
    model, variables, x, kwargs = _trained_like(name)
    _, h, w, _ = x.shape
    positions = _positions(h, w)
    _assert_causal(_input_gradients(model, variables, x, kwargs, positions)["x"], positions, h, w)


@pytest.mark.parametrize("name", ["28x28x1_down", "32x32x3_flat"])
def test_conditioning_is_seen_unshifted_and_causality_still_holds(name):
    model, variables, x, kwargs = _trained_like(name, with_cond=True)
    _, h, w, _ = x.shape
    positions = _positions(h, w)
    grads = _input_gradients(model, variables, x, kwargs, positions)
    _assert_causal(grads["x"], positions, h, w)
    raster = np.arange(h * w).reshape(h, w)
    grads_map = np.abs(np.asarray(grads["cond_map"])).sum(-1)
    for (i, j), gm in zip(positions, grads_map):
        assert gm[i, j] > 0, "the output at (i, j) must see the map at (i, j)"
        later = raster > i * w + j
        if later.any():
            assert gm[later].max() > 0, "the output must see the map at later pixels"
    # The global vector reaches every output pixel.
    assert np.all(np.abs(np.asarray(grads["h"])).sum(-1) > 0)


def test_skip_lists_are_consumed_and_a_mismatched_configuration_fails_loudly():
    x = jax.ShapeDtypeStruct((1, 8, 8, 1), jnp.float32)
    small, large = _model(True), PixelCNNPP(nr_resnet=2, nr_filters=8, out_channels=4, dropout_rate=0.0)
    # Shapes only: these checks happen while tracing, so nothing needs compiling.
    v_small = jax.eval_shape(small.init, jax.random.key(0), x)
    v_large = jax.eval_shape(large.init, jax.random.key(0), x)
    down = jax.eval_shape(lambda v, x: small.apply(v, x, method=PixelCNNPP.down), v_small, x)
    assert len(down.u_list) == len(down.ul_list) == small.num_skips == 6
    with pytest.raises(ValueError, match="needs 9 skips"):
        jax.eval_shape(lambda v, d: large.apply(v, d, method=PixelCNNPP.up), v_large, down)
    with pytest.raises(ValueError, match="skip_extras must have 6"):
        jax.eval_shape(lambda v, d: small.apply(v, d, skip_extras=[None] * 5, method=PixelCNNPP.up), v_small, down)
    with pytest.raises(ValueError, match="nr_resnet must be >= 1"):
        jax.eval_shape(PixelCNNPP(nr_resnet=0).init, jax.random.key(0), x)


def test_skip_extras_reach_the_output_without_breaking_causality():
    model = _model(True)
    x = jax.random.uniform(jax.random.key(0), (1, 8, 8, 1), minval=-1, maxval=1)
    shapes = [(1, 8, 8, 2)] * 2 + [(1, 4, 4, 2)] * 2 + [(1, 2, 2, 2)] * 2
    extras = [jax.random.normal(jax.random.key(10 + k), s) for k, s in enumerate(shapes)]
    variables = random_variables(lambda x, e: model.init(jax.random.key(1), x, skip_extras=e), x, extras)

    @jax.jit
    def out_and_grads(x, extras):
        # d output(3, 4) / d (x, every extra)
        return jax.grad(lambda x, e: model.apply(variables, x, skip_extras=e)[0, 3, 4].sum(), argnums=(0, 1))(x, extras)

    grad_x, grad_extras = out_and_grads(x, extras)
    for k, g in enumerate(grad_extras):
        assert float(jnp.abs(g).max()) > 0, f"extra {k} has no effect"
    raster = np.arange(64).reshape(8, 8)
    assert np.all(np.asarray(grad_x)[0, ..., 0][raster >= 3 * 8 + 4] == 0)


def test_concat_elu_is_elu_of_x_and_minus_x_concatenated_values_and_gradients_exactly():
    x = 3 * jax.random.normal(jax.random.key(0), (2, 3, 4, 5))
    # Zeros of both signs, tiny and large values, and NaN, where the one-exponential form could differ.
    x = x.at[0, 0, 0].set(jnp.array([0.0, -0.0, 1e-30, -1e-30, 80.0])).at[0, 0, 1, 0].set(jnp.nan)
    cotangent = jax.random.normal(jax.random.key(1), (2, 3, 4, 10))
    definition = lambda a: jax.nn.elu(jnp.concatenate([a, -a], axis=-1))  # noqa: E731
    got, got_vjp = jax.vjp(concat_elu, x)
    want, want_vjp = jax.vjp(definition, x)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got_vjp(cotangent)[0], want_vjp(cotangent)[0])
    np.testing.assert_array_equal(got[..., :5], jax.nn.elu(x))
    # Compiled, XLA may fuse the gradient's expm1(z) + 1 differently: equal to float32 rounding.
    gradient = lambda f: jax.jit(jax.grad(lambda a: jnp.nansum(f(a) * cotangent)))  # noqa: E731
    np.testing.assert_allclose(gradient(concat_elu)(x), gradient(definition)(x), rtol=1e-6, atol=1e-6)


def test_data_dependent_init_normalises_every_layer():
    model = PixelCNNPP(nr_resnet=1, nr_filters=8, out_channels=3, dropout_rate=0.5, downsample=True)
    x = jax.random.uniform(jax.random.key(0), (8, 8, 8, 1), minval=-1, maxval=1)
    cond = jax.random.normal(jax.random.key(1), (8, 8, 8, 2))
    variables = jax.jit(lambda x, c: model.init(fast_init_key(2), x, cond_map=c))(x, cond)

    def is_weight_normed(module, method_name):
        return isinstance(module, (WNDense, WNConv, WNConvTranspose)) and method_name == "__call__"

    capture = jax.jit(lambda v: model.apply(v, x, cond_map=cond, capture_intermediates=is_weight_normed)[1])
    state = capture(variables)
    outputs = jax.tree_util.tree_flatten_with_path(state["intermediates"])[0]
    assert len(outputs) > 25  # every weight-normalised layer, not only the first
    for path, y in outputs:
        name = jax.tree_util.keystr(path)
        scale = 0.1 if "conv_out" in name else 1.0
        y = np.asarray(y, np.float64).reshape(-1, y.shape[-1])
        np.testing.assert_allclose(y.mean(0), 0.0, atol=1e-4 * scale, err_msg=name)
        np.testing.assert_allclose(y.std(0), scale, rtol=1e-3, err_msg=name)


def test_init_of_a_constant_channel_stays_finite():
    layer = WNDense(3)
    x = jnp.ones((4, 5))  # every output channel is constant over the batch
    y, variables = layer.init_with_output(jax.random.key(0), x)
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(variables["params"]["scale"]))
    np.testing.assert_allclose(y, 0.0, atol=1e-6)


def test_loss_falls_on_a_tiny_binary_data_set():
    """Vertical bars: every column is all-on or all-off. Pixel-independent models cannot beat 64 ln 2 nats;
    the autoregressive decoder can copy the row above and get near 8 ln 2."""
    rng = np.random.default_rng(0)
    columns = rng.uniform(size=(256, 1, 8, 1)) < 0.5
    data = jnp.asarray(np.broadcast_to(columns, (256, 8, 8, 1)), jnp.float32)
    model = PixelCNNPP(nr_resnet=1, nr_filters=16, out_channels=1, dropout_rate=0.0, downsample=False)
    params = jax.jit(model.init)(fast_init_key(0), data[:8] * 2 - 1)
    optimizer = optax.adam(3e-3)

    def loss_fn(params, batch):
        logits = model.apply(params, batch * 2 - 1)
        return -jnp.mean(likelihoods.bernoulli_log_prob(logits, batch))

    @jax.jit
    def step(params, opt_state, batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state = optimizer.init(params)
    first = float(loss_fn(params, data[:64]))
    for i in range(200):
        batch = data[(i * 8) % 256 : (i * 8) % 256 + 8]
        params, opt_state, _ = step(params, opt_state, batch)
    last = float(loss_fn(params, data[:64]))
    independent = 64 * np.log(2.0)
    assert last < 0.5 * first
    assert last < 0.5 * independent, (first, last)
