"""The check subset of a card: a few fixed test images whose per-image values any user can recompute from the
weights and the real data, to see that the entry still gives the numbers its card reports.

Evaluation draws image i's k latent samples from fold_in(stream(jax.random.key(seed), 'importance_samples'), i)
(i: the image's index in its split), so evaluating only these images with the same seed, k, chunk size and batch
size repeats the full run's computation for them; only float rounding can differ (other batch-mates, the
padding of the last batch, another device count). `rounding_tolerance` bounds it for the library versions and
backend the card was recorded with (`TOLERANCE_BASIS` says what was measured). With other versions or hardware
the draws are the same but the rounding of log p(x | z) is not, and a sample whose Bernoulli draw flips moves
an estimate by up to its Monte-Carlo error: the check then allows MONTE_CARLO_FACTOR x the card's per-image
spread over other seeds.
"""

from __future__ import annotations

import hashlib
from typing import Any, NamedTuple

import jax
import numpy as np

from pvpp import keys
from pvpp.evaluation import evaluate
from pvpp.evaluation.iwae_pass import importance_weighted_pass
from pvpp.model import ModelConfig
from pvpp.zoo import access, provenance, registry
from pvpp.zoo.errors import ZooError

DEFAULT_SIZE = 8
#: With the recording's library versions and backend, |recomputed - recorded| of an image's
#: log_likelihood_unnormalized may be at most ROUNDING_TOLERANCE_NATS + ROUNDING_TOLERANCE_RELATIVE * |recorded|.
ROUNDING_TOLERANCE_NATS = 1e-3
ROUNDING_TOLERANCE_RELATIVE = 2e-6
MONTE_CARLO_FACTOR = 4.0
TOLERANCE_BASIS = (
    "same jax, jaxlib and backend: the same float32 computation. Measured (pvpp tests, CPU): a subset evaluated "
    "with the run's batch size reproduces the full run's values exactly, whatever the batch-mates and the device "
    "count; with another batch size they move by up to 4e-7 relative (a few float32 ulps of the pixel sum). The "
    "tolerance, 1e-3 nats + 2e-6 x |value|, is 5x that and far below the model differences a card reports "
    "(tenths of a nat). Other versions or hardware: MONTE_CARLO_FACTOR x the Monte-Carlo spread "
    "(check_subset.monte_carlo) when the card has one"
)
KEY_RULE = "fold_in(stream(jax.random.key(seed), 'importance_samples'), index in the split)"


class Reproduction(NamedTuple):
    """A check subset evaluated again: the card's and the new values (nats [n]), the tolerance used per image,
    why that tolerance, and whether every image is within it."""

    indices: np.ndarray
    recorded: np.ndarray
    recomputed: np.ndarray
    tolerance: np.ndarray
    basis: str

    @property
    def max_abs_difference(self) -> float:
        return float(np.max(np.abs(self.recomputed - self.recorded)))

    @property
    def ok(self) -> bool:
        return bool(np.all(np.abs(self.recomputed - self.recorded) <= self.tolerance))


def reproduce_entry(name: str, data_dir=None) -> Reproduction:
    """Evaluates the check subset of zoo entry 'name' / 'name@rN' again from its verified weights and the real
    data (data_dir None: env PVPP_DATA_DIR); the rounding tolerance applies when jax, jaxlib and the backend are
    the ones the card was packaged with."""
    entry = registry.resolve(name)
    card = registry.read_card(entry)
    config, params = access.load_verified(entry, card)
    return reproduce(
        config, params, card["check_subset"], card["data"], f"zoo entry {entry.resolved}",
        same_versions=same_versions(card), data_dir=data_dir,
    )


def same_versions(card: dict[str, Any]) -> bool:
    """Whether this process runs the jax, jaxlib and backend that the card's check subset was recorded with."""
    return card["check_subset"]["recorded_with"] == recorded_with()


def recorded_with() -> dict[str, str]:
    """{'jax', 'jaxlib', 'backend'} of this process: what decides the rounding of an evaluation."""
    versions = provenance.library_versions()
    return {"jax": versions.get("jax", ""), "jaxlib": versions.get("jaxlib", ""), "backend": jax.default_backend()}


def rounding_tolerance(values) -> np.ndarray:
    """The per-image rounding tolerance (nats) of recorded values `values` (nats [n])."""
    return ROUNDING_TOLERANCE_NATS + ROUNDING_TOLERANCE_RELATIVE * np.abs(np.asarray(values, np.float64))


def choose_indices(example_indices: np.ndarray, size: int = DEFAULT_SIZE) -> np.ndarray:
    """`size` of the evaluated split indices, evenly spaced over them (all when fewer): int64 [n], sorted."""
    evaluated = np.sort(np.asarray(example_indices, np.int64))
    if len(evaluated) <= size:
        return evaluated
    return evaluated[np.unique(np.round(np.linspace(0, len(evaluated) - 1, size)).astype(np.int64))]


def images_digest(images: np.ndarray) -> str:
    """sha256 of the uint8 images [n, H, W, C] in C order (what the model was evaluated on)."""
    return hashlib.sha256(np.ascontiguousarray(images, np.uint8).tobytes()).hexdigest()


def subset_images(data_record: dict[str, Any], indices, seed: int, data_dir=None) -> np.ndarray:
    """The evaluation images of `indices` (uint8 [n, H, W, C], binarized as the evaluation did) from the card's
    data section {'dataset', 'split', 'variant', 'validation_size'}; data_dir None: env PVPP_DATA_DIR."""
    split = evaluate.load_split(
        data_record["dataset"],
        data_record["split"],
        data_dir=data_dir,
        variant=data_record.get("variant"),
        validation_size=data_record.get("validation_size"),
    )
    images, _ = evaluate.evaluation_images(split, np.asarray(indices, np.int64), seed)
    return images


def evaluate_subset(
    config: ModelConfig, params: Any, images: np.ndarray, indices, *, k: int, chunk_size: int, batch_size: int,
    seed: int,
) -> np.ndarray:
    """log p~(x) (= log p(x) + log Z) of each image as the evaluation computes it, nats float64 [n]."""
    stream = keys.stream(jax.random.key(seed), "importance_samples")
    result = importance_weighted_pass(
        config, params, images, np.asarray(indices, np.int64), stream,
        num_samples=k, chunk_size=chunk_size, batch_size=batch_size,
    )
    return result["log_likelihood_unnormalized"]


def monte_carlo_spread(
    config: ModelConfig, params: Any, images: np.ndarray, indices, *, k: int, chunk_size: int, batch_size: int,
    seeds: list[int],
) -> np.ndarray:
    """Per-image standard deviation (nats [n]) of the estimate over `seeds` (>= 2 seeds)."""
    values = [
        evaluate_subset(config, params, images, indices, k=k, chunk_size=chunk_size, batch_size=batch_size, seed=s)
        for s in seeds
    ]
    return np.std(np.stack(values), axis=0, ddof=1)


def reproduce(
    config: ModelConfig, params: Any, subset: dict[str, Any], data_record: dict[str, Any], where: str, *,
    same_versions: bool, data_dir=None,
) -> Reproduction:
    """Evaluates the card's check subset again (`subset`: the card's check_subset, `data_record` its data).

    ZooError naming the entry when the images read now are not the ones the card was made from (their digest).
    same_versions: the library versions and backend are the card's (the rounding tolerance applies), else the
    Monte-Carlo one (when the card has a spread).
    """
    indices = np.asarray(subset["indices"], np.int64)
    images = subset_images(data_record, indices, subset["seed"], data_dir)
    if images_digest(images) != subset["images_sha256"]:
        raise ZooError(
            f"{where}: the check-subset images read from the data now have another digest than the card's: "
            "the data files differ from the ones the entry was evaluated on"
        )
    recomputed = evaluate_subset(
        config, params, images, indices, k=subset["k"], chunk_size=subset["chunk_size"],
        batch_size=subset["batch_size"], seed=subset["seed"],
    )
    recorded = np.asarray(subset["log_likelihood_unnormalized"], np.float64)
    rounding = subset["tolerance_nats"] + subset["tolerance_relative"] * np.abs(recorded)
    monte_carlo = subset.get("monte_carlo")
    if same_versions:
        tolerance, basis = rounding, "rounding (same library versions and backend)"
    elif monte_carlo is not None:
        spread = MONTE_CARLO_FACTOR * np.asarray(monte_carlo["std_nats"], np.float64)
        tolerance, basis = np.maximum(rounding, spread), f"{MONTE_CARLO_FACTOR:g} x the Monte-Carlo spread"
    else:
        tolerance, basis = rounding, "rounding (other versions, but the card has no Monte-Carlo spread)"
    return Reproduction(indices, recorded, recomputed, tolerance, basis)
