"""The paper's optimizer as optax pieces: Adam, per-step exponential learning-rate decay,
optional gradient clipping, Polyak / EMA averaging of the parameters, and the KL-annealing weight.

The EMA of the parameters is a `GradientTransformation` placed last in the chain, so it lives inside the
optimizer state: whatever checkpoints `opt_state` checkpoints the EMA, and a restore brings it back exactly
(the flax PixelCNN++ example kept its EMA outside the checkpoint and silently reset it on restore). Read it
with `ema_params(opt_state)`.

Typical use::

    config = OptimConfig()
    tx = make_optimizer(config)
    opt_state = tx.init(params)                        # EMA starts at the initial parameters
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    eval_params = ema_params(opt_state)                # the Polyak average of the parameters so far
    beta_kl = kl_weight_schedule(config)(step)         # KL-annealing weight for the loss
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import optax

from pvpp import settings
from pvpp.validation import check_int

PyTree = Any


@settings.check_classified
@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Optimizer settings; the defaults are those of the paper (Adam settings of the paper and PixelCNN++).

    Attributes:
      learning_rate: initial Adam step size.
      lr_decay_per_step: multiplicative decay of the learning rate per optimizer step, in (0, 1];
        lr(step) = learning_rate * lr_decay_per_step ** step.
      adam_b1, adam_b2: Adam's decay rates of the first and second moment estimates.
      adam_eps: Adam's epsilon, added to the root of the second moment.
      grad_clip_norm: if set, gradients are rescaled so that their global L2 norm is at most this value;
        None (the default) disables clipping.
      ema_decay: Polyak / EMA decay of the parameters, in [0, 1): ema <- decay * ema + (1 - decay) * params.
      kl_warmup_steps: number of steps over which the KL weight rises linearly from `kl_start` to 1;
        0 means the weight is 1 from the first step. (The paper does not state a length: 10000 is our choice.)
      kl_start: KL weight at step 0, in [0, 1].
    """

    learning_rate: float = settings.setting(1e-3, "Adam step size", minimum=0.0)
    lr_decay_per_step: float = settings.setting(0.999995, "learning-rate decay per step", flag="lr_decay")
    adam_b1: float = settings.setting(0.95, "Adam beta1")
    adam_b2: float = settings.setting(0.9995, "Adam beta2")
    adam_eps: float = 1e-8
    grad_clip_norm: float | None = settings.setting(
        None, "clip gradients to this global norm (default: no clipping)"
    )
    ema_decay: float = settings.setting(0.9995, "Polyak / EMA decay of the parameters")
    kl_warmup_steps: int = settings.setting(10_000, "steps of the linear KL warm-up", minimum=0)
    kl_start: float = settings.setting(0.0, "KL weight at step 0")

    #: On resume (`pvpp.settings`): every optimizer setting may change on purpose (switching clipping on or off
    #: changes the optimizer state's structure, which `pvpp.training.saving.restore_or_init` converts).
    ON_RESUME: ClassVar[dict[str, str]] = {"*": settings.CHANGEABLE}

    def __post_init__(self):
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not 0 < self.lr_decay_per_step <= 1:
            raise ValueError(f"lr_decay_per_step must be in (0, 1], got {self.lr_decay_per_step}")
        for name in ("adam_b1", "adam_b2"):
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        if not self.adam_eps > 0:
            raise ValueError(f"adam_eps must be > 0, got {self.adam_eps}")
        if self.grad_clip_norm is not None and not self.grad_clip_norm > 0:
            raise ValueError(f"grad_clip_norm must be None or > 0, got {self.grad_clip_norm}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        _check_kl_args(self.kl_warmup_steps, self.kl_start)


def make_optimizer(config: OptimConfig) -> optax.GradientTransformation:
    """The optimizer: [clip_by_global_norm] -> Adam -> times the decaying learning rate -> parameter EMA.

    `update` must be given `params` (the EMA needs them). The returned updates are the Adam steps; the EMA
    only observes them, so `optax.apply_updates(params, updates)` gives the new parameters and
    `ema_params(opt_state)` their running average.
    """
    pieces = []
    if config.grad_clip_norm is not None:
        pieces.append(optax.clip_by_global_norm(config.grad_clip_norm))
    pieces.append(optax.scale_by_adam(b1=config.adam_b1, b2=config.adam_b2, eps=config.adam_eps))
    pieces.append(optax.scale_by_learning_rate(learning_rate_schedule(config)))
    pieces.append(params_ema(config.ema_decay))
    return optax.chain(*pieces)


def learning_rate_schedule(config: OptimConfig) -> optax.Schedule:
    """lr(step) = config.learning_rate * config.lr_decay_per_step ** step, an optax schedule.

    Computed as learning_rate * exp(step * log(decay)) with log(decay) taken in float64 on the host:
    `optax.exponential_decay` raises the decay rate rounded to float32 to the power `step`, which for
    0.999995 is off by 0.7% after 10^6 steps; here the error stays near float32 rounding (~1e-7 relative).
    The result has the default float dtype (float32; float64 under jax_enable_x64).
    """
    initial = config.learning_rate
    log_decay = math.log(config.lr_decay_per_step)  # float64 on the host: see the docstring

    def schedule(step):
        # The default float dtype: float32, or float64 under jax_enable_x64.
        step_f = jnp.asarray(step).astype(jnp.result_type(float))
        return initial * jnp.exp(step_f * log_decay)

    return schedule


class ParamsEmaState(NamedTuple):
    """State of `params_ema`: the exponential moving average of the parameters (same pytree as params)."""

    ema_params: PyTree


def params_ema(decay: float) -> optax.GradientTransformation:
    """Polyak / EMA averaging of the parameters as an optax transformation; place it LAST in a chain.

    init(params): the average starts at the initial parameters.
    update(updates, state, params): with new_params = params + updates (the final updates of the chain),
    ema <- decay * ema + (1 - decay) * new_params. The updates pass through unchanged.

    Args:
      decay: in [0, 1); 0.9995 averages over roughly the last 1 / (1 - decay) = 2000 steps.
    """
    if not 0 <= decay < 1:
        raise ValueError(f"decay must be in [0, 1), got {decay}")

    def init_fn(params):
        # A copy, so that donating `params` to a jitted step cannot invalidate the average.
        return ParamsEmaState(ema_params=jax.tree.map(jnp.array, params))

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("params_ema needs `params` in update(updates, state, params); got params=None")
        new_params = optax.apply_updates(params, updates)
        return updates, ParamsEmaState(ema_params=ema_update(state.ema_params, new_params, decay))

    return optax.GradientTransformation(init_fn, update_fn)


def ema_update(ema_params: PyTree, params: PyTree, decay: float) -> PyTree:
    """One EMA step: decay * ema_params + (1 - decay) * params, leaf by leaf, in the dtype of ema_params."""
    def step(ema, p):
        return (decay * ema + (1.0 - decay) * p).astype(ema.dtype)

    return jax.tree.map(step, ema_params, params)


def ema_params(opt_state: PyTree) -> PyTree:
    """The EMA parameters held by the single `params_ema` state inside `opt_state` (e.g. a chain's tuple)."""
    found = jax.tree.leaves(opt_state, is_leaf=lambda node: isinstance(node, ParamsEmaState))
    found = [node for node in found if isinstance(node, ParamsEmaState)]
    if len(found) != 1:
        raise ValueError(
            "opt_state must contain exactly one ParamsEmaState (from params_ema / make_optimizer); "
            f"found {len(found)}"
        )
    return found[0].ema_params


def kl_weight_schedule(config: OptimConfig) -> optax.Schedule:
    """The KL-annealing weight beta_kl(step) of `config` as an optax schedule (see `kl_weight`)."""
    warmup_steps, start = config.kl_warmup_steps, config.kl_start
    return lambda step: kl_weight(step, warmup_steps, start)


def kl_weight(step, warmup_steps: int, start: float = 0.0) -> jax.Array:
    """Linear KL warm-up: start + (1 - start) * min(step / warmup_steps, 1); always 1 if warmup_steps == 0.

    Args:
      step: optimizer step (int or int array, >= 0); jit-able in `step`.
      warmup_steps: length of the ramp in steps, >= 0 (a Python int, static).
      start: weight at step 0, in [0, 1].
    Returns:
      array of the default float dtype and the shape of `step`, in [start, 1].
    """
    _check_kl_args(warmup_steps, start)
    step_f = jnp.asarray(step).astype(jnp.result_type(float))  # float32, or float64 under jax_enable_x64
    if warmup_steps == 0:
        return jnp.ones_like(step_f)
    fraction = jnp.clip(step_f / warmup_steps, 0.0, 1.0)
    return start + (1.0 - start) * fraction


def _check_kl_args(warmup_steps, start) -> None:
    check_int(warmup_steps, "kl_warmup_steps", 0)
    if not 0 <= start <= 1:
        raise ValueError(f"kl_start must be in [0, 1], got {start}")
