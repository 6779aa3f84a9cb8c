"""Benchmark of autoregressive generation: time per image, compile time separate.

    python -m pvpp.bench.sample [--output sample.json] [--quick] [--pixels N | --full] [--target-seconds S]

Configurations: the paper's MNIST decoder (28x28x1, nr_resnet 3, 64 filters, downsampling, Bernoulli,
batch 16) and a CIFAR-10-shaped one (32x32x3, nr_resnet 5, 128 filters, 10 logistic components = 100 outputs,
batch 4), with freshly initialised (data-dependent init) parameters: sampling cost does not depend on their
values. `pvpp.sample.autoregressive_sample_with_keys` runs the whole decoder once per pixel inside one
`lax.fori_loop`; it is compiled ahead of time (`.lower(...).compile()`, reported as compile time), then run.

A full sample costs H * W decoder passes, which on a small CPU can take many minutes. Unless `--full` is
given, only the first N pixels in raster order are sampled (N from `--pixels`, or chosen so that the run
takes about `--target-seconds`, from a timed single decoder pass) and the time per image is extrapolated as
(time for N pixels) / N * H * W / B: every pixel costs one identical decoder pass, so the cost is linear in
N. The JSON marks such figures `"extrapolated": true`.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from pvpp import likelihoods, sample
from pvpp.bench.common import log, machine_info, timed, write_result
from pvpp.pixelcnn import PixelCNNPP

CONFIGS = {
    "mnist_paper": dict(shape=(16, 28, 28, 1), nr_resnet=3, nr_filters=64, nr_mix=None, downsample=True),
    "cifar10_shaped": dict(shape=(4, 32, 32, 3), nr_resnet=5, nr_filters=128, nr_mix=10, downsample=True),
}
QUICK = {
    "mnist_quick": dict(shape=(2, 28, 28, 1), nr_resnet=1, nr_filters=8, nr_mix=None, downsample=True),
    "cifar10_quick": dict(shape=(2, 32, 32, 3), nr_resnet=1, nr_filters=8, nr_mix=2, downsample=True),
}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=None, help="JSON file to write (default: stdout)")
    parser.add_argument("--quick", action="store_true", help="tiny configurations, all pixels (smoke run)")
    parser.add_argument("--full", action="store_true", help="sample every pixel (no extrapolation)")
    parser.add_argument("--pixels", type=int, default=None, help="pixels to sample per configuration")
    parser.add_argument(
        "--target-seconds", type=float, default=60.0, help="run length per configuration without --pixels"
    )
    args = parser.parse_args(argv)
    if args.full and args.pixels is not None:
        parser.error("--full and --pixels exclude each other")
    configs = QUICK if args.quick else CONFIGS
    full = args.full or args.quick
    runs = [_run(name, cfg, full, args.pixels, args.target_seconds) for name, cfg in configs.items()]
    result = {"benchmark": "pvpp.bench.sample", "machine": machine_info(), "runs": runs}
    write_result(result, args.output)
    if args.output:
        log(f"wrote {args.output}")
    return result


def _run(name: str, cfg: dict, full: bool, pixels: int | None, target_seconds: float) -> dict:
    shape = cfg["shape"]
    batch, height, width, channels = shape
    total = height * width
    binary = cfg["nr_mix"] is None
    likelihood = "bernoulli" if binary else "logistic_mixture"
    out_channels = channels if binary else likelihoods.num_mixture_params(channels, cfg["nr_mix"])
    model = PixelCNNPP(
        cfg["nr_resnet"], cfg["nr_filters"], out_channels, dropout_rate=0.0, downsample=cfg["downsample"]
    )
    init_x = jax.random.uniform(jax.random.key(0), shape, minval=-1.0, maxval=1.0)
    variables = jax.jit(model.init)(jax.random.key(1), init_x)
    num_params = int(sum(p.size for p in jax.tree.leaves(variables)))

    def decode(x, variables):
        return model.apply(variables, x)

    # One decoder pass at this batch: the unit of cost, and the basis of the automatic pixel count.
    forward = jax.jit(decode)
    _, forward_compile_seconds = timed(lambda: forward(init_x, variables))
    forward_seconds = min(timed(lambda: forward(init_x, variables))[1] for _ in range(3))

    if full:
        num_pixels = total
    elif pixels is not None:
        num_pixels = pixels
    else:
        num_pixels = int(np.clip(round(target_seconds / forward_seconds), 1, total))
    if not 1 <= num_pixels <= total:
        raise ValueError(f"--pixels must be in [1, {total}] for {name}, got {num_pixels}")

    keys = sample.pixel_key_stream(jax.random.key(2), total)
    start = time.perf_counter()
    lowered = sample.autoregressive_sample_with_keys.lower(
        decode, keys, shape, likelihood, variables, num_pixels=num_pixels
    )
    trace_seconds = time.perf_counter() - start
    start = time.perf_counter()
    compiled = lowered.compile()
    compile_seconds = time.perf_counter() - start

    samples, run_seconds = timed(lambda: compiled(keys, variables))
    if run_seconds < 5.0:  # short runs: take the better of two, as the first may include one-off allocation
        other_keys = sample.pixel_key_stream(jax.random.key(3), total)
        run_seconds = min(run_seconds, timed(lambda: compiled(other_keys, variables))[1])
    _check_samples(np.asarray(samples), likelihood, num_pixels)

    seconds_per_pixel_pass = run_seconds / num_pixels
    seconds_per_batch = seconds_per_pixel_pass * total
    run = {
        "name": name,
        "likelihood": likelihood,
        "image_shape": [height, width, channels],
        "batch": batch,
        "nr_resnet": cfg["nr_resnet"],
        "nr_filters": cfg["nr_filters"],
        "out_channels": out_channels,
        "downsample": cfg["downsample"],
        "num_params": num_params,
        "trace_seconds": trace_seconds,
        "compile_seconds": compile_seconds,
        "forward_compile_seconds": forward_compile_seconds,
        "forward_seconds": forward_seconds,
        "pixels_total": total,
        "pixels_timed": num_pixels,
        "seconds_for_timed_pixels": run_seconds,
        "seconds_per_pixel_pass": seconds_per_pixel_pass,
        "loop_pass_over_forward": seconds_per_pixel_pass / forward_seconds,
        "extrapolated": num_pixels < total,
        "seconds_per_batch": seconds_per_batch,
        "seconds_per_image": seconds_per_batch / batch,
        "images_per_hour": 3600.0 * batch / seconds_per_batch,
    }
    label = f"extrapolated from {num_pixels}/{total} pixels" if run["extrapolated"] else "all pixels"
    log(
        f"{name}: {height}x{width}x{channels}, batch {batch}, {num_params:,} params: "
        f"compile {compile_seconds:.1f} s (+ trace {trace_seconds:.1f} s); "
        f"{seconds_per_pixel_pass * 1e3:.0f} ms per pixel pass "
        f"(one forward pass {forward_seconds * 1e3:.0f} ms); {seconds_per_batch:.0f} s per batch, "
        f"{run['seconds_per_image']:.1f} s per image ({label})"
    )
    return run


def _check_samples(samples: np.ndarray, likelihood: str, num_pixels: int) -> None:
    """Guards against timing a broken run: sampled pixels hold valid values, the rest are untouched zeros."""
    flat = samples.reshape(samples.shape[0], -1, samples.shape[-1])
    sampled, rest = flat[:, :num_pixels], flat[:, num_pixels:]
    if likelihood == "bernoulli":
        valid = np.all(np.abs(sampled) == 1.0)
    else:
        valid = bool(np.all(np.abs(sampled) <= 1.0 + 1e-6))
    if not valid or np.any(rest != 0.0):
        raise RuntimeError(f"the sampler produced invalid values ({likelihood}, first {num_pixels} pixels)")


if __name__ == "__main__":
    main()
