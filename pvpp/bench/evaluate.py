"""Benchmark of the test-set evaluation (`pvpp.evaluate`): seconds per image of the IWAE pass, and AIS for log Z.

    python -m pvpp.bench.evaluate [--output evaluate.json] [--quick] [--num_samples K] [--batch_size B]
        [--chunk_size C] [--target_samples 1000] [--ais_betas 1000]

Model: the paper's MNIST PixelVAE++ (28x28x1, decoder nr_resnet 3, 64 filters, downsampling, Bernoulli; 400 z1
latents, RBM 200 + 200), freshly initialised (data-dependent init): the cost of the pass does not depend on the
parameter values. One compiled batch (`evaluate.importance_weighted_pass` on B images, K samples each, C decoded
at a time) is timed after its compilation. The cost is one down path per image plus K up paths, so it is linear
in K for K >> 1: the JSON gives the measured seconds per image at K and the extrapolation to
--target_samples (the paper's k = 1000), to the Caltech-101 Silhouettes test set (2307 images) and the MNIST
test set (10000). AIS (1000 chains, 1 sweep per temperature) is timed at --ais_betas temperatures and
extrapolated linearly to the evaluation's 10000. Extrapolated figures are marked so.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from pvpp import evaluate
from pvpp.bench.common import log, machine_info, timed, write_result
from pvpp.model import PixelVAEPP, mnist_config, rbm_params
from pvpp.priors import ais

TEST_SET_SIZES = {"caltech101_silhouettes": 2307, "mnist": 10000}
EVAL_AIS_BETAS = 10000
EVAL_AIS_CHAINS = 1000


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=None, help="JSON file to write (default: stdout)")
    parser.add_argument("--quick", action="store_true", help="a tiny model and small K, for a smoke run")
    parser.add_argument("--num_samples", type=int, default=None, help="K measured (default 100; quick 10)")
    parser.add_argument("--batch_size", type=int, default=4, help="images per compiled batch")
    parser.add_argument("--chunk_size", type=int, default=None, help="samples decoded at once (default min(K, 100))")
    parser.add_argument("--target_samples", type=int, default=1000, help="K to extrapolate to")
    parser.add_argument("--ais_betas", type=int, default=1000, help="AIS temperatures timed")
    args = parser.parse_args(argv)
    num_samples = args.num_samples or (10 if args.quick else 100)
    chunk_size = args.chunk_size or min(num_samples, 100)
    if num_samples % chunk_size:
        parser.error(f"--chunk_size ({chunk_size}) must divide --num_samples ({num_samples})")
    if args.quick:
        config = mnist_config(nr_resnet=1, nr_filters=8, num_concat_latents=16, rbm_num_left=8, encoder_filters=8)
    else:
        config = mnist_config()
    config = config.replace(dropout_rate=0.0)
    run = _run(config, args.batch_size, num_samples, chunk_size, args.target_samples, args.ais_betas, args.quick)
    result = {"benchmark": "pvpp.bench.evaluate", "machine": machine_info(), "quick": args.quick, "run": run}
    write_result(result, args.output)
    if args.output:
        log(f"wrote {args.output}")
    return result


def _run(config, batch_size, num_samples, chunk_size, target_samples, ais_betas, quick) -> dict:
    model = PixelVAEPP(config)
    rng = np.random.default_rng(0)
    images = (rng.uniform(size=(batch_size,) + config.image_shape) < 0.3).astype(np.uint8)
    x = jnp.asarray(images, jnp.float32) * 2.0 - 1.0
    params, init_seconds = timed(lambda: jax.jit(lambda x: model.init(jax.random.key(0), x, jax.random.key(1)))(x))
    params = params["params"]
    num_params = int(sum(p.size for p in jax.tree.leaves(params)))
    indices = np.arange(batch_size)

    def iwae_pass(seed):
        return evaluate.importance_weighted_pass(
            config, params, images, indices, jax.random.key(seed), num_samples=num_samples, chunk_size=chunk_size,
            batch_size=batch_size,
        )

    first, compile_seconds = timed(lambda: iwae_pass(0))  # compilation + one run
    if not np.all(np.isfinite(first["log_likelihood_unnormalized"])):
        raise RuntimeError("the IWAE pass produced non-finite values")
    times = [timed(lambda: iwae_pass(seed))[1] for seed in (1, 2)]
    batch_seconds = float(min(times))
    per_image = batch_seconds / batch_size
    per_image_target = per_image * target_samples / num_samples

    prior = rbm_params(params)
    ais_chains = 100 if quick else EVAL_AIS_CHAINS

    def run_ais(seed):
        result = ais.ais_log_partition(prior, jax.random.key(seed), num_chains=ais_chains, num_betas=ais_betas)
        return result.log_partition

    _, ais_compile_seconds = timed(lambda: run_ais(0))
    ais_seconds = timed(lambda: run_ais(1))[1]
    ais_eval_seconds = ais_seconds * (EVAL_AIS_BETAS - 1) / (ais_betas - 1)

    run = {
        "model": config.to_dict(),
        "num_params": num_params,
        "batch_size": batch_size,
        "num_samples": num_samples,
        "chunk_size": chunk_size,
        "init_seconds": init_seconds,
        "compile_seconds_including_first_run": compile_seconds,
        "batch_seconds": batch_seconds,
        "seconds_per_image": per_image,
        "decoder_up_passes_per_second": batch_size * num_samples / batch_seconds,
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
            "seconds_at_10000_betas": ais_eval_seconds,
            "extrapolated": ais_betas != EVAL_AIS_BETAS,
        },
    }
    hours = run["test_set_hours_at_target"]
    log(
        f"IWAE: {per_image:.2f} s per image at k = {num_samples} (batch {batch_size}, chunk {chunk_size}, "
        f"{run['decoder_up_passes_per_second']:.0f} up passes/s, compile {compile_seconds:.0f} s); "
        f"k = {target_samples}: {per_image_target:.1f} s per image -> Caltech-101 test "
        f"{hours['caltech101_silhouettes']:.1f} h, MNIST test {hours['mnist']:.1f} h"
        f"{' (extrapolated)' if run['extrapolated'] else ''}"
    )
    log(
        f"AIS ({ais_chains} chains): {ais_seconds:.1f} s for {ais_betas} temperatures -> "
        f"{ais_eval_seconds:.0f} s for {EVAL_AIS_BETAS}"
    )
    return run


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    log(f"total {time.perf_counter() - start:.0f} s")
