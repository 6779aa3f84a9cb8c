"""The frozen configurations of a training run: `TrainConfig`, `DataConfig`, and `StepConfig` (what the compiled
step reads, and so the key of the compiled-function cache)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

from pvpp import settings
from pvpp.data.catalog import DATASET_NAMES, SPLITS
from pvpp.nn import conv_forms as conv_forms_module
from pvpp.priors import AISConfig, NegativePhaseConfig
from pvpp.priors.base import NEGATIVE_PHASES
from pvpp.training.optim import OptimConfig
from pvpp.validation import check_choice, check_divisible, check_int


class SettingError(ValueError):
    """A setting that does not fit the data or the machine (the message names it)."""


@settings.check_classified
@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which data: a name of `pvpp.data.DATASET_NAMES`, the folder of the original files, the splits.

    data_dir: None means env PVPP_DATA_DIR (or downloads when that is unset too). variant: the loader's
    `config` (omniglot: 'chardata' or 'resized_105'; None: the loader's default). validation_size: see
    `pvpp.data.load`.
    """

    name: str = settings.setting(help="data set", flag="dataset")
    data_dir: str | None = settings.setting(None, "folder with the original data files (default: env PVPP_DATA_DIR)")
    train_split: str = settings.setting("train", "split to train on", choices=SPLITS)
    eval_split: str = settings.setting("test", "split of the periodic evaluation", choices=SPLITS)
    variant: str | None = settings.setting(
        None,
        "omniglot source: the 28x28 chardata.mat, or the 105x105 originals resized (default: chardata when present)",
        flag="data_variant",
        choices=("chardata", "resized_105"),
    )
    validation_size: int | None = settings.setting(
        None,
        "images held out of train as the validation split (default: the loader's; see pvpp.data.load)",
        minimum=0,
    )

    #: On resume (`pvpp.settings`): the training images are the run; the evaluation split may change; the folder
    #: of the originals is where they were found (the prepared copy is checksummed against the same originals).
    ON_RESUME: ClassVar[dict[str, str]] = {
        "name": settings.FIXED,
        "train_split": settings.FIXED,
        "variant": settings.FIXED,
        "validation_size": settings.FIXED,
        "eval_split": settings.CHANGEABLE,
        "data_dir": settings.RECORDED,
    }

    def __post_init__(self):
        if self.name not in DATASET_NAMES:
            raise ValueError(f"data set name must be one of {sorted(DATASET_NAMES)}, got {self.name!r}")
        check_choice(self.train_split, "train_split", SPLITS)
        check_choice(self.eval_split, "eval_split", SPLITS)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: The default micro-batches of a large decoder on a CPU (`TrainConfig.micro_batches_in_use`): measured on the
#: paper MNIST step, 1, 2, 4 micro-batches of batch 32 took 1.00 : 0.92 : 0.89 of the time (`pvpp/bench/README.md`).
AUTO_MICRO_BATCHES = 4
#: The fewest decoder filters that get `AUTO_MICRO_BATCHES` by default, and the fewest images a micro-batch keeps.
AUTO_MIN_FILTERS = 64
AUTO_MIN_MICRO_BATCH = 4


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """Everything the compiled train step reads besides the model: the optimizer, the prior's negative phase and
    the micro-batches each device's batch is cut into (`pvpp.training.step`).

    Small, frozen and hashable: `pvpp.training.compiled.step_functions` caches its compilations on it, so runs
    that differ in anything else (length, periods, seed, data) reuse them.
    """

    optim: OptimConfig = OptimConfig()
    negative_phase: NegativePhaseConfig = NegativePhaseConfig()
    micro_batches: int = 1


@settings.check_classified
@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything about a training run except the model and the data. Variants: `config.replace(...)`.

    batch_size: global (all devices), a multiple of the device count. num_steps or num_epochs: exactly one is
    set. num_devices: None = all devices (of all processes, `pvpp.parallel.distributed`). optim: Adam, lr
    decay, EMA, KL warm-up (`optim.OptimConfig`). negative_phase, num_chains, sweeps_per_step, negative_ais:
    the RBM's negative phase ('pcd': `num_chains` persistent chains, `sweeps_per_step` block-Gibbs sweeps per
    step; 'ais': fresh `negative_ais` samples each step), see `step_config`. log_z_ais: AIS for log Z at each
    evaluation. init_batch_size: images for the data-dependent init (None: batch_size). eval_examples: the
    fixed evaluation subset (the first images of the evaluation split). eval_batch_size: None means
    batch_size. eval_grids: images in each of the sample and reconstruction grids written to TensorBoard at
    every evaluation (0: none; `pvpp.training.grids`). micro_batches: the parts each device's batch is cut into,
    computed side by side in one step (`pvpp.training.step`; the dropout masks are those of as many times the
    devices); None: `micro_batches_in_use` decides (the value in use is config.json's "micro_batches").
    conv_forms: the policy of `pvpp.nn.conv_forms` the step is traced with (the forms compute XLA's values to
    float32 rounding); the run records the per-layer choices in conv_forms.json.
    """

    batch_size: int = settings.setting(128, "global batch (all devices together)", minimum=1)
    num_steps: int | None = settings.setting(500_000, "optimizer steps of the whole run", minimum=1)
    num_epochs: int | None = settings.setting(None, "train for this many epochs instead of --num_steps", minimum=1)
    num_devices: int | None = settings.setting(None, "devices to use, over all processes (default: all)", minimum=1)
    seed: int = settings.setting(0, "root of every random stream", minimum=0)
    optim: OptimConfig = settings.setting(OptimConfig(), "")
    negative_phase: str = settings.setting(
        "pcd",
        "RBM negative phase: persistent chains (pcd) or fresh AIS samples every step (ais)",
        choices=NEGATIVE_PHASES,
    )
    num_chains: int = settings.setting(100, "persistent chains (pcd)", minimum=1)
    sweeps_per_step: int = settings.setting(1, "Gibbs sweeps of the chains per step", minimum=0)
    negative_ais: AISConfig = settings.setting(
        AISConfig(num_chains=100, num_betas=100),
        "of the ais negative phase",
        subflags={"num_chains": "negative_ais_chains", "num_betas": "negative_ais_betas"},
    )
    log_z_ais: AISConfig = settings.setting(
        AISConfig(num_chains=100, num_betas=1000),
        "for log Z at each evaluation",
        subflags={"num_chains": "ais_chains", "num_betas": "ais_betas"},
    )
    init_batch_size: int | None = settings.setting(
        None, "images for the data-dependent init (default: --batch_size)", minimum=1
    )
    log_every: int = settings.setting(100, "steps between progress lines / train metrics", minimum=1)
    eval_every: int = settings.setting(10_000, "steps between evaluations", minimum=1)
    eval_examples: int = settings.setting(1000, "images of the evaluation subset", minimum=1)
    eval_batch_size: int | None = settings.setting(None, "evaluation batch (default: --batch_size)", minimum=1)
    eval_grids: int = settings.setting(
        8,
        "images in the sample and reconstruction grids written to TensorBoard at each evaluation (0: none)",
        minimum=0,
    )
    checkpoint_every: int = settings.setting(2000, "steps between checkpoints", minimum=1)
    keep_checkpoints: int = settings.setting(3, "checkpoints kept", minimum=1)
    micro_batches: int | None = settings.setting(
        None,
        "parts of each device's batch computed side by side in one step: the update of that many times the "
        "devices (default: 4 for decoders of 64+ filters on a CPU, else 1)",
        minimum=1,
    )
    conv_forms: str = settings.setting(
        "table",
        "convolution forms: per layer and direction the fastest equal form of pvpp.nn.conv_forms' shipped table "
        "(table; XLA's convolution where it lists none), or XLA's convolution everywhere (xla)",
        choices=conv_forms_module.POLICIES,
    )

    #: On resume (`pvpp.settings`): FIXED what defines the run's data order, initial state and state shapes (the
    #: global batch, the seed, the init batch, the RBM's persistent chains); CHANGEABLE the length, the optimizer,
    #: the conv forms, the negative phase's effort, evaluation and periods; RECORDED the requested device count (the
    #: count in use, config.json's "num_devices", is CHANGEABLE: it changes the reduction order).
    ON_RESUME: ClassVar[dict[str, str]] = {
        "batch_size": settings.FIXED,
        "seed": settings.FIXED,
        "init_batch_size": settings.FIXED,
        "negative_phase": settings.FIXED,
        "num_chains": settings.FIXED,
        "num_steps": settings.CHANGEABLE,
        "num_epochs": settings.CHANGEABLE,
        "num_devices": settings.RECORDED,
        "optim": settings.NESTED,
        "sweeps_per_step": settings.CHANGEABLE,
        "negative_ais": settings.CHANGEABLE,
        "log_z_ais": settings.CHANGEABLE,
        "log_every": settings.CHANGEABLE,
        "eval_every": settings.CHANGEABLE,
        "eval_examples": settings.CHANGEABLE,
        "eval_batch_size": settings.CHANGEABLE,
        "eval_grids": settings.CHANGEABLE,
        "checkpoint_every": settings.CHANGEABLE,
        "keep_checkpoints": settings.CHANGEABLE,
        "micro_batches": settings.RECORDED,
        "conv_forms": settings.CHANGEABLE,
    }

    def __post_init__(self):
        if (self.num_steps is None) == (self.num_epochs is None):
            raise ValueError(
                "exactly one of num_steps and num_epochs must be set, "
                f"got {self.num_steps} and {self.num_epochs}"
            )
        for name, minimum in (
            ("batch_size", 1),
            ("seed", 0),
            ("num_chains", 1),
            ("sweeps_per_step", 0),
            ("log_every", 1),
            ("eval_every", 1),
            ("eval_examples", 1),
            ("eval_grids", 0),
            ("checkpoint_every", 1),
            ("keep_checkpoints", 1),
        ):
            check_int(getattr(self, name), name, minimum)
        optional = ("num_steps", "num_epochs", "num_devices", "init_batch_size", "eval_batch_size", "micro_batches")
        for name in optional:
            if getattr(self, name) is not None:
                check_int(getattr(self, name), name, 1)
        check_choice(self.negative_phase, "negative_phase", NEGATIVE_PHASES)
        for name, expected in (("optim", OptimConfig), ("negative_ais", AISConfig), ("log_z_ais", AISConfig)):
            if not isinstance(getattr(self, name), expected):
                raise TypeError(
                    f"{name} must be a {expected.__name__}, got {type(getattr(self, name)).__name__}"
                )
        if self.num_devices is not None:
            check_divisible(self.batch_size, "batch_size", self.num_devices, "devices (num_devices)")
            if self.micro_batches is not None:
                check_divisible(
                    self.batch_size // self.num_devices, "the device batch (batch_size / num_devices)",
                    self.micro_batches, "micro-batches (micro_batches)",
                )

    def micro_batches_in_use(self, nr_filters: int, num_devices: int, platform: str) -> int:
        """The micro-batches of each device's batch: `micro_batches` where set, else `AUTO_MICRO_BATCHES` (or the
        largest of its halvings that divides the device batch) for a decoder of at least `AUTO_MIN_FILTERS`
        filters on a CPU, where they make the step faster (`pvpp/bench/README.md`), and 1 otherwise: on an
        accelerator one device's operations run one after another, and the small CPU models gain too little to
        change their dropout streams. nr_filters: the decoder's (`ModelConfig.nr_filters`); platform: the
        devices' ('cpu', 'gpu', 'tpu')."""
        if self.micro_batches is not None:
            return self.micro_batches
        if platform != "cpu" or nr_filters < AUTO_MIN_FILTERS:
            return 1
        device_batch = self.batch_size // num_devices
        parts = AUTO_MICRO_BATCHES
        while parts > 1 and (device_batch % parts or device_batch // parts < AUTO_MIN_MICRO_BATCH):
            parts //= 2
        return parts

    @property
    def step_config(self) -> StepConfig:
        """What the compiled step reads (the compiled-function cache key)."""
        negative_phase = NegativePhaseConfig(
            kind=self.negative_phase,
            num_chains=self.num_chains,
            sweeps_per_step=self.sweeps_per_step,
            ais=self.negative_ais,
        )
        return StepConfig(optim=self.optim, negative_phase=negative_phase, micro_batches=self.micro_batches or 1)

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        values = dict(values)
        values["optim"] = OptimConfig(**values["optim"])
        values["negative_ais"] = AISConfig(**values["negative_ais"])
        values["log_z_ais"] = AISConfig(**values["log_z_ais"])
        return cls(**values)
