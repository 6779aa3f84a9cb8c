"""Annealed importance sampling (Neal 2001; Salakhutdinov & Murray 2008) for the log partition function of an
RBM.

AIS anneals over the left side zL with the right side summed out analytically:

    f_beta(zL) = exp((1 - beta) a0.zL + beta a.zL) * prod_j (1 + exp(beta (b_j + (W^T zL)_j))),
    log Z_0 = sum_i softplus(a0_i) + nR log 2,      f_1(zL) = exp(-F(zL)),   Z_1 = Z.

The chains start from the exact base sample zL ~ Bern(sigmoid(a0)). For k = 1..K-1 (betas
beta_0 = 0 < ... < beta_{K-1} = 1): log w += log f_{beta_k}(zL) - log f_{beta_{k-1}}(zL), then
`sweeps_per_beta` block-Gibbs sweeps that leave f_{beta_k} invariant: zR ~ Bern(sigmoid(beta_k (b + W^T zL))),
zL ~ Bern(sigmoid((1 - beta_k) a0 + beta_k (a + W zR))). Then log Z ~ log Z_0 + logsumexp(log w) - log M.
To anneal over the right side instead, call `ais_log_partition(rbm.swap_sides(params), ...)`; the
returned z_left / z_right are then the original right / left sides.

Base distribution. The default base is uniform (a0 = 0): it puts equal mass on every state, so when the
chains fall into the target's modes as beta grows, every mode is reached from the base and none is favoured;
the importance weights then only correct the modes' relative masses (on a planted six-mode 16 + 100 RBM the
error stays below 0.1 nats at 1000 temperatures and 500 chains; when mode masses differ by many nats the
variance grows and the effective sample size shows it). A base concentrated on one region (for example the
target's own biases when they favour one mode, or data marginals) can have lower variance on uni-modal RBMs
but can miss whole modes while the log-weights agree and the interval looks narrow: log Z is then
underestimated by the missed mass (tests/test_ais.py shows both). The linear schedule is the default: with
the uniform base it beat the piecewise schedule dense near beta = 1 on random 18 + 200 and 200 + 18 RBMs
(errors <= 0.02 vs <= 0.05 nats, larger effective sample sizes); "dense_near_one" is Salakhutdinov & Murray's
choice for bases fitted to the data.

Several devices (`devices=`). The chains are independent, so they are split over the devices (of every process of
a multi-process run): one program, the chain axis sharded over a mesh of the devices, padded with extra chains to a
multiple of their number (the padding is computed and left out of every result). JAX's partitionable threefry
(`jax_threefry_partitionable`, on by default) draws every chain's noise from the chain's own place in the array, so
chain c sees the same random bits on any number of devices; the results then differ from one device's only by
the float rounding of the [chains per device, nL] x [nL, nR] products (the same device count gives the same
bits). The summaries are reduced over all chains and every process gets the whole result.

Float32 accuracy over 10^4 temperatures. The log-weight increment is never computed as the difference of
two large log f values. With x = b + W^T zL, delta = beta_k - beta_{k-1} and
softplus(u) = relu(u) + log1p(e^-|u|):

    log f_{beta_k} - log f_{beta_{k-1}} = delta (a - a0).zL
        + sum_j [ delta relu(x_j) + log1p( sigmoid(-beta_{k-1} |x_j|) * expm1(-delta |x_j|) ) ],

an exact identity whose every term is proportional to delta with relative rounding error ~1e-7. The
increments are then added with Kahan (compensated) summation, so the accumulated log-weight carries an
error of a few ulps of its final value instead of growing with the number of temperatures.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from pvpp import settings
from pvpp.priors import rbm as _rbm
from pvpp.relax import bernoulli_sample
from pvpp.validation import check_choice, check_int, is_traced

#: Where reverse AIS (`pvpp.priors.reverse_ais`) takes its states of the target from; 'none' skips it.
REVERSE_STARTS = ("none", "exact", "forward_ais", "gibbs")
#: Beta schedules accepted by `beta_schedule` / `ais_log_partition`.
SCHEDULES = ("linear", "dense_near_one")


@dataclasses.dataclass(frozen=True)
class AISConfig:
    """The effort of one use of AIS: M chains, K inverse temperatures (both ends included), Gibbs sweeps per
    temperature, the schedule, and whether reverse AIS (`pvpp.priors.reverse_ais`) bounds log Z from above too.
    Training's periodic log Z, the RBM's AIS negative phase and the evaluation command each hold one;
    `run(params, key)` is `ais_log_partition` with these settings; `reverse_ais.two_sided_log_partition` adds
    the reverse run.

    reverse_start: 'none' (forward only), or where the M reverse chains start: 'forward_ais' (the forward run's
    final states resampled by weight, then `reverse_start_sweeps` block-Gibbs sweeps), 'gibbs'
    (`reverse_start_sweeps` sweeps from uniform states) or 'exact' (enumeration; small RBMs). The reverse run
    uses the same M, K, sweeps and schedule. `PRESETS` holds the named evaluation settings.
    """

    num_chains: int = settings.setting(100, "AIS chains", minimum=1)
    num_betas: int = settings.setting(1000, "AIS temperatures", minimum=2)
    sweeps_per_beta: int = settings.setting(1, "Gibbs sweeps per temperature", minimum=0)
    schedule: str = settings.setting("linear", "'linear' or 'dense_near_one'")
    reverse_start: str = settings.setting(
        "none", "Start states of reverse AIS: 'forward_ais', 'gibbs', 'exact' (small RBMs) or 'none'"
    )
    reverse_start_sweeps: int = settings.setting(1000, "Gibbs sweeps applied to the reverse start states", minimum=0)

    def __post_init__(self):
        check_int(self.num_chains, "num_chains", 1)
        check_int(self.num_betas, "num_betas", 2)
        check_int(self.sweeps_per_beta, "sweeps_per_beta", 0)
        check_choice(self.schedule, "schedule", SCHEDULES)
        check_choice(self.reverse_start, "reverse_start", REVERSE_STARTS)
        check_int(self.reverse_start_sweeps, "reverse_start_sweeps", 0)

    def replace(self, **changes) -> AISConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def run(self, params: _rbm.RBMParams, key: jax.Array, *, devices=None) -> AISResult:
        """`ais_log_partition(params, key, ...)` with these settings (uniform base), its chains split over
        `devices` (None: the default device)."""
        return ais_log_partition(
            params,
            key,
            num_chains=self.num_chains,
            num_betas=self.num_betas,
            sweeps_per_beta=self.sweeps_per_beta,
            schedule=self.schedule,
            devices=devices,
        )


#: Named evaluation settings (`python -m pvpp.experiments.evaluate --ais_preset=NAME`). 'cpu': the default, sized
#: for this project's 2-core CPU; 'paper': Sadeghi et al.'s evaluation (ten times their training setting:
#: 50,000 chains x 10,000 temperatures x 50 sweeps per temperature), sized for a GPU. Both add reverse AIS.
PRESETS = {
    "cpu": AISConfig(num_chains=1000, num_betas=10000, sweeps_per_beta=1, reverse_start="forward_ais"),
    "paper": AISConfig(num_chains=50000, num_betas=10000, sweeps_per_beta=50, reverse_start="forward_ais"),
}


class AISResult(NamedTuple):
    """Outcome of `ais_log_partition` (all log values in nats).

    log_partition: scalar, log Z_0 + logsumexp(log_weights) - log M.
    log_partition_lower, log_partition_upper: scalars, log Z_0 + log(mean(w) -/+ 3 std(w) / sqrt(M)) with
        w = exp(log_weights); the lower end is -inf when mean(w) <= 3 std(w) / sqrt(M), and both ends are
        -inf / +inf for M = 1. An interval for the *estimator's* spread: it cannot see modes AIS missed.
    effective_sample_size: scalar, (sum w)^2 / sum w^2, between 1 and M.
    log_weights: [M] log importance weights (log w; add log Z_0 - log M and logsumexp for log Z).
    z_left: [M, nL] final annealed states; z_right: [M, nR] drawn exactly from p(zR | z_left), so
        (z_left, z_right) weighted by softmax(log_weights) is a self-normalised importance sample of the RBM.
    """

    log_partition: jax.Array
    log_partition_lower: jax.Array
    log_partition_upper: jax.Array
    effective_sample_size: jax.Array
    log_weights: jax.Array
    z_left: jax.Array
    z_right: jax.Array


def ais_log_partition(
    params: _rbm.RBMParams,
    key: jax.Array,
    *,
    num_chains: int,
    num_betas: int,
    sweeps_per_beta: int = 1,
    base_left_bias: jax.Array | None = None,
    schedule: str = "linear",
    devices=None,
) -> AISResult:
    """AIS estimate of log Z over the left side (see the module docstring).

    num_chains: M >= 1 independent AIS runs.  num_betas: K >= 2 inverse temperatures, both ends included
    (K - 1 annealing steps).  sweeps_per_beta: >= 0 block-Gibbs sweeps per intermediate distribution
    (0 turns AIS into plain importance sampling from the base).  base_left_bias: a0 [nL], default zeros
    (uniform base).  schedule: "linear" or "dense_near_one" (see `beta_schedule`).  devices: a sequence of
    devices to split the chains over (all processes' devices in a multi-process run, the same sequence on
    every process; every process then gets the whole result); None or one device: the default device.
    Compiled once per (M, K, sweeps_per_beta, shapes, dtype, devices).
    """
    _rbm.check_params(params)
    check_int(num_chains, "num_chains", 1)
    check_int(num_betas, "num_betas", 2)
    check_int(sweeps_per_beta, "sweeps_per_beta", 0)
    num_left = params.weights.shape[0]
    dtype = params.weights.dtype
    if base_left_bias is None:
        base_left_bias = jnp.zeros((num_left,), dtype)
    else:
        if jnp.shape(base_left_bias) != (num_left,):
            raise ValueError(
                f"base_left_bias must have shape [nL] = [{num_left}] for weights "
                f"{tuple(params.weights.shape)}, got {tuple(jnp.shape(base_left_bias))}"
            )
        if not is_traced(base_left_bias) and not np.all(np.isfinite(np.asarray(base_left_bias))):
            raise ValueError(f"base_left_bias {tuple(jnp.shape(base_left_bias))} contains non-finite values")
        base_left_bias = jnp.asarray(base_left_bias, dtype)
    betas = beta_schedule(num_betas, schedule, dtype)
    if devices is None or len(devices) <= 1:
        return _ais_jit(params, base_left_bias, key, betas, num_chains, sweeps_per_beta)
    return _ais_sharded(params, base_left_bias, key, betas, num_chains, sweeps_per_beta, tuple(devices))


def beta_schedule(num_betas: int, kind: str = "linear", dtype=jnp.float32) -> jax.Array:
    """[num_betas] increasing inverse temperatures from exactly 0 to exactly 1.

    "linear": evenly spaced.  "dense_near_one": piecewise linear with Salakhutdinov & Murray's (2008)
    proportions (500 steps on [0, 0.5], 4000 on [0.5, 0.9], 10000 on [0.9, 1] out of 14500), scaled to
    num_betas - 1 steps; each piece gets at least one step.
    """
    check_int(num_betas, "num_betas", 2)
    check_choice(kind, "schedule", SCHEDULES)
    num_steps = num_betas - 1
    if kind == "linear" or num_steps < 3:
        return jnp.linspace(0.0, 1.0, num_betas, dtype=dtype)
    first = max(1, round(num_steps * 500 / 14500))
    second = max(1, round(num_steps * 4000 / 14500))
    third = num_steps - first - second
    pieces = [
        jnp.linspace(0.0, 0.5, first, endpoint=False, dtype=dtype),
        jnp.linspace(0.5, 0.9, second, endpoint=False, dtype=dtype),
        jnp.linspace(0.9, 1.0, third + 1, dtype=dtype),
    ]
    return jnp.concatenate(pieces)


# ----------------------------------------------------------------------------------------------------------
# Kernel


def _ais_jit_impl(
    params: _rbm.RBMParams,
    base_left_bias: jax.Array,
    key: jax.Array,
    betas: jax.Array,
    num_chains: int,
    sweeps_per_beta: int,
    chain_sharding: NamedSharding | None = None,
) -> AISResult:
    """The AIS program. chain_sharding: None (one device), or the sharding of the chain axis over a mesh of D
    devices; then the chains are padded to a multiple of D and the padding is dropped before the summaries."""
    dtype = params.weights.dtype
    num_left, num_right = params.weights.shape
    num_devices = 1 if chain_sharding is None else chain_sharding.mesh.size
    num_run = -(-num_chains // num_devices) * num_devices  # chains run, padding included

    def shard(chains):  # [num_run, ...]: one block of chains per device
        if chain_sharding is None:
            return chains
        spec = PartitionSpec(chain_sharding.spec[0], *([None] * (chains.ndim - 1)))
        return lax.with_sharding_constraint(chains, NamedSharding(chain_sharding.mesh, spec))

    init_key, final_key, key = jax.random.split(key, 3)
    # Exact sample of the base f_0: zL ~ Bern(sigmoid(a0)) (zR is uniform and summed out).
    z_left = shard(bernoulli_sample(init_key, jnp.broadcast_to(base_left_bias, (num_run, num_left))))
    bias_gap = params.left_bias - base_left_bias  # d/dbeta of the linear term: (a - a0).zL

    def anneal_step(carry, step_inputs):
        z_left, log_weights, compensation = jax.tree.map(shard, carry)
        step, beta_previous, beta = step_inputs
        delta = beta - beta_previous
        field = _exact_right_field(params, z_left)  # [M, nR]
        increment = delta * jnp.matmul(z_left, bias_gap, precision=_rbm.EXACT) + jnp.sum(
            _softplus_increment(field, beta_previous, delta), axis=-1
        )
        log_weights, compensation = _kahan_add(log_weights, compensation, increment)
        step_key = jax.random.fold_in(key, step)
        z_left = _transition(params, base_left_bias, step_key, z_left, field, beta, sweeps_per_beta)
        return jax.tree.map(shard, (z_left, log_weights, compensation)), None

    zeros = shard(jnp.zeros((num_run,), dtype))
    steps = jnp.arange(betas.shape[0] - 1, dtype=jnp.int32)
    carry = (z_left, zeros, zeros)
    (z_left, log_weights, _), _ = lax.scan(anneal_step, carry, (steps, betas[:-1], betas[1:]))
    z_right = bernoulli_sample(final_key, _rbm.right_field(params, z_left))
    z_left, z_right, log_weights = z_left[:num_chains], z_right[:num_chains], log_weights[:num_chains]

    log_base_partition = jnp.sum(jax.nn.softplus(base_left_bias)) + num_right * math.log(2.0)
    log_mean_weight, lower, upper = _log_mean_interval(log_weights, num_chains)
    effective_sample_size = jnp.exp(2.0 * jax.nn.logsumexp(log_weights) - jax.nn.logsumexp(2.0 * log_weights))
    return AISResult(
        log_partition=log_base_partition + log_mean_weight,
        log_partition_lower=log_base_partition + lower,
        log_partition_upper=log_base_partition + upper,
        effective_sample_size=effective_sample_size,
        log_weights=log_weights,
        z_left=z_left,
        z_right=z_right,
    )


_ais_jit = jax.jit(_ais_jit_impl, static_argnums=(4, 5))


def _ais_sharded(params, base_left_bias, key, betas, num_chains, sweeps_per_beta, devices) -> AISResult:
    """`_ais_jit_impl` with the chains split over `devices` (a mesh axis 'chains'); the inputs are replicated
    over the mesh (from this process's copy: every process must hold the same values) and so is the result."""
    mesh = Mesh(np.array(devices), ("chains",))
    replicated = NamedSharding(mesh, PartitionSpec())
    impl = jax.random.key_impl(key)
    inputs = jax.tree.map(
        lambda leaf: _replicate(np.asarray(leaf), replicated),
        (params, base_left_bias, jax.random.key_data(key), betas),
    )
    return _ais_sharded_jit(
        *inputs, num_chains, sweeps_per_beta, NamedSharding(mesh, PartitionSpec("chains")), impl
    )


@functools.partial(jax.jit, static_argnums=(4, 5, 6, 7))
def _ais_sharded_jit(params, base_left_bias, key_data, betas, num_chains, sweeps_per_beta, chain_sharding, impl):
    key = jax.random.wrap_key_data(key_data, impl=impl)
    result = _ais_jit_impl(params, base_left_bias, key, betas, num_chains, sweeps_per_beta, chain_sharding)
    everywhere = NamedSharding(chain_sharding.mesh, PartitionSpec())
    return jax.tree.map(lambda value: lax.with_sharding_constraint(value, everywhere), result)


def _replicate(value: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A numpy array as a jax array replicated over `sharding`'s mesh (its devices may span processes)."""
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def _transition(
    params: _rbm.RBMParams,
    base_left_bias: jax.Array,
    key: jax.Array,
    z_left: jax.Array,
    field: jax.Array,
    beta: jax.Array,
    sweeps_per_beta: int,
) -> jax.Array:
    """`sweeps_per_beta` block-Gibbs sweeps leaving f_beta invariant; `field` is b + W^T zL of the input."""

    def sweep(sweep_index, z_left_and_field):
        z_left, field = z_left_and_field
        right_key, left_key = jax.random.split(jax.random.fold_in(key, sweep_index))
        z_right = bernoulli_sample(right_key, beta * field)
        left_logits = (1.0 - beta) * base_left_bias[None, :] + beta * _rbm.left_field(params, z_right)
        z_left = bernoulli_sample(left_key, left_logits)
        return z_left, _exact_right_field(params, z_left)

    if sweeps_per_beta == 0:
        return z_left
    z_left, _ = lax.fori_loop(0, sweeps_per_beta, sweep, (z_left, field))
    return z_left


def _exact_right_field(params: _rbm.RBMParams, z_left: jax.Array) -> jax.Array:
    """b + W^T zL at full matmul precision (it enters the log-weights): [M, nL] -> [M, nR]."""
    return jnp.matmul(z_left, params.weights, precision=_rbm.EXACT) + params.right_bias[None, :]


def _softplus_increment(x: jax.Array, beta_previous: jax.Array, delta: jax.Array) -> jax.Array:
    """softplus((beta_previous + delta) x) - softplus(beta_previous x) for beta_previous, delta >= 0, computed
    so that the result keeps full relative precision however small delta is (see the module docstring)."""
    magnitude = jnp.abs(x)
    # log1p argument lies in (-1/2, 0]: sigmoid(.) <= 1/2 and expm1(.) in (-1, 0].
    log1p_argument = jax.nn.sigmoid(-beta_previous * magnitude) * jnp.expm1(-delta * magnitude)
    return delta * jax.nn.relu(x) + jnp.log1p(log1p_argument)


def _kahan_add(total: jax.Array, compensation: jax.Array, value: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Kahan (compensated) summation: (total + value, new compensation), carrying the lost low-order bits."""
    corrected = value - compensation
    new_total = total + corrected
    compensation = (new_total - total) - corrected
    return new_total, compensation


def _log_mean_interval(log_weights: jax.Array, num_chains: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(log mean(w), log(mean(w) -/+ 3 std(w) / sqrt(M))) for w = exp(log_weights): the point estimate by
    log-sum-exp, the interval's ends with a max shift."""
    point = jax.nn.logsumexp(log_weights) - math.log(num_chains)
    if num_chains == 1:  # no spread estimate from one run
        return point, jnp.asarray(-jnp.inf, log_weights.dtype), jnp.asarray(jnp.inf, log_weights.dtype)
    shift = jnp.max(log_weights)
    weights = jnp.exp(log_weights - shift)  # in (0, 1], the largest is exactly 1
    mean = jnp.mean(weights)
    half_width = 3.0 * jnp.std(weights, ddof=1) / math.sqrt(num_chains)
    # log(0) = -inf is the intended lower end when the interval reaches zero; clamp negatives to 0 first.
    lower = shift + jnp.log(jnp.maximum(mean - half_width, 0.0))
    upper = shift + jnp.log(mean + half_width)
    # The point estimate lies inside by construction; with nearly equal weights the spread is below float32
    # rounding, and the two paths to log(mean) differ in their last bits.
    return point, jnp.minimum(lower, point), jnp.maximum(upper, point)
