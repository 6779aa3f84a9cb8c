"""The benchmarks' documents: `pvpp.bench.suite --quick --smoke`, run in this process, holds every benchmark's
JSON, each with the machine (device kind, jax / jaxlib versions), the matmul peak measured in the same process
(compute benchmarks) and a `measured` record beside each figure. No timing is asserted: only the fields."""

from __future__ import annotations

import json
import math

import jax

from pvpp.bench import suite
from pvpp.bench import train as train_bench
from pvpp.model.pixelcnn import PixelCNNPP
from pvpp.nn import conv_forms

MEASURED = {"wall_seconds", "cpu_seconds", "load_1min_before", "load_1min_after", "busy"}
COMPUTE = ("decoder", "conv", "rbm", "evaluate", "sample")


def test_the_quick_suite_gives_every_benchmark_its_machine_peak_and_measured_records(
    tmp_path, data_dir, monkeypatch
):
    # The train benchmark's workers are processes of their own: they share this session's compilation cache.
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", jax.config.jax_compilation_cache_dir)
    output = tmp_path / "suite.json"
    suite.main(["--quick", "--smoke", f"--data_dir={data_dir}", f"--output={output}"])
    doc = json.loads(output.read_text())

    assert doc["benchmark"] == "pvpp.bench.suite" and doc["quick"] is True and doc["skipped"] == {}
    assert doc["total_seconds"] > 0
    _check_machine(doc["machine"])
    results = doc["results"]
    assert set(results) == set(suite.BENCHMARKS)
    for name, sub in results.items():
        assert sub["benchmark"] == f"pvpp.bench.{name}"
        _check_machine(sub["machine"])
        assert _records(sub), name  # every record found anywhere is checked by _records
    for name in COMPUTE:
        _check_peak(results[name]["peak"])

    for run in results["decoder"]["runs"]:
        _check_record(run["measurement"])
        assert run["flops_per_call"] > 0 and run["gflops"] > 0 and run["fraction_of_peak"] > 0
        assert run["step_seconds_median_xla"] > 0 and run["speedup_over_xla"] > 0 and run["conv_forms"]
    assert results["conv"]["layers"]
    for key, layer in results["conv"]["layers"].items():  # every direction timed in every form that applies
        _check_record(layer["measurement"])
        forms = conv_forms.geometry_from_key(key).applicable()
        assert {d: sorted(by) for d, by in layer["seconds"].items()} == {
            d: sorted(forms) for d in ("forward", "input_grad", "filter_grad")
        }
        assert all(layer["choice"][d] in forms for d in layer["seconds"])
    for row in results["rbm"]["gibbs"]:
        for key in ("jax_measurement", "numpy_measurement", "matmuls_only_measurement"):
            _check_record(row[key])
        assert row["jax_fraction_of_peak"] > 0 and row["numpy_fraction_of_peak"] > 0
    for row in results["rbm"]["ais"]:
        _check_record(row["measurement"])
    for row in results["log_partition"]["efforts"]:
        _check_record(row["measured"])
        assert row["forward"]["estimate"] <= row["reverse"]["estimate"] + 0.5  # a random 16 + 16 RBM: both near log Z
    precision = results["log_partition"]["precision"]
    assert precision["backend"] != "cpu" or precision["max_logit_difference_right"] == 0.0  # one computation on CPU
    assert abs(precision["ais_full_precision"]["error"]) < 0.1
    evaluated = results["evaluate"]["run"]
    _check_record(evaluated["measurement"])
    _check_record(evaluated["ais"]["measurement"])
    for run in results["sample"]["runs"]:
        for sampler in ("naive", "cached"):
            _check_record(run[sampler]["first_call"])
            assert run[sampler]["timings"]
    for dataset in results["data"]["datasets"].values():
        _check_record(dataset["prepare_measurement"])
        _check_record(dataset["iterator"]["measurement"])
        for split in dataset["load_s"].values():
            assert split["measurements"]
    workers = results["train"]["workers"]
    assert [worker["num_devices"] for worker in workers] == [1]
    for worker in workers:  # measured in the worker's own process
        _check_machine(worker["machine"])
        _check_peak(worker["peak"])
        for run in worker["runs"]:
            _check_record(run["measurement"])
            assert run["gflops"] > 0 and run["fraction_of_peak"] > 0
            assert run["step_seconds_xla"] > 0 and run["speedup_over_xla"] > 0 and run["conv_forms"]
            assert run["step_seconds_before"] > 0 and run["speedup_over_before"] > 0
            assert set(run["block_seconds"]) == set(train_bench.VARIANTS)

    smoke = doc["smoke"]
    assert smoke["config"] == "mnist_tiny"
    assert all(math.isfinite(loss) for loss in smoke["train"]["losses"])
    assert math.isfinite(smoke["evaluate"]["mean_log_likelihood_nats"])
    for part in ("train", "evaluate", "sample"):
        _check_record(smoke[part]["measurement"])


def test_the_before_baseline_traces_concat_elu_as_its_definition_and_restores_the_rewrite_after():
    model = PixelCNNPP(nr_resnet=1, nr_filters=4, out_channels=2, dropout_rate=0.0)
    x = jax.random.uniform(jax.random.key(0), (2, 8, 8, 1), minval=-1, maxval=1)
    params = model.init(jax.random.key(1), x)

    def traced_forward() -> str:  # the forward trace names the custom_vjp; the gradient's inlines it
        return str(jax.make_jaxpr(lambda p: model.apply(p, x).sum())(params))

    with train_bench.concat_elu_by_autodiff(True):
        before = traced_forward()
    with train_bench.concat_elu_by_autodiff(False):
        unchanged = traced_forward()
    after = traced_forward()
    assert "name=concat_elu" not in before and "concatenate" in before
    assert "name=concat_elu" in unchanged and "name=concat_elu" in after


def _check_machine(machine: dict) -> None:
    for key in ("device_kind", "jax_version", "jaxlib_version", "cpu_count"):
        assert machine[key], key


def _check_peak(peak: dict) -> None:
    assert peak["n"] > 0
    for dtype in ("float32", "bfloat16"):
        assert peak[dtype]["gflops"] > 0
        _check_record(peak[dtype]["measurement"])


def _check_record(record: dict) -> None:
    assert set(record) == MEASURED, record
    assert isinstance(record["busy"], bool)
    assert record["wall_seconds"] >= 0 and record["cpu_seconds"] >= 0
    assert record["load_1min_before"] >= 0 and record["load_1min_after"] >= 0


def _records(node) -> list[dict]:
    """Every measured record (a dict with 'wall_seconds') in a document, each checked."""
    found = []
    if isinstance(node, dict):
        if "wall_seconds" in node:
            _check_record(node)
            return [node]
        for value in node.values():
            found += _records(value)
    elif isinstance(node, list):
        for value in node:
            found += _records(value)
    return found
