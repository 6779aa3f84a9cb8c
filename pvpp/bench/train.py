"""Benchmark of the training step: throughput (images/s) of the pmapped train step on 1 and on N CPU devices.

    python -m pvpp.bench.train [--output train.json] [--devices 1,8] [--steps 5] [--configs NAME,...]

Configurations are read from flag files (experiments/*.flags), through the same flags -> configs function the
entry points use: the CPU flag files and the paper's MNIST experiment (experiments/mnist_dynamic.flags). The
step is `pvpp.train`'s: relaxed ELBO, PCD chains, Adam + EMA, `lax.pmean` over devices, the state donated; the
global batch of the flag file is split over the devices. Data are random binary images of the right shape (the
data pipeline is not timed). Each device count runs in its own subprocess, because the number of CPU devices
is fixed when jax starts (`jax_num_cpu_devices`). Per configuration: compile time (the first step), then
`--steps` steps timed the way the training loop runs them (step N + 1 dispatched before step N's metrics are
read).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

#: name -> (entry-point module, flag file relative to the repository root).
CONFIGS = {
    "caltech101_cpu": ("pvpp.experiments.caltech101", "experiments/caltech101_cpu.flags"),
    "mnist_cpu": ("pvpp.experiments.mnist", "experiments/mnist_cpu.flags"),
    "cifar10_cpu": ("pvpp.experiments.cifar10", "experiments/cifar10_cpu.flags"),
    "mnist_paper": ("pvpp.experiments.mnist", "experiments/mnist_dynamic.flags"),
}
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=None, help="JSON file to write (default: stdout)")
    parser.add_argument("--devices", default="1,8", help="comma-separated CPU device counts")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per configuration")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated names of CONFIGS")
    parser.add_argument("--worker_devices", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    names = [name for name in args.configs.split(",") if name]
    unknown = [name for name in names if name not in CONFIGS]
    if unknown:
        parser.error(f"unknown configurations {unknown}; known: {sorted(CONFIGS)}")
    if args.worker_devices is not None:
        runs = _worker(args.worker_devices, names, args.steps)
        print(json.dumps(runs))
        return {"runs": runs}

    # Imported here, not at the top: this parent process only launches workers, and the workers must set the
    # CPU device count before anything that may start jax's backend is imported (see `_worker`).
    from pvpp.bench.common import log, machine_info, write_result

    runs = []
    for count in [int(d) for d in args.devices.split(",")]:
        log(f"-- {count} CPU device(s)")
        command = [
            sys.executable,
            "-m",
            "pvpp.bench.train",
            f"--worker_devices={count}",
            f"--configs={','.join(names)}",
            f"--steps={args.steps}",
        ]
        done = subprocess.run(command, cwd=_ROOT, stdout=subprocess.PIPE, check=True, text=True)
        runs.extend(json.loads(done.stdout.strip().splitlines()[-1]))
    result = {"benchmark": "pvpp.bench.train", "machine": machine_info(), "steps": args.steps, "runs": runs}
    write_result(result, args.output)
    return result


def _worker(num_devices: int, names: list[str], steps: int) -> list[dict]:
    """Runs in a subprocess: set the CPU device count before jax starts, then time each configuration."""
    # Function-level imports on purpose: the device count must be set before any module that might start the
    # backend is imported.
    import jax

    jax.config.update("jax_num_cpu_devices", num_devices)
    import numpy as np
    from absl import flags

    from pvpp import train
    from pvpp.bench.common import log
    from pvpp.experiments import common
    from pvpp.model import count_params

    runs = []
    for name in names:
        module_name, flag_file = CONFIGS[name]
        module = __import__(module_name, fromlist=["DATASETS"])
        flag_values = flags.FlagValues()
        common.define_flags(module.DATASETS, module.MODEL_DEFAULTS, flag_values)
        flag_values(
            [
                name,
                f"--flagfile={os.path.join(_ROOT, flag_file)}",
                "--workdir=/nonexistent-bench",
                f"--num_devices={num_devices}",
                "--data_dir=" + _ROOT,
            ]
        )
        model_config, train_config, _, _ = common.configs_from_flags(flag_values, module.MODEL_DEFAULTS)
        devices = tuple(jax.local_devices()[:num_devices])
        fns = train.step_functions(model_config, train_config, devices)
        sharding = train.device_sharding(devices)
        rng = np.random.default_rng(0)
        batch = train_config.batch_size
        images = (rng.uniform(size=(batch, *model_config.image_shape)) < 0.4).astype(np.uint8)
        start = time.perf_counter()
        state = jax.block_until_ready(fns.init(jax.random.key(0), images))
        init_seconds = time.perf_counter() - start
        state = train.replicate(state, sharding)
        device_batch = jax.device_put(
            images.reshape(num_devices, batch // num_devices, *images.shape[1:]), sharding
        )
        start = time.perf_counter()
        state, metrics = fns.train(state, device_batch)
        jax.block_until_ready(metrics)
        compile_seconds = time.perf_counter() - start
        start = time.perf_counter()
        previous = None
        for _ in range(steps):
            state, metrics = fns.train(state, device_batch)
            if previous is not None:
                jax.device_get(previous["loss"])  # as the loop: read step N after dispatching N + 1
            previous = metrics
        jax.block_until_ready(metrics)
        seconds = time.perf_counter() - start
        run = {
            "name": name,
            "flag_file": flag_file,
            "num_devices": num_devices,
            "global_batch": batch,
            "image_shape": list(model_config.image_shape),
            "nr_resnet": model_config.nr_resnet,
            "nr_filters": model_config.nr_filters,
            "downsample": model_config.downsample,
            "prior": model_config.prior,
            "num_params": count_params(train.unreplicate(state.params)),
            "init_seconds": init_seconds,
            "compile_seconds": compile_seconds,
            "steps": steps,
            "step_seconds": seconds / steps,
            "images_per_second": batch * steps / seconds,
        }
        log(
            f"{name} on {num_devices} device(s): {run['images_per_second']:.1f} images/s "
            f"({run['step_seconds']:.3f} s/step, batch {batch}), compile {compile_seconds:.1f} s, "
            f"init {init_seconds:.1f} s"
        )
        runs.append(run)
    return runs


if __name__ == "__main__":
    main()
