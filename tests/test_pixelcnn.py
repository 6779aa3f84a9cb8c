"""PixelCNN++: causality by gradients, conditioning, the skip lists, data-dependent init, learning."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from pvpp import likelihoods
from pvpp.nn.weightnorm import WNConv, WNConvTranspose, WNDense
from pvpp.pixelcnn import PixelCNNPP

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
    """Model, random (not freshly initialised) variables and a random input for a configuration."""
    shape, downsample = CONFIGS[name]
    model = _model(downsample)
    x = jax.random.uniform(jax.random.key(0), shape, minval=-1.0, maxval=1.0)
    kwargs = {}
    if with_cond:
        kwargs = dict(cond_map=jax.random.normal(jax.random.key(5), shape[:3] + (2,)), h=jnp.ones((1, 3)))
    variables = jax.jit(lambda x, kw: model.init(jax.random.key(1), x, **kw))(x, kwargs)
    leaves, treedef = jax.tree.flatten(variables)
    keys = jax.random.split(jax.random.key(2), len(leaves))
    # Perturb every parameter so no weight is at its (possibly structured) initial value.
    leaves = [p + 0.2 * jnp.std(p) * jax.random.normal(k, p.shape) + 0.01 for p, k in zip(leaves, keys)]
    return model, jax.tree.unflatten(treedef, leaves), x, kwargs


def _input_gradients(model, variables, x, positions, kwargs, wrt="x"):
    """[P, H, W, C_in] gradients of a random projection of the output at each (i, j) in positions."""
    proj = jax.random.normal(jax.random.key(3), (model.out_channels,))

    @jax.jit
    def grads(x, kwargs):
        def f(arg):
            kw = dict(kwargs)
            if wrt == "x":
                return model.apply(variables, arg, **kw)
            kw[wrt] = arg
            return model.apply(variables, x, **kw)

        target = x if wrt == "x" else kwargs[wrt]
        y, vjp = jax.vjp(f, target)
        cts = jnp.stack([jnp.zeros_like(y).at[0, i, j].set(proj) for i, j in positions])
        return jax.vmap(vjp)(cts)[0][:, 0]

    return np.asarray(grads(x, kwargs))


def _positions(h, w):
    return [(0, 0), (0, 5), (3, 0), (1, 1), (h // 2, w // 2), (h // 2 + 1, w - 1), (h - 1, w - 1), (h - 1, 0), (7, 13)]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_output_depends_only_on_earlier_pixels(name):
    model, variables, x, kwargs = _trained_like(name)
    _, h, w, _ = x.shape
    positions = _positions(h, w)
    grads = np.abs(_input_gradients(model, variables, x, positions, kwargs)).sum(-1)  # [P, H, W]
    raster = np.arange(h * w).reshape(h, w)
    for (i, j), g in zip(positions, grads):
        future = raster >= i * w + j
        assert np.all(g[future] == 0.0), f"output ({i},{j}) depends on its own or a later pixel"
        if i > 0:
            assert g[i - 1, j] > 0, f"output ({i},{j}) ignores the pixel above"
        if j > 0:
            assert g[i, j - 1] > 0, f"output ({i},{j}) ignores the pixel to the left"


@pytest.mark.parametrize("name", ["28x28x1_down", "32x32x3_flat"])
def test_conditioning_map_is_seen_unshifted_and_causality_still_holds(name):
    model, variables, x, kwargs = _trained_like(name, with_cond=True)
    _, h, w, _ = x.shape
    positions = [(0, 0), (h // 2, w // 2), (h - 1, w - 1), (5, 2)]
    grads_x = np.abs(_input_gradients(model, variables, x, positions, kwargs)).sum(-1)
    grads_map = np.abs(_input_gradients(model, variables, x, positions, kwargs, wrt="cond_map")).sum(-1)
    raster = np.arange(h * w).reshape(h, w)
    for (i, j), gx, gm in zip(positions, grads_x, grads_map):
        assert np.all(gx[raster >= i * w + j] == 0.0)
        assert gm[i, j] > 0, "the output at (i, j) must see the map at (i, j)"
        later = raster > i * w + j
        if later.any():
            assert gm[later].max() > 0, "the output must see the map at later pixels"


def test_global_conditioning_reaches_every_pixel():
    model, variables, x, kwargs = _trained_like("28x28x1_down", with_cond=True)
    grads = _input_gradients(model, variables, x, [(0, 0), (27, 27)], kwargs, wrt="h")
    assert np.all(np.abs(grads).sum(-1) > 0)


def test_skip_lists_are_consumed_and_a_mismatched_configuration_fails_loudly():
    x = jnp.zeros((1, 8, 8, 1))
    small, large = _model(True), PixelCNNPP(nr_resnet=2, nr_filters=8, out_channels=4, dropout_rate=0.0)
    v_small = jax.jit(small.init)(jax.random.key(0), x)
    v_large = jax.jit(large.init)(jax.random.key(0), x)
    down = small.apply(v_small, x, method=PixelCNNPP.down)
    assert len(down.u_list) == len(down.ul_list) == small.num_skips == 6
    with pytest.raises(ValueError, match="needs 9 skips"):
        large.apply(v_large, down, method=PixelCNNPP.up)
    with pytest.raises(ValueError, match="skip_extras must have 6"):
        small.apply(v_small, down, skip_extras=[None] * 5, method=PixelCNNPP.up)


def test_skip_extras_reach_the_output_without_breaking_causality():
    model = _model(True)
    x = jax.random.uniform(jax.random.key(0), (1, 8, 8, 1), minval=-1, maxval=1)
    shapes = [(1, 8, 8, 2)] * 2 + [(1, 4, 4, 2)] * 2 + [(1, 2, 2, 2)] * 2
    extras = [jax.random.normal(jax.random.key(10 + k), s) for k, s in enumerate(shapes)]
    variables = jax.jit(lambda x, e: model.init(jax.random.key(1), x, skip_extras=e))(x, extras)

    def out(x, extras):
        return model.apply(variables, x, skip_extras=extras)

    y0 = out(x, extras)
    for k in range(len(extras)):
        changed = list(extras)
        changed[k] = extras[k] + 1.0
        assert float(jnp.abs(out(x, changed) - y0).max()) > 0, f"extra {k} has no effect"
    g = jax.grad(lambda x: out(x, extras)[0, 3, 4].sum())(x)[0, ..., 0]
    raster = np.arange(64).reshape(8, 8)
    assert np.all(np.asarray(g)[raster >= 3 * 8 + 4] == 0)


def test_data_dependent_init_normalises_every_layer():
    model = PixelCNNPP(nr_resnet=2, nr_filters=8, out_channels=3, dropout_rate=0.5, downsample=True)
    x = jax.random.uniform(jax.random.key(0), (8, 16, 16, 1), minval=-1, maxval=1)
    cond = jax.random.normal(jax.random.key(1), (8, 16, 16, 2))
    variables = jax.jit(lambda x, c: model.init(jax.random.key(2), x, cond_map=c))(x, cond)

    def is_weight_normed(module, method_name):
        return isinstance(module, (WNDense, WNConv, WNConvTranspose)) and method_name == "__call__"

    _, state = model.apply(variables, x, cond_map=cond, capture_intermediates=is_weight_normed)
    outputs = jax.tree_util.tree_flatten_with_path(state["intermediates"])[0]
    assert len(outputs) > 40  # every weight-normalised layer, not only the first
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
    params = jax.jit(model.init)(jax.random.key(0), data[:8] * 2 - 1)
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
    for i in range(300):
        batch = data[(i * 8) % 256 : (i * 8) % 256 + 8]
        params, opt_state, _ = step(params, opt_state, batch)
    last = float(loss_fn(params, data[:64]))
    independent = 64 * np.log(2.0)
    assert last < 0.5 * first
    assert last < 0.5 * independent, (first, last)
