"""Generation: autoregressive sampling of a PixelCNN-style decoder; PixelVAE++ prior samples and reconstructions;
energy-distance sorting of sample grids; the figures.

Model level (section "Model-level generation" below; `python -m pvpp.experiments.sample` drives it):
`generate_from_prior` (Figures 5-7: RBM latents by block Gibbs, N(0, I) for the Gaussian prior, each decoded
several times), `reconstruct` (Figures 2-4: one hard z ~ q(z | x) per test image, decoded several times),
`save_figures` (PNG grids, rows also sorted by energy distance as in Figures 4 and 7, and the arrays as .npz).
`decode_latents` is the one way in to decoding a PixelVAE++'s latents (any number, batched over the devices and
processes); `model_sampler` is the compiled program of one batch that it runs. It uses the cached sampler
(`pvpp.generation.cached_sampler`, about one decoder pass of work per image) unless `sampler='naive'` asks for the
generic loop below; both draw the same images from the same keys.

Sampling (the generic, naive loop: any causal decoder, e.g. a plain `PixelCNNPP`).
`autoregressive_sample(decode, key, shape, likelihood, *decode_args)` draws x [B, H, W, C] in model space
([-1, 1]; binary images as -1 / +1) from a decoder that is autoregressive in raster order: output (i, j)
of `decode(x, *decode_args)` may depend on x only at pixels before (i, j). One `lax.fori_loop` step per pixel
runs the whole decoder once, samples every channel of pixel p = i * W + j from the outputs at (i, j) with the
key `jax.random.fold_in(key, p)`, and writes it in. The whole loop is one compiled program.
`autoregressive_sample_with_keys` takes the per-pixel key stream explicitly (the jitted core of both).

Avoiding recompiles. `decode`, `shape` and `likelihood` are static (part of the compilation key); `key` and
`decode_args` are traced. Pass parameters and latents through `decode_args`, not through a closure, and pass
the *same* `decode` object every time: jit compares static functions by identity, so a `lambda` or
`functools.partial` built anew on every call compiles anew on every call. The intended pattern::

    model = PixelCNNPP(...)

    def decode(x, variables, z):            # defined once
        return model.apply(variables, x, h=z)

    x = autoregressive_sample(decode, key, (16, 28, 28, 1), "bernoulli", variables, z)   # compiles
    x = autoregressive_sample(decode, key2, (16, 28, 28, 1), "bernoulli", variables2, z2)  # reuses it

Energy distance and the sorted figures: `pvpp.generation.energy_distance` (its names are re-exported here).
"""

from __future__ import annotations

import dataclasses
import functools
import operator
import os
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pvpp import keys
from pvpp.generation import cached_sampler, images as image_io
from pvpp.generation.energy_distance import (  # noqa: F401  (re-exported: the figures' sorting is part of generation)
    energy_distance,
    energy_distance_matrix,
    greedy_chain_order,
    pairwise_distances,
    sort_by_energy_distance,
)
from pvpp.model import likelihoods, ModelConfig, PixelVAEPP
from pvpp.model.likelihoods import make_likelihood
from pvpp.parallel import distributed
from pvpp.parallel.devices import device_sharding, replicate
from pvpp.priors import make_prior
from pvpp.settings import setting
from pvpp.validation import check_choice, check_int

LIKELIHOODS = likelihoods.LIKELIHOODS


def autoregressive_sample(
    decode: Callable[..., jax.Array],
    key: jax.Array,
    shape: tuple[int, int, int, int],
    likelihood: str,
    *decode_args: Any,
    num_pixels: int | None = None,
) -> jax.Array:
    """Samples x [B, H, W, C] (float32, model space [-1, 1]) pixel by pixel in raster order.

    decode: `decode(x, *decode_args)` maps x [B, H, W, C] in [-1, 1] to [B, H, W, K], output (i, j) depending
        on x only at earlier pixels. K = C Bernoulli logits for 'bernoulli' (samples -1 / +1);
        K = (1 + 3C) * nr_mix mixture parameters for 'logistic_mixture' (C in {1, 3}; 256-level grid).
    key: PRNG key; pixel p = i * W + j uses `jax.random.fold_in(key, p)` (see `pixel_key_stream`).
    shape: (B, H, W, C); static, as are `decode` and `likelihood` (see the module notes on recompiles).
    decode_args: traced arguments of `decode` (parameters, latents), arrays or pytrees.
    num_pixels: sample only the first `num_pixels` pixels in raster order (the rest stay 0); None = all H * W.
        Meant for timing a fraction of a long run and for inspecting partial samples.

    The work runs in `autoregressive_sample_with_keys` (one compiled program per decode / shape / likelihood /
    num_pixels); use that function's `.lower(...)` for ahead-of-time compilation.
    """
    shape = _check_shape(shape)
    pixel_keys = pixel_key_stream(key, shape[1] * shape[2])
    return autoregressive_sample_with_keys(
        decode, pixel_keys, shape, likelihood, *decode_args, num_pixels=num_pixels
    )


@functools.partial(jax.jit, static_argnums=(0, 2, 3), static_argnames=("num_pixels",))
def autoregressive_sample_with_keys(
    decode: Callable[..., jax.Array],
    pixel_keys: jax.Array,
    shape: tuple[int, int, int, int],
    likelihood: str,
    *decode_args: Any,
    num_pixels: int | None = None,
) -> jax.Array:
    """`autoregressive_sample` with an explicit key stream: pixel p = i * W + j is sampled with pixel_keys[p].

    pixel_keys: [H * W] typed keys (or [H * W, 2] raw uint32 keys). Everything else as
    `autoregressive_sample`; `autoregressive_sample(decode, key, ...)` equals this with
    `pixel_key_stream(key, H * W)`.
    """
    if _check_shape(shape) != shape:
        raise ValueError(f"shape must be a tuple (B, H, W, C) of Python ints, got {shape!r}")
    _, height, width, _ = shape
    if pixel_keys.ndim < 1 or pixel_keys.shape[0] != height * width:
        raise ValueError(
            f"pixel_keys must hold H * W = {height * width} keys (one per pixel), got {pixel_keys.shape}"
        )
    return _sample(decode, pixel_keys, shape, likelihood, decode_args, num_pixels)


def pixel_key_stream(key: jax.Array, num_pixels: int) -> jax.Array:
    """The sampler's key stream: [num_pixels] keys, entry p = jax.random.fold_in(key, p)."""
    return keys.fold_in_each(key, jnp.arange(num_pixels))


#: All C channels of one pixel from the decoder outputs there, [B, K] -> [B, C] (`likelihoods.sample_pixel_values`).
sample_pixel_values = likelihoods.sample_pixel_values


def _sample(decode, pixel_keys, shape, likelihood, decode_args, num_pixels) -> jax.Array:
    """The sampling loop shared by both entry points (runs under their jit)."""
    batch, height, width, channels = _check_shape(shape)
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
    total = height * width
    if num_pixels is None:
        num_pixels = total
    check_int(num_pixels, "num_pixels", 0)
    if num_pixels > total:
        raise ValueError(f"num_pixels must be an int in [0, H * W = {total}], got {num_pixels!r}")

    x = jnp.zeros(shape, jnp.float32)
    out_shape = jax.eval_shape(decode, x, *decode_args).shape
    _check_decoder_output(out_shape, shape, likelihood)

    def sample_pixel(p, x):
        i, j = p // width, p % width
        out_ij = jax.lax.dynamic_slice(decode(x, *decode_args), (0, i, j, 0), (batch, 1, 1, out_shape[-1]))
        value = sample_pixel_values(pixel_keys[p], out_ij[:, 0, 0], likelihood, channels)
        return jax.lax.dynamic_update_slice(x, value.astype(x.dtype)[:, None, None, :], (0, i, j, 0))

    return jax.lax.fori_loop(0, num_pixels, sample_pixel, x)


def _check_shape(shape) -> tuple[int, int, int, int]:
    """shape as a tuple of four positive Python ints (a list or numpy ints are accepted and converted)."""
    try:
        dims = tuple(operator.index(s) for s in shape)
    except TypeError:
        raise ValueError(f"shape must be (B, H, W, C) of positive ints, got {shape!r}") from None
    if len(dims) != 4 or min(dims) < 1:
        raise ValueError(f"shape must be (B, H, W, C) of positive ints, got {shape!r}")
    return dims


def _check_decoder_output(out_shape: tuple[int, ...], shape: tuple[int, ...], likelihood: str) -> None:
    if len(out_shape) != 4 or tuple(out_shape[:3]) != shape[:3]:
        raise ValueError(
            f"decode must map x {shape} to [B, H, W, K] with (B, H, W) = {shape[:3]}, got {out_shape}"
        )
    channels, width = shape[3], out_shape[3]
    if likelihood == "bernoulli" and width != channels:
        raise ValueError(f"'bernoulli' needs K = C = {channels} logits per pixel, decode gives K = {width}")
    if likelihood == "logistic_mixture":
        if channels not in (1, 3):
            raise ValueError(f"'logistic_mixture' supports C in {{1, 3}}, got shape {shape}")
        if width % (1 + 3 * channels):
            raise ValueError(
                f"'logistic_mixture' needs K = (1 + 3C) * nr_mix = {1 + 3 * channels} * nr_mix outputs per "
                f"pixel for C = {channels}, decode gives K = {width}"
            )


# ----------------------------------------------------------------------------------------------------------
# Model-level generation (PixelVAE++): prior samples, reconstructions, figures
#
# Figures 5-7 of the paper: latents z from the prior (RBM: block Gibbs from uniformly random states,
# `num_gibbs_sweeps` sweeps per independent chain; Gaussian: N(0, I); factorial Bernoulli: exact), each decoded
# S times autoregressively, one row per latent. Figures 2-4: for test images x, one hard sample z ~ q(z | x)
# (Gaussian prior: one posterior sample), decoded S times; the row starts with x itself. Figures 4 and 7: the
# same rows reordered by `sort_by_energy_distance`. Prior 'none' (plain PixelCNN++) has no latents: its
# "latents" are [N, 0] and the rows are plain samples; it has no reconstructions.
#
# Decoding: `model_sampler(config, sampler)` is `run(pixel_keys, variables, z) -> x`, built once per configuration
# and sampler (cached), so every call with the same configuration and batch shape reuses one compiled program.
# Two samplers draw the same images from the same keys (up to float rounding of the decoder outputs):
# 'cached' (the default) is `pvpp.generation.cached_sampler`, about one decoder pass of work per image; 'naive' runs the
# whole decoder once per pixel through `autoregressive_sample` (the reference; `model_decoder(config)` is its
# `decode(x, variables, z)`). The N * S images are decoded `batch_size` at a time (the last batch padded with copies of its last latent); decode batch b uses the key
# fold_in(key, b), so the images depend on batch_size (recorded with them). Randomness follows `pvpp.keys`:
# the streams 'prior_latents', 'prior_decode', 'posterior_latents' and 'reconstruction_decode' of the root key.


#: The decoders of `model_sampler`: incremental ('cached', `pvpp.generation.cached_sampler`) or the whole
#: decoder once per pixel ('naive', the reference).
SAMPLERS = ("cached", "naive")


@dataclasses.dataclass(frozen=True)
class SampleConfig:
    """Settings of `python -m pvpp.experiments.sample`; the defaults here are its flag defaults.

    num_latents: prior latents (rows of the prior-sample figures). decodes_per_latent: decodes of each (columns).
    num_reconstructions: test images to reconstruct; decodes_per_image: decodes of each one's latent.
    num_gibbs_sweeps: block-Gibbs sweeps of each RBM chain before its state is used. batch_size: images decoded
    at once. split: where the reconstructed images come from. seed: root of every random stream (and of the
    fixed binarization / choice of the test images, as in `pvpp.evaluation.evaluate`). upscale: PNG pixels per
    image pixel. sampler: 'cached' (incremental, the default) or 'naive' (the whole decoder once per pixel),
    see `SAMPLERS`.
    """

    num_latents: int = setting(8, "Prior latents (rows).")
    decodes_per_latent: int = setting(8, "Decodes of each prior latent (columns).")
    num_reconstructions: int = setting(8, "Test images to reconstruct (0: none).")
    decodes_per_image: int = setting(8, "Decodes of each image's latent.")
    num_gibbs_sweeps: int = setting(50000, "Block-Gibbs sweeps per RBM chain.")
    batch_size: int = setting(32, "Images decoded at once.")
    split: str = setting("test", "Split the reconstructed images come from.")
    seed: int = setting(0, "Root of every random stream.")
    upscale: int = setting(2, "PNG pixels per image pixel.")
    sampler: str = setting(
        "cached",
        "'cached': incremental, about one decoder pass per image; 'naive': the whole decoder once per pixel "
        "(the reference). Both draw the same images from the same seed.",
        choices=SAMPLERS,
    )

    def __post_init__(self):
        for name, minimum in (
            ("num_latents", 1), ("decodes_per_latent", 1), ("num_reconstructions", 0), ("decodes_per_image", 1),
            ("num_gibbs_sweeps", 1), ("batch_size", 1), ("seed", 0), ("upscale", 1),
        ):
            check_int(getattr(self, name), name, minimum)
        check_choice(self.sampler, "sampler", SAMPLERS)

    def replace(self, **changes) -> "SampleConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def model_sampler(config: ModelConfig, sampler: str = "cached") -> Callable[..., jax.Array]:
    """`run(pixel_keys, variables, z)` -> images x [B, H, W, C] (model space) decoded from latents z [B, K]; pixel
    p = i * W + j drawn with pixel_keys[p] ([H * W] keys, `pixel_key_stream`). Dropout off.

    sampler: 'cached' (`pvpp.generation.cached_sampler`) or 'naive' (`autoregressive_sample_with_keys` over
    `model_decoder`). The same compiled function for equal configurations (dropout aside).
    """
    check_choice(sampler, "sampler", SAMPLERS)
    return _model_sampler(config.replace(dropout_rate=0.0), sampler)


def model_decoder(config: ModelConfig) -> Callable[..., jax.Array]:
    """`decode(x, variables, z)` -> PixelVAEPP.decode outputs [B, H, W, out_channels] (dropout off).

    The same function object for equal configurations (dropout aside), so the sampler compiles once.
    """
    return _model_decoder(config.replace(dropout_rate=0.0))


@functools.lru_cache(maxsize=None)
def _model_decoder(config: ModelConfig) -> Callable[..., jax.Array]:
    model = PixelVAEPP(config)

    def decode(x, variables, z):
        return model.apply(variables, x, z, method=PixelVAEPP.decode)

    return decode


@functools.lru_cache(maxsize=None)
def _model_sampler(config: ModelConfig, sampler: str) -> Callable[..., jax.Array]:
    return _SAMPLER_BUILDERS[sampler](config)


def _naive_model_sampler(config: ModelConfig) -> Callable[..., jax.Array]:
    decode = _model_decoder(config)

    def run(pixel_keys, variables, z):
        shape = (z.shape[0],) + config.image_shape
        return autoregressive_sample_with_keys(decode, pixel_keys, shape, config.likelihood, variables, z)

    return run


def _cached_model_sampler(config: ModelConfig) -> Callable[..., jax.Array]:
    spec = decoder_spec(config)

    @jax.jit
    def run(pixel_keys, variables, z):
        shape = (z.shape[0],) + config.image_shape
        conditioning = model_conditioning(config, variables, z)
        return cached_sampler.cached_sample(
            spec, variables["params"]["decoder"], pixel_keys, shape, config.likelihood, conditioning
        )

    return run


def decoder_spec(config: ModelConfig) -> cached_sampler.DecoderSpec:
    """The static shape of a PixelVAEPP's decoder, for `pvpp.generation.cached_sampler`."""
    return cached_sampler.DecoderSpec(config.nr_resnet, config.nr_filters, config.out_channels, config.downsample)


def model_conditioning(config: ModelConfig, variables: Any, z: jax.Array) -> cached_sampler.Conditioning:
    """What a PixelVAEPP's decoder reads of latents z [B, K], for `pvpp.generation.cached_sampler`: the up path only, with
    the f(z1) features of each stage, h = z2 and the f(z3_k) skip extras (Nones for absent groups)."""
    return PixelVAEPP(config).apply(variables, z, method=_conditioning)


def _conditioning(module: PixelVAEPP, z: jax.Array) -> cached_sampler.Conditioning:
    cond_map, h, extras = module.decoder_conditioning(z)
    features = None if cond_map is None else module.decoder.cond_features(cond_map)
    return cached_sampler.Conditioning(
        up_features=features, up_h=h, skip_extras=None if extras is None else tuple(extras)
    )


#: The samplers of `model_sampler`, by name: each builds `run(pixel_keys, variables, z)` for a configuration.
_SAMPLER_BUILDERS = dict(zip(SAMPLERS, (_cached_model_sampler, _naive_model_sampler)))


def prior_latents(config: ModelConfig, params: Any, key: jax.Array, num: int, *, num_gibbs_sweeps: int) -> jax.Array:
    """num latent vectors [num, K] from the prior ('params' collection of a PixelVAEPP), by `Prior.sample`.

    RBM: `num` independent block-Gibbs chains from uniformly random states, `num_gibbs_sweeps` sweeps each;
    z = [z_left, z_right] in {0, 1}. Gaussian: N(0, I). Factorial Bernoulli: exact samples. 'none': [num, 0].
    """
    prior = make_prior(config)
    return prior.sample(prior.prior_params(params), key, num, num_sweeps=num_gibbs_sweeps)


def posterior_latents(config: ModelConfig, variables: Any, x: jax.Array, key: jax.Array) -> jax.Array:
    """One latent per image from q(z | x): x [N, H, W, C] model space -> [N, K].

    Binary latents: a hard Bernoulli sample (not the relaxation). Gaussian: z = mean + sigma * eps. 'none': [N, 0].
    """
    posterior = _encode(config.replace(dropout_rate=0.0), variables, x)
    return make_prior(config).posterior.sample(key, posterior)


def decode_latents(
    config: ModelConfig, variables: Any, z: jax.Array, key: jax.Array, *, decodes_per_latent: int, batch_size: int,
    sampler: str = "cached", devices: Sequence[jax.Device] | None = None, across_processes: bool = False,
) -> jax.Array:
    """Decodes every latent S = decodes_per_latent times: z [N, K] -> images [N, S, H, W, C] in model space.

    Batch b of `batch_size` images uses the key stream of fold_in(key, b); sampler as in `model_sampler`. The
    batches are independent: a process runs up to one batch per local device (or per device of `devices`, this
    process's) at once, the same per-device program on any layout. across_processes: the processes of a
    multi-process run share the batches (`distributed.process_part`) and every one gets every image; every
    process must then make the same call. False: this process decodes everything alone."""
    num = z.shape[0]
    if z.ndim != 2 or z.shape[1] != config.num_latents:
        raise ValueError(f"z must be [N, {config.num_latents}], got {z.shape}")
    total = num * decodes_per_latent
    repeated = np.repeat(np.asarray(z), decodes_per_latent, axis=0)  # [N * S, K], latent n at rows n*S .. n*S + S-1
    batch = min(batch_size, total)
    num_batches = -(-total // batch)
    # This process's batches (the last repeated as padding when the processes share them).
    mine = distributed.process_part(num_batches, 1) if across_processes else np.arange(num_batches)
    devices = tuple(jax.local_devices() if devices is None else devices)[: len(mine)]
    run = _device_sampler(config.replace(dropout_rate=0.0), sampler, devices)
    replicated = replicate(variables, device_sharding(devices))
    num_pixels = config.image_shape[0] * config.image_shape[1]
    outputs = []
    for first in range(0, len(mine), len(devices)):
        batches = mine[np.arange(first, first + len(devices)).clip(max=len(mine) - 1)]  # pad the last round
        pixel_keys = jnp.stack([pixel_key_stream(jax.random.fold_in(key, int(b)), num_pixels) for b in batches])
        rows = (batches[:, None] * batch + np.arange(batch)).clip(max=total - 1)  # pad the last batch
        outputs.append(run(replicated, pixel_keys, repeated[rows]))
    images = np.concatenate([np.asarray(out).reshape((-1,) + config.image_shape) for out in outputs])
    if across_processes:
        images = distributed.gather_parts({"images": images[: len(mine) * batch]}, num_batches * batch)["images"]
    return jnp.asarray(images[:total]).reshape((num, decodes_per_latent) + config.image_shape)


@functools.lru_cache(maxsize=16)
def _device_sampler(config: ModelConfig, sampler: str, devices: tuple[jax.Device, ...]) -> Callable[..., jax.Array]:
    """`model_sampler` once per device: run(variables [D, ...], pixel_keys [D, H * W], z [D, B, K]) -> [D, B, ...]."""
    per_device = model_sampler(config, sampler)
    return jax.pmap(lambda variables, pixel_keys, z: per_device(pixel_keys, variables, z), devices=list(devices))


def generate_from_prior(
    config: ModelConfig, params: Any, key: jax.Array, sample_config: SampleConfig, *, across_processes: bool = False
) -> dict[str, np.ndarray]:
    """Prior samples (Figures 5-7): {'latents' [R, K], 'images' [R, S, H, W, C] model space, 'order' [R]}.
    across_processes: as `decode_latents`.

    'order' is the energy-distance row order (`sort_by_energy_distance`); images[order] is the sorted figure.
    """
    z = prior_latents(
        config, params, keys.stream(key, "prior_latents"), sample_config.num_latents,
        num_gibbs_sweeps=sample_config.num_gibbs_sweeps,
    )
    images = decode_latents(
        config, {"params": params}, z, keys.stream(key, "prior_decode"),
        decodes_per_latent=sample_config.decodes_per_latent, batch_size=sample_config.batch_size,
        sampler=sample_config.sampler, across_processes=across_processes,
    )
    _, order = sort_by_energy_distance(images)
    return {"latents": np.asarray(z), "images": np.asarray(images), "order": order}


def reconstruct(
    config: ModelConfig, params: Any, x: jax.Array, key: jax.Array, sample_config: SampleConfig, *,
    across_processes: bool = False,
) -> dict[str, np.ndarray]:
    """Reconstructions (Figures 2-4) of x [N, H, W, C] (model space): {'latents' [N, K], 'images' [N, S, H, W, C],
    'order' [N]}: one z ~ q(z | x) per image, decoded S = decodes_per_image times. across_processes: as
    `decode_latents`."""
    if not make_prior(config).num_latents:
        raise ValueError(f"prior {config.prior!r} (plain PixelCNN++) has no latents to reconstruct from")
    variables = {"params": params}
    z = posterior_latents(config, variables, x, keys.stream(key, "posterior_latents"))
    images = decode_latents(
        config, variables, z, keys.stream(key, "reconstruction_decode"),
        decodes_per_latent=sample_config.decodes_per_image, batch_size=sample_config.batch_size,
        sampler=sample_config.sampler, across_processes=across_processes,
    )
    _, order = sort_by_energy_distance(images)
    return {"latents": np.asarray(z), "images": np.asarray(images), "order": order}


def to_data_space(config: ModelConfig, x) -> np.ndarray:
    """Model-space images ([-1, 1]) -> uint8 data space: {0, 1} for the Bernoulli likelihood, 0..255 for RGB."""
    return np.asarray(make_likelihood(config).to_data_space(x))


def save_figures(
    output_dir, config: ModelConfig, *, prior: Mapping[str, np.ndarray] | None = None,
    reconstructions: Mapping[str, np.ndarray] | None = None, inputs: np.ndarray | None = None,
    upscale: int = 2, extra_arrays: Mapping[str, np.ndarray] | None = None,
) -> dict[str, str]:
    """Writes the PNG grids and one `samples.npz`; returns {name: path}.

    prior_samples.png: R rows (latents) x S columns (decodes). prior_samples_sorted.png: the rows in energy-
    distance order. reconstructions.png: N rows, the input image then its S decodes; reconstructions_sorted.png:
    rows reordered. samples.npz: prior_latents, prior_images (uint8 data space [R, S, H, W, C]), prior_order,
    reconstruction_latents, reconstruction_inputs [N, H, W, C], reconstruction_images, reconstruction_order,
    plus `extra_arrays`. Binary images are drawn white (1) on black (0).
    """
    output_dir = os.fspath(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    paths: dict[str, str] = {}
    arrays: dict[str, np.ndarray] = dict(extra_arrays or {})
    value_range = make_likelihood(config).value_range
    if prior is not None:
        pixels = to_data_space(config, prior["images"])  # [R, S, H, W, C]
        for name, rows in (("prior_samples", pixels), ("prior_samples_sorted", pixels[prior["order"]])):
            paths[name] = os.path.join(output_dir, f"{name}.png")
            image_io.save_grid(paths[name], _flatten_rows(rows), rows.shape[1], upscale=upscale, value_range=value_range)
        arrays.update(prior_latents=prior["latents"], prior_images=pixels, prior_order=prior["order"])
    if reconstructions is not None:
        if inputs is None:
            raise ValueError("reconstructions need their inputs (uint8 data space [N, H, W, C])")
        pixels = to_data_space(config, reconstructions["images"])  # [N, S, H, W, C]
        inputs = np.asarray(inputs, np.uint8)
        rows = np.concatenate([inputs[:, None], pixels], axis=1)  # [N, 1 + S, H, W, C]
        order = reconstructions["order"]
        for name, grid_rows in (("reconstructions", rows), ("reconstructions_sorted", rows[order])):
            paths[name] = os.path.join(output_dir, f"{name}.png")
            image_io.save_grid(
                paths[name], _flatten_rows(grid_rows), grid_rows.shape[1], upscale=upscale, value_range=value_range
            )
        arrays.update(
            reconstruction_latents=reconstructions["latents"], reconstruction_inputs=inputs,
            reconstruction_images=pixels, reconstruction_order=order,
        )
    paths["arrays"] = image_io.save_arrays(os.path.join(output_dir, "samples.npz"), **arrays)
    return paths


@functools.partial(jax.jit, static_argnums=0)
def _encode(config: ModelConfig, variables: Any, x: jax.Array) -> jax.Array:
    return PixelVAEPP(config).apply(variables, x, method=PixelVAEPP.encode)


def _flatten_rows(rows: np.ndarray) -> np.ndarray:
    """[R, S, H, W, C] -> [R * S, H, W, C] (row-major: a grid with S columns shows one row per r)."""
    return rows.reshape((-1,) + rows.shape[2:])
