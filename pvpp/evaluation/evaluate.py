"""Test-set evaluation: importance-weighted log-likelihood, log Z, KL, in nats or bits/dim.

For every test image x, with k hard samples z_j ~ q(z | x) (Burda et al. 2016):

    log p(x) ~ logsumexp_j [log p(x | z_j) + log p~(z_j) - log q(z_j | x)] - log k - log Z,

log p~(z) = -E(z) for the RBM (log Z = 0 and log p~ = log p for the Gaussian and factorial Bernoulli priors;
prior 'none' is plain PixelCNN++, whose log-likelihood is exact). Units: nats per image; RGB data also in bits
per dimension, nll / (H * W * C * ln 2).

Order of work (`evaluate`):
1. log Z of the RBM prior: AIS with the evaluation effort (`EvalConfig.ais`, an `AISConfig`; by default the 'cpu'
   preset of `pvpp.priors.ais.PRESETS`) or exact enumeration (small RBMs). Forward AIS (its chains split over the
   process's devices; with `across_processes`, as the evaluation command runs, every device of every process)
   is low in expectation; reverse AIS (`pvpp.priors.reverse_ais`, from the preset's start states) is high in
   expectation when its start states are samples of the RBM. Each has its spread
   log Z_0 + log(mean(w) -/+ 3 std(w) / sqrt(M)) over its M chains.
2. The importance-weighted pass over the test images (`importance_weighted_pass`): batches of `batch_size`
   images, one per device on every local device (and, with `across_processes`, of every process) at once, compiled once per batch shape;
   `chunk_size` latent samples decoded at a time so memory stays bounded (batch_size * chunk_size decoder
   passes in flight per device). It computes everything except log Z: the per-image estimate of
   log p~(x) = log p(x) + log Z ("unnormalized").
3. log Z is subtracted: the per-image LL uses the forward estimate, as the paper does. Because every image's LL
   is log p~(x) - log Z, log Z bounds map one-to-one to LL bounds: the two directions give
   LL in [IWAE - reverse estimate, IWAE - forward estimate] (and, widened by each estimator's 3-s.e. spread,
   [IWAE - reverse upper end, IWAE - forward lower end]). The IWAE term is itself a lower bound on log p~(x)
   that rises to it with k, so the interval's upper end is reached only once the IWAE term has converged.

Randomness (`pvpp.keys`). One root key `jax.random.key(seed)`; log Z draws from its stream 'log_partition',
and image number i of the split (its index in the split, not in the batch) from
fold_in(stream 'importance_samples', i), so its
estimate does not depend on the batch size or on which other images are evaluated: a subset run reproduces the
full run's numbers for its images (up to the float rounding of batched convolutions). The fixed random subset (`num_examples`) is drawn with numpy from
SeedSequence(seed, spawn_key=(SUBSET_STREAM,)).

Binarization. Binary data sets that the paper binarizes dynamically (mnist, omniglot) are evaluated on ONE
fixed binarization of the test split: image i is `pvpp.data.binarize_dynamically(x_i, i, seed=seed, epoch=0)`,
a Bernoulli(x / 255) draw that depends only on (seed, i). Statically binarized sets (binarized_mnist,
caltech101_silhouettes) and RGB (cifar10) are used as stored.

Parameters: the EMA (Polyak) parameters of a training run, or an exported parameter set; dropout is off
(every PixelVAEPP method runs with train=False).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Mapping, NamedTuple, Sequence

import jax
import numpy as np
from absl import logging

from pvpp import data, keys
from pvpp.evaluation.iwae_pass import (  # noqa: F401  (re-exported: the pass is part of the evaluation's interface)
    PER_IMAGE,
    check_example_images,
    check_images,
    importance_weighted_pass,
    iwae_program,
)
from pvpp.model import ModelConfig
from pvpp.model.likelihoods import make_likelihood
from pvpp.priors import AISConfig, make_prior
from pvpp.priors.ais import PRESETS as AIS_PRESETS
from pvpp.priors.base import LOG_PARTITION_METHODS
from pvpp.runs import results
from pvpp.settings import setting
from pvpp.validation import check_choice, check_int

SUBSET_STREAM = 2
#: The most latent samples decoded at once per image when no chunk size is given (`default_chunk_size`).
DEFAULT_MAX_CHUNK = 100  # numpy spawn key of the subset draw (pvpp.data.binarize uses 0 and 1 for its streams)

BOUNDS_MEANING = (
    "log_partition.estimate is forward AIS (low in expectation); log_partition.reverse.estimate is reverse AIS "
    "(high in expectation when its start states are samples of the RBM; reverse.start says where they came from). "
    "negative_log_likelihood_bounds = [forward - mean log p~(x), reverse - mean log p~(x)] (nats); "
    "..._bounds_with_spread widens each end by its estimator's 3-s.e. spread. The IWAE term mean log p~(x) is a "
    "lower bound on the true value that rises with k, so the NLL's lower end is reached only at convergence in k."
)
INTERVAL_MEANING = (
    "log_partition.lower/upper = log Z_0 + log(mean(w) -/+ 3 std(w)/sqrt(M)) over the M AIS chains: the spread of "
    "the AIS estimator only (it cannot see modes AIS missed). Every LL is log p~(x) - log Z, so the log-likelihood "
    "interval is [mean log p~(x) - upper, mean log p~(x) - lower] (the NLL interval is its negation); an "
    "underestimated log Z overestimates the log-likelihood."
)


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Settings of one evaluation. The defaults here are the flag defaults of `python -m pvpp.experiments.evaluate`.

    split: data split ('test', 'validation', 'train', 'train+validation').
    num_importance_samples: k, hard latent samples per image (the paper: 1000).
    chunk_size: samples decoded at once per image; must divide k. batch_size: images per compiled batch.
    num_examples: evaluate a fixed random subset of this many images of the split (None: all of it).
    seed: root of every random stream (latent samples, AIS, subset, the fixed binarization).
    log_partition: 'ais' or 'exact' (enumeration; the RBM's smaller side must have <= 24 units).
    ais: the AIS effort, forward and reverse (`pvpp.priors.AISConfig`; default: the 'cpu' preset).
    """

    split: str = setting("test", "Data split to evaluate.")
    num_importance_samples: int = setting(1000, "k: hard latent samples per image (the paper: 1000).")
    chunk_size: int = setting(
        100,
        f"Samples decoded at once per image; must divide k. Default: min(k, {DEFAULT_MAX_CHUNK}) when that divides "
        "k, else the largest divisor of k below it.",
    )
    batch_size: int = setting(4, "Images per compiled batch (memory ~ batch_size * chunk_size decoder passes).")
    num_examples: int | None = setting(
        None, "Evaluate a fixed random subset (drawn with --seed) of this many images; default all."
    )
    seed: int = setting(0, "Root of every random stream (and of the fixed binarization).")
    log_partition: str = setting(
        "ais",
        "log Z of the RBM prior: AIS, or exact enumeration (small RBMs).",
        choices=LOG_PARTITION_METHODS,
    )
    ais: AISConfig = setting(AIS_PRESETS["cpu"], "(default: the preset's).", prefix="ais_")

    def __post_init__(self):
        check_choice(self.split, "split", data.SPLITS)
        for name, minimum in (("num_importance_samples", 1), ("chunk_size", 1), ("batch_size", 1), ("seed", 0)):
            check_int(getattr(self, name), name, minimum)
        if self.num_importance_samples % self.chunk_size:
            raise ValueError(
                f"chunk_size ({self.chunk_size}) must divide num_importance_samples ({self.num_importance_samples})"
            )
        if self.num_examples is not None:
            check_int(self.num_examples, "num_examples", 1)
        check_choice(self.log_partition, "log_partition", LOG_PARTITION_METHODS)
        if not isinstance(self.ais, AISConfig):
            raise TypeError(f"ais must be an AISConfig, got {type(self.ais).__name__}")

    def replace(self, **changes) -> "EvalConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class LogPartitionSummary(NamedTuple):
    """log Z of an unnormalised prior as evaluation reports it (nats, floats; `pvpp.priors.LogPartition` holds
    the arrays): the method, the forward estimate and its spread, and the reverse estimate, its spread and its
    start states (None without reverse AIS). Exact enumeration: every value is log Z."""

    method: str
    estimate: float
    lower: float
    upper: float
    effective_sample_size: float | None
    reverse_estimate: float | None = None
    reverse_lower: float | None = None
    reverse_upper: float | None = None
    reverse_effective_sample_size: float | None = None
    reverse_start: str | None = None


class Evaluation(NamedTuple):
    """`evaluate`'s outcome: `summary` (JSON-ready dict) and `per_image` ([N] numpy arrays, see `per_image_arrays`)."""

    summary: dict[str, Any]
    per_image: dict[str, np.ndarray]


# ----------------------------------------------------------------------------------------------------------
# Driver


def evaluate(
    model_config: ModelConfig,
    params: Any,
    images: np.ndarray,
    example_indices: np.ndarray,
    config: EvalConfig,
    *,
    progress: bool = False,
    key: jax.Array | None = None,
    across_processes: bool = False,
) -> Evaluation:
    """Evaluates `params` ('params' collection, e.g. the EMA parameters) on data-space images.

    key: the root key of the evaluation's streams; None means jax.random.key(config.seed). across_processes:
    the processes of a multi-process run share the work (AIS's chains over all their devices, the images in
    whole batches) and all get the result; every process must then make the same call. False: this process's
    devices only.

    images: [N, H, W, C] uint8: {0, 1} for the Bernoulli likelihood (already binarized, see `evaluation_images`),
        0..255 for the logistic mixture. example_indices: [N] each image's index in its split (its key stream).
    Returns the summary (means in nats and, for RGB, bits/dim; log Z and its interval; LL interval) and the
    per-image arrays. Raises ValueError for images that do not fit the model, before any long work.
    """
    check_example_images(model_config, images, example_indices)
    check_log_partition_method(model_config, config.log_partition)
    root = jax.random.key(config.seed) if key is None else key
    start = time.perf_counter()
    devices = jax.devices() if across_processes else jax.local_devices()
    log_z = estimate_log_partition(model_config, params, config, keys.stream(root, "log_partition"), devices)
    if log_z is not None:
        logging.info(
            "log Z (%s) = %.4f in [%.4f, %.4f] (%.1f s)", log_z.method, log_z.estimate, log_z.lower, log_z.upper,
            time.perf_counter() - start,
        )
    unnormalized = importance_weighted_pass(
        model_config, params, images, example_indices, keys.stream(root, "importance_samples"),
        num_samples=config.num_importance_samples, chunk_size=config.chunk_size, batch_size=config.batch_size,
        progress=progress, across_processes=across_processes,
    )
    per_image = per_image_arrays(unnormalized, log_z, example_indices)
    return Evaluation(summarize(model_config, per_image, log_z), per_image)


def evaluate_split(
    model_config: ModelConfig,
    params: Any,
    dataset: str,
    config: EvalConfig,
    *,
    data_dir=None,
    variant: str | None = None,
    validation_size: int | None = None,
    parameters: Mapping[str, Any] | None = None,
    progress: bool = False,
    across_processes: bool = False,
) -> Evaluation:
    """Loads `config.split` of `dataset`, picks the images (`select_examples`), binarizes them (`evaluation_images`)
    and runs `evaluate` (across_processes as there). data_dir, variant, validation_size: as `pvpp.data.load` (data_dir None: env PVPP_DATA_DIR).
    The summary also records the data set, the binarization, `parameters` (where they came from), the model
    configuration and the settings, so that the JSON says how every number was produced."""
    split_data = load_split(dataset, config.split, data_dir=data_dir, variant=variant, validation_size=validation_size)
    if tuple(split_data.images.shape[1:]) != model_config.image_shape:
        raise ValueError(
            f"{dataset} images are {tuple(split_data.images.shape[1:])} but the model expects {model_config.image_shape}"
        )
    indices = select_examples(len(split_data), config.num_examples, config.seed)
    images, binarization = evaluation_images(split_data, indices, config.seed)
    result = evaluate(
        model_config, params, images, indices, config, progress=progress, across_processes=across_processes
    )
    summary = {
        "dataset": dataset,
        "split": config.split,
        **result.summary,
        "split_size": len(split_data),
        "example_selection": "all" if config.num_examples is None else (
            f"fixed random subset of {config.num_examples}: evaluate.select_examples(..., seed={config.seed})"
        ),
        "binarization": binarization,
        "data_note": split_data.note,
        "parameters": dict(parameters or {}),
        "settings": config.to_dict(),
        "model": model_config.to_dict(),
    }
    return Evaluation(summary, result.per_image)


def estimate_log_partition(
    model_config: ModelConfig,
    params: Any,
    config: EvalConfig,
    key: jax.Array,
    devices: Sequence[jax.Device] | None = None,
) -> LogPartitionSummary | None:
    """log Z of an unnormalised prior by `config.log_partition` ('ais' with `config.ais`, its chains split over
    `devices`: None is this process's devices; all processes' must be the same list on every process), or
    'exact'); None for normalised priors."""
    prior = make_prior(model_config)
    prior.check_log_partition(config.log_partition)
    result = prior.log_partition(
        prior.prior_params(params), key, method=config.log_partition, ais=config.ais,
        devices=jax.local_devices() if devices is None else devices,
    )
    if result is None:
        return None
    def scalar(value):
        return None if value is None else float(value)

    return LogPartitionSummary(
        config.log_partition,
        float(result.estimate),
        float(result.lower),
        float(result.upper),
        scalar(result.effective_sample_size),
        scalar(result.reverse_estimate),
        scalar(result.reverse_lower),
        scalar(result.reverse_upper),
        scalar(result.reverse_effective_sample_size),
        result.reverse_start,
    )


def default_chunk_size(num_samples: int) -> int:
    """The largest divisor of num_samples (k) that is at most DEFAULT_MAX_CHUNK: samples decoded at once."""
    return max(d for d in range(1, min(num_samples, DEFAULT_MAX_CHUNK) + 1) if num_samples % d == 0)


def check_log_partition_method(model_config: ModelConfig, method: str) -> None:
    """ValueError unless `method` can run on this model (exact enumeration needs a small RBM side)."""
    make_prior(model_config).check_log_partition(method)


def per_image_arrays(
    unnormalized: Mapping[str, np.ndarray], log_z: LogPartitionSummary | None, example_indices: np.ndarray
) -> dict[str, np.ndarray]:
    """Per-image results with log Z applied: 'log_likelihood', 'elbo', 'kl', 'reconstruction' (nats, [N]),
    'log_likelihood_unnormalized' and 'example_indices' ([N] int64, index in the split)."""
    log_z_value = 0.0 if log_z is None else log_z.estimate
    return dict(
        example_indices=np.asarray(example_indices, np.int64),
        log_likelihood=unnormalized["log_likelihood_unnormalized"] - log_z_value,
        elbo=unnormalized["elbo_unnormalized"] - log_z_value,
        kl=unnormalized["kl_unnormalized"] + log_z_value,
        reconstruction=np.asarray(unnormalized["reconstruction"]),
        log_likelihood_unnormalized=np.asarray(unnormalized["log_likelihood_unnormalized"]),
    )


def summarize(
    model_config: ModelConfig, per_image: Mapping[str, np.ndarray], log_z: LogPartitionSummary | None
) -> dict[str, Any]:
    """Means over the images: 'nats' block (per image) and, for RGB, a 'bits_per_dim' block with the same keys.

    Keys of a block: negative_log_likelihood, its standard_error (over images: test-set sampling, not the
    estimator's bias), negative_log_likelihood_interval [low, high] (from the forward estimate's spread),
    negative_log_likelihood_bounds and ..._bounds_with_spread (from forward and reverse AIS, see BOUNDS_MEANING;
    null without reverse AIS), negative_elbo, kl, reconstruction. 'headline' names the paper's unit ('nats' binary, 'bits/dim' RGB) and value.
    """
    num = per_image["log_likelihood"].shape[0]
    mean_unnormalized = float(np.mean(per_image["log_likelihood_unnormalized"]))
    bounds = bounds_with_spread = None
    if log_z is None:
        interval = bounds = bounds_with_spread = (-mean_unnormalized, -mean_unnormalized)
    else:
        interval = (log_z.lower - mean_unnormalized, log_z.upper - mean_unnormalized)
        if log_z.reverse_estimate is not None:
            bounds = (log_z.estimate - mean_unnormalized, log_z.reverse_estimate - mean_unnormalized)
            bounds_with_spread = (log_z.lower - mean_unnormalized, log_z.reverse_upper - mean_unnormalized)
    nll = -per_image["log_likelihood"]
    nats = dict(
        negative_log_likelihood=float(np.mean(nll)),
        standard_error=float(np.std(nll, ddof=1) / math.sqrt(num)) if num > 1 else None,
        negative_log_likelihood_interval=list(interval),
        negative_log_likelihood_bounds=None if bounds is None else list(bounds),
        negative_log_likelihood_bounds_with_spread=None if bounds_with_spread is None else list(bounds_with_spread),
        negative_elbo=float(-np.mean(per_image["elbo"])),
        kl=float(np.mean(per_image["kl"])),
        reconstruction=float(np.mean(per_image["reconstruction"])),
    )
    nats = _finite_or_none(nats)
    summary: dict[str, Any] = {"num_images": int(num)}
    if make_likelihood(model_config).reports_bits_per_dim:
        bits = _finite_or_none(_scaled(nats, 1.0 / (math.prod(model_config.image_shape) * math.log(2.0))))
        summary["headline"] = {"units": "bits/dim", "negative_log_likelihood": bits["negative_log_likelihood"]}
        summary.update(nats=nats, bits_per_dim=bits)
    else:
        summary["headline"] = {"units": "nats", "negative_log_likelihood": nats["negative_log_likelihood"]}
        summary["nats"] = nats
    if log_z is None:
        summary["log_partition"] = None
    else:
        values = log_z._asdict()
        reverse = {name[len("reverse_"):]: values.pop(name) for name in list(values) if name.startswith("reverse_")}
        summary["log_partition"] = {
            **_finite_or_none(values),
            "reverse": None if reverse["estimate"] is None else _finite_or_none(reverse),
        }
        summary["interval_meaning"] = INTERVAL_MEANING
        summary["bounds_meaning"] = BOUNDS_MEANING
    return summary


# ----------------------------------------------------------------------------------------------------------
# Data


def load_split(dataset: str, split: str, *, data_dir=None, variant=None, validation_size=None):
    """`pvpp.data.load` with the training run's data options (a `DataSplit`)."""
    return data.load(dataset, split, data_dir=data_dir, config=variant, validation_size=validation_size)


def select_examples(num_total: int, num_examples: int | None, seed: int) -> np.ndarray:
    """Indices [n] (sorted, int64) of the images to evaluate: all (num_examples None) or a fixed random subset.

    The subset is drawn without replacement from SeedSequence(seed, spawn_key=(SUBSET_STREAM,)), so it is the
    same on every machine for the same seed.
    """
    if num_examples is None:
        return np.arange(num_total, dtype=np.int64)
    if num_examples > num_total:
        raise ValueError(f"num_examples ({num_examples}) exceeds the {num_total} images of the split")
    rng = np.random.Generator(np.random.Philox(np.random.SeedSequence(seed, spawn_key=(SUBSET_STREAM,))))
    return np.sort(rng.choice(num_total, size=num_examples, replace=False)).astype(np.int64)


def evaluation_images(split_data, example_indices: np.ndarray, seed: int) -> tuple[np.ndarray, str]:
    """(uint8 images [n, H, W, C] of the given indices, a sentence saying how they were binarized).

    split_data: a `pvpp.data.DataSplit`. Dynamic binarization -> one fixed Bernoulli(x / 255) draw per image
    from (seed, image index), see the module docstring.
    """
    images = split_data.images[example_indices]
    if split_data.binarization == "dynamic":
        images = data.binarize_dynamically(images, example_indices, seed=seed, epoch=0)
        note = (
            f"fixed binarization: image i is pvpp.data.binarize_dynamically(x_i, i, seed={seed}, epoch=0), "
            "one Bernoulli(x/255) draw per pixel"
        )
    elif split_data.binarization == "static":
        note = "static binarization, as stored"
    else:
        note = "RGB uint8, as stored"
    return images, note


# ----------------------------------------------------------------------------------------------------------
# Output


def write_results(path, summary: Mapping[str, Any], per_image: Mapping[str, np.ndarray], *, overwrite=False):
    """The JSON summary and the per-image .npz as one atomic, never-mixed pair (`pvpp.runs.results.write_results`)."""
    return results.write_results(path, summary, per_image, overwrite=overwrite)


# ----------------------------------------------------------------------------------------------------------
# Helpers


def _scaled(block: Mapping[str, Any], scale: float) -> dict[str, Any]:
    out = {}
    for name, value in block.items():
        if isinstance(value, list):
            out[name] = [None if v is None else v * scale for v in value]
        else:
            out[name] = None if value is None else value * scale
    return out


def _finite_or_none(block: Mapping[str, Any]) -> dict[str, Any]:
    """JSON has no inf / NaN: such values (e.g. an AIS lower end of -inf) become null."""

    def fix(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, list):
            return [fix(x) for x in v]
        return v

    return {name: fix(value) for name, value in block.items()}
