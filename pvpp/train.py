"""Training PixelVAE++: the public names, gathered from `pvpp.training` (one file per part) and `pvpp.runs.workdir`.

    from pvpp import train
    train.train_and_evaluate(model_config, train.TrainConfig(...), train.DataConfig("mnist"), "runs/x")
    train.run_training(model_config, train_config, train_data, eval_data, "runs/x")   # DataSplits in memory
"""

from pvpp.parallel.devices import AXIS, device_sharding, replicate, unreplicate
from pvpp.priors import AISConfig
from pvpp.priors.base import NEGATIVE_PHASES
from pvpp.runs.workdir import CHECKPOINT_DIRNAME, CONFIG_FILENAME, EMA_PARAMS_DIRNAME
from pvpp.training.compiled import StepFunctions, step_functions
from pvpp.training.config import DataConfig, StepConfig, TrainConfig
from pvpp.training.loop import run_training, train_and_evaluate
from pvpp.training.saving import checkpoint_template
from pvpp.training.state import TrainState, init_train_state
from pvpp.training.step import eval_step, forward, train_step

__all__ = [
    "AISConfig",
    "AXIS",
    "CHECKPOINT_DIRNAME",
    "CONFIG_FILENAME",
    "DataConfig",
    "EMA_PARAMS_DIRNAME",
    "NEGATIVE_PHASES",
    "StepConfig",
    "StepFunctions",
    "TrainConfig",
    "TrainState",
    "checkpoint_template",
    "device_sharding",
    "eval_step",
    "forward",
    "init_train_state",
    "replicate",
    "run_training",
    "step_functions",
    "train_and_evaluate",
    "train_step",
    "unreplicate",
]
