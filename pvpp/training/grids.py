"""Sample and reconstruction grids of the periodic evaluation, for TensorBoard (`MetricsWriter.write_images`).

At every evaluation, with the EMA parameters: `num` prior samples (RBM: `GIBBS_SWEEPS` block-Gibbs sweeps per
chain from random states; other priors: exact samples), one decode each, in one row; and for the first `num`
images of the evaluation subset, the images (first row) above one reconstruction each (z ~ q(z | x), one
decode). Decoding uses the cached sampler (`pvpp.generation.cached_sampler`): a few seconds at the CPU configurations, a
one-off compilation the first time. Randomness: `fold_in(stream(root, 'eval_grids'), step)`, so a resumed run
draws the grids of an uninterrupted one.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from pvpp import keys
from pvpp.generation import images as image_io
from pvpp.generation import sample
from pvpp.model import ModelConfig, to_model_space
from pvpp.model.likelihoods import make_likelihood
from pvpp.priors import make_prior

GIBBS_SWEEPS = 1000


def evaluation_grids(
    config: ModelConfig, params: Any, eval_images: np.ndarray, root: jax.Array, step: int, num: int
) -> dict[str, np.ndarray]:
    """{'samples': uint8 grid [H_g, W_g, C]} plus 'reconstructions' (images over their reconstructions) for a
    model with latents. eval_images: uint8 data space [N, H, W, C], N >= 1 (the first `num` are used)."""
    config = config.replace(dropout_rate=0.0)
    settings = sample.SampleConfig(
        num_latents=num,
        decodes_per_latent=1,
        num_reconstructions=num,
        decodes_per_image=1,
        num_gibbs_sweeps=GIBBS_SWEEPS,
        batch_size=num,
    )
    key = jax.random.fold_in(keys.stream(root, "eval_grids"), step)
    value_range = make_likelihood(config).value_range
    prior = sample.generate_from_prior(config, params, key, settings)
    grids = {"samples": _grid(sample.to_data_space(config, prior["images"][:, 0]), num, value_range)}
    if make_prior(config).num_latents:
        inputs = np.asarray(eval_images[:num], np.uint8)
        recon = sample.reconstruct(config, params, to_model_space(config, inputs), key, settings)
        rows = np.concatenate([inputs, sample.to_data_space(config, recon["images"][:, 0])])
        grids["reconstructions"] = _grid(rows, len(inputs), value_range)
    return grids


def _grid(images: np.ndarray, per_row: int, value_range) -> np.ndarray:
    return image_io.make_grid(images, per_row, padding=1, value_range=value_range)
