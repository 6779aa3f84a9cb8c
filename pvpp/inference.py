"""One call from a trained run to everything a notebook needs: `pvpp.load(path)`.

    m = pvpp.load("runs/caltech101_rbm")          # a workdir (its newest EMA parameters) or an export directory
    m = pvpp.load("zoo:caltech101-rbm-cpubudget") # a zoo entry (`pvpp.zoo`), verified, its card in m.card
    z = m.encode(key, images)                     # uint8 [B, H, W, C] in -> hard latents [B, K]
    recon = m.reconstruct(key, images, decodes=4) # uint8 [B, 4, H, W, C]
    x = m.sample(key, num=16)                     # uint8 [16, H, W, C] from the prior
    ll = m.log_likelihood(key, images, num_samples=100)   # nats per image [B] (log Z by AIS for the RBM)
    ll = m.log_likelihood(key, images, log_partition="card")  # a zoo entry's recorded log Z (or pass a float)

Images go in and come out in data space: uint8, {0, 1} for binary models (binarize grey levels first, e.g.
with `pvpp.data.binarize_dynamically`), 0..255 for RGB; the model-space mapping is done here. Randomness comes from
the explicit key, split into pvpp's named streams (`pvpp.keys`). Dropout is off everywhere.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from absl import logging

import jax
import jax.numpy as jnp
import numpy as np

from pvpp import keys
from pvpp.evaluation import evaluate
from pvpp.generation import sample
from pvpp.model import ModelConfig, to_model_space
from pvpp.priors import AISConfig, LogPartition, make_prior
from pvpp.runs import checkpoint, workdir as workdir_files
from pvpp.training import resume, saving
from pvpp.training.config import TrainConfig
from pvpp.validation import check_int
from pvpp.zoo import access as zoo_access, registry as zoo_registry

#: The prefix of a zoo entry's name in `load`.
ZOO_PREFIX = "zoo:"


def load(path: str | os.PathLike) -> LoadedModel:
    """A training workdir (it has config.json: the newest of its export and its latest good checkpoint's EMA),
    an exported parameter directory (`<workdir>/ema_params`, `workdir.export_for_inference`) or 'zoo:NAME' (a
    `pvpp.zoo` entry, 'NAME' or 'NAME@rN', verified; its card is `.card`) -> LoadedModel."""
    if isinstance(path, str) and path.startswith(ZOO_PREFIX):
        return load_zoo_entry(path[len(ZOO_PREFIX):])
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"path {path} is not a workdir or export: no such folder")
    if os.path.exists(os.path.join(path, workdir_files.CONFIG_FILENAME)):
        return load_model(workdir=path)
    if checkpoint.is_export(path):
        return load_model(checkpoint_path=path)
    raise FileNotFoundError(
        f"path {path} is not a workdir or export: it holds neither {workdir_files.CONFIG_FILENAME} (a training "
        "workdir) nor exported parameters (e.g. <workdir>/ema_params)"
    )


def load_model(workdir=None, checkpoint_path=None) -> LoadedModel:
    """The model to evaluate or sample from (its EMA parameters), from a training workdir or an export.

    checkpoint_path given: an export directory (`checkpoint.export_params`: the training run's
    `<workdir>/ema_params`, or `workdir.export_for_inference`); its config is {'model': ..., ...} or a bare
    ModelConfig dict. The workdir's config.json, if there is one, still provides the data description.
    Otherwise workdir: `<workdir>/config.json` gives the model and data; the parameters are the newest of
    `<workdir>/ema_params` (written at the end of training) and the EMA inside the latest checkpoint of
    `<workdir>/checkpoints` (a run still going, or stopped before its end).
    Raises FileNotFoundError naming what is missing.
    """
    if workdir is None and checkpoint_path is None:
        raise ValueError("give a workdir or a checkpoint_path")
    run = None
    if workdir is not None:
        run = workdir_files.read_config(workdir)
        if run is None and checkpoint_path is None:
            raise FileNotFoundError(
                f"workdir {os.fspath(workdir)!r} has no {workdir_files.CONFIG_FILENAME}: not a training workdir "
                "(give an exported parameter directory as checkpoint_path instead)"
            )
    data_description = None if run is None else dict(run["data"])
    if checkpoint_path is not None:
        model_config, params, exported = workdir_files.load_exported(checkpoint_path)
        if run is not None and ModelConfig.from_dict(run["model"]) != model_config:
            differ = resume.differences({"model": run["model"]}, {"model": model_config.to_dict()})
            shown = "; ".join(f"{c.path.split('.', 1)[1]}: {c.recorded!r} vs {c.given!r}" for c in differ)
            raise workdir_files.WorkdirConflictError(
                f"checkpoint_path {os.fspath(checkpoint_path)} holds the parameters of another model than the run "
                f"in workdir {os.fspath(workdir)} ({shown}; the run's vs the export's)"
            )
        if data_description is None and exported.get("dataset") is not None:
            data_description = {"name": exported["dataset"]}
        source = {"kind": "export", "path": os.path.abspath(checkpoint_path), "step": exported.get("step")}
        return LoadedModel(model_config, params, data_description, source)

    model_config = ModelConfig.from_dict(run["model"])
    export_path = os.path.join(os.fspath(workdir), workdir_files.EMA_PARAMS_DIRNAME)
    export, export_step = None, None
    if os.path.exists(export_path):
        try:
            export = workdir_files.load_exported(export_path)
            export_step = export[2].get("step")
        except Exception as err:  # noqa: BLE001 -- a damaged export: the checkpoints still hold the EMA
            logging.warning(
                "The export %s cannot be used (%s); falling back to the EMA of the latest good checkpoint.",
                export_path,
                checkpoint.describe(err),
            )
    checkpoints_path = os.path.join(os.fspath(workdir), workdir_files.CHECKPOINT_DIRNAME)
    latest = None
    if os.path.isdir(checkpoints_path):
        with checkpoint.CheckpointManager(checkpoints_path, read_only=True) as manager:
            latest = manager.latest_step()
    if export is not None and (latest is None or (export_step is not None and export_step >= latest)):
        params = export[1]
        source = {"kind": "ema_export", "path": os.path.abspath(export_path), "step": export_step}
    elif latest is not None:
        params, step = saving.ema_from_checkpoint(
            model_config, TrainConfig.from_dict(run["train"]), checkpoints_path
        )
        source = {"kind": "checkpoint_ema", "path": os.path.abspath(checkpoints_path), "step": step}
    else:
        raise FileNotFoundError(
            f"workdir {os.fspath(workdir)!r} has neither {workdir_files.EMA_PARAMS_DIRNAME} nor checkpoints"
        )
    return LoadedModel(model_config, params, data_description, source)


def load_zoo_entry(name: str) -> LoadedModel:
    """The zoo entry 'NAME' (newest revision) or 'NAME@rN', verified (`pvpp.zoo.get`), with its card attached;
    source {'kind': 'zoo', 'name': the resolved 'NAME@rN', 'path': its folder, 'step'}."""
    entry = zoo_registry.resolve(name)
    card = zoo_registry.read_card(entry)
    config, params = zoo_access.load_verified(entry, card)
    data = {k: card["data"][k] for k in ("variant", "validation_size")}
    source = {"kind": "zoo", "name": entry.resolved, "path": str(entry.folder), "step": card["training"]["steps"]}
    data = {"name": card["data"]["dataset"], **data}
    return LoadedModel(config, params, data, source, card)


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A trained PixelVAE++ with pure functions over uint8 images (see the module docstring).

    config: the ModelConfig as trained (every function here runs without dropout). params: its 'params'
    collection (EMA parameters of a training run). data: the run's `DataConfig.to_dict()` ({'name', 'data_dir',
    'variant', 'validation_size', ...}; a zoo entry's or an export's data set name only), or None for a bare
    export. source: where the parameters came from ({'kind', 'path', 'step'}; a zoo entry also has its resolved
    'name'). card: a zoo entry's card (`pvpp.zoo.card`), else None.
    """

    config: ModelConfig
    params: Any
    data: dict[str, Any] | None
    source: dict[str, Any]
    card: dict[str, Any] | None = None

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
        (the same images, `pvpp.generation.sample.model_sampler`)."""
        if np.shape(z)[:1] == (0,):
            raise ValueError("z: an empty batch of latents [0, K]; give at least one")
        return self._decode(keys.stream(key, "prior_decode"), z, decodes, batch_size, sampler)

    def reconstruct(
        self, key: jax.Array, images, *, decodes: int = 1, batch_size: int = 32, sampler: str = "cached"
    ) -> np.ndarray:
        """z ~ q(z | x) for each image, decoded `decodes` times: uint8 [B, decodes, H, W, C]."""
        check_int(decodes, "decodes", 1)
        z = self.encode(key, images)
        return self._decode(keys.stream(key, "reconstruction_decode"), z, decodes, batch_size, sampler)

    def sample(
        self, key: jax.Array, num: int = 16, *, num_gibbs_sweeps: int = 1000, batch_size: int = 32,
        sampler: str = "cached",
    ) -> np.ndarray:
        """num images from the model: z from the prior (RBM: block Gibbs, num_gibbs_sweeps sweeps), one decode
        each: uint8 [num, H, W, C]."""
        check_int(num, "num", 1)
        check_int(num_gibbs_sweeps, "num_gibbs_sweeps", 0)
        z = sample.prior_latents(
            self.config,
            self.params,
            keys.stream(key, "prior_latents"),
            num,
            num_gibbs_sweeps=num_gibbs_sweeps,
        )
        return self.decode(key, z, decodes=1, batch_size=batch_size, sampler=sampler)[:, 0]

    def log_partition(
        self,
        key: jax.Array,
        *,
        method: str = "ais",
        ais: AISConfig = AISConfig(
            num_chains=100, num_betas=1000, reverse_start="forward_ais", reverse_start_sweeps=100
        ),
    ) -> LogPartition | None:
        """log Z of the prior (nats; None for normalised priors): AIS with `ais`, its chains split over this
        process's devices (as `log_likelihood` does), or exact enumeration.

        The default AIS is two-sided: forward AIS (100 chains, 1000 temperatures) bounds log Z from below in
        expectation, and reverse AIS started from the forward run's final states (100 sweeps) from above; the
        result carries both, `estimate` / `lower` / `upper` and `reverse_estimate` / `reverse_lower` /
        `reverse_upper` / `reverse_effective_sample_size` (`pvpp.priors.LogPartition`; pass an AISConfig with
        reverse_start='none' for the forward run alone)."""
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
        log_partition: str | float = "ais",
        ais: AISConfig = AISConfig(num_chains=1000, num_betas=10000),
        example_indices=None,
    ) -> np.ndarray:
        """Importance-weighted log p(x) per image, nats [B] (`pvpp.evaluation.evaluate`: k = num_samples hard samples, log Z
        of an RBM prior by `log_partition`: 'ais' with `ais`, 'exact', 'card' (the log Z a zoo entry's card
        records) or a float (a log Z known already, nats)). example_indices: [B] each image's index in its split,
        which places its samples' keys as the evaluation command does (default 0..B-1): with the evaluation's
        key (`jax.random.key(seed)`) and k the values are the command's."""
        check_int(num_samples, "num_samples", 1)
        images = self._check_batch(images)
        chunk = chunk_size or evaluate.default_chunk_size(num_samples)
        indices = np.arange(images.shape[0]) if example_indices is None else np.asarray(example_indices, np.int64)
        if isinstance(log_partition, str) and log_partition in evaluate.LOG_PARTITION_METHODS:
            return self._log_likelihood(key, images, indices, num_samples, chunk, batch_size, log_partition, ais)
        log_z = self._known_log_partition(log_partition)
        unnormalized = evaluate.importance_weighted_pass(  # checks the images
            self.config, self.params, images, indices, keys.stream(key, "importance_samples"),
            num_samples=num_samples, chunk_size=chunk, batch_size=batch_size,
        )
        return unnormalized["log_likelihood_unnormalized"] - log_z

    def _log_likelihood(self, key, images, indices, num_samples, chunk, batch_size, log_partition, ais) -> np.ndarray:
        config = evaluate.EvalConfig(
            num_importance_samples=num_samples,
            chunk_size=chunk,
            batch_size=batch_size,
            log_partition=log_partition,
            ais=ais,
        )
        result = evaluate.evaluate(self.config, self.params, images, indices, config, key=key)  # checks the images
        return result.per_image["log_likelihood"]

    def _known_log_partition(self, log_partition) -> float:
        """log Z given as 'card' or a float, nats (0 for a normalised prior)."""
        normalized = make_prior(self.config).normalized
        if isinstance(log_partition, str):
            if log_partition != "card":
                choices = (*evaluate.LOG_PARTITION_METHODS, "card")
                raise ValueError(f"log_partition must be one of {choices} or a float, got {log_partition!r}")
            if self.card is None:
                raise ValueError("log_partition='card' needs a model loaded from the zoo (pvpp.load('zoo:NAME'))")
            recorded = self.card["result"]["log_partition"]
            return 0.0 if recorded is None or normalized else float(recorded["estimate"])
        if isinstance(log_partition, (int, float, np.floating, np.integer)) and not isinstance(log_partition, bool):
            if normalized:
                raise ValueError(f"the {self.config.prior} prior is normalised: it has no log Z to pass")
            return float(log_partition)
        raise TypeError(f"log_partition must be a method name, 'card' or a float, got {log_partition!r}")

    def _decode(self, stream_key: jax.Array, z, decodes: int, batch_size: int, sampler: str) -> np.ndarray:
        check_int(decodes, "decodes", 1)
        check_int(batch_size, "batch_size", 1)
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
        return to_model_space(self.config, jnp.asarray(self._check_batch(images)))

    def _check_batch(self, images) -> np.ndarray:
        """`images` as uint8 [B, H, W, C] data-space pixels this model takes, B >= 1 (ValueError / TypeError
        naming `images`)."""
        images = evaluate.check_images(self.config, images)
        if images.shape[0] == 0:
            raise ValueError(f"images: an empty batch {images.shape}; give at least one image")
        return images


__all__ = ["LoadedModel", "load"]
