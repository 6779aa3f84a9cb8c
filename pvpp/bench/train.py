"""Benchmark of the training step: throughput (images/s) of the pmapped train step on 1 and on N CPU devices.

    python -m pvpp.bench.train [--output train.json] [--devices 1,8] [--steps 5] [--configs NAME,...] [--quick]

Configurations are read from flag files (experiments/*.flags), through the same flags -> configs function the
entry points use: the CPU flag files and the paper's MNIST experiment (experiments/mnist_dynamic.flags). The
step is `pvpp.train`'s: relaxed ELBO, PCD chains, Adam + EMA, `lax.pmean` over devices, the state donated; the
global batch of the flag file is split over the devices. Data are random binary images of the right shape (the
data pipeline is not timed). Each device count runs in its own subprocess, because the number of CPU devices
is fixed when jax starts (`jax_num_cpu_devices`). Per configuration: compile time (lowering + compilation of
the step, ahead of time), one step, then `--steps` steps timed the way the training loop runs them (step N + 1
dispatched before step N's metrics are read). The step is compiled four times (`VARIANTS`): as a run would
train it (the convolution forms of `pvpp.nn.conv_forms`' shipped table, the micro-batches of
`TrainConfig.micro_batches_in_use`), with the table's forms and one micro-batch, with XLA's convolution everywhere
and one micro-batch, and as the step was before the forms, the micro-batches and the rewritten `concat_elu` (XLA's
convolution, one micro-batch, `concat_elu` differentiated by JAX from its definition); `--rounds` blocks of
`--steps` steps of each are timed interleaved. Ratios of median step times: `speedup_over_before` (as trained
against before), `speedup_over_xla` (as trained against XLA's convolution, the model otherwise as today) and
`speedup_of_forms` (the table with one micro-batch against XLA's convolution).

Each worker measures, in its own process: the matmul peak (`pvpp.bench.peak`), and per configuration the
`measured` record of the timed steps (wall and process CPU seconds, 1-minute load before and after), the step's
FLOPs from XLA's cost analysis (per device, times the device count) and the achieved GFLOP/s as a fraction of
that peak. `--quick`: the `mnist_tiny` configuration (mnist_cpu.flags shrunk), 1 device, 2 steps.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time

#: The steps compared, interleaved: name -> (policy of `pvpp.nn.conv_forms`, micro-batches (None: the run's),
#: `concat_elu` differentiated by JAX from its definition instead of its own gradient).
VARIANTS = {
    "chosen": ("table", None, False),
    "table_one_micro_batch": ("table", 1, False),
    "xla": ("xla", 1, False),
    "before": ("xla", 1, True),
}
#: name -> (entry-point module, flag file relative to the repository root, flags added after the file).
CONFIGS = {
    "caltech101_cpu": ("pvpp.experiments.caltech101", "experiments/caltech101_cpu.flags", ()),
    "mnist_cpu": ("pvpp.experiments.mnist", "experiments/mnist_cpu.flags", ()),
    "cifar10_cpu": ("pvpp.experiments.cifar10", "experiments/cifar10_cpu.flags", ()),
    "mnist_paper": ("pvpp.experiments.mnist", "experiments/mnist_dynamic.flags", ()),
    "cifar10_paper": ("pvpp.experiments.cifar10", "experiments/cifar10.flags", ()),
    # The paper's CIFAR-10 model at two GPUs' worth of its per-device batch (8): the global 64 on one CPU device
    # needs about 30 GB.
    "cifar10_paper_batch16": ("pvpp.experiments.cifar10", "experiments/cifar10.flags", ("--batch_size=16",)),
    # The CPU-budget configurations of the zoo and the CPU-budget studies (RBM prior).
    "mnist_static_cpu_budget": ("pvpp.experiments.mnist", "experiments/mnist_static_cpu_budget_rbm.flags", ()),
    "caltech101_cpu_budget": ("pvpp.experiments.caltech101", "experiments/caltech101_cpu_budget_rbm.flags", ()),
    "omniglot_cpu_budget": ("pvpp.experiments.omniglot", "experiments/omniglot_cpu_budget_rbm.flags", ()),
    "cifar10_cpu_budget": ("pvpp.experiments.cifar10", "experiments/cifar10_cpu_budget_rbm.flags", ()),
    "mnist_tiny": (
        "pvpp.experiments.mnist",
        "experiments/mnist_cpu.flags",
        (
            "--nr_filters=4",
            "--num_concat_latents=8",
            "--rbm_num_left=4",
            "--num_chains=4",
            "--encoder_filters=4",
            "--latent_map_channels=2",
            "--batch_size=4",
        ),
    ),
}
DEFAULT_CONFIGS = ("caltech101_cpu", "mnist_cpu", "cifar10_cpu", "mnist_paper")
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=None, help="JSON file to write (default: stdout)")
    parser.add_argument(
        "--devices", default=None, help="comma-separated CPU device counts (default 1,8; quick 1)"
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="timed steps per configuration (default 5; quick 2)"
    )
    parser.add_argument(
        "--configs",
        default=None,
        help=f"comma-separated names of {sorted(CONFIGS)} (default {','.join(DEFAULT_CONFIGS)})",
    )
    parser.add_argument(
        "--rounds", type=int, default=None, help="interleaved rounds of --steps steps per policy (default 3; quick 1)"
    )
    parser.add_argument("--quick", action="store_true", help="mnist_tiny, 1 device, 2 steps: a smoke run")
    parser.add_argument("--worker_devices", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    devices = args.devices or ("1" if args.quick else "1,8")
    steps = args.steps or (2 if args.quick else 5)
    rounds = args.rounds or (1 if args.quick else 3)
    configs = args.configs or ("mnist_tiny" if args.quick else ",".join(DEFAULT_CONFIGS))
    names = [name for name in configs.split(",") if name]
    unknown = [name for name in names if name not in CONFIGS]
    if unknown:
        parser.error(f"unknown configurations {unknown}; known: {sorted(CONFIGS)}")
    if args.worker_devices is not None:
        worker = _worker(args.worker_devices, names, steps, rounds, args.quick)
        print(json.dumps(worker))
        return worker

    # Imported here, not at the top: this parent process only launches workers, and the workers must set the
    # CPU device count before anything that may start jax's backend is imported (see `_worker`).
    from pvpp.bench.common import log, machine_info, write_result

    workers = []
    for count in [int(d) for d in devices.split(",")]:
        log(f"-- {count} CPU device(s)")
        command = [
            sys.executable,
            "-m",
            "pvpp.bench.train",
            f"--worker_devices={count}",
            f"--configs={','.join(names)}",
            f"--steps={steps}",
            f"--rounds={rounds}",
        ] + (["--quick"] if args.quick else [])
        # On a GPU the calling process (e.g. pvpp.bench.suite) may already hold jax's preallocated 75% of the
        # memory: the worker allocates as it goes instead (unless the caller chose otherwise).
        env = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false", **os.environ}
        done = subprocess.run(command, cwd=_ROOT, env=env, stdout=subprocess.PIPE, check=True, text=True)
        workers.append(json.loads(done.stdout.strip().splitlines()[-1]))
    result = {
        "benchmark": "pvpp.bench.train",
        "machine": machine_info(),
        "quick": args.quick,
        "steps": steps,
        "workers": workers,
    }
    write_result(result, args.output)
    return result


def flag_file_configs(name: str, num_devices: int):
    """(ModelConfig, TrainConfig) of configuration `name` of CONFIGS, read from its flag file (plus its added
    flags) by the entry points' own flags -> configs function, the global batch split over `num_devices`."""
    # Function-level imports: this module's top stays free of jax and of pvpp (see `_worker`).
    from absl import flags

    from pvpp.experiments import common

    module_name, flag_file, extra_flags = CONFIGS[name]
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
            *extra_flags,
        ]
    )
    model_config, train_config, _, _ = common.configs_from_flags(flag_values, module.MODEL_DEFAULTS)
    return model_config, train_config


def _worker(num_devices: int, names: list[str], steps: int, rounds: int, quick: bool) -> dict:
    """Runs in a subprocess: set the CPU device count before jax starts, measure the matmul peak, then time each
    configuration. Returns {'num_devices', 'machine', 'peak', 'runs'}."""
    # Function-level imports on purpose: the device count must be set before any module that might start the
    # backend is imported.
    import jax

    jax.config.update("jax_num_cpu_devices", num_devices)
    import numpy as np

    from pvpp import train
    from pvpp.bench.common import log, machine_info, measured
    from pvpp.bench.flops import achieved
    from pvpp.bench.peak import matmul_peak
    from pvpp.model import count_params
    from pvpp.nn import conv_forms

    peak = matmul_peak(quick=quick)
    runs = []
    for name in names:
        flag_file = CONFIGS[name][1]
        model_config, train_config = flag_file_configs(name, num_devices)
        devices = tuple(jax.local_devices()[:num_devices])
        sharding = train.device_sharding(devices)
        rng = np.random.default_rng(0)
        batch = train_config.batch_size
        images = (rng.uniform(size=(batch, *model_config.image_shape)) < 0.4).astype(np.uint8)
        device_batch = jax.device_put(
            images.reshape(num_devices, batch // num_devices, *images.shape[1:]), sharding
        )
        # The step of each variant, each with its own copy of one initial state (the step donates its state).
        steps_of, states, compile_seconds, choices = {}, {}, {}, {}
        micro_batches = train_config.micro_batches_in_use(model_config.nr_filters, num_devices, devices[0].platform)
        for variant, (policy, variant_micro_batches, by_autodiff) in VARIANTS.items():
            with conv_forms.policy(policy), concat_elu_by_autodiff(by_autodiff):
                variant_config = train_config.replace(micro_batches=variant_micro_batches or micro_batches)
                fns = train.step_functions(model_config, variant_config, devices)
                if variant == "chosen":
                    start = time.perf_counter()
                    initial = jax.block_until_ready(fns.init(jax.random.key(0), images))
                    init_seconds = time.perf_counter() - start
                states[variant] = train.replicate(jax.tree.map(lambda a: a.copy(), initial), sharding)
                start = time.perf_counter()
                with conv_forms.recording() as record:
                    steps_of[variant] = fns.train.lower(states[variant], device_batch).compile()
                compile_seconds[variant] = time.perf_counter() - start
                choices[variant] = conv_forms.metadata(record)["layers"]
        start = time.perf_counter()
        for variant in VARIANTS:
            states[variant], _ = jax.block_until_ready(steps_of[variant](states[variant], device_batch))
        first_step_seconds = (time.perf_counter() - start) / len(VARIANTS)

        def timed_steps(variant):
            previous = None
            state = states[variant]
            for _ in range(steps):
                state, metrics = steps_of[variant](state, device_batch)
                if previous is not None:
                    jax.device_get(previous["loss"])  # as the loop: read step N after dispatching N + 1
                previous = metrics
            states[variant] = jax.block_until_ready(state)

        block_seconds = {variant: [] for variant in VARIANTS}

        def interleaved():
            for _ in range(rounds):
                for variant in VARIANTS:
                    start = time.perf_counter()
                    timed_steps(variant)
                    block_seconds[variant].append((time.perf_counter() - start) / steps)

        _, record = measured(interleaved)
        step_seconds = {variant: float(np.median(block_seconds[variant])) for variant in VARIANTS}
        step = steps_of["chosen"]
        seconds = step_seconds["chosen"] * steps
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
            "num_params": count_params(train.unreplicate(states["chosen"].params)),
            "micro_batches": micro_batches,
            "init_seconds": init_seconds,
            "compile_seconds": compile_seconds["chosen"],
            "first_step_seconds": first_step_seconds,
            "steps": steps,
            "rounds": rounds,
            "step_seconds": seconds / steps,
            "step_seconds_xla": step_seconds["xla"],
            "step_seconds_table_one_micro_batch": step_seconds["table_one_micro_batch"],
            "step_seconds_before": step_seconds["before"],
            "block_seconds": block_seconds,
            "speedup_over_before": step_seconds["before"] / step_seconds["chosen"],
            "speedup_over_xla": step_seconds["xla"] / step_seconds["chosen"],
            "speedup_of_forms": step_seconds["xla"] / step_seconds["table_one_micro_batch"],
            "compile_seconds_xla": compile_seconds["xla"],
            "conv_forms": choices["chosen"],
            "images_per_second": batch * steps / seconds,
            **achieved(step, seconds / steps, peak, num_devices),
            "measurement": record,
        }
        gflops = (
            "?"
            if run["gflops"] is None
            else f"{run['gflops']:.1f} GFLOP/s, {run['fraction_of_peak']:.0%} of peak"
        )
        log(
            f"{name} on {num_devices} device(s): {run['images_per_second']:.1f} images/s "
            f"({run['step_seconds']:.3f} s/step, batch {batch}, {micro_batches} micro-batch(es); {gflops}), "
            f"{run['speedup_over_xla']:.2f}x the step with XLA's convolution everywhere and one micro-batch "
            f"({run['step_seconds_xla']:.3f} s/step, interleaved; the forms alone {run['speedup_of_forms']:.2f}x), "
            f"{run['speedup_over_before']:.2f}x the step before the forms, micro-batches and concat_elu's gradient "
            f"({run['step_seconds_before']:.3f} s/step), compile {compile_seconds['chosen']:.1f} s, "
            f"init {init_seconds:.1f} s"
        )
        runs.append(run)
    return {"num_devices": num_devices, "machine": machine_info(), "peak": peak, "runs": runs}


@contextlib.contextmanager
def concat_elu_by_autodiff(enabled: bool):
    """Within the block (where `enabled`), models traced use `concat_elu` as JAX differentiates its definition
    (`pvpp.nn.resnet.concat_elu_by_autodiff`): the model before the rewrite, for the 'before' baseline. The model
    looks the function up on `pvpp.nn.resnet` when it is traced, so swapping that attribute swaps every use."""
    from pvpp.nn import resnet

    if not enabled:
        yield
        return
    rewritten = resnet.concat_elu
    resnet.concat_elu = resnet.concat_elu_by_autodiff
    try:
        yield
    finally:
        resnet.concat_elu = rewritten


if __name__ == "__main__":
    main()
