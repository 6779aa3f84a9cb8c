"""Benchmark of generation: the cached sampler against the naive one, interleaved in one run.

    python -m pvpp.bench.sample [--output sample.json] [--quick] [--configs mnist_paper,cifar10_paper]
        [--rounds 2] [--naive-pixels N | --full]

Configurations: PixelVAE++ decoders of the paper, batch 16, random weights (sampling cost does not depend on
their values), latents drawn at random: `mnist_paper` (`pvpp.model.mnist_config()`: 28x28x1, nr_resnet 3, 64
filters, down-sampling, Bernoulli, 400 z1) and `cifar10_paper` (`cifar10_config()`: 32x32x3, nr_resnet 5, 128
filters, 10 logistics, z1, z2 and z3). Both samplers run through `pvpp.generation.sample.model_sampler`, the
code the sample command runs, with the same latents and key stream.

The naive sampler runs the whole decoder once per pixel, so one batch takes minutes. Unless `--full` is given,
it is timed over the first N pixels (N from `--naive-pixels`, default 64) and its time per batch is extrapolated
as (time for N pixels) * H * W / N: every pixel costs one identical decoder pass, so the cost is linear in N (the
JSON marks it `"extrapolated": true`). The cached sampler always samples the whole image. Each round times
naive then cached (odd rounds: cached first); the figures are medians over rounds, the ratio is of medians.
Every timing records the wall and process CPU seconds and the 1-minute load average before and after it; the
document carries the matmul peak measured first in the same process (`pvpp.bench.peak`). The samplers loop over
pixels, whose FLOPs XLA's cost analysis counts once, so no fraction of the peak is given for them.

Check on every run: the first N pixels of the cached images equal the naive sampler's (the whole images with
`--full`), bit for bit.
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np

from pvpp.bench.common import log, machine_info, measured, random_variables, write_result
from pvpp.bench.peak import matmul_peak
from pvpp.generation import sample
from pvpp.model import ModelConfig, PixelVAEPP, cifar10_config, mnist_config

CONFIGS = {
    "mnist_paper": (mnist_config(dropout_rate=0.0), 16),
    "cifar10_paper": (cifar10_config(dropout_rate=0.0), 16),
}
QUICK = {
    "mnist_quick": (
        mnist_config(dropout_rate=0.0, nr_resnet=1, nr_filters=8, num_concat_latents=8, rbm_num_left=4),
        2,
    ),
    "cifar10_quick": (
        cifar10_config(
            dropout_rate=0.0,
            image_shape=(8, 8, 3),
            nr_resnet=1,
            nr_filters=8,
            nr_logistic_mix=2,
            num_concat_latents=4,
            num_cond_latents=4,
            shared_latents_per_layer=1,
            rbm_num_left=8,
            encoder_filters=8,
            latent_map_channels=2,
        ),
        2,
    ),
}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=None, help="JSON file to write (default: stdout)")
    parser.add_argument("--quick", action="store_true", help="tiny configurations, whole images (smoke run)")
    parser.add_argument("--configs", default=None, help=f"comma-separated subset of {sorted(CONFIGS)}")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of naive and cached")
    parser.add_argument("--naive-pixels", type=int, default=64, help="pixels the naive sampler is timed over")
    parser.add_argument("--full", action="store_true", help="time the naive sampler over the whole image")
    args = parser.parse_args(argv)
    configs = QUICK if args.quick else CONFIGS
    if args.configs:
        unknown = sorted(set(args.configs.split(",")) - set(configs))
        if unknown:
            parser.error(f"--configs: unknown {unknown}; choose from {sorted(configs)}")
        configs = {name: configs[name] for name in args.configs.split(",")}
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    full = args.full or args.quick
    peak = matmul_peak(quick=args.quick)
    runs = [
        _run(name, config, batch, args.rounds, None if full else args.naive_pixels)
        for name, (config, batch) in configs.items()
    ]
    result = {
        "benchmark": "pvpp.bench.sample",
        "machine": machine_info(),
        "peak": peak,
        "rounds": args.rounds,
        "runs": runs,
        "load_average_1min_at_end": os.getloadavg()[0],
    }
    write_result(result, args.output)
    if args.output:
        log(f"wrote {args.output}")
    return result


def _run(name: str, config: ModelConfig, batch: int, rounds: int, naive_pixels: int | None) -> dict:
    height, width, _ = config.image_shape
    total = height * width
    num_pixels = total if naive_pixels is None else naive_pixels
    if not 1 <= num_pixels <= total:
        raise ValueError(f"--naive-pixels must be in [1, {total}] for {name}, got {num_pixels}")
    model = PixelVAEPP(config)
    x = jnp.zeros((1,) + config.image_shape)
    variables = random_variables(lambda x: model.init(jax.random.key(0), x, jax.random.key(1)), x, seed=0)
    num_params = int(sum(p.size for p in jax.tree.leaves(variables["params"]["decoder"])))
    z = jax.random.bernoulli(jax.random.key(2), 0.5, (batch, config.num_latents)).astype(jnp.float32)
    pixel_keys = sample.pixel_key_stream(jax.random.key(3), total)
    shape = (batch,) + config.image_shape
    decode = sample.model_decoder(config)
    cached_run = sample.model_sampler(config, "cached")

    def naive():
        return sample.autoregressive_sample_with_keys(
            decode, pixel_keys, shape, config.likelihood, variables, z, num_pixels=num_pixels
        )

    def cached():
        return cached_run(pixel_keys, variables, z)

    log(f"{name}: compiling (first calls)")
    naive_images, naive_first = measured(naive)
    cached_images, cached_first = measured(cached)
    flat = (batch, total, -1)
    identical = bool(
        np.array_equal(
            np.asarray(cached_images).reshape(flat)[:, :num_pixels],
            np.asarray(naive_images).reshape(flat)[:, :num_pixels],
        )
    )
    if not identical:
        raise RuntimeError(f"{name}: the cached sampler's images differ from the naive sampler's (same keys)")

    timings = {"naive": [], "cached": []}
    for r in range(rounds):
        for which in ("naive", "cached") if r % 2 == 0 else ("cached", "naive"):
            _, record = measured(naive if which == "naive" else cached)
            timings[which].append(record)
            log(
                f"{name}: round {r + 1}/{rounds} {which}: {record['wall_seconds']:.2f} s (load {record['load_1min_before']:.2f})"
            )
    scale = total / num_pixels  # naive: time for num_pixels -> time for the whole image
    naive_batch = float(np.median([t["wall_seconds"] for t in timings["naive"]])) * scale
    cached_batch = float(np.median([t["wall_seconds"] for t in timings["cached"]]))
    run = {
        "name": name,
        "model_config": config.to_dict(),
        "batch": batch,
        "decoder_params": num_params,
        "naive": {
            "pixels_timed": num_pixels,
            "extrapolated": num_pixels < total,
            "seconds_per_batch": naive_batch,
            "first_call": naive_first,
            "timings": timings["naive"],
        },
        "cached": {
            "seconds_per_batch": cached_batch,
            "seconds_per_image": cached_batch / batch,
            "first_call": cached_first,
            "timings": timings["cached"],
        },
        "speedup": naive_batch / cached_batch,
        "identical_images": "whole images" if num_pixels == total else f"first {num_pixels} pixels",
        "busy": any(t["busy"] for ts in timings.values() for t in ts),
    }
    log(
        f"{name}: batch {batch}, {num_params:,} decoder params: naive {naive_batch:.1f} s per batch"
        f"{' (extrapolated from %d pixels)' % num_pixels if num_pixels < total else ''}, cached {cached_batch:.2f} s"
        f" -> {run['speedup']:.0f}x"
    )
    return run


if __name__ == "__main__":
    main()
