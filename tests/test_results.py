"""Evaluation result files: written as a pair that is never half-written or mixed, never silently replaced, and
named by what was evaluated."""

import json
import os

import numpy as np
import pytest

from pvpp.evaluation import evaluate
from pvpp.experiments import evaluate as evaluate_command
from pvpp.runs import results


def _result(shift=0.0):
    summary = {"dataset": "toy", "settings": {"k": 5}, "nats": {"negative_log_likelihood": 80.0 + shift}}
    per_image = {"example_indices": np.arange(4), "log_likelihood": np.linspace(-81, -79, 4) + shift}
    return summary, per_image


def test_a_written_pair_reads_back_and_a_changed_array_is_caught(tmp_path):
    path = tmp_path / "eval" / "toy.json"
    json_path, arrays_path = results.write_results(path, *_result())
    summary, per_image = results.read_results(json_path)
    assert summary["nats"]["negative_log_likelihood"] == 80.0
    np.testing.assert_array_equal(per_image["log_likelihood"], _result()[1]["log_likelihood"])
    assert os.path.basename(arrays_path) == summary["per_image"]["file"]
    np.savez(arrays_path, example_indices=np.arange(4), log_likelihood=np.zeros(4))  # damaged / replaced
    with pytest.raises(results.InconsistentResultError, match="does not hold the arrays"):
        results.read_results(json_path)


def test_another_result_is_refused_and_the_same_one_may_be_rewritten(tmp_path):
    path = tmp_path / "toy.json"
    results.write_results(path, *_result())
    before = path.read_bytes()
    summary, per_image = _result()
    results.write_results(path, {**summary, "command": "another spelling of the same command"}, per_image)
    with pytest.raises(results.ResultExistsError, match="--overwrite"):
        results.write_results(path, *_result(shift=1.0))
    assert json.loads(path.read_bytes())["nats"] == json.loads(before)["nats"]
    results.write_results(path, *_result(shift=1.0), overwrite=True)
    summary, _ = results.read_results(path)
    assert summary["nats"]["negative_log_likelihood"] == 81.0
    assert len(list(tmp_path.glob("toy.*.npz"))) == 1  # the superseded arrays were removed after the switch


def test_settings_that_differ_are_refused_before_any_work(tmp_path):
    path = tmp_path / "toy.json"
    summary, per_image = _result()
    results.write_results(path, {**summary, "parameters_id": "step10"}, per_image)
    results.check_replaceable(path, {"settings": {"k": 5}, "parameters_id": "step10"})  # a rerun: fine
    with pytest.raises(results.ResultExistsError, match="parameters_id"):
        results.check_replaceable(path, {"settings": {"k": 5}, "parameters_id": "step20"})
    results.check_replaceable(path, {"settings": {"k": 6}}, overwrite=True)


@pytest.mark.parametrize("killed_at", [0, 1])
def test_a_kill_while_writing_leaves_the_old_pair_or_the_new_pair(tmp_path, monkeypatch, killed_at):
    """The writer is stopped at its first or second rename (the new arrays, then the JSON): what a reader finds is
    always a complete pair, the old one here."""
    path = tmp_path / "toy.json"
    results.write_results(path, *_result())
    renames = []
    real_replace = os.replace

    def replace(source, target):
        if len(renames) == killed_at:
            raise KeyboardInterrupt("killed")
        renames.append(target)
        real_replace(source, target)

    monkeypatch.setattr(results.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        results.write_results(path, *_result(shift=2.0), overwrite=True)
    monkeypatch.setattr(results.os, "replace", real_replace)
    summary, per_image = results.read_results(path)
    assert summary["nats"]["negative_log_likelihood"] == 80.0
    np.testing.assert_array_equal(per_image["log_likelihood"], _result()[1]["log_likelihood"])
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file is left behind


def test_evaluations_of_different_parameters_get_different_files():
    config = evaluate.EvalConfig(num_importance_samples=10, chunk_size=10, num_examples=5)
    names = {
        evaluate_command.default_output("run", "mnist", config, identity)
        for identity in ("step10", "step20", "params-0123456789ab")
    }
    assert len(names) == 3 and all(name.startswith(os.path.join("run", "eval", "mnist_test_k10_n5_seed0_")) for name in names)
