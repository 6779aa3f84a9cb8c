"""The cached sampler against the full decoder pass and the naive sampler: at every pixel the cached network's
outputs equal the full pass's (both likelihoods, with and without down-sampling, with every kind of
conditioning, random weights), and with the same key stream both samplers draw identical images.

Tolerance of the output comparison: 1e-5 absolute and relative. The cached network computes the same sums as
the full pass in another order (a window times a reshaped kernel instead of XLA's convolution), which on
these tiny networks moves outputs of size ~1-10 by at most ~4e-6 (measured); an indexing mistake moves them
by the outputs' own size.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import random_variables
from pvpp.generation import cached_sampler, sample
from pvpp.model import likelihoods, ModelConfig, PixelVAEPP
from pvpp.model.pixelcnn import PixelCNNPP

# likelihood -> (shape [B, H, W, C], decoder out_channels)
LIKELIHOOD_SETTINGS = {
    "bernoulli": ((2, 8, 8, 1), 1),
    "logistic_mixture": ((2, 8, 8, 3), likelihoods.num_mixture_params(3, nr_mix=2)),
}
CASES = [(name, downsample) for name in LIKELIHOOD_SETTINGS for downsample in (True, False)]
TOLERANCE = dict(atol=1e-5, rtol=1e-5)


@functools.lru_cache(maxsize=None)
def _decoder(likelihood, downsample):
    """(model, random variables, cond_map, h, skip_extras, x): conditioning of every kind, on both passes."""
    shape, out_channels = LIKELIHOOD_SETTINGS[likelihood]
    batch, height, width, channels = shape
    model = PixelCNNPP(
        nr_resnet=1, nr_filters=8, out_channels=out_channels, dropout_rate=0.0, downsample=downsample
    )
    keys = jax.random.split(jax.random.key(0), 4)
    cond_map = jax.random.normal(keys[0], (batch, height, width, 5))
    h = jax.random.normal(keys[1], (batch, 6))
    x = _image(keys[2], shape, likelihood)
    skips = jax.eval_shape(
        lambda: model.apply(model.init(keys[3], x, method=PixelCNNPP.down), x, method=PixelCNNPP.down)
    )
    # Extras on every other skip and on the deepest one (which seeds the up path), None elsewhere.
    skip_extras = tuple(
        jax.random.normal(jax.random.fold_in(keys[3], k), u.shape[:3] + (3,))
        if k % 2 == 0 or k == len(skips.u_list) - 1
        else None
        for k, u in enumerate(skips.u_list)
    )

    def init(key, x):
        return model.init(key, x, cond_map=cond_map, h=h, skip_extras=skip_extras)

    variables = random_variables(init, jax.random.key(1), x, seed=2)
    return model, variables, cond_map, h, skip_extras, x


def _image(key, shape, likelihood):
    if likelihood == "bernoulli":
        return jnp.where(jax.random.uniform(key, shape) < 0.5, -1.0, 1.0)
    return likelihoods.quantize(jax.random.uniform(key, shape, minval=-1.0, maxval=1.0))


def _conditioning(model, variables, cond_map, h, skip_extras):
    return cached_sampler.decoder_conditioning(
        model, variables["params"], cond_map=cond_map, h=h, skip_extras=skip_extras, up_only=False
    )


@pytest.mark.parametrize("likelihood, downsample", CASES)
def test_cached_outputs_equal_the_full_pass_at_every_pixel(likelihood, downsample):
    model, variables, cond_map, h, skip_extras, x = _decoder(likelihood, downsample)
    full = model.apply(variables, x, cond_map=cond_map, h=h, skip_extras=skip_extras)
    conditioning = _conditioning(model, variables, cond_map, h, skip_extras)
    cached = jax.jit(cached_sampler.cached_outputs, static_argnums=0)(
        cached_sampler.DecoderSpec.of(model), variables["params"], x, conditioning
    )
    np.testing.assert_allclose(np.asarray(cached), np.asarray(full), **TOLERANCE)
    assert float(jnp.std(full)) > 0.1  # the comparison is not between near-constant outputs


#: `cached_sampler.cached_sample` compiled once per (spec, shape, likelihood).
_CACHED_SAMPLE = jax.jit(cached_sampler.cached_sample, static_argnums=(0, 3, 4))


@pytest.mark.parametrize("likelihood, downsample", CASES)
def test_cached_and_naive_samplers_draw_the_same_images(likelihood, downsample):
    model, variables, cond_map, h, skip_extras, x = _decoder(likelihood, downsample)
    shape = x.shape
    conditioning = _conditioning(model, variables, cond_map, h, skip_extras)
    decode = _naive_decoder(model)
    spec = cached_sampler.DecoderSpec.of(model)
    for seed in (0, 1):
        pixel_keys = sample.pixel_key_stream(jax.random.key(seed), shape[1] * shape[2])
        naive = sample.autoregressive_sample_with_keys(
            decode, pixel_keys, shape, likelihood, variables, cond_map, h, skip_extras
        )
        cached = _CACHED_SAMPLE(
            spec, variables["params"], pixel_keys, shape, likelihood, conditioning
        )
        np.testing.assert_array_equal(np.asarray(cached), np.asarray(naive))
    assert len(np.unique(np.asarray(cached))) > 1


@functools.lru_cache(maxsize=None)
def _naive_decoder(model):
    def decode(x, variables, cond_map, h, skip_extras):
        return model.apply(variables, x, cond_map=cond_map, h=h, skip_extras=skip_extras)

    return decode


# PixelVAE++ decoders with all three latent groups; the paper's Caltech-101 / binary decoders run without
# down-sampling, its CIFAR-10 one with it.
MODEL_CONFIGS = {
    "bernoulli_flat": ModelConfig(
        image_shape=(8, 8, 1),
        likelihood="bernoulli",
        nr_resnet=1,
        nr_filters=8,
        downsample=False,
        num_concat_latents=6,
        num_cond_latents=4,
        shared_latents_per_layer=1,
        prior="rbm",
        rbm_num_left=8,
        encoder_filters=8,
        latent_map_channels=4,
        dropout_rate=0.0,
    ),
    "mixture_downsampled": ModelConfig(
        image_shape=(8, 8, 3),
        likelihood="logistic_mixture",
        nr_logistic_mix=2,
        nr_resnet=1,
        nr_filters=8,
        num_concat_latents=6,
        num_cond_latents=4,
        shared_latents_per_layer=1,
        prior="gaussian",
        encoder_filters=8,
        latent_map_channels=4,
        dropout_rate=0.0,
    ),
}


@pytest.mark.parametrize("name", list(MODEL_CONFIGS))
def test_pixelvae_cached_outputs_equal_decode(name):
    config = MODEL_CONFIGS[name]
    model = PixelVAEPP(config)
    x = _image(jax.random.key(3), (2,) + config.image_shape, config.likelihood)
    variables = random_variables(lambda x: model.init(jax.random.key(1), x, jax.random.key(2)), x, seed=4)
    z = jax.random.normal(jax.random.key(5), (2, config.num_latents))
    full = model.apply(variables, x, z, method=PixelVAEPP.decode)

    @jax.jit
    def cached(variables, x, z):
        conditioning = sample.model_conditioning(config, variables, z)
        spec = sample.decoder_spec(config)
        return cached_sampler.cached_outputs(spec, variables["params"]["decoder"], x, conditioning)

    np.testing.assert_allclose(np.asarray(cached(variables, x, z)), np.asarray(full), **TOLERANCE)
    # The latents matter: the check would catch a sampler that dropped the conditioning.
    other = model.apply(variables, x, z + 1.0, method=PixelVAEPP.decode)
    assert float(jnp.max(jnp.abs(other - full))) > 1e-2


def test_an_unknown_sampler_is_named():
    with pytest.raises(ValueError, match="sampler must be one of"):
        sample.SampleConfig(sampler="fast")
    with pytest.raises(ValueError, match="sampler must be one of"):
        sample.model_sampler(MODEL_CONFIGS["bernoulli_flat"], "fast")
