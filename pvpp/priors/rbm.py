"""Restricted Boltzmann machine prior over binary z = (z_left, z_right): energies, exact log Z, block Gibbs.

Convention, with a = `left_bias` [nL], b = `right_bias` [nR], W = `weights` [nL, nR]:

    E(zL, zR) = -a.zL - b.zR - zL^T W zR,        p(zL, zR) = exp(-E) / Z,
    -F(zL) = a.zL + sum_j softplus(b_j + (W^T zL)_j)      (right side summed out; `free_energy_left`),
    -F(zR) = b.zR + sum_i softplus(a_i + (W zR)_i)        (left side summed out; `free_energy_right`).

Everything is in nats. The unnormalised log-probability (`log_prob_unnormalized` = -E) and log Z are kept
apart: log Z comes from `exact_log_partition` (enumeration, <= 24 units on the smaller side) or from AIS
(`pvpp.priors.ais.ais_log_partition`, which builds on the kernels here: `right_field`, `left_field`, `EXACT`).
Binary samples come from pvpp's one Bernoulli sampler, `pvpp.relax.bernoulli_sample`.

Chains. States are float arrays of 0/1 with the chain axis (or any number of leading axes) in front:
`z_left` [..., nL], `z_right` [..., nR]. The samplers act on all leading axes at once, which is what
`jax.vmap` over chains would compile to (one [C, nL] x [nL, nR] matmul per half-sweep); they are also
vmap-safe. One sweep draws zR ~ p(zR | zL), then zL ~ p(zL | zR), so the returned pair (zL, zR) is a
sample of p when the input zL was.

Compilation. The public functions check concrete inputs (shapes, finiteness, counts) and then call one
jit-compiled kernel. `num_sweeps` is a traced argument (the loop is a `lax.fori_loop` with a dynamic trip
count), so `sample` and `advance_chains` compile once per (shapes, dtype) whatever the number of sweeps.
Inside a caller's `jit` the same functions trace straight through (value checks are skipped for tracers).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from pvpp.relax import bernoulli_sample
from pvpp.validation import check_int, is_traced

# Every float32 matmul of the RBM runs at full precision on every backend: energies, free energies and log Z
# (sums of hundreds of terms that AIS differences and log Z gradients rely on), and the sampling conditionals
# (`right_field`, `left_field`) of block Gibbs, AIS, reverse AIS and training's persistent chains. With the
# default precision a recent NVIDIA GPU computes float32 matmuls in TF32 (10-bit mantissa): the conditionals
# would then be those of a perturbed RBM, the transitions would not leave the annealed distributions invariant,
# and AIS would be biased. On a CPU both precisions are the same computation.
EXACT = lax.Precision.HIGHEST

#: Largest side that `exact_log_partition` enumerates (2^24 states).
MAX_ENUMERATED_UNITS = 24


class RBMParams(NamedTuple):
    """RBM parameters (a pytree).

    left_bias: [nL] a.   right_bias: [nR] b.   weights: [nL, nR] W.
    """

    left_bias: jax.Array
    right_bias: jax.Array
    weights: jax.Array


class ChainState(NamedTuple):
    """Persistent block-Gibbs chains (a pytree): z_left [C, nL] and z_right [C, nR], float 0/1.

    (z_left, z_right) is the last pair of one sweep: z_right ~ p(zR | previous zL), z_left ~ p(zL | z_right).
    """

    z_left: jax.Array
    z_right: jax.Array


# ----------------------------------------------------------------------------------------------------------
# Parameters


def init_rbm_params(
    key: jax.Array, num_left: int, num_right: int, scale: float = 0.01, dtype=jnp.float32
) -> RBMParams:
    """Zero biases and weights ~ N(0, scale^2), [num_left, num_right]."""
    check_int(num_left, "num_left", 1)
    check_int(num_right, "num_right", 1)
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale >= 0):
        raise ValueError(f"scale must be a finite number >= 0, got {scale!r}")
    weights = scale * jax.random.normal(key, (num_left, num_right), dtype)
    return RBMParams(jnp.zeros((num_left,), dtype), jnp.zeros((num_right,), dtype), weights)


def swap_sides(params: RBMParams) -> RBMParams:
    """The same RBM with left and right exchanged: (b, a, W^T). Used to anneal AIS over the right side."""
    return RBMParams(params.right_bias, params.left_bias, params.weights.T)


# ----------------------------------------------------------------------------------------------------------
# Energies (batched over leading axes; z may be relaxed values in [0, 1])


def energy(params: RBMParams, z_left: jax.Array, z_right: jax.Array) -> jax.Array:
    """E(zL, zR) = -a.zL - b.zR - zL^T W zR.  z_left [..., nL], z_right [..., nR] -> [...] (nats)."""
    check_params(params)
    _check_states(params, z_left=z_left, z_right=z_right)
    return _energy(params, z_left, z_right)


def log_prob_unnormalized(params: RBMParams, z_left: jax.Array, z_right: jax.Array) -> jax.Array:
    """-E(zL, zR) = log p(zL, zR) + log Z.  [..., nL], [..., nR] -> [...] (nats)."""
    return -energy(params, z_left, z_right)


def free_energy_left(params: RBMParams, z_left: jax.Array) -> jax.Array:
    """F(zL), right side summed out: -F = a.zL + sum_j softplus(b_j + (W^T zL)_j).  [..., nL] -> [...]."""
    check_params(params)
    _check_states(params, z_left=z_left)
    return _free_energy(params.left_bias, params.right_bias, params.weights, z_left)


def free_energy_right(params: RBMParams, z_right: jax.Array) -> jax.Array:
    """F(zR), left side summed out: -F = b.zR + sum_i softplus(a_i + (W zR)_i).  [..., nR] -> [...]."""
    check_params(params)
    _check_states(params, z_right=z_right)
    return _free_energy(params.right_bias, params.left_bias, params.weights.T, z_right)


# ----------------------------------------------------------------------------------------------------------
# Exact log partition function


def exact_log_partition(params: RBMParams, side: str = "smaller") -> jax.Array:
    """log Z (nats, scalar) by enumerating one side (2^n states) with the other summed out analytically.

    side: "smaller" (default), "left" or "right" - which side to enumerate; the result is the same up to
    rounding. The enumeration runs in chunks of at most 2^12 states inside one compiled loop; each chunk is
    rematerialised in the backward pass, so `jax.grad` (which gives the moments E[zL], E[zR], E[zL zR^T])
    costs memory for one chunk only. Raises ValueError when the enumerated side has more than
    `MAX_ENUMERATED_UNITS` (24) units: use `pvpp.priors.ais.ais_log_partition` then.
    """
    check_params(params)
    num_left, num_right = params.weights.shape
    if side not in ("smaller", "left", "right"):
        raise ValueError(f"side must be 'smaller', 'left' or 'right', got {side!r}")
    if side == "smaller":
        side = "left" if num_left <= num_right else "right"
    num_units = num_left if side == "left" else num_right
    if num_units > MAX_ENUMERATED_UNITS:
        raise ValueError(
            f"exact_log_partition enumerates 2^n states of one side, n <= {MAX_ENUMERATED_UNITS}; "
            f"side={side!r} has n={num_units} (params.weights {tuple(params.weights.shape)}). "
            "Use ais_log_partition for larger RBMs."
        )
    if side == "left":
        return _log_partition_by_enumeration(params.left_bias, params.right_bias, params.weights)
    return _log_partition_by_enumeration(params.right_bias, params.left_bias, params.weights.T)


# ----------------------------------------------------------------------------------------------------------
# Block Gibbs sampling


def gibbs_sweep(
    params: RBMParams, key: jax.Array, z_left: jax.Array, beta: float | jax.Array = 1.0
) -> tuple[jax.Array, jax.Array]:
    """One block-Gibbs sweep at inverse temperature beta, for p_beta(z) ~ exp(-beta E(z)).

    z_left [..., nL] (0/1) -> (z_left [..., nL], z_right [..., nR]): first
    zR ~ Bern(sigmoid(beta (b + W^T zL))), then zL ~ Bern(sigmoid(beta (a + W zR))). beta = 1: the RBM itself.
    """
    check_params(params)
    _check_states(params, z_left=z_left)
    _check_finite_scalar(beta, "beta")
    return _gibbs_sweep_jit(params, key, z_left, jnp.asarray(beta, params.weights.dtype))


def sample(
    params: RBMParams,
    key: jax.Array,
    num_chains: int,
    num_sweeps: int,
    init_left: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Run `num_chains` independent block-Gibbs chains for `num_sweeps` (>= 1, may be traced) sweeps.

    The chains start from `init_left` [num_chains, nL] or, if None, from uniformly random zL.
    Returns (z_left [num_chains, nL], z_right [num_chains, nR]), float 0/1 in the parameters' dtype.
    Compiled once per (num_chains, nL, nR, dtype); `num_sweeps` is traced.
    """
    check_params(params)
    check_int(num_chains, "num_chains", 1)
    if not is_traced(num_sweeps):
        check_int(num_sweeps, "num_sweeps", 1)
    num_left = params.weights.shape[0]
    init_key, key = jax.random.split(key)
    if init_left is None:
        init_left = _uniform_states(init_key, (num_chains, num_left), params.weights.dtype)
    else:
        _check_chain_state(params, init_left, num_chains=num_chains, names=("init_left", ""))
        _check_binary(init_left, "init_left")
    state = ChainState(jnp.asarray(init_left, params.weights.dtype), _zeros_right(params, num_chains))
    state = _advance_jit(params, key, state, jnp.asarray(num_sweeps, jnp.int32))
    return state.z_left, state.z_right


def init_chains(params: RBMParams, key: jax.Array, num_chains: int) -> ChainState:
    """Persistent chains: zL uniformly random [num_chains, nL], then zR ~ p(zR | zL) [num_chains, nR]."""
    check_params(params)
    check_int(num_chains, "num_chains", 1)
    left_key, right_key = jax.random.split(key)
    z_left = _uniform_states(left_key, (num_chains, params.weights.shape[0]), params.weights.dtype)
    z_right = bernoulli_sample(right_key, right_field(params, z_left))
    return ChainState(z_left, z_right)


def advance_chains(
    params: RBMParams, key: jax.Array, state: ChainState, num_sweeps: int | jax.Array
) -> ChainState:
    """`num_sweeps` (>= 0, may be traced) block-Gibbs sweeps of every chain in `state` under `params`.

    For persistent contrastive divergence: carry the returned state in the train state and call this once
    per step with the current parameters. Compiled once per (state shapes, dtype).
    """
    check_params(params)
    if not isinstance(state, ChainState):
        raise TypeError(f"state must be a ChainState, got {type(state).__name__}")
    _check_chain_state(params, state.z_left, state.z_right, names=("state.z_left", "state.z_right"))
    if not is_traced(num_sweeps):
        check_int(num_sweeps, "num_sweeps", 0)
    state = ChainState(*(z.astype(params.weights.dtype) for z in state))  # the loop carry keeps one dtype
    return _advance_jit(params, key, state, jnp.asarray(num_sweeps, jnp.int32))


# ----------------------------------------------------------------------------------------------------------
# Kernels (compiled)


def _energy(params: RBMParams, z_left: jax.Array, z_right: jax.Array) -> jax.Array:
    interaction = jnp.sum(jnp.matmul(z_left, params.weights, precision=EXACT) * z_right, axis=-1)
    return -(
        jnp.matmul(z_left, params.left_bias, precision=EXACT)
        + jnp.matmul(z_right, params.right_bias, precision=EXACT)
        + interaction
    )


def _free_energy(own_bias: jax.Array, other_bias: jax.Array, weights: jax.Array, z: jax.Array) -> jax.Array:
    """F(z) of the side with `own_bias`; `weights` is [n_own, n_other]. z [..., n_own] -> [...]."""
    field = jnp.matmul(z, weights, precision=EXACT) + lift(other_bias, z.ndim)
    return -(jnp.matmul(z, own_bias, precision=EXACT) + jnp.sum(jax.nn.softplus(field), axis=-1))


@jax.jit
def _log_partition_by_enumeration(
    own_bias: jax.Array, other_bias: jax.Array, weights: jax.Array
) -> jax.Array:
    """logsumexp over all 2^n states z of the `own_bias` side of -F(z) (n = own_bias.shape[0] <= 24)."""
    num_units = own_bias.shape[0]
    chunk_bits = min(num_units, 12)
    num_chunks = 2 ** (num_units - chunk_bits)
    bit_positions = jnp.arange(num_units, dtype=jnp.int32)[None, :]

    @jax.checkpoint  # recompute each chunk's [2^12, n_other] activations in the backward pass
    def chunk_log_sum(chunk: jax.Array) -> jax.Array:
        index = chunk * (2**chunk_bits) + jnp.arange(2**chunk_bits, dtype=jnp.int32)[:, None]
        states = ((index >> bit_positions) & 1).astype(weights.dtype)  # [2^chunk_bits, n]
        return jax.nn.logsumexp(-_free_energy(own_bias, other_bias, weights, states))

    chunk_values = lax.map(chunk_log_sum, jnp.arange(num_chunks, dtype=jnp.int32))
    return jax.nn.logsumexp(chunk_values)  # max-shifted inside logsumexp


def right_field(params: RBMParams, z_left: jax.Array) -> jax.Array:
    """b + W^T zL: [..., nL] -> [..., nR] (full precision)."""
    return jnp.matmul(z_left, params.weights, precision=EXACT) + lift(params.right_bias, z_left.ndim)


def left_field(params: RBMParams, z_right: jax.Array) -> jax.Array:
    """a + W zR: [..., nR] -> [..., nL] (full precision)."""
    return jnp.matmul(z_right, params.weights.T, precision=EXACT) + lift(params.left_bias, z_right.ndim)


def _uniform_states(key: jax.Array, shape: tuple[int, ...], dtype) -> jax.Array:
    return bernoulli_sample(key, jnp.zeros(shape, dtype))


def _sweep(params: RBMParams, key: jax.Array, z_left: jax.Array, beta: jax.Array) -> ChainState:
    right_key, left_key = jax.random.split(key)
    z_right = bernoulli_sample(right_key, beta * right_field(params, z_left))
    z_left = bernoulli_sample(left_key, beta * left_field(params, z_right))
    return ChainState(z_left, z_right)


@jax.jit
def _gibbs_sweep_jit(params: RBMParams, key: jax.Array, z_left: jax.Array, beta: jax.Array):
    state = _sweep(params, key, z_left, beta)
    return state.z_left, state.z_right


@jax.jit
def _advance_jit(params: RBMParams, key: jax.Array, state: ChainState, num_sweeps: jax.Array) -> ChainState:
    one = jnp.ones((), params.weights.dtype)

    def body(step, carry):
        return _sweep(params, jax.random.fold_in(key, step), carry.z_left, one)

    return lax.fori_loop(0, num_sweeps, body, state)


def _zeros_right(params: RBMParams, num_chains: int) -> jax.Array:
    return jnp.zeros((num_chains, params.weights.shape[1]), params.weights.dtype)


def lift(vector: jax.Array, ndim: int) -> jax.Array:
    """[n] -> [1, ..., 1, n] with `ndim` axes (explicit broadcasting: tests use rank promotion 'raise')."""
    return vector.reshape((1,) * (ndim - 1) + vector.shape)


# ----------------------------------------------------------------------------------------------------------
# Input checks (public entry points; value checks only on concrete arrays)


def check_params(params: RBMParams, name: str = "params") -> None:
    if not isinstance(params, RBMParams):
        raise TypeError(f"{name} must be an RBMParams, got {type(params).__name__}")
    for field, value in zip(RBMParams._fields, params):
        if not isinstance(value, (jax.Array, np.ndarray)):
            raise TypeError(f"{name}.{field} must be a jax or numpy array, got {type(value).__name__}")
    a, b, w = params
    if w.ndim != 2 or a.ndim != 1 or b.ndim != 1 or w.shape != (a.shape[0], b.shape[0]):
        raise ValueError(
            f"{name}: expected left_bias [nL], right_bias [nR], weights [nL, nR]; "
            f"got left_bias {tuple(a.shape)}, "
            f"right_bias {tuple(b.shape)}, weights {tuple(w.shape)}"
        )
    if min(w.shape) < 1:
        raise ValueError(f"{name}: both sides need at least one unit, got weights {tuple(w.shape)}")
    for field, value in zip(RBMParams._fields, (a, b, w)):
        if not jnp.issubdtype(value.dtype, jnp.floating):
            raise TypeError(f"{name}.{field} must be floating point, got {value.dtype}")
        if value.dtype != w.dtype:
            raise TypeError(
                f"{name}: all fields must share one dtype, got {field} {value.dtype} vs weights {w.dtype}"
            )
        if not is_traced(value) and not np.all(np.isfinite(np.asarray(value))):
            raise ValueError(f"{name}.{field} {tuple(value.shape)} contains non-finite values")


def _check_states(params: RBMParams, **states) -> None:
    """z_left [..., nL] / z_right [..., nR], same leading axes, finite."""
    sizes = {"z_left": params.weights.shape[0], "z_right": params.weights.shape[1]}
    leading = None
    for name, z in states.items():
        shape = tuple(jnp.shape(z))
        if len(shape) < 1 or shape[-1] != sizes[name]:
            raise ValueError(
                f"{name} must have shape [..., {sizes[name]}] for weights {tuple(params.weights.shape)}, "
                f"got {shape}"
            )
        if leading is not None and shape[:-1] != leading:
            raise ValueError(
                f"z_left and z_right must share leading axes, got z_left {leading} + ... and z_right {shape}"
            )
        leading = shape[:-1]
        if not is_traced(z) and not np.all(np.isfinite(np.asarray(z))):
            raise ValueError(f"{name} {shape} contains non-finite values")


def _check_chain_state(
    params: RBMParams, z_left, z_right=None, *, num_chains: int | None = None, names=("z_left", "z_right")
) -> None:
    """z_left [C, nL] and (if given) z_right [C, nR] with the same C (= num_chains if given)."""
    num_left, num_right = params.weights.shape
    left_shape = tuple(jnp.shape(z_left))
    expected_chains = left_shape[0] if (num_chains is None and len(left_shape) == 2) else num_chains
    if left_shape != (expected_chains, num_left):
        raise ValueError(
            f"{names[0]} must have shape [num_chains, nL] = [{expected_chains}, {num_left}] for weights "
            f"{tuple(params.weights.shape)}, got {left_shape}"
        )
    if z_right is not None and tuple(jnp.shape(z_right)) != (left_shape[0], num_right):
        raise ValueError(
            f"{names[1]} must have shape [num_chains, nR] = [{left_shape[0]}, {num_right}] to match "
            f"{names[0]} {left_shape} and weights {tuple(params.weights.shape)}, "
            f"got {tuple(jnp.shape(z_right))}"
        )


def _check_binary(z, name: str) -> None:
    if not is_traced(z):
        values = np.asarray(z)
        if not np.all((values == 0) | (values == 1)):
            raise ValueError(f"{name} {values.shape} must hold only 0/1 values")


def _check_finite_scalar(value, name: str) -> None:
    if jnp.ndim(value) != 0:
        raise ValueError(f"{name} must be a scalar, got shape {jnp.shape(value)}")
    if not is_traced(value) and not math.isfinite(float(value)):
        raise ValueError(f"{name} must be finite, got {value!r}")


__all__ = [
    "MAX_ENUMERATED_UNITS",
    "ChainState",
    "RBMParams",
    "advance_chains",
    "energy",
    "exact_log_partition",
    "free_energy_left",
    "free_energy_right",
    "gibbs_sweep",
    "init_chains",
    "init_rbm_params",
    "log_prob_unnormalized",
    "sample",
    "swap_sides",
]
