"""Packaging a finished training run and its evaluation as a zoo entry: how the shipped entries are made, and how a
user adds their own (into a folder of `PVPP_ZOO_PATH`, where they get the same checks).

    pvpp.zoo.package("runs/caltech101_rbm", "runs/caltech101_rbm/eval/caltech101_silhouettes_test_k1000_seed0.json",
                     "caltech101-rbm-cpubudget", destination="my_zoo", budget="about one hour on 2 CPU cores")

Inputs: the workdir (config.json and its EMA parameters, `pvpp.inference.load_model`) and the evaluation's
JSON with its sibling .npz of per-image values (`python -m pvpp.experiments.evaluate`). The evaluation must be of
these parameters: same model, same step, and its check subset must evaluate again to the values in its .npz.
The entry is written to a temporary folder and renamed into place, so a failed packaging leaves nothing behind;
an existing revision is never overwritten.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
from typing import Any, Mapping

import jax
import numpy as np

from pvpp import data
from pvpp.data.raw import file_digest
from pvpp.generation import images as image_io
from pvpp.inference import load_model, LoadedModel
from pvpp.model import ModelConfig
from pvpp.model.likelihoods import make_likelihood
from pvpp.priors import make_prior
from pvpp.runs import integrity, workdir as workdir_files
from pvpp.zoo import access, check_subset, names, provenance, reference, registry, sections, weights
from pvpp.zoo.errors import EntryExistsError, ZooError

GRID_IMAGES = 8
GRID_GIBBS_SWEEPS = 1000


def package(
    workdir,
    eval_json,
    name: str,
    revision: int | None = None,
    destination=None,
    *,
    budget: str,
    command: str | list[str] | None = None,
    flag_file=None,
    data_dir=None,
    machine: str | Mapping[str, Any] | None = None,
    check_size: int = check_subset.DEFAULT_SIZE,
    monte_carlo_seeds: int = 2,
    grid_seed: int = 0,
    reference_seed: int = 0,
) -> registry.Entry:
    """Writes `<destination>/<name>/r<revision>/` (card.json, weights.npz, reference.npz, grid.png); returns it.

    name: '<dataset>-<prior>-<budget>', agreeing with the run's data set and prior. revision: None = one more
    than the newest in the zoo and in `destination`. destination: a folder (created if needed); None = the first
    folder of PVPP_ZOO_PATH. budget: the card's statement of what the training was allowed. command: the exact
    evaluate command (None: the evaluation JSON's 'command' field, which must then exist). flag_file: the
    training's flag file, recorded with its text. data_dir: the original data files (None: the run's, else env
    PVPP_DATA_DIR); their digests go in the card and the check subset is read from them. machine: a
    description of the training machine (None: this machine's, said to be the packaging machine).
    monte_carlo_seeds: 0, or >= 2 extra seeds over which the check subset's Monte-Carlo spread is measured.
    Raises ZooError (or a subclass) naming what does not fit; EntryExistsError for an existing revision.
    """
    names.check_name(name)
    if not isinstance(budget, str) or not budget.strip():
        raise ZooError("package: budget must be a non-empty statement of what the training was allowed")
    if monte_carlo_seeds == 1 or monte_carlo_seeds < 0:
        raise ZooError(f"package: monte_carlo_seeds must be 0 or >= 2, got {monte_carlo_seeds}")
    destination = _destination(destination)
    run, inference = _read_run(workdir)
    summary, per_image, eval_path = _read_evaluation(eval_json)
    config = inference.config
    _check_match(name, run, inference, summary, eval_path)
    command = command if command is not None else summary.get("command")
    if not command:
        raise ZooError(f"package: {eval_path} has no 'command' field; pass command= (the exact evaluate command)")
    revision = _revision(name, revision, destination)
    resolved = names.resolved_name(name, revision)
    where = f"zoo entry {resolved}"
    data_dir = _data_dir(data_dir, run)

    subset, images = _check_subset(
        config, inference.params, summary, per_image, run["data"], data_dir, eval_path, check_size, monte_carlo_seeds
    )
    destination.mkdir(parents=True, exist_ok=True)
    final = destination / name / names.revision_folder(revision)
    staging = destination / name / f".{names.revision_folder(revision)}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        grid_rows, num_pixels = _write_files(staging, config, inference.params, images, grid_seed, reference_seed)
        parts = {
            "identity": sections.identity_section(name, revision),
            "files": sections.files_section(
                staging, inference.params, weights.count(inference.params), grid_rows, grid_seed
            ),
            "model": config.to_dict(),
            "data": sections.data_section(
                summary, run["data"], config, data.DATASETS[summary["dataset"]].binarization,
                provenance.source_files(summary["dataset"], data_dir, run["data"].get("variant")),
            ),
            "training": sections.training_section(
                run, workdir, inference.source.get("step") or run["num_steps"], _flag_file(flag_file),
                _machine(machine),
            ),
            "result": sections.result_section(summary, eval_path.name, command),
            "paper": sections.paper_for(summary["dataset"], config, summary["headline"]["units"]),
            "budget": budget,
            "check_subset": subset,
            "reference": sections.reference_section(
                reference_seed, reference.BATCH_SIZE, num_pixels, config.image_shape
            ),
        }
        card = sections.assemble(parts, where)
        workdir_files.write_json(str(staging / registry.CARD_FILENAME), card)
        if final.exists():
            raise EntryExistsError(f"{where} appeared in {final} while packaging; nothing was changed")
        os.replace(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if _in_zoo(destination):
        access.verify(resolved)  # the entry as a user will read it
    return registry.Entry(name, revision, final, destination.resolve() == registry.SHIPPED_DIR)


def _check_subset(
    config, params, summary, per_image, run_data, data_dir, eval_path, check_size, monte_carlo_seeds
) -> tuple[dict[str, Any], np.ndarray]:
    """(the card's check_subset section, its images uint8 [n, H, W, C]): the indices chosen among the evaluated
    ones, their values from the evaluation's .npz, confirmed by evaluating them again (ZooError otherwise: the
    evaluation is not of these weights), and their Monte-Carlo spread over `monte_carlo_seeds` other seeds."""
    settings = summary["settings"]
    eval_indices = np.asarray(per_image["example_indices"], np.int64)
    indices = check_subset.choose_indices(eval_indices, check_size)
    position = {int(i): n for n, i in enumerate(eval_indices)}
    rows = [position[int(i)] for i in indices]
    unnormalized = np.asarray(per_image["log_likelihood_unnormalized"], np.float64)[rows]
    normalized = np.asarray(per_image["log_likelihood"], np.float64)[rows]
    data_record = {"dataset": summary["dataset"], "split": summary["split"]}
    data_record.update({k: run_data.get(k) for k in ("variant", "validation_size")})
    images = check_subset.subset_images(data_record, indices, settings["seed"], data_dir)
    effort = dict(
        k=settings["num_importance_samples"], chunk_size=settings["chunk_size"], batch_size=settings["batch_size"]
    )
    again = check_subset.evaluate_subset(config, params, images, indices, seed=settings["seed"], **effort)
    if not np.all(np.abs(again - unnormalized) <= check_subset.rounding_tolerance(unnormalized)):
        raise ZooError(
            f"package: the check subset of {eval_path} does not evaluate again to its recorded values (largest "
            f"difference {np.max(np.abs(again - unnormalized)):.3g} nats): the evaluation is not of these weights"
        )
    monte_carlo = None
    if monte_carlo_seeds:
        seeds = [settings["seed"] + 1 + j for j in range(monte_carlo_seeds)]
        spread = check_subset.monte_carlo_spread(config, params, images, indices, seeds=seeds, **effort)
        monte_carlo = {
            "seeds": seeds,
            "std_nats": [float(v) for v in spread],
            "note": "per-image standard deviation of log_likelihood_unnormalized over these evaluation seeds "
            "(same k): the size of the Monte-Carlo error of one image's value",
        }
    log_z = None if summary.get("log_partition") is None else float(summary["log_partition"]["estimate"])
    section = sections.check_subset_section(
        indices, check_subset.images_digest(images), images.shape, settings, log_z, unnormalized, normalized,
        monte_carlo,
    )
    return section, images


def _write_files(folder, config, params, images, grid_seed: int, reference_seed: int) -> tuple[list[str], int]:
    """Writes weights.npz, reference.npz and grid.png into `folder`; returns (the grid's row captions, the number
    of decoder pixels the reference keeps)."""
    weights.write_weights(folder / registry.WEIGHTS_FILENAME, params)
    stored = reference.compute(config, params, reference_seed)
    weights.write_arrays(folder / registry.REFERENCE_FILENAME, stored)
    grid_rows = _write_grid(folder / registry.GRID_FILENAME, config, params, images, grid_seed)
    return grid_rows, len(stored["decoder_pixels"])


# ----------------------------------------------------------------------------------------------------------
# Inputs


def _destination(destination) -> pathlib.Path:
    if destination is not None:
        return pathlib.Path(destination).expanduser().resolve()
    folders = [p for p in os.environ.get(registry.PATH_VARIABLE, "").split(os.pathsep) if p]
    if not folders:
        raise ZooError(
            f"package: give destination (a folder for the entry), or set {registry.PATH_VARIABLE} to the folder(s) "
            "of your entries (the first is used)"
        )
    return pathlib.Path(folders[0]).expanduser().resolve()


def _read_run(workdir) -> tuple[dict[str, Any], LoadedModel]:
    run = workdir_files.read_config(workdir)
    if run is None:
        raise ZooError(f"package: {workdir} has no {workdir_files.CONFIG_FILENAME}: not a training workdir")
    inference = load_model(workdir=workdir)
    return run, inference


def _read_evaluation(eval_json) -> tuple[dict[str, Any], dict[str, np.ndarray], pathlib.Path]:
    path = pathlib.Path(eval_json).resolve()
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ZooError(f"package: the evaluation {path} cannot be read as JSON ({err})") from None
    listed = summary.get("per_image") if isinstance(summary.get("per_image"), dict) else {}
    arrays_path = path.parent / listed["file"] if listed.get("file") else path.with_suffix(".npz")
    try:
        with np.load(arrays_path, allow_pickle=False) as archive:
            per_image = {key: archive[key] for key in archive.files}
    except (OSError, ValueError) as err:
        raise ZooError(f"package: the per-image values {arrays_path} cannot be read ({err})") from None
    if listed.get("digests") is not None and integrity.fingerprints(per_image) != listed["digests"]:
        raise ZooError(f"package: {arrays_path} does not hold the arrays {path} records (their digests differ)")
    for field in ("dataset", "split", "split_size", "settings", "model", "nats", "headline", "binarization"):
        if field not in summary:
            raise ZooError(f"package: {path} lacks the field {field!r}: not an evaluation summary")
    for field in ("example_indices", "log_likelihood_unnormalized", "log_likelihood"):
        if field not in per_image:
            raise ZooError(f"package: {arrays_path} lacks the array {field!r}")
    return summary, per_image, path


def _check_match(name, run, inference, summary, eval_path) -> None:
    """ZooError unless the evaluation is of this run's parameters and the name says what the run is."""
    trained = ModelConfig.from_dict(run["model"])
    if ModelConfig.from_dict(summary["model"]) != trained:
        raise ZooError(f"package: {eval_path} evaluates another model than the run in config.json")
    if summary["dataset"] != run["data"]["name"]:
        raise ZooError(f"package: {eval_path} is on {summary['dataset']}, the run trained on {run['data']['name']}")
    step, evaluated = inference.source.get("step"), (summary.get("parameters") or {}).get("step")
    if step is not None and evaluated is not None and int(step) != int(evaluated):
        raise ZooError(f"package: {eval_path} evaluates the parameters of step {evaluated}, the run's are of {step}")
    try:
        names.check_agrees(name, summary["dataset"], trained.prior)
    except ValueError as err:
        raise ZooError(f"package: {err}") from None


def _revision(name: str, revision: int | None, destination: pathlib.Path) -> int:
    if revision is None:
        return registry.next_revision(name, [destination])
    if isinstance(revision, bool) or not isinstance(revision, int) or revision < 1:
        raise ZooError(f"package: revision must be an int >= 1, got {revision!r}")
    taken = [e for e in registry.entries() if (e.name, e.revision) == (name, revision)]
    target = destination / name / names.revision_folder(revision)
    if taken or target.exists():
        folder = taken[0].folder if taken else target
        raise EntryExistsError(
            f"zoo entry {names.resolved_name(name, revision)} exists ({folder}); revisions are never re-pointed: "
            "package as a new revision"
        )
    return revision


def _data_dir(data_dir, run) -> pathlib.Path:
    chosen = data_dir or run["data"].get("data_dir") or os.environ.get("PVPP_DATA_DIR")
    if not chosen or not os.path.isdir(chosen):
        raise ZooError(
            f"package: the original data files are needed (their digests and the check subset): pass data_dir "
            f"or set PVPP_DATA_DIR (got {chosen!r})"
        )
    return pathlib.Path(chosen).resolve()


def _flag_file(flag_file) -> dict[str, Any] | None:
    """{path, sha256, text} of the flag file, its --flagfile includes appended to the text, or None."""
    if flag_file is None:
        return None
    path = pathlib.Path(flag_file)
    if not path.is_file():
        raise ZooError(f"package: flag file {flag_file} does not exist")
    text = path.read_text(encoding="utf-8")
    for line in text.splitlines():
        if line.strip().startswith("--flagfile="):
            include = line.strip().split("=", 1)[1]
            candidates = (pathlib.Path(include), path.parent.parent / include, path.parent / include)
            found = next((p for p in candidates if p.is_file()), None)
            if found is None:
                raise ZooError(f"package: flag file {flag_file} includes {include}, which cannot be found")
            text += f"\n# ---- included {include} ----\n" + found.read_text(encoding="utf-8")
    return {"path": str(flag_file), "sha256": file_digest(path), "text": text}


def _machine(machine) -> dict[str, Any]:
    here = provenance.machine()
    if machine is None:
        return {"described_by": "the packaging machine (config.json does not record the training machine)", **here}
    if isinstance(machine, str):
        return {"described_by": "the packager", "description": machine, "packaging_machine": here}
    return {"described_by": "the packager", **dict(machine), "packaging_machine": here}


def _in_zoo(destination: pathlib.Path) -> bool:
    return destination in [root for root, _ in registry.roots()]


def _write_grid(path, config: ModelConfig, params, images: np.ndarray, seed: int) -> list[str]:
    """Prior samples over the check-subset images over their reconstructions, one PNG; returns the row captions."""
    model = LoadedModel(config.replace(dropout_rate=0.0), params, None, {"kind": "packaging"})
    key = jax.random.key(seed)
    shown = images[:GRID_IMAGES]
    samples = model.sample(key, len(shown), num_gibbs_sweeps=GRID_GIBBS_SWEEPS, batch_size=len(shown))
    recon = model.reconstruct(key, shown, decodes=1, batch_size=len(shown))[:, 0]
    image_io.save_grid(
        path, np.concatenate([samples, shown, recon]), nrow=len(shown), padding=2, upscale=2,
        value_range=make_likelihood(config).value_range,
    )
    sweeps = "" if make_prior(config).normalized else f", {GRID_GIBBS_SWEEPS} block-Gibbs sweeps"
    if not make_prior(config).uses_latents:
        recon_caption = "the model has no latents: unconditional samples, not reconstructions"
    else:
        recon_caption = "one reconstruction of each (z ~ q(z | x), one decode)"
    return [
        f"{len(shown)} samples from the model (z from the prior{sweeps}; "
        f"pvpp.load(...).sample(jax.random.key({seed})))",
        f"{len(shown)} check-subset test images",
        recon_caption,
    ]
