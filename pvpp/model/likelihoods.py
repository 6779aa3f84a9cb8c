"""Pixel likelihoods: Bernoulli (binary images) and the discretized logistic mixture of PixelCNN++ (RGB).

All log-probabilities are natural logs (nats). `*_log_prob` sums over pixels and channels -> [B];
`*_pixel_log_prob` keeps the pixels -> [B, H, W].

Discretized logistic mixture. Pixels x are on the grid {2v/255 - 1 : v = 0..255} in [-1, 1]; bin v covers
[x - 1/255, x + 1/255], value 0 takes the whole left tail and value 255 the whole right tail, so each pixel's
256^C probabilities sum to one. Parameters per pixel, [..., (1 + 3C) * nr_mix] (C = 3 -> 10 * nr_mix):
  [:K] mixture logits, then for each channel c: means [K], log-scales [K] (floored at -7) and, for C = 3 only,
  coefficients [K] (tanh) laid out as means(c=0..C-1), log_scales(c=0..C-1), coefficients(c=0..C-1).
Channels are autoregressive inside a pixel: mu_G += c0 * x_R; mu_B += c1 * x_R + c2 * x_G.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from pvpp import relax

# PixelCNN++'s floor on the log-scale: keeps the logistic from collapsing onto one bin with infinite density.
MIN_LOG_SCALE = -7.0
BIN_HALF_WIDTH = 1.0 / 255.0


def bernoulli_log_prob(logits: jax.Array, x: jax.Array) -> jax.Array:
    """log p(x) of independent Bernoullis, summed over every axis but the first: [B, ...] -> [B] nats.

    x in {0, 1} (float or int), logits the log-odds of 1. Uses x*l - softplus(l), stable for any logits.
    """
    _check_same_shape(logits, x, "logits", "x")
    x = x.astype(logits.dtype)
    per_element = x * logits - jax.nn.softplus(logits)
    return jnp.sum(per_element.reshape(per_element.shape[0], -1), axis=-1)


#: A {0, 1} sample (dtype of the logits) of independent Bernoullis: pvpp's one Bernoulli sampler, re-exported
#: here as the pixel sampler of the Bernoulli likelihood.
bernoulli_sample = relax.bernoulli_sample


def logistic_mixture_log_prob(params: jax.Array, x: jax.Array) -> jax.Array:
    """log p(x) of the discretized logistic mixture, summed over pixels: params [B, H, W, (1+3C)K], x [B, H, W, C]
    in [-1, 1] on the 256-level grid -> [B] nats."""
    per_pixel = logistic_mixture_pixel_log_prob(params, x)
    return jnp.sum(per_pixel.reshape(per_pixel.shape[0], -1), axis=-1)


def logistic_mixture_pixel_log_prob(params: jax.Array, x: jax.Array) -> jax.Array:
    """Per-pixel log p(x_pixel) (all channels jointly): params [..., (1+3C)K], x [..., C] -> [...] nats."""
    num_channels = x.shape[-1]
    logit_probs, means, log_scales, coeffs = _split_params(params, num_channels)
    means = _autoregressive_means(means, coeffs, x[..., None, :].swapaxes(-1, -2))
    centred = x[..., None] - means  # [..., C, K]
    inv_scale = jnp.exp(-log_scales)
    upper = inv_scale * (centred + BIN_HALF_WIDTH)
    lower = inv_scale * (centred - BIN_HALF_WIDTH)
    log_cdf_upper = -jax.nn.softplus(-upper)  # log sigmoid(upper): the left-tail bin of value 0
    log_sf_lower = -jax.nn.softplus(lower)  # log(1 - sigmoid(lower)): the right-tail bin of value 255
    log_mid = _log_sigmoid_diff(upper, lower)
    # Edge tests with a margin of half a bin, so values that are not exactly +-1 in float still land right.
    x_bc = jnp.broadcast_to(x[..., None], log_mid.shape)
    log_bin = jnp.where(x_bc < -1.0 + BIN_HALF_WIDTH, log_cdf_upper, jnp.where(x_bc > 1.0 - BIN_HALF_WIDTH, log_sf_lower, log_mid))
    log_joint = jnp.sum(log_bin, axis=-2) + jax.nn.log_softmax(logit_probs, axis=-1)  # [..., K]
    return jax.nn.logsumexp(log_joint, axis=-1)


def logistic_mixture_sample(key: jax.Array, params: jax.Array, num_channels: int = 3) -> jax.Array:
    """One sample per pixel: params [..., (1+3C)K] -> x [..., C] on the 256-level grid in [-1, 1].

    Gumbel-max picks a component, logistic noise gives a value per channel in R, G, B order (G and B shifted by
    the already-sampled R and G), each clipped to [-1, 1] and rounded to its bin, so the samples follow the
    discretized distribution exactly.
    """
    logit_probs, means, log_scales, coeffs = _split_params(params, num_channels)
    key_mix, key_logistic = jax.random.split(key)
    component = jnp.argmax(logit_probs + jax.random.gumbel(key_mix, logit_probs.shape, logit_probs.dtype), axis=-1)
    one_hot = jax.nn.one_hot(component, logit_probs.shape[-1], dtype=params.dtype)[..., None, :]  # [..., 1, K]
    mean = jnp.sum(means * one_hot, axis=-1)  # [..., C]
    scale = jnp.exp(jnp.sum(log_scales * one_hot, axis=-1))
    noise = scale * relax.logistic_noise(key_logistic, mean.shape, mean.dtype)
    values = []
    for c in range(num_channels):
        value = mean[..., c] + noise[..., c]
        if c == 1:
            value = value + jnp.sum(coeffs[..., 0, :] * one_hot[..., 0, :], axis=-1) * values[0]
        elif c == 2:
            value = value + jnp.sum(coeffs[..., 1, :] * one_hot[..., 0, :], axis=-1) * values[0]
            value = value + jnp.sum(coeffs[..., 2, :] * one_hot[..., 0, :], axis=-1) * values[1]
        values.append(quantize(jnp.clip(value, -1.0, 1.0)))
    return jnp.stack(values, axis=-1)


def sample_pixel_values(key: jax.Array, outputs_BK: jax.Array, likelihood: str, num_channels: int) -> jax.Array:
    """All C channels of one pixel from the decoder outputs at that pixel: [B, K] -> [B, C] in model space.

    'bernoulli': K = C logits, samples mapped {0, 1} -> {-1, +1}. 'logistic_mixture': K = (1 + 3C) * nr_mix,
    samples on the 256-level grid of [-1, 1]. The per-pixel step of both autoregressive samplers.
    """
    if likelihood == "bernoulli":
        return 2.0 * bernoulli_sample(key, outputs_BK) - 1.0
    if likelihood == "logistic_mixture":
        return logistic_mixture_sample(key, outputs_BK, num_channels)
    raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")


def quantize(x: jax.Array) -> jax.Array:
    """Rounds values in [-1, 1] to the nearest of the 256 grid points 2v/255 - 1."""
    return jnp.round((x + 1.0) * 127.5) / 127.5 - 1.0


def to_uint8(x: jax.Array) -> jax.Array:
    """[-1, 1] grid values -> uint8 0..255."""
    return jnp.clip(jnp.round((x + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


def from_uint8(x: jax.Array, dtype=jnp.float32) -> jax.Array:
    """uint8 0..255 -> the [-1, 1] grid."""
    return x.astype(dtype) / 127.5 - 1.0


def num_mixture_params(num_channels: int, nr_mix: int) -> int:
    """Channels of the decoder output for a C-channel mixture of nr_mix logistics: (1 + 3C) * nr_mix (C=3: 10K)."""
    return (1 + 3 * num_channels) * nr_mix


def _split_params(params: jax.Array, num_channels: int):
    """params [..., (1+3C)K] -> logits [..., K], means / log_scales / coeffs [..., C, K] (coeffs None-free: C=3)."""
    width = params.shape[-1]
    if num_channels not in (1, 3):
        raise ValueError(f"the logistic mixture supports 1 or 3 channels, got {num_channels}")
    if width % (1 + 3 * num_channels):
        raise ValueError(
            f"params must have (1 + 3C) * nr_mix = {1 + 3 * num_channels} * K channels for C={num_channels}, "
            f"got {width}"
        )
    k = width // (1 + 3 * num_channels)
    logit_probs = params[..., :k]
    rest = params[..., k:].reshape(params.shape[:-1] + (3, num_channels, k))
    means, log_scales = rest[..., 0, :, :], jnp.maximum(rest[..., 1, :, :], MIN_LOG_SCALE)
    coeffs = jnp.tanh(rest[..., 2, :, :])  # only used when C = 3; for C = 1 these params are unused
    return logit_probs, means, log_scales, coeffs


def _autoregressive_means(means: jax.Array, coeffs: jax.Array, x_c1: jax.Array) -> jax.Array:
    """Shifts the G and B means by the observed R (and G). means, coeffs [..., C, K]; x_c1 [..., C, 1]."""
    if means.shape[-2] != 3:
        return means
    mean_r = means[..., 0, :]
    mean_g = means[..., 1, :] + coeffs[..., 0, :] * x_c1[..., 0, :]
    mean_b = means[..., 2, :] + coeffs[..., 1, :] * x_c1[..., 0, :] + coeffs[..., 2, :] * x_c1[..., 1, :]
    return jnp.stack([mean_r, mean_g, mean_b], axis=-2)


def _log_sigmoid_diff(b: jax.Array, a: jax.Array) -> jax.Array:
    """log(sigmoid(b) - sigmoid(a)) for b > a, without cancellation.

    sigmoid(b) - sigmoid(a) = e^{-a}(1 - e^{-(b-a)}) / ((1 + e^{-a})(1 + e^{-b})), so
        log = -a + log1mexp(b - a) - softplus(-a) - softplus(-b)        (accurate when a + b > 0)
            =  b + log1mexp(b - a) - softplus(a)  - softplus(b)          (the mirror form, for a + b <= 0).
    Both forms are finite with finite gradients everywhere, so the `where` cannot leak NaN gradients.
    """
    gap = b - a
    upper_form = -a - jax.nn.softplus(-a) - jax.nn.softplus(-b)
    lower_form = b - jax.nn.softplus(a) - jax.nn.softplus(b)
    return jnp.where(a + b > 0, upper_form, lower_form) + _log1mexp(gap)


def _log1mexp(d: jax.Array) -> jax.Array:
    """log(1 - exp(-d)) for d > 0 (Maechler 2012): expm1 for small d, log1p for large d."""
    # The floor keeps d > 0 where the bin width over the scale underflows (log-scale far above any real value).
    d = jnp.maximum(d, 1e-30)
    small = jnp.log(-jnp.expm1(-jnp.minimum(d, jnp.log(2.0))))
    large = jnp.log1p(-jnp.exp(-jnp.maximum(d, jnp.log(2.0))))
    return jnp.where(d < jnp.log(2.0), small, large)


def _check_same_shape(a: jax.Array, b: jax.Array, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_a} and {name_b} must have the same shape, got {a.shape} and {b.shape}")
    if a.ndim < 1:
        raise ValueError(f"{name_a} must have a batch axis, got shape {a.shape}")


# ----------------------------------------------------------------------------------------------------------
# The likelihood of a model, as one object (`make_likelihood`: model code asks it, not the config's name)

LIKELIHOODS = ("bernoulli", "logistic_mixture")


@dataclasses.dataclass(frozen=True)
class BernoulliPixels:
    """Binary images: data {0, 1} (uint8) <-> model space {-1, +1}; the decoder gives one logit per channel."""

    num_channels: int = 1

    name = "bernoulli"
    #: Data-space pixel values (for image grids).
    value_range = (0, 1)
    #: Whether results are also reported in bits per dimension (the RGB convention).
    reports_bits_per_dim = False

    @property
    def num_outputs(self) -> int:
        return self.num_channels

    def log_prob(self, outputs: jax.Array, x: jax.Array) -> jax.Array:
        """log p(x | z) [B] nats: outputs [B, H, W, C] logits, x [B, H, W, C] in {-1, +1}."""
        return bernoulli_log_prob(outputs, (x + 1.0) * 0.5)

    def to_model_space(self, images: jax.Array) -> jax.Array:
        return jnp.asarray(images).astype(jnp.float32) * 2.0 - 1.0

    def to_data_space(self, x: jax.Array) -> jax.Array:
        return (jnp.asarray(x) > 0).astype(jnp.uint8)


@dataclasses.dataclass(frozen=True)
class LogisticMixturePixels:
    """8-bit images: data 0..255 <-> the 256-level grid of [-1, 1]; a discretized logistic mixture per pixel."""

    num_channels: int = 3
    nr_mix: int = 10

    name = "logistic_mixture"
    value_range = (0, 255)
    reports_bits_per_dim = True

    @property
    def num_outputs(self) -> int:
        return num_mixture_params(self.num_channels, self.nr_mix)

    def log_prob(self, outputs: jax.Array, x: jax.Array) -> jax.Array:
        """log p(x | z) [B] nats: outputs [B, H, W, (1 + 3C) nr_mix], x [B, H, W, C] on the grid."""
        return logistic_mixture_log_prob(outputs, x)

    def to_model_space(self, images: jax.Array) -> jax.Array:
        return from_uint8(jnp.asarray(images))

    def to_data_space(self, x: jax.Array) -> jax.Array:
        return to_uint8(jnp.asarray(x))


def make_likelihood(config) -> BernoulliPixels | LogisticMixturePixels:
    """The likelihood of a `ModelConfig` (its `likelihood`, image channels and `nr_logistic_mix`); ValueError
    naming the field that does not fit. (The generic sampler of `pvpp.generation.sample` takes a likelihood's name, for
    decoders that are not PixelVAEPP.)"""
    channels = config.image_shape[-1]
    if config.likelihood == "bernoulli":
        if channels != 1:
            raise ValueError(f"the Bernoulli likelihood needs one channel, image_shape is {config.image_shape}")
        return BernoulliPixels(channels)
    if config.likelihood == "logistic_mixture":
        if channels not in (1, 3):
            raise ValueError(f"the logistic mixture needs 1 or 3 channels, image_shape is {config.image_shape}")
        return LogisticMixturePixels(channels, config.nr_logistic_mix)
    raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {config.likelihood!r}")
