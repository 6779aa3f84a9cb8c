"""The flags shared by the training entry points, and the one function that turns them into frozen configs.

An entry point (`pvpp.experiments.mnist`, `omniglot`, `caltech101`, `cifar10`) states what differs for its
data set - the data set names it accepts and the paper's model configuration, which gives the model flags
their defaults - and calls `launch`:

    python -m pvpp.experiments.caltech101 --flagfile=experiments/caltech101_cpu.flags \
        --workdir=/tmp/pvpp_caltech

Every other default lives in the flag definitions below, taken from the dataclass defaults of `TrainConfig`,
`OptimConfig` and `AISConfig`. `configs_from_flags` validates the flags (each error names its flag) before
anything is written; `main` then hands the configs to `pvpp.training.loop.train_and_evaluate`. Below this module only
explicit values travel: nothing under pvpp/ except pvpp/experiments reads flags.

The same command on the same --workdir resumes the run. Flags of FIXED settings (`pvpp.settings`: the model, the
data, --batch_size, --seed, the RBM's chains) must keep their recorded values; CHANGEABLE ones (learning rate,
optimizer, negative phase effort, evaluation, periods, length) may change with --allow_changed_settings, and the
run records the change (`SETTING_FLAGS` names the flag of every recorded setting). SIGTERM or Ctrl-C finish the
current step, save its checkpoint and end the command with one line and exit status 75
(`pvpp.stopping.STOPPED_EXIT_STATUS`); the same command resumes from there.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Sequence

import jax
from absl import app, flags

from pvpp import data
from pvpp.experiments import processes
from pvpp.experiments.errors import exit_on_stopping_errors, quiet_orbax_logs
from pvpp.model import PRIORS, ModelConfig
from pvpp.optim import OptimConfig
from pvpp.priors import AISConfig
from pvpp.priors.base import NEGATIVE_PHASES
from pvpp.training.config import DataConfig, TrainConfig
from pvpp.training.loop import train_and_evaluate

FLAGS = flags.FLAGS
#: The entry point (`python -m pvpp.experiments.<name>`) that trains each data set.
ENTRY_POINT_OF_DATASET = {
    "mnist": "mnist",
    "binarized_mnist": "mnist",
    "caltech101_silhouettes": "caltech101",
    "omniglot": "omniglot",
    "cifar10": "cifar10",
}

# Model flags: name -> help. Their defaults come from the entry point's paper configuration.
_MODEL_FLAGS = {
    "prior": "latent prior: " + ", ".join(PRIORS) + " ('none' = plain PixelCNN++)",
    "tau": "temperature of the Gumbel-sigmoid relaxation",
    "nr_resnet": "gated ResNet blocks per resolution of the PixelCNN++ decoder",
    "nr_filters": "channels of the decoder",
    "nr_logistic_mix": "components of the discretized logistic mixture (RGB data)",
    "dropout_rate": "dropout in the gated ResNets",
    "downsample": "three resolutions in the decoder (False: one, as for Caltech-101)",
    "num_concat_latents": "size of z1 (concatenated latents)",
    "num_cond_latents": "size of z2 (conditioning latents)",
    "shared_latents_per_layer": "size of each z3 group (one per down-path output)",
    "rbm_num_left": "latents on the RBM's left side (the first ones of [z1, z2, z3])",
    "encoder_filters": "channels of the z1 / z2 encoders and of f(z1)",
    "latent_map_channels": "channels of each f(z3) map",
    "rbm_init_scale": "standard deviation of the initial RBM weights",
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


#: The flag that sets each entry of config.json (`pvpp.training.resume` paths): a refused resume, a recorded
#: change and a setting that does not fit name the flag. Model flags are named as the ModelConfig fields.
SETTING_FLAGS = {
    "data.name": "dataset",
    "data.data_dir": "data_dir",
    "data.train_split": "train_split",
    "data.eval_split": "eval_split",
    "data.variant": "data_variant",
    "data.validation_size": "validation_size",
    "num_devices": "num_devices",
    "train.num_devices": "num_devices",
    **{
        f"train.{name}": name
        for name in (
            "batch_size", "num_steps", "num_epochs", "seed", "init_batch_size", "negative_phase", "num_chains",
            "sweeps_per_step", "log_every", "eval_every", "eval_examples", "eval_batch_size", "eval_grids",
            "checkpoint_every", "keep_checkpoints",
        )
    },
    **{
        f"train.optim.{name}": name
        for name in ("learning_rate", "adam_b1", "adam_b2", "ema_decay", "grad_clip_norm", "kl_warmup_steps", "kl_start")
    },
    "train.optim.lr_decay_per_step": "lr_decay",
    "train.negative_ais.num_chains": "negative_ais_chains",
    "train.negative_ais.num_betas": "negative_ais_betas",
    "train.log_z_ais.num_chains": "ais_chains",
    "train.log_z_ais.num_betas": "ais_betas",
    **{f"model.{name}": name for name in _MODEL_FLAGS},
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
    train = _defaults(TrainConfig)
    optim = _defaults(OptimConfig)
    negative_ais, log_z_ais = train["negative_ais"], train["log_z_ais"]
    model = dataclasses.asdict(model_defaults)
    fv = dict(flag_values=flag_values)
    processes.define_flags(flag_values)

    # Run and data.
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
    flags.DEFINE_string(
        "data_dir",
        os.environ.get("PVPP_DATA_DIR") or None,
        "folder with the original data files (default: env PVPP_DATA_DIR)",
        **fv,
    )
    flags.DEFINE_string(
        "dataset",
        datasets[0],
        f"data set: {', '.join(datasets)} (every flag file states its own; another entry point's is refused)",
        **fv,
    )

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
    if "omniglot" in datasets:
        flags.DEFINE_enum(
            "data_variant",
            None,
            ["chardata", "resized_105"],
            "omniglot source: the 28x28 chardata.mat, or the 105x105 originals resized "
            "(default: chardata when present)",
            **fv,
        )
    flags.DEFINE_enum("train_split", "train", data.SPLITS, "split to train on", **fv)
    flags.DEFINE_enum("eval_split", "test", data.SPLITS, "split of the periodic evaluation", **fv)
    flags.DEFINE_integer(
        "validation_size",
        None,
        "images held out of train as the validation split (default: the loader's; see pvpp.data.load)",
        lower_bound=0,
        **fv,
    )

    # Length, batch, devices.
    flags.DEFINE_integer(
        "batch_size", train["batch_size"], "global batch (all devices together)", lower_bound=1, **fv
    )
    flags.DEFINE_integer(
        "num_steps", train["num_steps"], "optimizer steps of the whole run", lower_bound=1, **fv
    )
    flags.DEFINE_integer(
        "num_epochs", None, "train for this many epochs instead of --num_steps", lower_bound=1, **fv
    )
    flags.DEFINE_integer(
        "num_devices", None, "devices to use, over all processes (default: all)", lower_bound=1, **fv
    )
    flags.DEFINE_integer("seed", train["seed"], "root of every random stream", lower_bound=0, **fv)
    flags.DEFINE_integer(
        "init_batch_size",
        None,
        "images for the data-dependent init (default: --batch_size)",
        lower_bound=1,
        **fv,
    )

    # Optimizer.
    flags.DEFINE_float("learning_rate", optim["learning_rate"], "Adam step size", lower_bound=0.0, **fv)
    flags.DEFINE_float("lr_decay", optim["lr_decay_per_step"], "learning-rate decay per step", **fv)
    flags.DEFINE_float("adam_b1", optim["adam_b1"], "Adam beta1", **fv)
    flags.DEFINE_float("adam_b2", optim["adam_b2"], "Adam beta2", **fv)
    flags.DEFINE_float("ema_decay", optim["ema_decay"], "Polyak / EMA decay of the parameters", **fv)
    flags.DEFINE_float(
        "grad_clip_norm",
        optim["grad_clip_norm"],
        "clip gradients to this global norm (default: no clipping)",
        **fv,
    )
    flags.DEFINE_integer(
        "kl_warmup_steps", optim["kl_warmup_steps"], "steps of the linear KL warm-up", lower_bound=0, **fv
    )
    flags.DEFINE_float("kl_start", optim["kl_start"], "KL weight at step 0", **fv)

    # Model.
    for name, help_text in _MODEL_FLAGS.items():
        default = model[name]
        if name == "prior":
            flags.DEFINE_enum(name, default, PRIORS, help_text, **fv)
        elif isinstance(default, bool):
            flags.DEFINE_boolean(name, default, help_text, **fv)
        elif isinstance(default, int):
            minimum = (
                1
                if name
                in ("nr_resnet", "nr_filters", "nr_logistic_mix", "encoder_filters", "latent_map_channels")
                else 0
            )
            flags.DEFINE_integer(name, default, help_text, lower_bound=minimum, **fv)
        else:
            flags.DEFINE_float(name, default, help_text, **fv)

    # RBM negative phase and AIS.
    flags.DEFINE_enum(
        "negative_phase",
        train["negative_phase"],
        NEGATIVE_PHASES,
        "RBM negative phase: persistent chains (pcd) or fresh AIS samples every step (ais)",
        **fv,
    )
    flags.DEFINE_integer("num_chains", train["num_chains"], "persistent chains (pcd)", lower_bound=1, **fv)
    flags.DEFINE_integer(
        "sweeps_per_step",
        train["sweeps_per_step"],
        "Gibbs sweeps of the chains per step",
        lower_bound=0,
        **fv,
    )
    flags.DEFINE_integer(
        "negative_ais_chains",
        negative_ais.num_chains,
        "AIS chains of the ais negative phase",
        lower_bound=1,
        **fv,
    )
    flags.DEFINE_integer(
        "negative_ais_betas",
        negative_ais.num_betas,
        "AIS temperatures of the ais negative phase",
        lower_bound=2,
        **fv,
    )
    flags.DEFINE_integer(
        "ais_chains", log_z_ais.num_chains, "AIS chains for log Z at each evaluation", lower_bound=1, **fv
    )
    flags.DEFINE_integer(
        "ais_betas", log_z_ais.num_betas, "AIS temperatures for log Z at each evaluation", lower_bound=2, **fv
    )

    # Periods.
    flags.DEFINE_integer(
        "log_every", train["log_every"], "steps between progress lines / train metrics", lower_bound=1, **fv
    )
    flags.DEFINE_integer("eval_every", train["eval_every"], "steps between evaluations", lower_bound=1, **fv)
    flags.DEFINE_integer(
        "eval_examples", train["eval_examples"], "images of the evaluation subset", lower_bound=1, **fv
    )
    flags.DEFINE_integer(
        "eval_batch_size", None, "evaluation batch (default: --batch_size)", lower_bound=1, **fv
    )
    flags.DEFINE_integer(
        "eval_grids",
        train["eval_grids"],
        "images in the sample and reconstruction grids written to TensorBoard at each evaluation (0: none)",
        lower_bound=0,
        **fv,
    )
    flags.DEFINE_integer(
        "checkpoint_every", train["checkpoint_every"], "steps between checkpoints", lower_bound=1, **fv
    )
    flags.DEFINE_integer(
        "keep_checkpoints", train["keep_checkpoints"], "checkpoints kept", lower_bound=1, **fv
    )


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
        if f.num_devices % count:
            raise app.UsageError(f"--num_devices={f.num_devices} is not divisible by the {count} processes")
    if f.num_devices is not None and f.batch_size % f.num_devices:
        raise app.UsageError(f"--batch_size={f.batch_size} is not divisible by --num_devices={f.num_devices}")
    model_values = {name: f[name].value for name in _MODEL_FLAGS}
    try:
        model_config = model_defaults.replace(**model_values)
    except ValueError as err:
        raise app.UsageError(f"model flags: {err}") from err
    try:
        optim = OptimConfig(
            learning_rate=f.learning_rate,
            lr_decay_per_step=f.lr_decay,
            adam_b1=f.adam_b1,
            adam_b2=f.adam_b2,
            grad_clip_norm=f.grad_clip_norm,
            ema_decay=f.ema_decay,
            kl_warmup_steps=f.kl_warmup_steps,
            kl_start=f.kl_start,
        )
        train_config = TrainConfig(
            batch_size=f.batch_size,
            num_steps=None if f.num_epochs is not None else f.num_steps,
            num_epochs=f.num_epochs,
            num_devices=f.num_devices,
            seed=f.seed,
            optim=optim,
            negative_phase=f.negative_phase,
            num_chains=f.num_chains,
            sweeps_per_step=f.sweeps_per_step,
            negative_ais=AISConfig(num_chains=f.negative_ais_chains, num_betas=f.negative_ais_betas),
            log_z_ais=AISConfig(num_chains=f.ais_chains, num_betas=f.ais_betas),
            init_batch_size=f.init_batch_size,
            log_every=f.log_every,
            eval_every=f.eval_every,
            eval_examples=f.eval_examples,
            eval_batch_size=f.eval_batch_size,
            eval_grids=f.eval_grids,
            checkpoint_every=f.checkpoint_every,
            keep_checkpoints=f.keep_checkpoints,
        )
    except ValueError as err:
        raise app.UsageError(f"training flags: {err}") from err
    if train_config.num_devices is None and train_config.batch_size % jax.device_count():
        raise app.UsageError(
            f"--batch_size={f.batch_size} is not divisible by the {jax.device_count()} devices (set --num_devices)"
        )
    num_devices = train_config.num_devices or jax.device_count()
    if f.eval_batch_size is not None and f.eval_batch_size % num_devices:
        raise app.UsageError(
            f"--eval_batch_size={f.eval_batch_size} is not divisible by the {num_devices} devices"
        )
    data_config = DataConfig(
        name=f.dataset,
        data_dir=None if f.data_dir is None else os.path.abspath(os.path.expanduser(f.data_dir)),
        train_split=f.train_split,
        eval_split=f.eval_split,
        variant=f.data_variant if "data_variant" in f else None,
        validation_size=f.validation_size,
    )
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


def _defaults(cls) -> dict:
    """A dataclass's field defaults: the single source of the flags' defaults."""
    return {field.name: field.default for field in dataclasses.fields(cls)}
