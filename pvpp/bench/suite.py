"""Every benchmark in one run, one JSON document; on a GPU also a correctness smoke that fails loudly.

    python -m pvpp.bench.suite [--output suite.json] [--quick] [--smoke] [--data_dir DIR]

Runs each benchmark's `main` in this process (the train benchmark launches its own worker processes), in the
order of BENCHMARKS, at settings meant to take about 5 minutes in all on one GPU (`--quick`: tiny settings, a
smoke run of the benchmarks themselves). Each benchmark's document keeps its own fields: `machine` (device kind,
jax / jaxlib versions), `peak` (the matmul peak, measured in the same process; compute benchmarks), and next to
each figure its `measured` record (wall and process CPU seconds, 1-minute load before and after, `busy`).

On a GPU (`jax.default_backend() == "gpu"`), or with `--smoke`, it then runs `pvpp.bench.smoke`: a few train
steps, an IWAE evaluation and a sampling call of the paper's MNIST configuration (a shrunk one on a CPU). Any
error in a benchmark or the smoke propagates: the command exits non-zero, with no document.

The data benchmark reads the original files from --data_dir (default: env PVPP_DATA_DIR); with neither, it is
skipped and the document says so.
"""

from __future__ import annotations

import argparse
import os

import jax

from pvpp.bench import conv, data, decoder, evaluate, log_partition, rbm, sample, smoke, train
from pvpp.bench.common import log, machine_info, measured, write_result

#: name -> (main, arguments at the GPU settings, arguments with --quick).
BENCHMARKS = {
    "data": (data.main, [], ["--quick"]),
    "decoder": (decoder.main, [], ["--quick"]),
    "conv": (conv.main, ["--configs=mnist_paper,cifar10_paper"], ["--quick"]),
    "rbm": (rbm.main, [], ["--quick"]),
    "log_partition": (log_partition.main, ["--quick"], ["--quick"]),
    "evaluate": (evaluate.main, [], ["--quick"]),
    "sample": (sample.main, [], ["--quick", "--configs=cifar10_quick", "--rounds=1"]),
    "train": (train.main, ["--devices=1", "--configs=mnist_cpu,mnist_paper", "--steps=5"], ["--quick"]),
}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=None, help="JSON file to write (default: stdout)")
    parser.add_argument("--quick", action="store_true", help="every benchmark at its tiny settings")
    parser.add_argument("--smoke", action="store_true", help="run the correctness smoke on any backend")
    parser.add_argument("--data_dir", default=None, help="original data files (default: env PVPP_DATA_DIR)")
    args = parser.parse_args(argv)
    data_dir = args.data_dir or os.environ.get("PVPP_DATA_DIR")
    gpu = jax.default_backend() == "gpu"

    def run_all():
        results, skipped = {}, {}
        for name, (bench_main, full_args, quick_args) in BENCHMARKS.items():
            bench_args = list(quick_args if args.quick else full_args)
            if name == "data":
                if not data_dir:
                    skipped[name] = "no data directory: pass --data_dir or set PVPP_DATA_DIR"
                    log(f"suite: skipping {name} ({skipped[name]})")
                    continue
                bench_args.append(f"--data_dir={data_dir}")
            log(f"suite: pvpp.bench.{name} {' '.join(bench_args)}")
            results[name] = _quiet(bench_main, bench_args)
        smoke_result = smoke.run_smoke(tiny=not gpu) if gpu or args.smoke else None
        return results, skipped, smoke_result

    (results, skipped, smoke_result), record = measured(run_all)
    result = {
        "benchmark": "pvpp.bench.suite",
        "machine": machine_info(),
        "quick": args.quick,
        "total_seconds": record["wall_seconds"],
        "measurement": record,
        "results": results,
        "skipped": skipped,
        "smoke": smoke_result,
    }
    write_result(result, args.output)
    log(
        f"suite: {len(results)} benchmarks{' and the smoke' if smoke_result else ''} in {record['wall_seconds']:.0f} s"
    )
    return result


def _quiet(bench_main, bench_args: list[str]) -> dict:
    """A benchmark's document, its own output written to os.devnull (the suite writes the one document)."""
    return bench_main([*bench_args, f"--output={os.devnull}"])


if __name__ == "__main__":
    main()
