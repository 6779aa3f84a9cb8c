"""PixelVAE++: the fused encoder/decoder, the relaxed objective and its limits, path derivatives."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import random_variables
from pvpp import relax
from pvpp.model import ModelConfig, ModelOutput, objectives, PixelVAEPP, rbm_params
from pvpp.model.likelihoods import make_likelihood
from pvpp.priors import make_prior, rbm, rbm_prior

TINY = ModelConfig(
    image_shape=(8, 8, 1), nr_resnet=1, nr_filters=8, num_concat_latents=6, num_cond_latents=4,
    shared_latents_per_layer=2, prior="rbm", rbm_num_left=10, encoder_filters=8, latent_map_channels=4,
    dropout_rate=0.0,
)


def _binary_images(key, n, shape=(8, 8, 1)):
    return jax.random.bernoulli(key, 0.4, (n,) + shape).astype(jnp.float32) * 2.0 - 1.0


@functools.lru_cache(maxsize=None)
def _random_model(config=TINY):
    """Model, random variables (no weight at its initial value) and a batch."""
    model = PixelVAEPP(config)
    x = _binary_images(jax.random.key(0), 4, config.image_shape)
    variables = random_variables(lambda x: model.init(jax.random.key(1), x, jax.random.key(2)), x)
    return model, variables, x


def test_config_counts_the_latent_groups_and_validates():
    assert TINY.group_sizes == (6, 4, 12) and TINY.num_latents == 22 and TINY.num_skips == 6
    with pytest.raises(ValueError, match="rbm_num_left"):
        TINY.replace(rbm_num_left=22)
    with pytest.raises(ValueError, match="prior must be one of"):
        TINY.replace(prior="laplace")
    with pytest.raises(ValueError, match="multiples of 4"):
        TINY.replace(image_shape=(10, 10, 1))
    with pytest.raises(ValueError, match="needs latents"):
        TINY.replace(num_concat_latents=0, num_cond_latents=0, shared_latents_per_layer=0)
    assert ModelConfig.from_dict(TINY.to_dict()) == TINY


def test_decode_is_autoregressive_in_x_and_uses_every_latent_group():
    model, variables, x = _random_model()
    z = jax.nn.sigmoid(jax.random.normal(jax.random.key(4), (4, TINY.num_latents)))
    positions = ((0, 0), (0, 3), (2, 0), (4, 5), (7, 7), (3, 7))
    proj = jnp.array([1.0])

    @jax.jit
    def grads(x, z):
        y, vjp = jax.vjp(lambda x, z: model.apply(variables, x, z, method=PixelVAEPP.decode), x, z)
        cts = jnp.stack([jnp.zeros_like(y).at[0, i, j].set(proj) for i, j in positions])
        return jax.vmap(vjp)(cts)

    gx, gz = grads(x, z)
    raster = np.arange(64).reshape(8, 8)
    z1, z2, _ = TINY.group_sizes
    for (i, j), g, g_z in zip(positions, np.abs(np.asarray(gx))[:, 0, ..., 0], np.abs(np.asarray(gz))[:, 0]):
        assert np.all(g[raster >= i * 8 + j] == 0), f"output ({i},{j}) sees its own or a later pixel"
        if i > 0:
            assert g[i - 1, j] > 0
        if j > 0:
            assert g[i, j - 1] > 0
        assert g_z[:z1].max() > 0, "z1 must reach every pixel"
        assert g_z[z1 : z1 + z2].max() > 0, "z2 must reach every pixel"
        assert g_z[z1 + z2 :].max() > 0, "z3 must reach every pixel"
    # Every single z3 group (one per skip) matters somewhere.
    g_z3 = np.abs(np.asarray(gz))[:, 0, z1 + z2 :].sum(0).reshape(TINY.num_skips, -1)
    assert np.all(g_z3.max(1) > 0)


def test_x_reaches_later_pixels_only_through_z():
    model, variables, x = _random_model()
    i, j = 4, 3
    raster = jnp.arange(64).reshape(1, 8, 8, 1)
    x_changed = jnp.where(raster >= i * 8 + j, -x, x)  # flip the pixel (i, j) and every later one

    @jax.jit
    def outputs(x, x_changed):
        z_of = lambda x: jax.nn.sigmoid(model.apply(variables, x, method=PixelVAEPP.encode))
        decode = lambda x, z: model.apply(variables, x, z, method=PixelVAEPP.decode)[:, i, j]
        return decode(x, z_of(x)), decode(x_changed, z_of(x)), decode(x_changed, z_of(x_changed))

    same_z, changed_x_same_z, changed_everything = outputs(x, x_changed)
    np.testing.assert_array_equal(changed_x_same_z, same_z)  # z held fixed: later pixels are invisible
    assert float(jnp.abs(changed_everything - same_z).max()) > 1e-6  # through the encoder they are not


def test_relaxed_loss_tends_to_the_discrete_negative_elbo():
    model, variables, x = _random_model()
    prior = rbm_params(variables["params"])
    log_z = rbm.exact_log_partition(prior)
    negative = rbm_prior.exact_negative_phase(prior)
    key = jax.random.key(7)

    @jax.jit
    def both(variables):
        out = model.apply(variables, x, key, tau=1e-4)
        relaxed, metrics = objectives.relaxed_elbo_loss(make_prior(TINY), make_likelihood(TINY), out, x, beta_kl=1.0, negative_phase=negative, log_partition=log_z)
        # The same noise with tau -> 0 is the hard sample.
        logits = model.apply(variables, x, method=PixelVAEPP.encode)
        z = relax.hard_from_noise(logits, relax.logistic_noise(key, logits.shape))
        log_px = make_likelihood(TINY).log_prob(model.apply(variables, x, z, method=PixelVAEPP.decode), x)
        z_left, z_right = make_prior(TINY).split(z)
        elbo = log_px - rbm.energy(prior, z_left, z_right) - log_z - relax.proxy_log_q(z, logits)
        return relaxed, -jnp.mean(elbo), out.latents

    relaxed, negative_elbo, zeta = both(variables)
    assert float(jnp.mean(jnp.minimum(zeta, 1 - zeta))) < 1e-3  # the relaxed sample is (almost) binary
    np.testing.assert_allclose(relaxed, negative_elbo, rtol=1e-3)


def test_rbm_gradient_is_positive_minus_negative_phase():
    model, variables, x = _random_model()
    negative = rbm_prior.exact_negative_phase(rbm_params(variables["params"]))
    key = jax.random.key(8)

    def loss(params):
        out = model.apply({"params": params}, x, key)
        return objectives.relaxed_elbo_loss(make_prior(TINY), make_likelihood(TINY), out, x, beta_kl=0.7, negative_phase=negative)[0], out.latents

    grads, zeta = jax.jit(jax.grad(loss, has_aux=True))(variables["params"])
    zl, zr = make_prior(TINY).split(np.asarray(zeta, np.float64))
    # Exact moments of the RBM by enumerating every joint state (10 + 12 units), independent of the library.
    p = {k: np.asarray(v, np.float64) for k, v in variables["params"]["rbm"].items()}
    left = ((np.arange(2**10)[:, None] >> np.arange(10)) & 1).astype(np.float64)
    right = ((np.arange(2**12)[:, None] >> np.arange(12)) & 1).astype(np.float64)
    log_w = (left @ p["left_bias"])[:, None] + (right @ p["right_bias"])[None, :] + left @ p["weights"] @ right.T
    w = np.exp(log_w - log_w.max())
    w /= w.sum()
    e_left, e_right = w.sum(1) @ left, w.sum(0) @ right
    e_outer = left.T @ w @ right
    beta = 0.7
    g = grads["rbm"]
    np.testing.assert_allclose(g["left_bias"], beta * (e_left - zl.mean(0)), atol=2e-5)
    np.testing.assert_allclose(g["right_bias"], beta * (e_right - zr.mean(0)), atol=2e-5)
    np.testing.assert_allclose(g["weights"], beta * (e_outer - zl.T @ zr / zl.shape[0]), atol=2e-5)


@pytest.mark.parametrize("prior", ["rbm", "bernoulli"])
def test_encoder_gets_path_derivatives_only(prior):
    """Decoder output independent of z and a prior equal to q: the path-derivative gradient of the loss with
    respect to the posterior logits is exactly zero for every sample; the score-function term would not be."""
    config = TINY.replace(prior=prior)
    logits = jax.random.normal(jax.random.key(0), (1, config.num_latents)) * 2.0
    x = _binary_images(jax.random.key(1), 1)
    decoder_out = jax.random.normal(jax.random.key(2), (1, 8, 8, 1))
    if prior == "rbm":
        left, right = make_prior(config).split(logits[0])
        prior_params = rbm.RBMParams(left, right, jnp.zeros((left.shape[0], right.shape[0])))
        extra = dict(negative_phase=rbm_prior.exact_negative_phase(prior_params), log_partition=rbm.exact_log_partition(prior_params))
    else:
        prior_params, extra = logits[0], {}

    def loss(l, key, tau):
        out = ModelOutput(l, relax.gumbel_sigmoid(key, l, tau), decoder_out, prior_params)
        return objectives.relaxed_elbo_loss(make_prior(config), make_likelihood(config), out, x, **extra)[0]

    def with_score_term(l, key, tau):
        zeta = relax.gumbel_sigmoid(key, l, tau)
        return jnp.mean(relax.proxy_log_q(zeta, l) - relax.proxy_log_q(zeta, jax.lax.stop_gradient(logits)))

    for seed in range(5):
        g = jax.grad(loss)(logits, jax.random.key(10 + seed), 0.5)
        np.testing.assert_allclose(g, 0.0, atol=1e-5)
    g_score = jax.grad(with_score_term)(logits, jax.random.key(10), 0.5)
    assert float(jnp.abs(g_score).max()) > 0.05  # the term that the path derivative leaves out


def test_kl_weight_scales_only_the_kl_term():
    model, variables, x = _random_model()
    negative = rbm_prior.exact_negative_phase(rbm_params(variables["params"]))
    out = jax.jit(lambda v: model.apply(v, x, jax.random.key(5)))(variables)
    loss_half, m_half = objectives.relaxed_elbo_loss(make_prior(TINY), make_likelihood(TINY), out, x, beta_kl=0.5, negative_phase=negative)
    loss_one, m_one = objectives.relaxed_elbo_loss(make_prior(TINY), make_likelihood(TINY), out, x, beta_kl=1.0, negative_phase=negative)
    np.testing.assert_allclose(m_half["reconstruction"], m_one["reconstruction"])
    np.testing.assert_allclose(m_half["kl"], m_one["kl"])
    np.testing.assert_allclose(loss_one, m_one["reconstruction"] + m_one["kl"], rtol=1e-5)
    np.testing.assert_allclose(loss_half, m_one["reconstruction"] + 0.5 * m_one["kl"], rtol=1e-5)
    with pytest.raises(ValueError, match="negative_phase"):
        objectives.relaxed_elbo_loss(make_prior(TINY), make_likelihood(TINY), out, x)
