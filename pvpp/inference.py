"""One call from a trained run to everything a notebook needs: `pvpp.load(path)`.

    m = pvpp.load("runs/caltech101_rbm")          # a workdir (its newest EMA parameters) or an export directory
    z = m.encode(key, images)                     # uint8 [B, H, W, C] in -> hard latents [B, K]
    recon = m.reconstruct(key, images, decodes=4) # uint8 [B, 4, H, W, C]
    x = m.sample(key, num=16)                     # uint8 [16, H, W, C] from the prior
    ll = m.log_likelihood(key, images, num_samples=100)   # nats per image [B] (log Z by AIS for the RBM)

Images go in and come out in data space: uint8, {0, 1} for binary models (binarize grey levels first, e.g.
with `pvpp.data.binarize_dynamically`), 0..255 for RGB; the model-space mapping is done here. Randomness comes from
the explicit key, split into pvpp's named streams (`pvpp.keys`). Dropout is off everywhere.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pvpp import evaluate, keys, sample, workdir
from pvpp.model import ModelConfig, to_model_space
from pvpp.priors import AISConfig, LogPartition, make_prior


def load(path: str | os.PathLike) -> LoadedModel:
    """A training workdir (it has config.json: the newest of its export and its latest good checkpoint's EMA) or
    an exported parameter directory (`<workdir>/ema_params`, `workdir.export_for_inference`) -> LoadedModel."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path} is neither a training workdir nor an exported parameter directory")
    if os.path.exists(os.path.join(path, workdir.CONFIG_FILENAME)):
        found = workdir.load_for_inference(workdir=path)
    else:
        found = workdir.load_for_inference(checkpoint_path=path)
    config = found.model_config.replace(dropout_rate=0.0)
    return LoadedModel(config, found.params, found.data, found.source)


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A trained PixelVAE++ with pure functions over uint8 images (see the module docstring).

    config: the ModelConfig (dropout 0). params: its 'params' collection (EMA). data: the run's data description
    (or None for a bare export). source: where the parameters came from ({'kind', 'path', 'step'}).
    """

    config: ModelConfig
    params: Any
    data: dict[str, Any] | None
    source: dict[str, Any]

    @property
    def prior(self):
        return make_prior(self.config)

    @property
    def variables(self) -> dict[str, Any]:
        return {"params": self.params}

    def encode(self, key: jax.Array, images) -> np.ndarray:
        """One hard latent per image from q(z | x): uint8 [B, H, W, C] -> [B, K] (binary latents in {0, 1})."""
        x = self._model_space(images)
        return np.asarray(
            sample.posterior_latents(self.config, self.variables, x, keys.stream(key, "posterior_latents"))
        )

    def decode(
        self, key: jax.Array, z, *, decodes: int = 1, batch_size: int = 32, sampler: str = "cached"
    ) -> np.ndarray:
        """Autoregressive decodes of latents z [N, K]: uint8 [N, decodes, H, W, C]. sampler: 'cached' or 'naive'
        (the same images, `pvpp.sample.model_sampler`)."""
        return self._decode(keys.stream(key, "prior_decode"), z, decodes, batch_size, sampler)

    def reconstruct(
        self, key: jax.Array, images, *, decodes: int = 1, batch_size: int = 32, sampler: str = "cached"
    ) -> np.ndarray:
        """z ~ q(z | x) for each image, decoded `decodes` times: uint8 [B, decodes, H, W, C]."""
        z = self.encode(key, images)
        return self._decode(keys.stream(key, "reconstruction_decode"), z, decodes, batch_size, sampler)

    def sample(
        self, key: jax.Array, num: int = 16, *, num_gibbs_sweeps: int = 1000, batch_size: int = 32,
        sampler: str = "cached",
    ) -> np.ndarray:
        """num images from the model: z from the prior (RBM: block Gibbs, num_gibbs_sweeps sweeps), one decode
        each: uint8 [num, H, W, C]."""
        z = sample.prior_latents(
            self.config,
            self.params,
            keys.stream(key, "prior_latents"),
            num,
            num_gibbs_sweeps=num_gibbs_sweeps,
        )
        return self.decode(key, z, decodes=1, batch_size=batch_size, sampler=sampler)[:, 0]

    def log_partition(
        self, key: jax.Array, *, method: str = "ais", ais: AISConfig = AISConfig()
    ) -> LogPartition | None:
        """log Z of the prior (nats; None for normalised priors): AIS with `ais`, its chains split over this
        process's devices (as `log_likelihood` does), or exact enumeration."""
        prior = self.prior
        return prior.log_partition(
            prior.prior_params(self.params),
            keys.stream(key, "log_partition"),
            method=method,
            ais=ais,
            devices=jax.local_devices(),
        )

    def log_likelihood(
        self,
        key: jax.Array,
        images,
        *,
        num_samples: int = 100,
        chunk_size: int | None = None,
        batch_size: int = 4,
        log_partition: str = "ais",
        ais: AISConfig = AISConfig(num_chains=1000, num_betas=10000),
    ) -> np.ndarray:
        """Importance-weighted log p(x) per image, nats [B] (`pvpp.evaluate`: k = num_samples hard samples, log Z
        of an RBM prior by `log_partition` 'ais' with `ais`, or 'exact')."""
        images = np.asarray(images)
        chunk = chunk_size or evaluate.default_chunk_size(num_samples)
        config = evaluate.EvalConfig(
            num_importance_samples=num_samples,
            chunk_size=chunk,
            batch_size=batch_size,
            log_partition=log_partition,
            ais=ais,
        )
        indices = np.arange(images.shape[0])
        result = evaluate.evaluate(self.config, self.params, images, indices, config, key=key)  # checks the images
        return result.per_image["log_likelihood"]

    def _decode(self, stream_key: jax.Array, z, decodes: int, batch_size: int, sampler: str) -> np.ndarray:
        images = sample.decode_latents(
            self.config,
            self.variables,
            jnp.asarray(z, jnp.float32),
            stream_key,
            decodes_per_latent=decodes,
            batch_size=batch_size,
            sampler=sampler,
        )
        return sample.to_data_space(self.config, images)

    def _model_space(self, images) -> jax.Array:
        return to_model_space(self.config, jnp.asarray(evaluate.check_images(self.config, images)))


__all__ = ["LoadedModel", "load"]
