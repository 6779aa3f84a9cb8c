"""Test-set evaluation of a trained PixelVAE++ (the paper's Table 1): IWAE log-likelihood, log Z by AIS, KL.

    python -m pvpp.experiments.evaluate --workdir=WORKDIR [--split=test] [--num_importance_samples=1000]
        [--checkpoint=EXPORT_DIR] [--num_examples=N] [--seed=0] [--ais_preset=cpu|paper] [--output=results.json]

Uses the workdir's EMA parameters (or --checkpoint), dropout off. Writes a JSON summary (nats per image; RGB
also bits/dim; log Z from forward and reverse AIS and the log-likelihood bounds they imply; every setting used)
and the per-image values (.npz, named in the JSON) to --output, by default
<workdir>/eval/<dataset>_<split>_k<k>[_n<num_examples>]_seed<seed>_<parameters>.json, where <parameters> is
step<N> for a workdir's parameters and params-<digest> for an export given with --checkpoint. An existing
result with other content is never replaced unless --overwrite is given. See pvpp/evaluation/evaluate.py for the method
and the conventions (fixed binarization of dynamically binarized test sets, key streams, subsets).
"""

from __future__ import annotations

import dataclasses
import math
import os
import shlex
import sys
import time

from absl import app, flags, logging

from pvpp.evaluation import evaluate
from pvpp.experiments import config_flags, inference_common, processes
from pvpp.experiments.errors import exit_on_stopping_errors, quiet_orbax_logs
from pvpp.parallel import distributed
from pvpp.priors.ais import PRESETS as AIS_PRESETS
from pvpp.runs import results
from pvpp.runs.integrity import tree_digest

FLAGS = flags.FlagValues()

inference_common.define_source_flags(FLAGS)
processes.define_flags(FLAGS)
flags.DEFINE_string(
    "output",
    None,
    "JSON file for the results (the .npz of per-image values goes next to it).",
    flag_values=FLAGS,
)
#: The EvalConfig flags; bad values are refused by EvalConfig / AISConfig (a UsageError naming the flag), not by
#: flag bounds. Unset, --chunk_size is derived from k and each --ais_* flag keeps the --ais_preset's value.
_SPECS = [dataclasses.replace(spec, minimum=None) for spec in config_flags.flag_specs(evaluate.EvalConfig)]
_UNSET_BY_DEFAULT = ["chunk_size"] + [spec.name for spec in _SPECS if spec.path[0] == "ais"]
config_flags.define(_SPECS, FLAGS, defaults=dict.fromkeys(_UNSET_BY_DEFAULT))
flags.DEFINE_enum(
    "ais_preset",
    "cpu",
    list(AIS_PRESETS),
    "AIS effort: 'cpu' (1000 chains x 10,000 temperatures x 1 sweep, forward and reverse) or 'paper' (50,000 x "
    "10,000 x 50, for a GPU); the --ais_* flags override single settings of it.",
    flag_values=FLAGS,
)
flags.DEFINE_bool(
    "overwrite", False, "Replace an existing result file that holds another result.", flag_values=FLAGS
)
flags.DEFINE_bool("progress", True, "Show a progress bar over the images.", flag_values=FLAGS)


def eval_config_from_flags(flag_values: flags.FlagValues = FLAGS) -> evaluate.EvalConfig:
    """The flags as a frozen EvalConfig; app.UsageError naming the flag for a bad value."""
    k = flag_values.num_importance_samples
    if k < 1:
        raise app.UsageError(f"--num_importance_samples must be >= 1, got {k}")
    chunk = flag_values.chunk_size
    if chunk is None:
        chunk = evaluate.default_chunk_size(k)
    elif chunk < 1 or k % chunk:
        raise app.UsageError(f"--chunk_size ({chunk}) must be >= 1 and divide --num_importance_samples ({k})")
    values = config_flags.flag_values_by_path(_SPECS, flag_values, skip_none=True)
    values[("chunk_size",)] = chunk
    base = evaluate.EvalConfig(num_importance_samples=k, chunk_size=chunk, ais=AIS_PRESETS[flag_values.ais_preset])
    try:
        return config_flags.build(evaluate.EvalConfig, values, base)
    except (ValueError, TypeError) as err:
        if str(err).split(" ", 1)[0] in base.ais.to_dict():
            raise app.UsageError(f"--ais_{err}") from err  # the AIS messages start with the field name
        raise app.UsageError(f"--{err}") from err  # the messages start with the field (= flag) name


def default_output(workdir: str, dataset: str, config: evaluate.EvalConfig, parameters_id: str = "") -> str:
    """`<workdir>/eval/<dataset>_<split>_k<k>[_n<num_examples>]_seed<seed>[_<parameters_id>].json`."""
    subset = "" if config.num_examples is None else f"_n{config.num_examples}"
    suffix = f"_{parameters_id}" if parameters_id else ""
    name = f"{dataset}_{config.split}_k{config.num_importance_samples}{subset}_seed{config.seed}{suffix}.json"
    return os.path.join(workdir, "eval", name)


def parameters_id(source: dict, params, explicit_checkpoint: bool) -> str:
    """What was evaluated, for the file name: 'step<N>' for a workdir's parameters, 'params-<digest>' (12 hex
    digits of the parameters' integrity record) for an export named with --checkpoint or without a step."""
    step = source.get("step")
    if step is not None and not explicit_checkpoint:
        return f"step{int(step)}"
    return "params-" + tree_digest(params)[:12]


def main(argv: list[str]) -> None:
    """absl main (`python -m ...`): runs for the parsed FLAGS (one line, not a traceback, for a stopping error)."""
    quiet_orbax_logs()
    processes.start(FLAGS)  # before anything touches a device
    exit_on_stopping_errors(execute, argv, sys.argv)


def execute(argv: list[str], invocation: list[str]) -> dict:
    """Runs the evaluation for the parsed FLAGS; returns the summary that was written. argv: what flag parsing
    left (the program name only); invocation: the whole command line (program name first), recorded in the
    result as the command that made it."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = eval_config_from_flags(FLAGS)
    source = inference_common.load_source(FLAGS)
    try:
        evaluate.check_log_partition_method(source.model.config, config.log_partition)
    except ValueError as err:
        raise app.UsageError(f"--{err}") from err
    identity = parameters_id(source.model.source, source.model.params, FLAGS.checkpoint is not None)
    output = FLAGS.output or default_output(inference_common.results_dir(FLAGS), source.dataset, config, identity)
    results.check_replaceable(
        output, {"settings": config.to_dict(), "parameters_id": identity}, overwrite=FLAGS.overwrite
    )
    start = time.perf_counter()
    try:
        result = evaluate.evaluate_split(
            source.model.config,
            source.model.params,
            source.dataset,
            config,
            parameters=source.model.source,
            progress=FLAGS.progress,
            across_processes=True,  # every process runs this command: they share the work
            **source.data_options,
        )
    except ValueError as err:  # data that does not fit the settings (e.g. --num_examples beyond the split)
        raise app.UsageError(str(err)) from err
    if not distributed.is_primary():
        return result.summary  # every process has the results; process 0 writes them
    summary = {
        **result.summary,
        "ais_preset": FLAGS.ais_preset,
        "parameters_id": identity,
        "command": " ".join(["python -m pvpp.experiments.evaluate"] + [shlex.quote(a) for a in invocation[1:]]),
    }
    json_path, arrays_path = evaluate.write_results(output, summary, result.per_image, overwrite=FLAGS.overwrite)
    seconds = time.perf_counter() - start
    headline = result.summary["headline"]
    logging.info(
        "%s %s: NLL %s %s (%d images, %.1f s); wrote %s and %s",
        source.dataset,
        config.split,
        _fmt(headline["negative_log_likelihood"]),
        headline["units"],
        result.summary["num_images"],
        seconds,
        json_path,
        arrays_path,
    )
    print(_describe(summary, seconds, json_path))
    return summary


def run(argv: list[str]) -> dict:
    """Parses argv (argv[0] is the program name) and runs: the in-process equivalent of the command."""
    return execute(inference_common.parse_flags(FLAGS, argv, __doc__), list(argv))


def _describe(summary: dict, seconds: float, path: str) -> str:
    nats = summary["nats"]
    lines = [
        f"{summary['dataset']} / {summary['split']}: {summary['num_images']} images, "
        f"k = {summary['settings']['num_importance_samples']}, {seconds:.1f} s",
        f"  NLL {_fmt(nats['negative_log_likelihood'])} nats (+- {_fmt(nats['standard_error'])} s.e. over "
        f"images), -ELBO {_fmt(nats['negative_elbo'])}, KL {_fmt(nats['kl'])}, "
        f"reconstruction {_fmt(nats['reconstruction'])}",
    ]
    if "bits_per_dim" in summary:
        lines.append(f"  NLL {_fmt(summary['bits_per_dim']['negative_log_likelihood'])} bits/dim")
    if summary.get("log_partition"):
        log_z = summary["log_partition"]
        lines.append(
            f"  log Z forward AIS {_fmt(log_z['estimate'])} (spread [{_fmt(log_z['lower'])}, {_fmt(log_z['upper'])}])"
        )
        if log_z.get("reverse"):
            reverse = log_z["reverse"]
            low, high = nats["negative_log_likelihood_bounds"]
            lines.append(
                f"  log Z reverse AIS {_fmt(reverse['estimate'])} (from {reverse['start']} states)"
                f" -> NLL in [{_fmt(low)}, {_fmt(high)}] nats"
            )
    lines.append(f"  results: {path}")
    return "\n".join(lines)


def _fmt(value) -> str:
    return (
        "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.4f}"
    )


if __name__ == "__main__":
    app.run(main, flags_parser=lambda argv: inference_common.parse_flags(FLAGS, argv, __doc__))
