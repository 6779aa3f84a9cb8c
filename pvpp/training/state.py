"""The train state (everything a training step changes and a checkpoint holds), its value at step 0, and the one
recipe (`state_initializer`) that builds it for a run's settings."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from pvpp import keys
from pvpp.model import ModelConfig, PixelVAEPP, to_model_space
from pvpp.priors import NegativePhaseConfig
from pvpp.training.optim import OptimConfig, make_optimizer


@flax.struct.dataclass
class TrainState:
    """Everything the step changes (a pytree; one copy per device inside the loop, one in checkpoints).

    step: int32 [] optimizer steps done. params: the model's 'params' collection. opt_state: the optax state,
    the parameter EMA included (`optim.ema_params(opt_state)`). chains: the prior's negative-phase state
    (`Prior.init_chains`: the RBM's persistent chains, z_left [C, nL] and z_right [C, nR]) or None. key: the
    root PRNG key of the run (`pvpp.keys.stream(key, name)` gives the named streams).
    """

    step: jax.Array
    params: Any
    opt_state: Any
    chains: Any
    key: jax.Array


def init_train_state(
    model: PixelVAEPP,
    optimizer: optax.GradientTransformation,
    key: jax.Array,
    images: jax.Array,
    *,
    negative_phase: NegativePhaseConfig = NegativePhaseConfig(),
) -> TrainState:
    """The state at step 0 for the root key `key` (`jax.random.key(seed)`).

    Data-dependent init of the model on `images` (uint8 [B, H, W, C], one batch), the optimizer state (the EMA
    starts at the initial parameters), and the prior's negative-phase state under the initial parameters
    (persistent chains for the RBM with `negative_phase.kind` 'pcd'; None otherwise).
    """
    params_key, noise_key, chains_key = jax.random.split(keys.stream(key, "init"), 3)
    # The ~100 parameter initialisers draw from an 'rbg' key (XLA's RngBitGenerator): with threefry each one
    # unrolls its own threefry circuit and the init compiles several times slower on CPU. rbg bits are deterministic on
    # one backend but may differ between backends (the same seed may give another init on CPU and GPU).
    params_key = jax.random.wrap_key_data(jax.random.bits(params_key, (4,), jnp.uint32), impl="rbg")
    x = to_model_space(model.config, jnp.asarray(images))
    params = model.init(params_key, x, noise_key)["params"]
    prior = model.prior
    chains = prior.init_chains(prior.prior_params(params), chains_key, negative_phase)
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params), chains=chains, key=key
    )


def state_initializer(
    model_config: ModelConfig, optim: OptimConfig, negative_phase: NegativePhaseConfig = NegativePhaseConfig()
) -> Callable[[jax.Array, jax.Array], TrainState]:
    """The one recipe of a run's train state: `init(key, images)` is `init_train_state` of `PixelVAEPP(model_config)`
    with the optimizer `make_optimizer(optim)` and the negative phase `negative_phase`. The compiled init
    (`pvpp.training.compiled`) runs it; the checkpoint template (`pvpp.training.saving.checkpoint_template`) takes its
    shapes with `jax.eval_shape`, so what a checkpoint holds is what the run builds."""
    return functools.partial(
        init_train_state, PixelVAEPP(model_config), make_optimizer(optim), negative_phase=negative_phase
    )
