"""Benchmark: preparing and loading MNIST and CIFAR-10, and the batch iterator's throughput.

    python -m pvpp.bench.data [--data_dir DIR] [--prepared_dir DIR] [--output result.json] [--quick]

Without --prepared_dir the data sets are prepared into a fresh temporary folder (so the preparation is timed
too, then the folder is deleted). Loading times are for a whole split into memory via `pvpp.data.load` (tfds
data source over array_record), best and median of --repeats runs. Each timed figure carries the `measured`
record of its timed part (wall and process CPU seconds, 1-minute load before and after); this benchmark does no
arithmetic worth a matmul peak. `--quick`: MNIST only, one load per split, 20 iterator batches. Writes one JSON
object (to --output, or stdout) and prints a summary.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import tempfile

import numpy as np

from pvpp import data
from pvpp.bench.common import machine_info, measured, write_result

_DATASETS = ("mnist", "cifar10")
_BATCH_SIZES = {"mnist": 128, "cifar10": 64}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default=None, help="original files (default: env PVPP_DATA_DIR)")
    parser.add_argument(
        "--prepared_dir", default=None, help="prepared tfds copies (default: a fresh temporary folder)"
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed loads of each split (default 3; quick 1)"
    )
    parser.add_argument(
        "--iterator_batches",
        type=int,
        default=None,
        help="batches timed per iterator (default 200; quick 20)",
    )
    parser.add_argument("--output", default=None, help="JSON result path (default: stdout)")
    parser.add_argument("--quick", action="store_true", help="MNIST only, few repeats: a smoke run")
    args = parser.parse_args(argv)
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.iterator_batches = args.iterator_batches or (20 if args.quick else 200)
    datasets = ("mnist",) if args.quick else _DATASETS

    with tempfile.TemporaryDirectory(prefix="pvpp_bench_data_") as scratch:
        prepared_dir = pathlib.Path(args.prepared_dir or scratch)
        result = {
            "benchmark": "pvpp.bench.data",
            "machine": machine_info(),
            "prepared_dir": str(prepared_dir) if args.prepared_dir else "(temporary)",
            "quick": args.quick,
            "datasets": {name: _bench_dataset(name, args, prepared_dir) for name in datasets},
        }
    write_result(result, args.output)
    _summary(result)
    return result


def _bench_dataset(name: str, args, prepared_dir: pathlib.Path) -> dict:
    _, prepare_record = measured(lambda: data.prepare(name, args.data_dir, prepared_dir=prepared_dir))
    # prepare_s is near zero when --prepared_dir already holds the copy.
    out = {"prepare_s": prepare_record["wall_seconds"], "prepare_measurement": prepare_record, "load_s": {}}
    for split in ("train", "test"):
        records = []
        for _ in range(args.repeats):
            loaded, record = measured(
                lambda: data.load(name, split, args.data_dir, prepared_dir=prepared_dir)
            )
            records.append(record)
        times = [record["wall_seconds"] for record in records]
        out["load_s"][split] = {
            "best": min(times),
            "median": statistics.median(times),
            "num_examples": len(loaded),
            "measurements": records,
        }
    batch_size = _BATCH_SIZES[name]
    it = data.batch_iterator(loaded, batch_size, seed=0)
    next(it)
    _, record = measured(lambda: [next(it) for _ in range(args.iterator_batches)])
    elapsed = record["wall_seconds"]
    out["iterator"] = {
        "split": "test",
        "batch_size": batch_size,
        "dynamic_binarization": loaded.binarization == "dynamic",
        "batches_per_s": args.iterator_batches / elapsed,
        "images_per_s": args.iterator_batches * batch_size / elapsed,
        "measurement": record,
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
