"""The compiled functions of a run, cached per (model, `StepConfig`, devices) so that runs in one process that
differ only in length, periods, seed or data reuse them (tests, sweeps, the benchmarks).

Each per-device function is wrapped in a `TraceCounter` before it is compiled: `StepFunctions.traces()` says
how often each was traced (a retrace is a recompilation; the train step must be traced once per run).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax

from pvpp.model import ModelConfig, PixelVAEPP
from pvpp.parallel.devices import AXIS
from pvpp.parallel.tracing import TraceCounter
from pvpp.priors import AISConfig, NegativePhaseConfig, make_prior
from pvpp.training.config import StepConfig, TrainConfig
from pvpp.training.optim import OptimConfig, make_optimizer
from pvpp.training.state import state_initializer
from pvpp.training.step import eval_step, train_step


@dataclasses.dataclass(frozen=True)
class StepFunctions:
    """The compiled functions of a run (see `step_functions`)."""

    init: Any  # (root key, uint8 images [B, H, W, C]) -> TrainState (jit, one device)
    train: Any  # (state [D, ...], images [D, b, ...]) -> (state, metrics [D]) (pmap, state donated)
    evaluate: Any  # (params [D, ...], log_partition [], key, images, mask) -> sums [D] (pmap)
    log_partition: Any  # (prior params, key) -> LogPartition or None (jit, AIS with the run's log_z_ais)
    counters: tuple[TraceCounter, ...] = ()

    def traces(self) -> dict[str, int]:
        """How many times each function was traced so far (by name: 'init', 'train', 'evaluate', ...)."""
        return {counter.name: counter.count for counter in self.counters}


def step_functions(model_config: ModelConfig, config: TrainConfig, devices: tuple) -> StepFunctions:
    """The compiled functions of a run for `devices` (a tuple of jax devices); the train step cuts each device's
    batch into `config.micro_batches_in_use(...)` micro-batches."""
    micro_batches = config.micro_batches_in_use(model_config.nr_filters, len(devices), devices[0].platform)
    step_config = dataclasses.replace(config.step_config, micro_batches=micro_batches)
    # Only what the prior reads goes into the cache key (a Gaussian run ignores --num_chains, PCD the AIS effort).
    negative_phase = make_prior(model_config).negative_phase_settings(step_config.negative_phase)
    step_config = dataclasses.replace(step_config, negative_phase=negative_phase)
    init, init_counter = _init_function(model_config, step_config.optim, step_config.negative_phase)
    train, train_counter = _train_function(model_config, step_config, devices)
    evaluate, eval_counter = _eval_function(model_config, devices)
    return StepFunctions(
        init=init,
        train=train,
        evaluate=evaluate,
        log_partition=_log_partition_function(model_config, config.log_z_ais),
        counters=(init_counter, train_counter, eval_counter),
    )


@functools.lru_cache(maxsize=8)
def _init_function(model_config: ModelConfig, optim: OptimConfig, negative_phase: NegativePhaseConfig):
    counter = TraceCounter("init", state_initializer(model_config, optim, negative_phase))
    return jax.jit(counter), counter


@functools.lru_cache(maxsize=8)
def _train_function(model_config: ModelConfig, step_config: StepConfig, devices: tuple):
    step = functools.partial(
        train_step,
        model=PixelVAEPP(model_config),
        optimizer=make_optimizer(step_config.optim),
        config=step_config,
    )
    counter = TraceCounter("train", step)
    return jax.pmap(counter, axis_name=AXIS, devices=devices, donate_argnums=(0,)), counter


@functools.lru_cache(maxsize=8)
def _eval_function(model_config: ModelConfig, devices: tuple):
    counter = TraceCounter("evaluate", functools.partial(eval_step, model=PixelVAEPP(model_config)))
    return jax.pmap(counter, axis_name=AXIS, devices=devices, in_axes=(0, None, None, 0, 0)), counter


@functools.lru_cache(maxsize=8)
def _log_partition_function(model_config: ModelConfig, ais: AISConfig):
    prior = PixelVAEPP(model_config).prior
    return jax.jit(functools.partial(prior.log_partition, method="ais", ais=ais))
