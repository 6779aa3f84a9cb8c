"""Benchmark of the test-set evaluation (`pvpp.evaluation.evaluate`): seconds per image of the IWAE pass, and
AIS for log Z.

    python -m pvpp.bench.evaluate [--output evaluate.json] [--quick] [--num_samples K] [--batch_size B]
        [--chunk_size C] [--target_samples 1000] [--ais_betas 1000]

Model: the paper's MNIST PixelVAE++ (28x28x1, decoder nr_resnet 3, 64 filters, downsampling, Bernoulli; 400 z1
latents, RBM 200 + 200), with random weights of the right shapes (`bench.common.random_variables`): the cost of
the pass does not depend on the parameter values. One compiled batch (`evaluate.importance_weighted_pass` on B images, K samples each, C decoded
at a time) is timed after its compilation. The cost is one down path per image plus K up paths, so it is linear
in K for K >> 1: the JSON gives the measured seconds per image at K and the extrapolation to
--target_samples (the paper's k = 1000), to the Caltech-101 Silhouettes test set (2307 images) and the MNIST
test set (10000). AIS (1000 chains, 1 sweep per temperature) is timed at --ais_betas temperatures and
extrapolated linearly to the evaluation's 10000. Extrapolated figures are marked so. Both parts use every device
of the process, as the evaluation does (one batch per device; AIS's chains split over them): on a CPU,
XLA_FLAGS=--xla_force_host_platform_device_count=N gives N devices.

Each timed figure carries the `measured` record of its timed part (wall and process CPU seconds, 1-minute load
before and after); the document carries the matmul peak measured first in the same process (`pvpp.bench.peak`).
The IWAE pass runs its samples in a loop, whose FLOPs XLA's cost analysis counts once, so no fraction of the peak
is given for it.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from pvpp.bench.common import log, machine_info, measured, random_variables, timed, write_result
from pvpp.bench.peak import matmul_peak
from pvpp.evaluation import evaluate
from pvpp.model import PixelVAEPP, mnist_config, rbm_params
from pvpp.priors import ais

TEST_SET_SIZES = {"caltech101_silhouettes": 2307, "mnist": 10000}
EVAL_AIS_BETAS = 10000
EVAL_AIS_CHAINS = 1000


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=None, help="JSON file to write (default: stdout)")
    parser.add_argument("--quick", action="store_true", help="a tiny model and small K, for a smoke run")
    parser.add_argument("--num_samples", type=int, default=None, help="K measured (default 100; quick 4)")
    parser.add_argument("--batch_size", type=int, default=4, help="images per compiled batch")
    parser.add_argument(
        "--chunk_size", type=int, default=None, help="samples decoded at once (default min(K, 100))"
    )
    parser.add_argument("--target_samples", type=int, default=1000, help="K to extrapolate to")
    parser.add_argument(
        "--ais_betas", type=int, default=None, help="AIS temperatures timed (default 1000; quick 20)"
    )
    args = parser.parse_args(argv)
    num_samples = args.num_samples or (4 if args.quick else 100)
    ais_betas = args.ais_betas or (20 if args.quick else 1000)
    chunk_size = args.chunk_size or min(num_samples, 100)
    if num_samples % chunk_size:
        parser.error(f"--chunk_size ({chunk_size}) must divide --num_samples ({num_samples})")
    if args.quick:
        config = mnist_config(
            image_shape=(8, 8, 1),
            nr_resnet=1,
            nr_filters=4,
            num_concat_latents=8,
            rbm_num_left=4,
            encoder_filters=4,
            latent_map_channels=2,
        )
    else:
        config = mnist_config()
    config = config.replace(dropout_rate=0.0)
    peak = matmul_peak(quick=args.quick)
    run = _run(config, args.batch_size, num_samples, chunk_size, args.target_samples, ais_betas, args.quick)
    result = {
        "benchmark": "pvpp.bench.evaluate",
        "machine": machine_info(),
        "peak": peak,
        "quick": args.quick,
        "run": run,
    }
    write_result(result, args.output)
    if args.output:
        log(f"wrote {args.output}")
    return result


def _run(config, batch_size, num_samples, chunk_size, target_samples, ais_betas, quick) -> dict:
    model = PixelVAEPP(config)
    rng = np.random.default_rng(0)
    num_images = batch_size * jax.local_device_count()  # one batch per device
    images = (rng.uniform(size=(num_images,) + config.image_shape) < 0.3).astype(np.uint8)
    x = jnp.asarray(images[:batch_size], jnp.float32) * 2.0 - 1.0
    # Random weights of the right shapes (the pass's cost does not depend on their values): no init to compile.
    params = random_variables(lambda x: model.init(jax.random.key(0), x, jax.random.key(1)), x)["params"]
    num_params = int(sum(p.size for p in jax.tree.leaves(params)))
    indices = np.arange(num_images)

    def iwae_pass(seed):
        return evaluate.importance_weighted_pass(
            config,
            params,
            images,
            indices,
            jax.random.key(seed),
            num_samples=num_samples,
            chunk_size=chunk_size,
            batch_size=batch_size,
        )

    first, compile_seconds = timed(lambda: iwae_pass(0))  # compilation + one run
    if not np.all(np.isfinite(first["log_likelihood_unnormalized"])):
        raise RuntimeError("the IWAE pass produced non-finite values")
    times, iwae_record = measured(lambda: [timed(lambda: iwae_pass(seed))[1] for seed in (1, 2)])
    batch_seconds = float(min(times))
    per_image = batch_seconds / num_images
    per_image_target = per_image * target_samples / num_samples

    prior = rbm_params(params)
    ais_chains = 100 if quick else EVAL_AIS_CHAINS

    def run_ais(seed):
        result = ais.ais_log_partition(
            prior, jax.random.key(seed), num_chains=ais_chains, num_betas=ais_betas, devices=jax.devices()
        )
        return result.log_partition

    _, ais_compile_seconds = timed(lambda: run_ais(0))
    _, ais_record = measured(lambda: run_ais(1))
    ais_seconds = ais_record["wall_seconds"]
    ais_eval_seconds = ais_seconds * (EVAL_AIS_BETAS - 1) / (ais_betas - 1)

    run = {
        "devices": jax.device_count(),
        "model": config.to_dict(),
        "num_params": num_params,
        "batch_size": batch_size,
        "images_per_round": num_images,
        "num_samples": num_samples,
        "chunk_size": chunk_size,
        "compile_seconds_including_first_run": compile_seconds,
        "batch_seconds": batch_seconds,
        "measurement": iwae_record,
        "seconds_per_image": per_image,
        "decoder_up_passes_per_second": num_images * num_samples / batch_seconds,
        "target_samples": target_samples,
        "seconds_per_image_at_target": per_image_target,
        "extrapolated": target_samples != num_samples,
        "test_set_hours_at_target": {
            name: size * per_image_target / 3600.0 for name, size in TEST_SET_SIZES.items()
        },
        "ais": {
            "num_chains": ais_chains,
            "num_betas_timed": ais_betas,
            "compile_seconds_including_first_run": ais_compile_seconds,
            "seconds": ais_seconds,
            "measurement": ais_record,
            "seconds_at_10000_betas": ais_eval_seconds,
            "extrapolated": ais_betas != EVAL_AIS_BETAS,
        },
    }
    hours = run["test_set_hours_at_target"]
    log(
        f"IWAE on {jax.device_count()} device(s): {per_image:.2f} s per image at k = {num_samples} (batch "
        f"{batch_size} per device, chunk {chunk_size}, "
        f"{run['decoder_up_passes_per_second']:.0f} up passes/s, compile {compile_seconds:.0f} s); "
        f"k = {target_samples}: {per_image_target:.1f} s per image -> Caltech-101 test "
        f"{hours['caltech101_silhouettes']:.1f} h, MNIST test {hours['mnist']:.1f} h"
        f"{' (extrapolated)' if run['extrapolated'] else ''}"
    )
    log(
        f"AIS ({ais_chains} chains on {jax.device_count()} device(s)): {ais_seconds:.1f} s for {ais_betas} "
        "temperatures -> "
        f"{ais_eval_seconds:.0f} s for {EVAL_AIS_BETAS}"
    )
    return run


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    log(f"total {time.perf_counter() - start:.0f} s")
