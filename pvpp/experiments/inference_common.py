"""What the evaluation and sampling programs share: where the parameters and the data come from, flag parsing.

Both programs keep their flags in their own `flags.FlagValues` (not absl's global FLAGS), so that they can be
imported together, and with the training entry points, in one process (tests call their `main` in-process).
`parse_flags` reads this program's flags, then hands the rest to absl's global parser (--help, --verbosity,
unknown flags).
"""

from __future__ import annotations

import os
import sys
from typing import Any, NamedTuple

from absl import app, flags

from pvpp import data
from pvpp.inference import load_model, LoadedModel
from pvpp.runs import checkpoint, workdir as workdir_files


class Source(NamedTuple):
    """The loaded parameters and the data options, resolved from the flags."""

    model: LoadedModel
    dataset: str
    data_options: dict[str, Any]  # data_dir, variant, validation_size for `evaluate.load_split`


def define_source_flags(flag_values: flags.FlagValues) -> None:
    """--workdir, --checkpoint, --dataset, --data_dir."""
    flags.DEFINE_string(
        "workdir",
        None,
        "Training workdir (config.json, checkpoints/, ema_params/); results go under it unless told otherwise.",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "checkpoint",
        None,
        "Exported parameter directory (checkpoint.export_params, e.g. <workdir>/ema_params) to use instead of "
        "the workdir's newest EMA parameters.",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "dataset",
        None,
        "Data set name; default: the one the workdir's run was trained on.",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "data_dir",
        None,
        "Folder of the original data files; default: the run's, else env PVPP_DATA_DIR.",
        flag_values=flag_values,
    )
    flags.DEFINE_bool(
        "allow_other_dataset",
        False,
        "Accept a --dataset other than the one the run was trained on (refused by default).",
        flag_values=flag_values,
    )


def load_source(flag_values: flags.FlagValues) -> Source:
    """Checks --workdir / --checkpoint / --dataset and loads the parameters; app.UsageError naming the flag."""
    workdir, checkpoint_path = flag_values.workdir, flag_values.checkpoint
    if not workdir and not checkpoint_path:
        raise app.UsageError(
            "--workdir is required (a training run), unless --checkpoint gives an exported parameter directory"
        )
    if checkpoint_path is None and not os.path.isdir(workdir):
        raise app.UsageError(f"--workdir={workdir} does not exist (and no --checkpoint was given)")
    if checkpoint_path is not None and not os.path.isdir(checkpoint_path):
        raise app.UsageError(f"--checkpoint={checkpoint_path} does not exist")
    try:
        model = load_model(
            workdir if workdir and os.path.isdir(workdir) else None, checkpoint_path
        )
    except workdir_files.UnreadableConfigError as err:
        raise app.UsageError(f"--workdir: {err}") from err
    except (
        FileNotFoundError,
        checkpoint.CorruptCheckpointError,
        checkpoint.UnreadableCheckpointError,
        workdir_files.WorkdirConflictError,
    ) as err:
        flag = "--checkpoint" if checkpoint_path is not None else "--workdir"
        raise app.UsageError(f"{flag}: {err}") from err
    run_data = dict(model.data or {})
    dataset = flag_values.dataset or run_data.get("name")
    if dataset is None:
        raise app.UsageError(
            "--dataset is required: the parameters do not say which data set they were trained on"
        )
    if dataset not in data.DATASET_NAMES:
        raise app.UsageError(f"--dataset must be one of {sorted(data.DATASET_NAMES)}, got {dataset!r}")
    trained_on = run_data.get("name")
    if trained_on is not None and dataset != trained_on and not flag_values.allow_other_dataset:
        raise app.UsageError(
            f"--dataset={dataset} is not the data set the parameters were trained on ({trained_on}); "
            "pass --allow_other_dataset to use them on it anyway"
        )
    same_data = dataset == trained_on
    data_options = dict(
        data_dir=flag_values.data_dir or (run_data.get("data_dir") if same_data else None),
        variant=run_data.get("variant") if same_data else None,
        validation_size=run_data.get("validation_size") if same_data else None,
    )
    return Source(model, dataset, data_options)


def results_dir(flag_values: flags.FlagValues) -> str:
    """Where results go by default: the --workdir, else the folder that holds the --checkpoint directory."""
    if flag_values.workdir:
        return flag_values.workdir
    return os.path.dirname(os.path.abspath(flag_values.checkpoint))


def parse_flags(flag_values: flags.FlagValues, argv: list[str], doc: str) -> list[str]:
    """Parses this program's flags from argv; the rest goes to absl's global flags. Returns the leftover argv."""
    if any(arg in ("-h", "--help", "-help", "--helpshort", "--helpfull") for arg in argv[1:]):
        print(doc)
        print(flag_values.get_help())
        sys.exit(0)
    flag_values.unparse_flags()  # a second in-process run starts from the defaults
    try:
        rest = flag_values(argv, known_only=True)
    except flags.Error as err:
        sys.stderr.write(f"FATAL Flags parsing error: {err}\nPass --help to see the flags.\n")
        sys.exit(1)
    return app.parse_flags_with_usage(rest)
