"""Generation from a PixelVAE++: both samplers (cached and naive) against a naive per-pixel loop (both
likelihoods, with latents), posterior latents, and the sample command's PNG grids and arrays."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from helpers import random_variables
from pvpp import data
from pvpp.experiments import sample as sample_command
from pvpp.generation import sample
from pvpp.model import likelihoods, ModelConfig, PixelVAEPP
from pvpp.runs import workdir as workdir_files

# name -> 8x8 config exercising all three latent groups; the RBM with Bernoulli pixels, Gaussian with RGB.
CONFIGS = {
    "bernoulli": ModelConfig(
        image_shape=(8, 8, 1), likelihood="bernoulli", nr_resnet=1, nr_filters=8, num_concat_latents=6,
        num_cond_latents=4, shared_latents_per_layer=1, prior="rbm", rbm_num_left=8, encoder_filters=8,
        latent_map_channels=4, dropout_rate=0.0,
    ),
    "logistic_mixture": ModelConfig(
        image_shape=(8, 8, 3), likelihood="logistic_mixture", nr_logistic_mix=2, nr_resnet=1, nr_filters=8,
        num_concat_latents=6, num_cond_latents=4, shared_latents_per_layer=1, prior="gaussian", encoder_filters=8,
        latent_map_channels=4, dropout_rate=0.0,
    ),
}


@functools.lru_cache(maxsize=None)
def _model(name):
    """(config, variables) with random weights (no symmetric or zero-initialised parameter left; compiling the
    data-dependent init is not needed for a structural comparison)."""
    config = CONFIGS[name]
    model = PixelVAEPP(config)
    x = jax.random.uniform(jax.random.key(0), (4,) + config.image_shape, minval=-1.0, maxval=1.0)
    return config, random_variables(lambda x: model.init(jax.random.key(1), x, jax.random.key(2)), x, seed=3)


def _latents(config, key, num):
    if config.prior == "gaussian":
        return jax.random.normal(key, (num, config.num_latents))
    return jax.random.bernoulli(key, 0.5, (num, config.num_latents)).astype(jnp.float32)


def _naive_decode(config, variables, z, key):
    """Reference: a Python loop in raster order running the full PixelVAEPP.decode once per pixel, with the
    sampler's key stream (pixel p uses fold_in(key, p)). Unsampled pixels hold random junk: a causal decoder
    cannot see them."""
    model = PixelVAEPP(config)
    height, width, channels = config.image_shape
    apply = jax.jit(lambda v, x, z: model.apply(v, x, z, method=PixelVAEPP.decode))
    if config.likelihood == "bernoulli":
        draw = jax.jit(lambda k, logits: 2.0 * likelihoods.bernoulli_sample(k, logits) - 1.0)
    else:
        draw = jax.jit(lambda k, params: likelihoods.logistic_mixture_sample(k, params, channels))
    shape = (z.shape[0],) + config.image_shape
    x = np.array(jax.random.uniform(jax.random.key(99), shape, minval=-1.0, maxval=1.0), np.float32)
    for p in range(height * width):
        i, j = divmod(p, width)
        outputs = apply(variables, jnp.asarray(x), z)
        x[:, i, j] = np.asarray(draw(jax.random.fold_in(key, p), outputs[:, i, j]))
    return x


@pytest.mark.parametrize("sampler", sample.SAMPLERS)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_decoding_latents_equals_a_naive_per_pixel_loop(name, sampler):
    config, variables = _model(name)
    num_latents, decodes = 2, 2
    z = _latents(config, jax.random.key(4), num_latents)
    key = jax.random.key(5)
    images = np.asarray(
        sample.decode_latents(
            config, variables, z, key, decodes_per_latent=decodes, batch_size=num_latents * decodes, sampler=sampler
        )
    )
    assert images.shape == (num_latents, decodes) + config.image_shape
    # decode_latents: one batch (key fold_in(key, 0)) holding latent n at rows n * S .. n * S + S - 1.
    reference = _naive_decode(config, variables, jnp.repeat(z, decodes, axis=0), jax.random.fold_in(key, 0))
    np.testing.assert_array_equal(images.reshape(reference.shape), reference)
    if config.likelihood == "bernoulli":
        assert set(np.unique(images)) == {-1.0, 1.0}
    else:
        np.testing.assert_allclose(images, np.asarray(likelihoods.quantize(jnp.asarray(images))), atol=1e-6)
    # The latents reach the samples: other latents, same noise -> other images.
    other = np.asarray(
        sample.decode_latents(config, variables, _latents(config, jax.random.key(6), num_latents), key,
                              decodes_per_latent=decodes, batch_size=num_latents * decodes, sampler=sampler)
    )
    assert np.any(other != images)


def test_batches_decoded_on_several_devices_equal_one_device():
    """5 latents x 2 decodes in batches of 3: 4 batches (the last padded) run one per device on 4 devices, or in
    turn on one device; batch b keeps its key stream fold_in(key, b), so the images are the same to the bit."""
    config, variables = _model("bernoulli")
    z = _latents(config, jax.random.key(8), 5)
    settings = dict(decodes_per_latent=2, batch_size=3)
    many = np.asarray(sample.decode_latents(config, variables, z, jax.random.key(9), **settings))
    one = np.asarray(
        sample.decode_latents(config, variables, z, jax.random.key(9), **settings, devices=jax.local_devices()[:1])
    )
    np.testing.assert_array_equal(many, one)
    # Batch 1 holds images 3..5: latent 1's second decode, latent 2's two.
    batch_1 = sample.model_sampler(config)(
        sample.pixel_key_stream(jax.random.fold_in(jax.random.key(9), 1), 64), variables,
        jnp.repeat(z, 2, axis=0)[3:6],
    )
    np.testing.assert_array_equal(many.reshape((10,) + config.image_shape)[3:6], np.asarray(batch_1))


def test_posterior_latents_are_hard_samples_of_q():
    config, variables = _model("bernoulli")
    x = jnp.broadcast_to(
        jnp.where(jax.random.uniform(jax.random.key(7), (1,) + config.image_shape) < 0.5, -1.0, 1.0),
        (4000,) + config.image_shape,
    )
    logits = PixelVAEPP(config).apply(variables, x[:1], method=PixelVAEPP.encode)[0]
    z = np.asarray(sample.posterior_latents(config, variables, x, jax.random.key(8)))
    assert z.shape == (4000, config.num_latents) and set(np.unique(z)) <= {0.0, 1.0}
    probs = np.asarray(jax.nn.sigmoid(logits), np.float64)
    standard_error = np.sqrt(probs * (1 - probs) / 4000) + 1e-3
    assert np.all(np.abs(z.mean(0) - probs) < 5 * standard_error), (z.mean(0), probs)


def test_sample_command_writes_grids_that_show_the_saved_arrays(tmp_path, data_dir):
    config = ModelConfig(
        image_shape=(28, 28, 1), nr_resnet=1, nr_filters=8, num_concat_latents=8, prior="rbm", rbm_num_left=4,
        encoder_filters=8, dropout_rate=0.0,
    )
    model = PixelVAEPP(config)
    test_images = data.load("caltech101_silhouettes", "test", data_dir=data_dir).images
    x = jnp.asarray(test_images[:8], jnp.float32) * 2.0 - 1.0
    params = random_variables(lambda x: model.init(jax.random.key(0), x, jax.random.key(1)), x)["params"]
    export = tmp_path / "export"
    workdir_files.export_for_inference(export, config, params, dataset="caltech101_silhouettes")
    out = tmp_path / "figures"
    rows, decodes, upscale, padding = 2, 2, 1, 2
    argv = [
        "sample", f"--workdir={tmp_path / 'run'}", f"--checkpoint={export}", f"--output_dir={out}",
        f"--data_dir={data_dir}", f"--num_latents={rows}", f"--decodes_per_latent={decodes}",
        f"--num_reconstructions={rows}", f"--decodes_per_image={decodes}", "--num_gibbs_sweeps=10",
        f"--batch_size={rows * decodes}", f"--upscale={upscale}", "--seed=3",
    ]
    paths = sample_command.run(argv)
    arrays = np.load(paths["arrays"])
    tile = 28 * upscale + padding

    def read(name):
        with Image.open(out / f"{name}.png") as png:
            assert png.mode == "L"
            return np.asarray(png)

    def tiles(grid, num_rows, num_cols):
        assert grid.shape == (num_rows * tile + padding, num_cols * tile + padding)
        return np.stack([
            np.stack([grid[padding + r * tile: r * tile + tile, padding + c * tile: c * tile + tile]
                      for c in range(num_cols)])
            for r in range(num_rows)
        ])  # [R, C, 28, 28]

    prior = arrays["prior_images"]  # uint8 {0, 1} [R, S, 28, 28, 1]
    assert prior.shape == (rows, decodes, 28, 28, 1) and set(np.unique(prior)) <= {0, 1}
    np.testing.assert_array_equal(tiles(read("prior_samples"), rows, decodes), prior[..., 0] * 255)
    order = arrays["prior_order"]
    assert sorted(order.tolist()) == list(range(rows))
    np.testing.assert_array_equal(tiles(read("prior_samples_sorted"), rows, decodes), prior[order][..., 0] * 255)
    latents = arrays["prior_latents"]
    assert latents.shape == (rows, config.num_latents) and set(np.unique(latents)) <= {0.0, 1.0}

    # Reconstructions: column 0 is the test image itself, then the decodes.
    indices = arrays["reconstruction_example_indices"]
    np.testing.assert_array_equal(arrays["reconstruction_inputs"], test_images[indices])
    grid = tiles(read("reconstructions"), rows, 1 + decodes)
    np.testing.assert_array_equal(grid[:, 0], test_images[indices][..., 0] * 255)
    np.testing.assert_array_equal(grid[:, 1:], arrays["reconstruction_images"][..., 0] * 255)
    recon_order = arrays["reconstruction_order"]
    np.testing.assert_array_equal(tiles(read("reconstructions_sorted"), rows, 1 + decodes), grid[recon_order])

    with open(paths["settings"]) as f:
        settings = json.load(f)
    assert settings["dataset"] == "caltech101_silhouettes" and settings["settings"]["num_latents"] == rows
