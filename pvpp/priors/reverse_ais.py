"""Reverse annealed importance sampling (RAISE-style; Burda, Grosse & Salakhutdinov 2015) for an RBM's log Z:
a stochastic upper bound to pair with forward AIS's stochastic lower bound.

Forward AIS (`pvpp.priors.ais`) starts from exact samples of the base f_0 and anneals to the target f_1; its
weights have E[w] = Z_1 / Z_0, so by Jensen E[log mean(w)] <= log(Z_1 / Z_0): the estimate of log Z is low
in expectation. Reverse AIS runs the same annealing backwards, over the same marginal of the left side,

    f_beta(zL) = exp((1 - beta) a0.zL + beta a.zL) * prod_j (1 + exp(beta (b_j + (W^T zL)_j))),

from states of the target f_1 down to the base: for k = K-1 .. 1, log w += log f_{beta_{k-1}}(zL) -
log f_{beta_k}(zL), then `sweeps_per_beta` block-Gibbs sweeps that leave f_{beta_{k-1}} invariant. It is forward
AIS for the reversed sequence of distributions, so with exact target samples E[w] = Z_0 / Z_1 and

    log Z ~ log Z_0 - (logsumexp(log w) - log M)      is high in expectation (an upper bound).

One block-Gibbs sweep on zL (zR ~ p(zR | zL), then zL ~ p(zL | zR)) is reversible with respect to f_beta, so
the reverse chain uses the same transitions as the forward one.

Start states. The guarantee needs exact samples of the target. `exact_left_samples` draws them for RBMs
whose smaller side can be enumerated; a trained model's RBM is too large, so `start_states` offers the best
approximate ones pvpp has: 'forward_ais' (the forward run's final states, resampled in proportion to their
importance weights, then `start_sweeps` block-Gibbs sweeps) or 'gibbs' (chains from uniformly random states
after `start_sweeps` sweeps). With approximate start states the estimate is no longer an upper bound in
expectation: start states that miss a mode of the target estimate log Z of the modes they cover, and can fall
below the true value (tests/test_reverse_ais.py shows both behaviours). The output names the start states used.

The increments use the same cancellation-free identity as forward AIS (with the roles of the two temperatures
exchanged) and Kahan summation; every matmul that enters a log-weight or a sampling conditional runs at full
float32 precision (`rbm.EXACT`) on every backend.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from pvpp.priors import ais as _ais
from pvpp.priors import rbm as _rbm
from pvpp.relax import bernoulli_sample
from pvpp.validation import check_choice, check_int


class ReverseAISResult(NamedTuple):
    """Outcome of `reverse_ais_log_partition` (nats).

    log_partition: scalar, log Z_0 - (logsumexp(log_weights) - log M): high in expectation for exact start states.
    log_partition_lower, log_partition_upper: scalars, log Z_0 - log(mean(w) +/- 3 std(w) / sqrt(M)) (the
        estimator's spread; the upper end is +inf when mean(w) <= 3 std(w) / sqrt(M)).
    effective_sample_size: scalar in [1, M]. log_weights: [M] reverse log-weights (log of Z_0 / Z estimates).
    """

    log_partition: jax.Array
    log_partition_lower: jax.Array
    log_partition_upper: jax.Array
    effective_sample_size: jax.Array
    log_weights: jax.Array


def two_sided_log_partition(
    config: _ais.AISConfig, params: _rbm.RBMParams, key: jax.Array, *, devices=None
) -> tuple[_ais.AISResult, ReverseAISResult | None]:
    """(forward `AISResult`, reverse `ReverseAISResult` or None when config.reverse_start is 'none'): the forward
    run `config.run` on `key` itself (its chains split over `devices`), then reverse AIS with the same chains,
    temperatures, sweeps and schedule from `config.reverse_start` states (keys fold_in(key, 1) and fold_in(key, 2),
    one device)."""
    forward = config.run(params, key, devices=devices)
    if config.reverse_start == "none":
        return forward, None
    start = start_states(
        params, jax.random.fold_in(key, 1), config.reverse_start, config.num_chains,
        start_sweeps=config.reverse_start_sweeps, forward=forward,
    )
    reverse = reverse_ais_log_partition(
        params, jax.random.fold_in(key, 2), start, num_betas=config.num_betas,
        sweeps_per_beta=config.sweeps_per_beta, schedule=config.schedule,
    )
    return forward, reverse


def reverse_ais_log_partition(
    params: _rbm.RBMParams,
    key: jax.Array,
    start_left: jax.Array,
    *,
    num_betas: int,
    sweeps_per_beta: int = 1,
    schedule: str = "linear",
) -> ReverseAISResult:
    """Reverse AIS estimate of log Z from M start states `start_left` [M, nL] (0/1) of the target, annealed to
    the uniform base (a0 = 0) over the same `num_betas` temperatures and `schedule` as `ais_log_partition`.
    Compiled once per (M, K, sweeps_per_beta, shapes, dtype)."""
    _rbm.check_params(params)
    check_int(num_betas, "num_betas", 2)
    check_int(sweeps_per_beta, "sweeps_per_beta", 0)
    num_left = params.weights.shape[0]
    if jnp.ndim(start_left) != 2 or jnp.shape(start_left)[1] != num_left or jnp.shape(start_left)[0] < 1:
        raise ValueError(f"start_left must have shape [M >= 1, nL = {num_left}], got {tuple(jnp.shape(start_left))}")
    dtype = params.weights.dtype
    betas = _ais.beta_schedule(num_betas, schedule, dtype)
    return _reverse_jit(params, key, jnp.asarray(start_left, dtype), betas, sweeps_per_beta)


def start_states(
    params: _rbm.RBMParams,
    key: jax.Array,
    start: str,
    num_chains: int,
    *,
    start_sweeps: int,
    forward: _ais.AISResult | None = None,
) -> jax.Array:
    """[num_chains, nL] states of the target to start reverse AIS from (see the module docstring).

    start: 'exact' (enumerates the smaller side: <= rbm.MAX_ENUMERATED_UNITS units), 'forward_ais' (needs the
    forward `AISResult`: its final z_left resampled by importance weight, then `start_sweeps` sweeps) or 'gibbs'
    (`start_sweeps` >= 1 sweeps from uniformly random states)."""
    check_choice(start, "reverse_start", _ais.REVERSE_STARTS[1:])
    check_int(num_chains, "num_chains", 1)
    check_int(start_sweeps, "start_sweeps", 0)
    if start == "exact":
        return exact_left_samples(params, key, num_chains)
    if start == "gibbs":
        z_left, _ = _rbm.sample(params, key, num_chains, max(start_sweeps, 1))
        return z_left
    if forward is None:
        raise ValueError("reverse_start='forward_ais' needs the forward AIS result")
    resample_key, sweep_key = jax.random.split(key)
    # The forward result may be replicated over a mesh of devices (of several processes): take this process's copy.
    log_weights, final_left = (jnp.asarray(np.asarray(a)) for a in (forward.log_weights, forward.z_left))
    chosen = jax.random.categorical(resample_key, log_weights, shape=(num_chains,))
    z_left = final_left[chosen]
    if start_sweeps == 0:
        return z_left
    z_left, _ = _rbm.sample(params, sweep_key, num_chains, start_sweeps, init_left=z_left)
    return z_left


def exact_left_samples(params: _rbm.RBMParams, key: jax.Array, num: int) -> jax.Array:
    """num exact samples of the RBM's left side [num, nL], by enumerating its smaller side: that side's marginal
    exp(-F) over all 2^n states is drawn from exactly, then (if it is the right side) zL ~ p(zL | zR)."""
    _rbm.check_params(params)
    check_int(num, "num", 1)
    num_left, num_right = params.weights.shape
    smaller = min(num_left, num_right)
    if smaller > _rbm.MAX_ENUMERATED_UNITS:
        raise ValueError(
            f"exact samples enumerate 2^n states of the RBM's smaller side; it has n = {smaller} units "
            f"(max {_rbm.MAX_ENUMERATED_UNITS})"
        )
    state_key, left_key = jax.random.split(key)
    if num_left <= num_right:
        return _categorical_states(state_key, params.left_bias, params.right_bias, params.weights, num)
    z_right = _categorical_states(state_key, params.right_bias, params.left_bias, params.weights.T, num)
    return bernoulli_sample(left_key, _rbm.left_field(params, z_right))


# ----------------------------------------------------------------------------------------------------------
# Kernels (compiled)


@functools.partial(jax.jit, static_argnums=(4,))
def _reverse_jit(params, key, start_left, betas, sweeps_per_beta) -> ReverseAISResult:
    dtype = params.weights.dtype
    num_chains = start_left.shape[0]
    num_right = params.weights.shape[1]
    base_left_bias = jnp.zeros((params.weights.shape[0],), dtype)  # the uniform base

    def anneal_step(carry, step_inputs):
        z_left, log_weights, compensation = carry
        step, beta_previous, beta = step_inputs  # beta < beta_previous: towards the base
        field = _ais._exact_right_field(params, z_left)
        delta = beta_previous - beta
        # log f_beta - log f_{beta_previous} = -(log f_{beta + delta} - log f_beta), each term ~ delta.
        increment = -(
            delta * jnp.matmul(z_left, params.left_bias, precision=_rbm.EXACT)
            + jnp.sum(_ais._softplus_increment(field, beta, delta), axis=-1)
        )
        log_weights, compensation = _ais._kahan_add(log_weights, compensation, increment)
        z_left = _ais._transition(
            params, base_left_bias, jax.random.fold_in(key, step), z_left, field, beta, sweeps_per_beta
        )
        return (z_left, log_weights, compensation), None

    descending = betas[::-1]
    steps = jnp.arange(betas.shape[0] - 1, dtype=jnp.int32)
    zeros = jnp.zeros((num_chains,), dtype)
    (_, log_weights, _), _ = lax.scan(anneal_step, (start_left, zeros, zeros), (steps, descending[:-1], descending[1:]))
    log_base_partition = num_right * math.log(2.0) + params.weights.shape[0] * math.log(2.0)
    log_mean_weight, weight_lower, weight_upper = _ais._log_mean_interval(log_weights, num_chains)
    return ReverseAISResult(
        log_partition=log_base_partition - log_mean_weight,
        log_partition_lower=log_base_partition - weight_upper,
        log_partition_upper=log_base_partition - weight_lower,
        effective_sample_size=jnp.exp(2.0 * jax.nn.logsumexp(log_weights) - jax.nn.logsumexp(2.0 * log_weights)),
        log_weights=log_weights,
    )


@functools.partial(jax.jit, static_argnums=(4,))
def _categorical_states(key, own_bias, other_bias, weights, num) -> jax.Array:
    """num exact draws of the `own_bias` side's marginal exp(-F(z)) over its 2^n states: [num, n]."""
    num_units = own_bias.shape[0]
    index = jnp.arange(2**num_units, dtype=jnp.int32)[:, None]
    states = ((index >> jnp.arange(num_units, dtype=jnp.int32)[None, :]) & 1).astype(weights.dtype)
    field = jnp.matmul(states, weights, precision=_rbm.EXACT) + other_bias[None, :]
    log_marginal = jnp.matmul(states, own_bias, precision=_rbm.EXACT) + jnp.sum(jax.nn.softplus(field), axis=-1)
    return states[jax.random.categorical(key, log_marginal, shape=(num,))]
