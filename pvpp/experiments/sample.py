"""Samples and reconstructions of a trained PixelVAE++ (the paper's Figures 2-7), as PNG grids and arrays.

    python -m pvpp.experiments.sample --workdir=WORKDIR [--checkpoint=EXPORT_DIR] [--output_dir=DIR]
        [--num_latents=8] [--decodes_per_latent=8] [--num_reconstructions=8] [--decodes_per_image=8]
        [--num_gibbs_sweeps=50000] [--seed=0] [--sampler=cached|naive]

Writes into --output_dir (default <workdir>/samples/):
  prior_samples.png           one row per prior latent (RBM: block Gibbs; Gaussian: N(0, I)), its decodes across
  prior_samples_sorted.png    the same rows ordered by energy distance (Figure 7's arrangement)
  reconstructions.png         one row per test image: the image, then decodes of one z ~ q(z | x)
  reconstructions_sorted.png  the same rows ordered by energy distance (Figure 4's arrangement)
  samples.npz                 the latents, the images (uint8 data space: {0, 1} binary, 0..255 RGB), the orders
  samples.json                the settings (with the sampler that ran) and where the parameters came from
Every file is written to a temporary file and renamed into place (samples.json last): an interrupted run (SIGTERM,
Ctrl-C: one line, exit status 75) leaves no partial file.
Prior 'none' (plain PixelCNN++): only the prior_samples grids (rows are plain samples). Uses the EMA parameters,
dropout off. See pvpp/generation/sample.py for the procedure. Several processes (`--coordinator_address`, ...) share the
decoding, one batch per device, and process 0 writes the files: the same files as one process.
"""

from __future__ import annotations

import json
import os
import time

import jax
from absl import app, flags, logging

from pvpp import data
from pvpp.evaluation import evaluate
from pvpp.experiments import config_flags, inference_common, processes
from pvpp.experiments.errors import exit_on_stopping_errors, quiet_orbax_logs
from pvpp.generation import sample
from pvpp.model import to_model_space
from pvpp.parallel import distributed
from pvpp.priors import make_prior
from pvpp.runs.results import atomic_write_bytes

FLAGS = flags.FlagValues()

inference_common.define_source_flags(FLAGS)
processes.define_flags(FLAGS)
flags.DEFINE_string("output_dir", None, "Where the figures go; default <workdir>/samples.", flag_values=FLAGS)
_SPECS = config_flags.flag_specs(sample.SampleConfig)
config_flags.define(_SPECS, FLAGS)


def sample_config_from_flags(flag_values: flags.FlagValues = FLAGS) -> sample.SampleConfig:
    """The flags as a frozen SampleConfig; app.UsageError naming the flag for a bad value."""
    if flag_values.split not in data.SPLITS:
        raise app.UsageError(f"--split must be one of {data.SPLITS}, got {flag_values.split!r}")
    try:
        return config_flags.build(sample.SampleConfig, config_flags.flag_values_by_path(_SPECS, flag_values))
    except (ValueError, TypeError) as err:
        raise app.UsageError(f"--{err}") from err


def main(argv: list[str]) -> None:
    """absl main (`python -m ...`): runs for the parsed FLAGS (one line, not a traceback, for a stopping error)."""
    quiet_orbax_logs()
    processes.start(FLAGS)  # before anything touches a device
    exit_on_stopping_errors(execute, argv)


def execute(argv: list[str]) -> dict[str, str]:
    """Writes the figures for the parsed FLAGS; returns {name: path}."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = sample_config_from_flags(FLAGS)
    source = inference_common.load_source(FLAGS)
    model_config, params = source.model.config, source.model.params
    output_dir = FLAGS.output_dir or os.path.join(inference_common.results_dir(FLAGS), "samples")
    inputs, indices = None, None
    if config.num_reconstructions and make_prior(model_config).num_latents:
        split_data = evaluate.load_split(source.dataset, config.split, **source.data_options)
        if tuple(split_data.images.shape[1:]) != model_config.image_shape:
            raise app.UsageError(
                f"--dataset {source.dataset} has images {split_data.images.shape[1:]}, the model {model_config.image_shape}"
            )
        if config.num_reconstructions > len(split_data):
            raise app.UsageError(
                f"--num_reconstructions ({config.num_reconstructions}) exceeds the {len(split_data)} images of --split"
            )
        indices = evaluate.select_examples(len(split_data), config.num_reconstructions, config.seed)
        inputs, _ = evaluate.evaluation_images(split_data, indices, config.seed)

    start = time.perf_counter()
    root = jax.random.key(config.seed)
    prior = sample.generate_from_prior(model_config, params, root, config, across_processes=True)
    logging.info(
        "prior samples: %d x %d in %.1f s (%s sampler)",
        config.num_latents,
        config.decodes_per_latent,
        time.perf_counter() - start,
        config.sampler,
    )
    reconstructions = None
    if inputs is not None:
        reconstructions = sample.reconstruct(
            model_config, params, to_model_space(model_config, inputs), root, config, across_processes=True
        )
    if not distributed.is_primary():
        return {}  # the processes shared the decoding and all hold every image; process 0 writes them
    extra = {} if indices is None else {"reconstruction_example_indices": indices}
    paths = sample.save_figures(
        output_dir,
        model_config,
        prior=prior,
        reconstructions=reconstructions,
        inputs=inputs,
        upscale=config.upscale,
        extra_arrays=extra,
    )
    paths["settings"] = os.path.join(output_dir, "samples.json")
    settings = {
        "dataset": source.dataset,
        "parameters": source.model.source,
        "settings": config.to_dict(),
        "model": model_config.to_dict(),
    }
    # Written last, like every file here to a temporary file first and renamed: an interrupted run leaves the
    # previous samples.json (or none), never a partial one.
    atomic_write_bytes(paths["settings"], (json.dumps(settings, indent=2) + "\n").encode("utf-8"))
    print(
        f"wrote {', '.join(sorted(paths.values()))} in {time.perf_counter() - start:.1f} s ({config.sampler} sampler)"
    )
    return paths


def run(argv: list[str]) -> dict[str, str]:
    """Parses argv (argv[0] is the program name) and runs: the in-process equivalent of the command."""
    return execute(inference_common.parse_flags(FLAGS, argv, __doc__))


if __name__ == "__main__":
    app.run(main, flags_parser=lambda argv: inference_common.parse_flags(FLAGS, argv, __doc__))
