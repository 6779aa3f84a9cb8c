"""Reference outputs of an entry on a seeded synthetic batch, stored in its reference.npz and recomputed by the
data-free checks: if they agree, the weights, the architecture's code and the input mapping are the ones that
made the entry.

    images          uint8 [B, H, W, C]   numpy default_rng(seed) draws in data space ({0, 1} or 0..255)
    encoder_output  float32 [B, P]       `PixelVAEPP.encode` (posterior logits; Gaussian: means, log-scales)
    latents         float32 [B, K]       fixed latents: q's family at zero parameters, key jax.random.key(seed)
    decoder_pixels  int32 [M, 2]         the (row, column) of the decoder outputs kept: every pixel when
                                         B * H * W * out_channels <= MAX_DECODER_VALUES, else M seeded ones
    decoder_output  float32 [B, M, out]  `PixelVAEPP.decode(x, latents)` at those pixels (logits / mixture params)

`compare` recomputes encoder_output and decoder_output from the stored images and latents.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pvpp.model import ModelConfig, PixelVAEPP, to_model_space
from pvpp.model.likelihoods import make_likelihood
from pvpp.priors import make_prior
from pvpp.zoo.errors import CorruptEntryError

BATCH_SIZE = 2
MAX_DECODER_VALUES = 1 << 16
NUM_DECODER_PIXELS = 256
#: |recomputed - stored| <= TOLERANCE * (1 + |stored|) for every value.
TOLERANCE = 1e-5
ARRAYS = ("images", "encoder_output", "latents", "decoder_pixels", "decoder_output")
HOW = (
    "images: numpy default_rng(seed) integers in the data range; latents: the posterior family at zero "
    "parameters sampled with jax.random.key(seed); outputs of PixelVAEPP.encode / decode under jit, dropout off; "
    "recomputed values must satisfy |new - stored| <= tolerance * (1 + |stored|)"
)


def compute(config: ModelConfig, params: Any, seed: int, batch_size: int = BATCH_SIZE) -> dict[str, np.ndarray]:
    """The reference arrays (module docstring) of `params` ('params' collection of `PixelVAEPP(config)`)."""
    rng = np.random.default_rng(seed)
    high = make_likelihood(config).value_range[1]
    images = rng.integers(0, high + 1, size=(batch_size,) + config.image_shape, dtype=np.uint8)
    h, w = config.image_shape[:2]
    if batch_size * h * w * config.out_channels <= MAX_DECODER_VALUES:
        pixels = np.stack(np.meshgrid(np.arange(h), np.arange(w), indexing="ij"), -1).reshape(-1, 2)
    else:
        flat = np.sort(rng.choice(h * w, size=min(NUM_DECODER_PIXELS, h * w), replace=False))
        pixels = np.stack([flat // w, flat % w], -1)
    posterior = make_prior(config).posterior
    zeros = jnp.zeros((batch_size, config.num_posterior_params), jnp.float32)
    latents = np.asarray(posterior.sample(jax.random.key(seed), zeros), np.float32)
    arrays = {"images": images, "latents": latents, "decoder_pixels": pixels.astype(np.int32)}
    arrays.update(outputs(config, params, images, latents, arrays["decoder_pixels"]))
    return arrays


def outputs(
    config: ModelConfig, params: Any, images: np.ndarray, latents: np.ndarray, pixels: np.ndarray
) -> dict[str, np.ndarray]:
    """{'encoder_output' [B, P], 'decoder_output' [B, M, out]} for the stored inputs (float32 numpy)."""
    encode, decode = _programs(config.replace(dropout_rate=0.0))
    variables = {"params": params}
    x = to_model_space(config, jnp.asarray(images))
    encoded = np.asarray(encode(variables, x), np.float32)
    decoded = np.asarray(decode(variables, x, jnp.asarray(latents)), np.float32)
    return {"encoder_output": encoded, "decoder_output": decoded[:, pixels[:, 0], pixels[:, 1], :]}


def compare(config: ModelConfig, params: Any, stored: dict[str, np.ndarray], where: str, tolerance: float) -> float:
    """Recomputes the outputs from `stored`'s inputs; returns the largest |new - stored| / (1 + |stored|).
    CorruptEntryError naming the array when it exceeds `tolerance` or an array is missing."""
    missing = [name for name in ARRAYS if name not in stored]
    if missing:
        raise CorruptEntryError(f"{where}: reference.npz lacks the array {missing[0]}")
    fresh = outputs(config, params, stored["images"], stored["latents"], stored["decoder_pixels"])
    worst = 0.0
    for name, value in fresh.items():
        want = np.asarray(stored[name], np.float64)
        if value.shape != want.shape:
            raise CorruptEntryError(
                f"{where}: reference {name} is {list(want.shape)}, recomputed {list(value.shape)}"
            )
        error = float(np.max(np.abs(value - want) / (1.0 + np.abs(want)), initial=0.0))
        if not error <= tolerance:
            raise CorruptEntryError(
                f"{where}: reference {name} recomputed differs by {error:.3g} (relative to 1 + |value|), more than "
                f"{tolerance:g}: the weights or the model code are not the ones that made the entry"
            )
        worst = max(worst, error)
    return worst


@functools.lru_cache(maxsize=16)
def _programs(config: ModelConfig):
    model = PixelVAEPP(config)
    encode = jax.jit(lambda variables, x: model.apply(variables, x, method=PixelVAEPP.encode))
    decode = jax.jit(lambda variables, x, z: model.apply(variables, x, z, method=PixelVAEPP.decode))
    return encode, decode
