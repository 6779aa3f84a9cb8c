"""Correctness smoke for a new machine: a few train steps, an IWAE evaluation and a sampling call; fails loudly.

    python -m pvpp.bench.smoke [--tiny] [--output smoke.json]

The paper's MNIST configuration (experiments/mnist_dynamic.flags, read by the entry point's flags -> configs
function; `--tiny`: the train benchmark's `mnist_tiny`, for a CPU) on one device, random binary images (no data
set needed): `--steps` train steps of `pvpp.train`'s compiled step, then `pvpp.evaluation.evaluate.evaluate` of the EMA
parameters on 4 images (IWAE with k samples, log Z by AIS), then `pvpp.generation.sample.generate_from_prior` (RBM Gibbs
chains and the cached sampler). Any error propagates; a non-finite loss, log-likelihood or image raises
FloatingPointError. `pvpp.bench.suite` runs it on a GPU. Each part carries its `measured` record (wall and
process CPU seconds, 1-minute load before and after), compilation included.
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

from pvpp import train
from pvpp.bench.common import log, machine_info, measured, write_result
from pvpp.bench.train import flag_file_configs
from pvpp.evaluation import evaluate
from pvpp.generation import sample
from pvpp.priors import AISConfig
from pvpp.training import optim

_NUM_IMAGES = 4


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=None, help="JSON file to write (default: stdout)")
    parser.add_argument("--tiny", action="store_true", help="a shrunk model and tiny efforts, for a CPU")
    parser.add_argument("--steps", type=int, default=3, help="train steps")
    args = parser.parse_args(argv)
    result = {"benchmark": "pvpp.bench.smoke", "machine": machine_info(), **run_smoke(args.tiny, args.steps)}
    write_result(result, args.output)
    return result


def run_smoke(tiny: bool, steps: int = 3) -> dict:
    """{'config', 'train', 'evaluate', 'sample'}: what ran and its results; raises on any failure."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    name = "mnist_tiny" if tiny else "mnist_paper"
    model_config, train_config = flag_file_configs(name, 1)
    rng = np.random.default_rng(0)
    images = (rng.uniform(size=(train_config.batch_size, *model_config.image_shape)) < 0.4).astype(np.uint8)

    (state, losses), train_record = measured(lambda: _train(model_config, train_config, images, steps))
    if not np.all(np.isfinite(losses)):
        raise FloatingPointError(f"smoke: non-finite training loss {losses}")
    log(f"smoke: {steps} train steps of {name}: loss {losses[0]:.2f} -> {losses[-1]:.2f}")
    params = train.unreplicate(optim.ema_params(state.opt_state))

    num_samples = 4 if tiny else 100
    eval_config = evaluate.EvalConfig(
        num_importance_samples=num_samples,
        chunk_size=num_samples,
        batch_size=_NUM_IMAGES,
        ais=AISConfig(num_chains=16 if tiny else 100, num_betas=20 if tiny else 1000),
    )
    evaluation, eval_record = measured(
        lambda: evaluate.evaluate(
            model_config, params, images[:_NUM_IMAGES], np.arange(_NUM_IMAGES), eval_config
        )
    )
    log_likelihood = evaluation.per_image["log_likelihood"]
    if not np.all(np.isfinite(log_likelihood)):
        raise FloatingPointError(f"smoke: non-finite IWAE log-likelihood {log_likelihood}")
    log(f"smoke: IWAE (k = {num_samples}) mean log-likelihood {np.mean(log_likelihood):.2f} nats")

    sample_config = sample.SampleConfig(
        num_latents=2, decodes_per_latent=1, num_gibbs_sweeps=20 if tiny else 1000, batch_size=2
    )
    samples, sample_record = measured(
        lambda: sample.generate_from_prior(model_config, params, jax.random.key(1), sample_config)
    )
    generated = samples["images"]
    if generated.shape != (2, 1, *model_config.image_shape) or not np.all(np.isfinite(generated)):
        raise FloatingPointError(
            f"smoke: bad samples, shape {generated.shape}, finite {np.isfinite(generated).all()}"
        )
    log(f"smoke: sampled {generated.shape[0]} images from the prior (cached sampler)")
    return {
        "config": name,
        "model_config": model_config.to_dict(),
        "train": {"steps": steps, "losses": losses, "measurement": train_record},
        "evaluate": {
            "num_images": _NUM_IMAGES,
            "num_importance_samples": num_samples,
            "mean_log_likelihood_nats": float(np.mean(log_likelihood)),
            "measurement": eval_record,
        },
        "sample": {"num_images": int(generated.shape[0]), "measurement": sample_record},
    }


def _train(model_config, train_config, images: np.ndarray, steps: int):
    """(state, losses): `steps` train steps on one device from a fresh state, on the same batch."""
    devices = tuple(jax.local_devices()[:1])
    fns = train.step_functions(model_config, train_config, devices)
    sharding = train.device_sharding(devices)
    state = train.replicate(fns.init(jax.random.key(0), images), sharding)
    batch = jax.device_put(images[None], sharding)
    losses = []
    for _ in range(steps):
        state, metrics = fns.train(state, batch)
        losses.append(float(np.asarray(metrics["loss"]).reshape(-1)[0]))
    return state, losses


if __name__ == "__main__":
    main()
