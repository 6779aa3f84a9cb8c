"""Benchmark: preparing and loading MNIST and CIFAR-10, and the batch iterator's throughput.

    python -m pvpp.bench.data [--data_dir DIR] [--prepared_dir DIR] [--output result.json]

Without --prepared_dir the data sets are prepared into a fresh temporary folder (so the preparation is timed
too, then the folder is deleted). Loading times are for a whole split into memory via `pvpp.data.load` (tfds
data source over array_record), best and median of --repeats runs. Writes one JSON object (to --output, or
stdout) and prints a summary.
"""

import argparse
import pathlib
import statistics
import sys
import tempfile
import time

import numpy as np

from pvpp import data
from pvpp.bench.common import machine_info, write_result

_DATASETS = ("mnist", "cifar10")
_BATCH_SIZES = {"mnist": 128, "cifar10": 64}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default=None, help="original files (default: env PVPP_DATA_DIR)")
    parser.add_argument(
        "--prepared_dir", default=None, help="prepared tfds copies (default: a fresh temporary folder)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed loads of each split")
    parser.add_argument("--iterator_batches", type=int, default=200, help="batches timed per iterator")
    parser.add_argument("--output", default=None, help="JSON result path (default: stdout)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="pvpp_bench_data_") as scratch:
        prepared_dir = pathlib.Path(args.prepared_dir or scratch)
        result = {
            "benchmark": "pvpp.bench.data",
            "machine": machine_info(),
            "prepared_dir": str(prepared_dir) if args.prepared_dir else "(temporary)",
            "datasets": {name: _bench_dataset(name, args, prepared_dir) for name in _DATASETS},
        }
    write_result(result, args.output)
    _summary(result)
    return result


def _bench_dataset(name: str, args, prepared_dir: pathlib.Path) -> dict:
    start = time.perf_counter()
    data.prepare(name, args.data_dir, prepared_dir=prepared_dir)
    prepare_s = time.perf_counter() - start  # near zero when --prepared_dir already holds the copy
    out = {"prepare_s": prepare_s, "load_s": {}}
    for split in ("train", "test"):
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            loaded = data.load(name, split, args.data_dir, prepared_dir=prepared_dir)
            times.append(time.perf_counter() - start)
        out["load_s"][split] = {
            "best": min(times),
            "median": statistics.median(times),
            "num_examples": len(loaded),
        }
    batch_size = _BATCH_SIZES[name]
    it = data.batch_iterator(loaded, batch_size, seed=0)
    next(it)
    start = time.perf_counter()
    for _ in range(args.iterator_batches):
        next(it)
    elapsed = time.perf_counter() - start
    out["iterator"] = {
        "split": "test",
        "batch_size": batch_size,
        "dynamic_binarization": loaded.binarization == "dynamic",
        "batches_per_s": args.iterator_batches / elapsed,
        "images_per_s": args.iterator_batches * batch_size / elapsed,
    }
    return out


def _summary(result: dict) -> None:
    for name, r in result["datasets"].items():
        loads = ", ".join(
            f"{split} {v['num_examples']} images {v['best']:.2f} s (median {v['median']:.2f})"
            for split, v in r["load_s"].items()
        )
        it = r["iterator"]
        print(
            f"{name}: prepare {r['prepare_s']:.1f} s; load {loads}; iterator batch {it['batch_size']}"
            f"{' with dynamic binarization' if it['dynamic_binarization'] else ''}: "
            f"{it['images_per_s']:.0f} images/s",
            file=sys.stderr,
        )


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
