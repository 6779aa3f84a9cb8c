"""The flags shared by the training entry points, and the one function that turns them into frozen configs.

An entry point (`pvpp.experiments.mnist`, `omniglot`, `caltech101`, `cifar10`) states what differs for its
data set - the data set names it accepts and the paper's model configuration, which gives the model flags
their defaults - and calls `launch`:

    python -m pvpp.experiments.caltech101 --flagfile=experiments/caltech101_cpu.flags \
        --workdir=/tmp/pvpp_caltech

Every other flag is derived from a field of `TrainConfig` (with its `OptimConfig` and `AISConfig`), `DataConfig` or
`ModelConfig` by `pvpp.experiments.config_flags`: its name, default, help and bounds are declared once, on the field.
`configs_from_flags` validates the flags (each error names its flag) before
anything is written; `main` then hands the configs to `pvpp.training.loop.train_and_evaluate`. Below this module only
explicit values travel: nothing under pvpp/ except pvpp/experiments reads flags.

The same command on the same --workdir resumes the run. Flags of FIXED settings (`pvpp.settings`: the model, the
data, --batch_size, --seed, the RBM's chains) must keep their recorded values; CHANGEABLE ones (learning rate,
optimizer, negative phase effort, evaluation, periods, length) may change with --allow_changed_settings, and the
run records the change (`SETTING_FLAGS` names the flag of every recorded setting). SIGTERM or Ctrl-C finish the
current step, save its checkpoint and end the command with one line and exit status 75
(`pvpp.runs.stopping.STOPPED_EXIT_STATUS`); the same command resumes from there.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Sequence

import jax
from absl import app, flags

from pvpp import data
from pvpp.experiments import config_flags, processes
from pvpp.experiments.errors import exit_on_stopping_errors, quiet_orbax_logs
from pvpp.model import ModelConfig
from pvpp.training.config import DataConfig, TrainConfig
from pvpp.training.loop import train_and_evaluate
from pvpp.validation import check_divisible

FLAGS = flags.FLAGS
#: The entry point (`python -m pvpp.experiments.<name>`) that trains each data set.
ENTRY_POINT_OF_DATASET = {
    "mnist": "mnist",
    "binarized_mnist": "mnist",
    "caltech101_silhouettes": "caltech101",
    "omniglot": "omniglot",
    "cifar10": "cifar10",
}

def launch(datasets: Sequence[str], model_defaults: ModelConfig) -> None:
    """Defines the flags on the global FLAGS and runs `main` under absl (what `python -m ...` calls)."""
    define_flags(datasets, model_defaults)
    app.run(functools.partial(main, model_defaults=model_defaults))


def main(argv: Sequence[str], *, model_defaults: ModelConfig) -> None:
    """absl main: extra positional arguments are an error; then flags -> configs -> train_and_evaluate."""
    if len(argv) > 1:
        raise app.UsageError(
            f"unexpected positional arguments: {' '.join(argv[1:])} (only --flags are accepted)"
        )
    quiet_orbax_logs()
    processes.start(FLAGS)  # before anything touches a device
    exit_on_stopping_errors(_train, model_defaults)


def _train(model_defaults: ModelConfig) -> None:
    model_config, train_config, data_config, workdir = configs_from_flags(FLAGS, model_defaults)
    train_and_evaluate(
        model_config,
        train_config,
        data_config,
        workdir,
        allow_changed_settings=FLAGS.allow_changed_settings,
        setting_names=SETTING_NAMES,
    )



def _train_specs() -> list[config_flags.FlagSpec]:
    """The flags of TrainConfig's fields (nested ones flattened, e.g. --lr_decay, --ais_betas)."""
    return config_flags.flag_specs(TrainConfig)


def _data_specs() -> list[config_flags.FlagSpec]:
    return config_flags.flag_specs(DataConfig)


def _model_specs(model_defaults: ModelConfig) -> list[config_flags.FlagSpec]:
    """The model flags: ModelConfig's described fields, defaults from the entry point's paper configuration (the
    image shape and likelihood are the data set's, not flags)."""
    return config_flags.flag_specs(ModelConfig, model_defaults)


#: The flag that sets each entry of config.json (`pvpp.training.resume` paths): a refused resume, a recorded
#: change and a setting that does not fit name the flag. Model flags are named as the ModelConfig fields.
SETTING_FLAGS = {
    **{"data." + ".".join(spec.path): spec.name for spec in _data_specs()},
    "num_devices": "num_devices",
    "micro_batches": "micro_batches",
    **{"train." + ".".join(spec.path): spec.name for spec in _train_specs()},
    **{"model." + ".".join(spec.path): spec.name for spec in _model_specs(ModelConfig())},
}
#: How the training command's messages name the settings and its own arguments ('--flag').
SETTING_NAMES = {
    **{path: f"--{flag}" for path, flag in SETTING_FLAGS.items()},
    "workdir": "--workdir",
    "allow_changed_settings": "--allow_changed_settings",
}


def define_flags(
    datasets: Sequence[str], model_defaults: ModelConfig, flag_values: flags.FlagValues = FLAGS
) -> None:
    """Defines every training flag on `flag_values` (a fresh `flags.FlagValues()` in tests).

    datasets: the `pvpp.data.DATASET_NAMES` the entry point accepts; with more than one, `--dataset` chooses
    (default: the first). model_defaults: the paper's configuration for these data (image shape, likelihood
    and the defaults of the model flags).
    """
    datasets = tuple(datasets)
    unknown = [name for name in datasets if name not in data.DATASET_NAMES]
    if not datasets or unknown:
        raise ValueError(f"datasets must be names of pvpp.data.DATASET_NAMES, got {datasets}")
    fv = dict(flag_values=flag_values)
    processes.define_flags(flag_values)
    flags.DEFINE_string(
        "workdir", None, "directory of the run: config.json, metrics.jsonl, checkpoints/", **fv
    )
    flags.mark_flag_as_required("workdir", flag_values=flag_values)
    flags.DEFINE_boolean(
        "allow_changed_settings",
        False,
        "resume a run with changed learning-rate, optimizer, negative-phase, evaluation, period or length flags "
        "(without it such a resume is refused); config.json then records the settings of every segment with the "
        "step it started from, and metrics.jsonl / TensorBoard note the change at that step. The model, data, "
        "batch, seed and the RBM's chains can never change on resume",
        **fv,
    )
    data_specs = [
        dataclasses.replace(
            spec,
            help=f"{spec.help}: {', '.join(datasets)} (every flag file states its own; another entry point's is refused)",
        )
        if spec.name == "dataset"
        else spec
        for spec in _data_specs()
        if spec.name != "data_variant" or "omniglot" in datasets
    ]
    data_defaults = {"dataset": datasets[0], "data_dir": os.environ.get("PVPP_DATA_DIR") or None}
    config_flags.define(data_specs, flag_values, defaults=data_defaults)

    def check_dataset(name: str) -> bool:
        if name in datasets:
            return True
        other = ENTRY_POINT_OF_DATASET.get(name)
        hint = f"; it is trained by python -m pvpp.experiments.{other}" if other else ""
        raise flags.ValidationError(
            f"{name} (from the command line or a flag file) is not a data set of this entry point, which "
            f"trains {', '.join(datasets)}{hint}"
        )

    flags.register_validator("dataset", check_dataset, flag_values=flag_values)
    config_flags.define(_train_specs(), flag_values)
    config_flags.define(_model_specs(model_defaults), flag_values)


def configs_from_flags(
    flag_values: flags.FlagValues, model_defaults: ModelConfig
) -> tuple[ModelConfig, TrainConfig, DataConfig, str]:
    """The one place where flags become configs: (ModelConfig, TrainConfig, DataConfig, workdir).

    model_defaults: the entry point's paper configuration; the model flags replace its fields (the image shape
    and likelihood are the data set's, not flags). Raises app.UsageError naming the flag for values that are
    individually valid but do not fit together or with this machine (batch vs devices, a missing data
    directory, an inconsistent model).
    """
    f = flag_values
    if f.data_dir is not None and not os.path.isdir(os.path.expanduser(f.data_dir)):
        raise app.UsageError(
            f"--data_dir={f.data_dir} is not a directory (set --data_dir or PVPP_DATA_DIR to the data folder)"
        )
    _check_writable_workdir(f.workdir)
    if f.num_epochs is not None and f["num_steps"].present:
        raise app.UsageError("--num_steps and --num_epochs are exclusive: give one")
    if f.num_devices is not None:
        available, count = jax.device_count(), jax.process_count()  # devices of every process
        where = "local devices" if count == 1 else f"devices of the {count} processes"
        if f.num_devices > available:
            raise app.UsageError(
                f"--num_devices={f.num_devices} exceeds the {available} {where}; pass --num_devices="
                f"{available} (the batch is global, so the update is the same), or on a CPU set "
                f"XLA_FLAGS=--xla_force_host_platform_device_count={f.num_devices // count}"
            )
    num_devices = f.num_devices or jax.device_count()
    devices = "devices" if f.num_devices else "devices (set --num_devices)"
    try:
        if f.num_devices is not None:
            check_divisible(f.num_devices, "--num_devices", jax.process_count(), "processes")
        for name in ("batch_size", "eval_batch_size"):
            if f[name].value is not None:
                check_divisible(f[name].value, f"--{name}", num_devices, devices)
    except ValueError as err:
        raise app.UsageError(str(err)) from err
    model_specs = _model_specs(model_defaults)
    try:
        model_config = config_flags.build(
            ModelConfig, config_flags.flag_values_by_path(model_specs, f), model_defaults
        )
    except ValueError as err:
        raise app.UsageError(f"model flags: {err}") from err
    train_values = config_flags.flag_values_by_path(_train_specs(), f)
    if f.num_epochs is not None:
        train_values[("num_steps",)] = None
    try:
        train_config = config_flags.build(TrainConfig, train_values)
    except ValueError as err:
        raise app.UsageError(f"training flags: {err}") from err
    data_values = config_flags.flag_values_by_path(_data_specs(), f)
    if f.data_dir is not None:
        data_values[("data_dir",)] = os.path.abspath(os.path.expanduser(f.data_dir))
    data_config = config_flags.build(DataConfig, data_values)
    return model_config, train_config, data_config, os.path.abspath(os.path.expanduser(f.workdir))


def _check_writable_workdir(workdir: str) -> None:
    """UsageError unless `workdir` is (or can be created as) a directory this process can write."""
    path = os.path.abspath(os.path.expanduser(workdir))
    if os.path.exists(path) and not os.path.isdir(path):
        raise app.UsageError(f"--workdir={workdir} exists and is not a directory")
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise app.UsageError(f"--workdir={workdir} cannot be created: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise app.UsageError(f"--workdir={workdir}: {existing} is not writable by this user")

