"""The sections of a card, built from a finished run (its config.json), its evaluation (the JSON and .npz of
`python -m pvpp.experiments.evaluate`) and the files written for the entry. `pvpp.zoo.schema` checks the result.

    identity      name, revision, resolved_name ('name@rN'), pvpp_version, git_commit, git_dirty, packaged_at
    files         weights / reference / grid: {path, sha256, size_bytes, ...}; num_parameters; integrity (the
                  per-array digests, `pvpp.runs.integrity.record`)
    model         the full ModelConfig as trained (`ModelConfig.to_dict()`)
    data          dataset, split, split_size, variant, validation_size, binarization (static / dynamic / none),
                  evaluation_images (how the evaluated images were binarized), data_space, data_note,
                  source_files ({name, sha256, size_bytes} of the original files), prepared_copy
    training      config (config.json as written), flag_file, seed, steps, num_devices, wall_time_s and its basis,
                  machine, library_versions {training, packaging}
    result        the headline: split, num_images, units, test_log_likelihood (nats per image; bits/dim for RGB),
                  NLL and its interval in nats, standard_error_nats (over images), k, log_partition (estimate,
                  interval, how), kl_nats, negative_elbo_nats, reconstruction_nats, settings, command,
                  evaluation_file, evaluation_summary (the evaluation's JSON as written, less model and file names)
    paper         the paper's number beside it, labelled as such (`pvpp.zoo.paper`)
    budget        what the training was allowed (free text)
    check_subset  fixed indices, their images' digest, k / chunk / batch / seed / key rule, the per-image values
                  and the tolerances (`pvpp.zoo.check_subset`)
    reference     how reference.npz was made and the tolerance of its comparison (`pvpp.zoo.reference`)
"""

from __future__ import annotations

import shlex
from typing import Any, Mapping

from pvpp.model import ModelConfig
from pvpp.model.likelihoods import make_likelihood
from pvpp.runs import integrity
from pvpp.zoo import check_subset, names, paper, provenance, reference, schema
from pvpp.zoo.registry import GRID_FILENAME, REFERENCE_FILENAME, WEIGHTS_FILENAME
from pvpp.zoo.weights import FORMAT as WEIGHTS_FORMAT


def identity_section(name: str, revision: int) -> dict[str, Any]:
    return {
        "name": name,
        "revision": revision,
        "resolved_name": names.resolved_name(name, revision),
        **provenance.code_version(),
        "packaged_at": provenance.now(),
    }


def files_section(folder, params: Any, num_parameters: int, grid_rows: list[str], grid_seed: int) -> dict[str, Any]:
    """Digests of the files already written in `folder`, and the per-array integrity record of `params`."""

    def record(filename):
        found = provenance.file_record(folder / filename)
        return {"path": filename, "sha256": found["sha256"], "size_bytes": found["size_bytes"]}

    return {
        "weights": {**record(WEIGHTS_FILENAME), "format": WEIGHTS_FORMAT},
        "reference": record(REFERENCE_FILENAME),
        "grid": {**record(GRID_FILENAME), "rows": list(grid_rows), "seed": grid_seed},
        "num_parameters": num_parameters,
        "integrity": integrity.record(params),
    }


def data_section(
    summary: Mapping[str, Any], run_data: Mapping[str, Any], config: ModelConfig, binarization: str,
    source_files: list[dict[str, Any]],
) -> dict[str, Any]:
    h, w, c = config.image_shape
    if make_likelihood(config).reports_bits_per_dim:
        space = f"RGB uint8 0..255 [{h}, {w}, {c}]; the model maps pixels to [-1, 1]"
    else:
        space = f"binary uint8 {{0, 1}} [{h}, {w}, {c}], 1 = ink / object; the model maps {{0, 1}} to {{-1, +1}}"
    return {
        "dataset": summary["dataset"],
        "split": summary["split"],
        "split_size": int(summary["split_size"]),
        "variant": run_data.get("variant"),
        "validation_size": run_data.get("validation_size"),
        "binarization": binarization,
        "evaluation_images": summary["binarization"],
        "data_space": space,
        "data_note": summary.get("data_note") or "",
        "source_files": source_files,
        "prepared_copy": run_data.get("source"),
    }


def training_section(
    run: Mapping[str, Any], workdir, step: int, flag_file: dict[str, Any] | None, machine: dict[str, Any]
) -> dict[str, Any]:
    seconds, basis = provenance.wall_time(workdir)
    return {
        "config": dict(run),
        "flag_file": flag_file,
        "seed": int(run["train"]["seed"]),
        "steps": int(step),
        "num_devices": run.get("num_devices"),
        "wall_time_s": seconds,
        "wall_time_basis": basis,
        "machine": machine,
        "library_versions": {
            "training": {k: str(v) for k, v in dict(run.get("versions") or {}).items()},
            "packaging": provenance.library_versions(),
        },
    }


def result_section(summary: Mapping[str, Any], evaluation_file: str, command) -> dict[str, Any]:
    """The headline from an evaluation summary (`pvpp.evaluation.evaluate.evaluate_split`); command: the
    evaluate command line (a string or a list of arguments)."""
    nats = summary["nats"]
    headline = summary["headline"]
    settings = dict(summary["settings"])
    log_z = summary.get("log_partition")
    return {
        "split": summary["split"],
        "num_images": int(summary["num_images"]),
        "example_selection": summary["example_selection"],
        "units": headline["units"],
        "test_log_likelihood": -float(headline["negative_log_likelihood"]),
        "negative_log_likelihood_nats": float(nats["negative_log_likelihood"]),
        "negative_log_likelihood_interval_nats": list(nats.get("negative_log_likelihood_interval") or [None, None]),
        "negative_log_likelihood_bounds_nats": nats.get("negative_log_likelihood_bounds"),
        "standard_error_nats": nats.get("standard_error"),
        "bits_per_dim": summary.get("bits_per_dim"),
        "k": int(settings["num_importance_samples"]),
        "log_partition": None if log_z is None else _log_partition(log_z, settings),
        "kl_nats": nats.get("kl"),
        "negative_elbo_nats": nats.get("negative_elbo"),
        "reconstruction_nats": nats.get("reconstruction"),
        "interval_meaning": summary.get("interval_meaning"),
        "settings": settings,
        "command": command if isinstance(command, str) else shlex.join(command),
        "evaluation_file": evaluation_file,
        "evaluation_summary": {k: v for k, v in summary.items() if k not in ("model", "per_image")},
    }


def check_subset_section(
    indices, digest: str, shape, settings: Mapping[str, Any], log_z: float | None, unnormalized, normalized,
    monte_carlo: dict[str, Any] | None,
) -> dict[str, Any]:
    return {
        "indices": [int(i) for i in indices],
        "images_sha256": digest,
        "images_shape": [int(d) for d in shape],
        "k": int(settings["num_importance_samples"]),
        "chunk_size": int(settings["chunk_size"]),
        "batch_size": int(settings["batch_size"]),
        "seed": int(settings["seed"]),
        "key": check_subset.KEY_RULE,
        "log_partition": log_z,
        "log_likelihood_unnormalized": [float(v) for v in unnormalized],
        "log_likelihood": [float(v) for v in normalized],
        "tolerance_nats": check_subset.ROUNDING_TOLERANCE_NATS,
        "tolerance_relative": check_subset.ROUNDING_TOLERANCE_RELATIVE,
        "tolerance_basis": check_subset.TOLERANCE_BASIS,
        "recorded_with": check_subset.recorded_with(),
        "monte_carlo": monte_carlo,
    }


def reference_section(seed: int, batch_size: int, num_pixels: int, image_shape) -> dict[str, Any]:
    h, w = image_shape[:2]
    pixels = "every pixel" if num_pixels == h * w else f"{num_pixels} seeded pixels of the {h * w}"
    return {
        "seed": seed,
        "batch_size": batch_size,
        "arrays": list(reference.ARRAYS),
        "decoder_pixels": pixels,
        "tolerance": reference.TOLERANCE,
        "how": reference.HOW,
    }


def assemble(sections: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The card: the sections in schema order, validated (CardError naming the field)."""
    card = {"schema": schema.SCHEMA, **sections}
    schema.validate_card(card, where)
    return card


def paper_for(dataset: str, config: ModelConfig, units: str) -> dict[str, Any]:
    return paper.paper_section(dataset, config.prior, units)


def _log_partition(log_z: Mapping[str, Any], settings: Mapping[str, Any]) -> dict[str, Any]:
    method = log_z.get("method", settings.get("log_partition"))
    if method == "exact":
        how = "exact enumeration over the RBM's smaller side (no interval: lower = upper = estimate)"
    else:
        ais = settings.get("ais") or {}
        effort = ", ".join(f"{k}={v}" for k, v in ais.items())
        how = (
            f"annealed importance sampling ({effort}), key stream 'log_partition' of jax.random.key("
            f"{settings.get('seed')}); interval: see interval_meaning"
        )
    return {
        "method": str(method),
        "estimate": float(log_z["estimate"]),
        "lower": log_z.get("lower"),
        "upper": log_z.get("upper"),
        "effective_sample_size": log_z.get("effective_sample_size"),
        "reverse": log_z.get("reverse"),
        "how": how,
    }
