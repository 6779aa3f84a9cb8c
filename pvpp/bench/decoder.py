"""Benchmark of the PixelCNN++ decoder: forward + backward throughput (images/s), compile time separate.

    python -m pvpp.bench.decoder [--output decoder.json] [--quick] [--steps N]

Configurations: the paper's MNIST decoder (28x28x1, nr_resnet 3, 64 filters, downsampling, Bernoulli, batch 16)
and a CIFAR-10-shaped one (32x32x3, nr_resnet 5, 128 filters, 10 logistic components, batch 8). One step is
`jax.value_and_grad` of the mean negative log-likelihood (nats) with dropout on, compiled ahead of time (lowering
+ compilation is the compile time), run once, then `--steps` calls are timed one by one (median and best). The
step is compiled twice, with the convolution forms of `pvpp.nn.conv_forms` (its shipped table) and with XLA's
convolution everywhere, and the two are timed interleaved (one call of each per round): `speedup_over_xla`.

Next to each figure: the `measured` record of the timed steps (wall and process CPU seconds, 1-minute load before
and after), the step's FLOPs from XLA's cost analysis and the achieved GFLOP/s as a fraction of the float32
matmul peak measured first in the same process (`pvpp.bench.peak`).
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from pvpp.bench.common import log, machine_info, measured, random_variables, timed, write_result
from pvpp.bench.flops import achieved
from pvpp.bench.peak import matmul_peak
from pvpp.model import likelihoods
from pvpp.model.pixelcnn import PixelCNNPP
from pvpp.nn import conv_forms

#: The convolution policies compared, interleaved: the shipped table's forms, and XLA's convolution everywhere.
POLICIES = ("table", "xla")

CONFIGS = {
    "mnist_paper": dict(shape=(16, 28, 28, 1), nr_resnet=3, nr_filters=64, nr_mix=None, downsample=True),
    "cifar10_shaped": dict(shape=(8, 32, 32, 3), nr_resnet=5, nr_filters=128, nr_mix=10, downsample=True),
}
QUICK = {
    "mnist_quick": dict(shape=(2, 8, 8, 1), nr_resnet=1, nr_filters=4, nr_mix=None, downsample=True),
    "cifar10_quick": dict(shape=(2, 8, 8, 3), nr_resnet=1, nr_filters=4, nr_mix=2, downsample=True),
}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=None, help="JSON file to write (default: stdout)")
    parser.add_argument("--quick", action="store_true", help="tiny configurations, for a smoke run")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per configuration")
    args = parser.parse_args(argv)
    configs = QUICK if args.quick else CONFIGS
    steps = args.steps or (2 if args.quick else 10)
    peak = matmul_peak(quick=args.quick)
    runs = [_run(name, cfg, steps, peak) for name, cfg in configs.items()]
    result = {
        "benchmark": "pvpp.bench.decoder",
        "machine": machine_info(),
        "peak": peak,
        "steps": steps,
        "runs": runs,
    }
    write_result(result, args.output)
    return result


def _run(name: str, cfg: dict, steps: int, peak: dict) -> dict:
    shape = cfg["shape"]
    binary = cfg["nr_mix"] is None
    out_channels = 1 if binary else likelihoods.num_mixture_params(shape[-1], cfg["nr_mix"])
    model = PixelCNNPP(
        cfg["nr_resnet"], cfg["nr_filters"], out_channels, dropout_rate=0.5, downsample=cfg["downsample"]
    )
    rng = np.random.default_rng(0)
    if binary:
        data = jnp.asarray(rng.uniform(size=shape) < 0.3, jnp.float32)
        x = data * 2.0 - 1.0
    else:
        x = likelihoods.from_uint8(jnp.asarray(rng.integers(0, 256, size=shape, dtype=np.uint8)))
    # Random weights of the right shapes (the step's cost does not depend on their values): no init to compile.
    params = random_variables(model.init, jax.random.key(0), x)
    num_params = sum(p.size for p in jax.tree.leaves(params))

    @jax.jit
    def step(params, x, key):
        def loss(params):
            out = model.apply(params, x, train=True, rngs={"dropout": key})
            log_prob = (
                likelihoods.bernoulli_log_prob(out, (x + 1) / 2)
                if binary
                else likelihoods.logistic_mixture_log_prob(out, x)
            )
            return -jnp.mean(log_prob)

        return jax.value_and_grad(loss)(params)

    key = jax.random.key(1)
    # The step compiled twice: with the convolution forms of pvpp.nn.conv_forms' table ('table') and with XLA's
    # convolution everywhere ('xla'); then timed interleaved, one call of each per round.
    compiled, compile_seconds, first_seconds, choices = {}, {}, {}, {}
    for policy in POLICIES:
        with conv_forms.policy(policy), conv_forms.recording() as record:
            compiled[policy], compile_seconds[policy] = timed(
                lambda: jax.jit(lambda *a: step(*a)).lower(params, x, key).compile()
            )
        choices[policy] = conv_forms.metadata(record)["layers"]
    # The first calls only after both compiles: a policy change clears JAX's caches, and the next call of an
    # executable compiled before that pays a one-time cost (measured: 0.1-0.2 s on the quick configurations).
    for policy in POLICIES:
        _, first_seconds[policy] = timed(lambda: compiled[policy](params, x, key))
    times = {policy: [] for policy in POLICIES}

    def interleaved():
        for i in range(steps):
            for policy in POLICIES:
                times[policy].append(timed(lambda: compiled[policy](params, x, jax.random.fold_in(key, i)))[1])

    _, record = measured(interleaved)
    median = {policy: float(np.median(times[policy])) for policy in POLICIES}
    run = {
        "name": name,
        "image_shape": list(shape[1:]),
        "batch": shape[0],
        "nr_resnet": cfg["nr_resnet"],
        "nr_filters": cfg["nr_filters"],
        "likelihood": "bernoulli" if binary else f"logistic_mixture({cfg['nr_mix']})",
        "num_params": int(num_params),
        "compile_seconds": compile_seconds["table"],
        "compile_seconds_xla": compile_seconds["xla"],
        "first_step_seconds": first_seconds["table"],
        "step_seconds_median": median["table"],
        "step_seconds_min": float(np.min(times["table"])),
        "step_seconds_median_xla": median["xla"],
        "speedup_over_xla": median["xla"] / median["table"],
        "images_per_second": shape[0] / median["table"],
        **achieved(compiled["table"], median["table"], peak),
        "conv_forms": choices["table"],
        "measurement": record,
    }
    gflops = (
        "?"
        if run["gflops"] is None
        else f"{run['gflops']:.1f} GFLOP/s, {run['fraction_of_peak']:.0%} of peak"
    )
    log(
        f"{name}: {run['images_per_second']:.1f} images/s (fwd+bwd, batch {shape[0]}, median of {steps}; "
        f"{gflops}), {run['speedup_over_xla']:.2f}x the step with XLA's convolution everywhere "
        f"({1e3 * median['table']:.1f} vs {1e3 * median['xla']:.1f} ms, interleaved), compile "
        f"{compile_seconds['table']:.1f} s, {num_params / 1e6:.2f} M params"
    )
    return run


if __name__ == "__main__":
    main()
