"""Benchmark of the RBM prior: block-Gibbs throughput and AIS accuracy / time.

    python -m pvpp.bench.rbm [--output rbm.json] [--quick]

(a) Gibbs: chain-sweeps per second at 1000 chains for 200+200 and 896+896 units, for `rbm.advance_chains`
    and for a plain NumPy implementation of the same sweep in the same process, with the sweep's matmul FLOPs
    (4 C nL nR per sweep) per second as a fraction of the float32 matmul peak measured first in the same process
    (`pvpp.bench.peak`), and the time of the sweep's two matmuls alone.
(b) AIS: error against exact log Z and wall time at the training setting (1000 temperatures) and the
    evaluation setting (10x: 10000 temperatures), 500 chains, on RBMs small enough to enumerate (20 + 200
    random, and a planted 16 + 100 RBM with six modes). Times exclude compilation (each run compiles first).

Each timed figure carries the `measured` record of its timed part (wall and process CPU seconds, 1-minute load
before and after). Writes one JSON document (to --output, or stdout) and prints a readable summary to stderr.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from pvpp.bench.common import log, machine_info, measured, timed, write_result
from pvpp.bench.peak import fraction_of_peak, matmul_peak
from pvpp.priors import ais, rbm

_NUM_CHAINS = 1000


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=None, help="JSON file to write (default: stdout)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
    args = parser.parse_args(argv)

    peak = matmul_peak(quick=args.quick)
    sizes = [(64, 64)] if args.quick else [(200, 200), (896, 896)]
    gibbs = [_gibbs_throughput(left, right, peak, args.quick) for left, right in sizes]
    ais_runs = []
    for name, params in _ais_rbms(args.quick):
        exact, exact_record = measured(lambda: float(_exact64(params)))
        for setting, num_betas in (("training", 1000), ("evaluation", 10000)):
            num_betas = 100 if args.quick else num_betas
            ais_runs.append(_ais_run(name, params, exact, exact_record, setting, num_betas))

    result = {
        "benchmark": "pvpp.bench.rbm",
        "machine": machine_info(),
        "peak": peak,
        "gibbs": gibbs,
        "ais": ais_runs,
    }
    write_result(result, args.output)
    return result


# ----------------------------------------------------------------------------------------------------------
# (a) Gibbs throughput


def _gibbs_throughput(num_left: int, num_right: int, peak: dict, quick: bool) -> dict:
    params = _random_params(0, num_left, num_right, 0.1)
    flops_per_sweep = 4.0 * _NUM_CHAINS * num_left * num_right  # two [C, nL] x [nL, nR]-sized matmuls
    target_seconds = 0.05 if quick else 2.0

    # JAX: compile once (num_sweeps is traced), calibrate the sweep count, then time.
    state = rbm.init_chains(params, jax.random.key(0), _NUM_CHAINS)

    def advance(seed, sweeps):
        return jax.block_until_ready(rbm.advance_chains(params, jax.random.key(seed), state, sweeps))

    advance(1, 2)
    probe = _time_best(lambda: advance(2, 5), 1) / 5
    num_sweeps = max(5, int(target_seconds / probe))
    seconds, jax_record = measured(lambda: _time_best(lambda: advance(3, num_sweeps), 2))
    jax_rate = _NUM_CHAINS * num_sweeps / seconds

    # The sweep's two matmuls alone (same shapes and dtype), to separate matmul time from sampling time.
    z_left, z_right = state.z_left, state.z_right
    matmuls = jax.jit(lambda zl, zr, w: (zl @ w, zr @ w.T))
    jax.block_until_ready(matmuls(z_left, z_right, params.weights))
    reps = max(3, num_sweeps // 2)
    matmul_seconds, matmul_record = measured(
        lambda: (
            _time_best(
                lambda: [
                    jax.block_until_ready(matmuls(z_left, z_right, params.weights)) for _ in range(reps)
                ],
                2,
            )
            / reps
        )
    )

    # Plain NumPy, the same sweep: zR ~ Bern(sigmoid(b + zL W)), zL ~ Bern(sigmoid(a + zR W^T)).
    a, b, w = (np.asarray(v) for v in params)
    rng = np.random.default_rng(0)
    z_np = np.asarray(state.z_left)
    numpy_probe = _time_best(lambda: _numpy_sweeps(a, b, w, z_np, rng, 2), 1) / 2
    numpy_sweeps = max(2, int(target_seconds / 2 / numpy_probe))
    numpy_seconds, numpy_record = measured(
        lambda: _time_best(lambda: _numpy_sweeps(a, b, w, z_np, rng, numpy_sweeps), 2)
    )
    numpy_rate = _NUM_CHAINS * numpy_sweeps / numpy_seconds
    jax_gflops = flops_per_sweep * num_sweeps / seconds / 1e9
    numpy_gflops = flops_per_sweep * numpy_sweeps / numpy_seconds / 1e9

    row = {
        "num_left": num_left,
        "num_right": num_right,
        "num_chains": _NUM_CHAINS,
        "jax_chain_sweeps_per_second": jax_rate,
        "jax_seconds_per_sweep": seconds / num_sweeps,
        "jax_gflops": jax_gflops,
        "jax_fraction_of_peak": fraction_of_peak(jax_gflops, peak),
        "jax_measurement": jax_record,
        "matmuls_only_seconds_per_sweep": matmul_seconds,
        "matmuls_only_measurement": matmul_record,
        "numpy_chain_sweeps_per_second": numpy_rate,
        "numpy_gflops": numpy_gflops,
        "numpy_fraction_of_peak": fraction_of_peak(numpy_gflops, peak),
        "numpy_measurement": numpy_record,
        "jax_speedup_over_numpy": jax_rate / numpy_rate,
        "timed_sweeps": {"jax": num_sweeps, "numpy": numpy_sweeps},
    }
    log(
        f"Gibbs {num_left}+{num_right}, {_NUM_CHAINS} chains: JAX {jax_rate:,.0f} chain-sweeps/s "
        f"({row['jax_fraction_of_peak']:.0%} of matmul peak; "
        f"matmuls alone {matmul_seconds * 1e3:.2f} ms "
        f"of {seconds / num_sweeps * 1e3:.2f} ms per sweep), NumPy {numpy_rate:,.0f} chain-sweeps/s "
        f"({row['numpy_fraction_of_peak']:.0%}); JAX / NumPy = {row['jax_speedup_over_numpy']:.2f}"
    )
    return row


def _numpy_sweeps(a, b, w, z_left, rng, num_sweeps):
    for _ in range(num_sweeps):
        z_right = _numpy_bernoulli(rng, z_left @ w + b)
        z_left = _numpy_bernoulli(rng, z_right @ w.T + a)
    return z_left, z_right


def _numpy_bernoulli(rng, logits):
    probabilities = 1.0 / (1.0 + np.exp(-logits))
    return (rng.random(logits.shape, dtype=np.float32) < probabilities).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------
# (b) AIS


def _ais_rbms(quick: bool):
    if quick:
        return [("random 10+50, weight scale 0.3", _random_params(1, 10, 50, 0.3))]
    rng = np.random.default_rng(2)
    patterns_left = rng.choice([-1.0, 1.0], (3, 16))
    patterns_right = rng.choice([-1.0, 1.0], (3, 100))
    coupling = 0.1 * patterns_left.T @ patterns_right  # spins: -E = s_L^T J s_R; six modes +-p_k
    planted = rbm.RBMParams(
        jnp.asarray(-2.0 * coupling.sum(1), jnp.float32),
        jnp.asarray(-2.0 * coupling.sum(0), jnp.float32),
        jnp.asarray(4.0 * coupling, jnp.float32),
    )
    return [
        ("random 20+200, weight scale 0.3", _random_params(1, 20, 200, 0.3)),
        ("planted 16+100, 6 modes", planted),
    ]


def _ais_run(name, params, exact, exact_record, setting, num_betas) -> dict:
    exact_seconds = exact_record["wall_seconds"]
    num_chains = 500
    run = lambda key: jax.block_until_ready(
        ais.ais_log_partition(params, key, num_chains=num_chains, num_betas=num_betas)
    )
    run(jax.random.key(0))  # compile
    result, record = measured(lambda: run(jax.random.key(1)))
    seconds = record["wall_seconds"]
    row = {
        "rbm": name,
        "setting": setting,
        "num_betas": num_betas,
        "num_chains": num_chains,
        "sweeps_per_beta": 1,
        "base": "uniform",
        "schedule": "linear",
        "exact_log_partition": exact,
        "exact_seconds_float64": exact_seconds,
        "exact_measurement": exact_record,
        "ais_log_partition": float(result.log_partition),
        "error_nats": float(result.log_partition) - exact,
        "interval": [float(result.log_partition_lower), float(result.log_partition_upper)],
        "effective_sample_size": float(result.effective_sample_size),
        "seconds": seconds,
        "measurement": record,
    }
    log(
        f"AIS {name}, {setting} ({num_betas} temperatures, {num_chains} chains): "
        f"error {row['error_nats']:+.4f} nats, "
        f"interval [{row['interval'][0] - exact:+.3f}, {row['interval'][1] - exact:+.3f}] around exact, "
        f"ESS {row['effective_sample_size']:.0f}, {seconds:.2f} s (exact, float64: {exact_seconds:.2f} s)"
    )
    return row


# ----------------------------------------------------------------------------------------------------------
# Helpers


def _random_params(seed, num_left, num_right, scale):
    rng = np.random.default_rng(seed)
    return rbm.RBMParams(
        jnp.asarray(0.5 * rng.normal(size=num_left), jnp.float32),
        jnp.asarray(0.5 * rng.normal(size=num_right), jnp.float32),
        jnp.asarray(scale * rng.normal(size=(num_left, num_right)), jnp.float32),
    )


def _exact64(params):
    with jax.enable_x64(True):
        return rbm.exact_log_partition(jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), params))


def _time_best(fn, repeats: int) -> float:
    return min(timed(fn)[1] for _ in range(repeats))


if __name__ == "__main__":
    main()
