"""pvpp.runs.metrics: JSON lines that survive reopening and kills; the progress line (with an injected clock)."""

import json
import logging
import math

import jax.numpy as jnp
import numpy as np
import pytest

from pvpp.runs import metrics


def test_each_write_is_one_flushed_json_line(tmp_path):
    writer = metrics.MetricsWriter(tmp_path)
    scalars = {"loss": jnp.float32(2.5), "kl": np.float64(0.25), "num_images": np.int64(128)}
    writer.write(1, scalars, wall_time=10.0)
    # Flushed: readable from the file before the writer is closed.
    lines = (tmp_path / metrics.METRICS_FILENAME).read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"step": 1, "wall_time": 10.0, "loss": 2.5, "kl": 0.25, "num_images": 128}
    ]
    writer.close()


def test_a_reopened_writer_appends(tmp_path):
    with metrics.MetricsWriter(tmp_path) as writer:
        writer.write(1, {"loss": 3.0})
        writer.write(2, {"loss": 2.0})
    with metrics.MetricsWriter(tmp_path) as writer:  # a resumed run
        writer.write(3, {"loss": 1.0, "bits_per_dim": jnp.asarray([4.5])})
    records = metrics.read_metrics(tmp_path / metrics.METRICS_FILENAME)
    assert [(r["step"], r["loss"]) for r in records] == [(1, 3.0), (2, 2.0), (3, 1.0)]
    assert records[2]["bits_per_dim"] == 4.5
    assert all(isinstance(r["wall_time"], float) for r in records)
    for line in (tmp_path / metrics.METRICS_FILENAME).read_text().splitlines():
        json.loads(line)  # every line is valid JSON on its own


def test_non_finite_values_stay_strict_json_and_read_back(tmp_path):
    with metrics.MetricsWriter(tmp_path) as writer:
        writer.write(5, {"a": float("nan"), "b": np.inf, "c": -np.inf})
    line = (tmp_path / metrics.METRICS_FILENAME).read_text().strip()
    json.loads(line, parse_constant=lambda name: pytest.fail(f"non-standard JSON constant {name}"))
    (record,) = metrics.read_metrics(tmp_path / metrics.METRICS_FILENAME)
    assert math.isnan(record["a"]) and record["b"] == math.inf and record["c"] == -math.inf


def test_a_line_cut_by_a_kill_is_skipped_and_the_next_writer_starts_a_new_line(tmp_path, caplog):
    path = tmp_path / metrics.METRICS_FILENAME
    path.write_text('{"step": 1, "wall_time": 1.0, "loss": 2.0}\n{"step": 2, "wall_ti')
    with caplog.at_level(logging.WARNING):
        assert [r["step"] for r in metrics.read_metrics(path)] == [1]
    assert any("line 2" in r.getMessage() for r in caplog.records)
    with metrics.MetricsWriter(tmp_path) as writer:  # the resumed run
        writer.write(2, {"loss": 1.5})
    lines = path.read_text().splitlines()
    assert json.loads(lines[-1]) == {"step": 2, "wall_time": json.loads(lines[-1])["wall_time"], "loss": 1.5}
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert [(r["step"], r["loss"]) for r in metrics.read_metrics(path)] == [(1, 2.0), (2, 1.5)]
    assert any("line 2" in r.getMessage() for r in caplog.records)


def test_bad_metrics_are_rejected(tmp_path):
    with metrics.MetricsWriter(tmp_path) as writer:
        with pytest.raises(ValueError, match="'loss'.*shape"):
            writer.write(1, {"loss": np.zeros(3)})
        with pytest.raises(ValueError, match="step"):
            writer.write(1, {"step": 2.0})
        with pytest.raises(TypeError, match="step"):
            writer.write(1.5, {"loss": 1.0})
    with pytest.raises(RuntimeError, match="closed"):
        writer.write(2, {"loss": 1.0})


def test_format_duration():
    assert metrics.format_duration(0) == "0s"
    assert metrics.format_duration(42.4) == "42s"
    assert metrics.format_duration(185) == "3m 05s"
    assert metrics.format_duration(7 * 3600 + 47 * 60 + 10) == "7h 47m"
    assert metrics.format_duration(2 * 86400 + 3 * 3600 + 59) == "2d 03h"
    assert metrics.format_duration(math.inf) == "?"
    assert metrics.format_duration(-1) == "?"


class _FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_progress_line_rates_and_eta_from_the_interval():
    clock = _FakeClock()
    progress = metrics.ProgressLogger(total_steps=1100, images_per_step=128, start_step=100, clock=clock)
    clock.now += 20.0  # 100 steps in 20 s: 5 steps/s, 640 images/s; 900 steps left: 180 s
    line = progress(200, {"loss": jnp.float32(93.25), "kl": 12.5})
    assert line == "step 200/1100 (18.2%) | 5.00 steps/s | 640 images/s | loss 93.25 | relaxed KL 12.5 nats | ETA 3m 00s"
    clock.now += 100.0  # the next interval is slower: 100 steps in 100 s, 800 steps left
    line = progress(300)
    assert "1.00 steps/s" in line and "128 images/s" in line and line.endswith("ETA 13m 20s")


def test_progress_line_names_the_rbm_kl_once_log_z_is_known():
    progress = metrics.ProgressLogger(total_steps=10, images_per_step=1, clock=_FakeClock())
    line = progress(1, {"loss": 80.0, "kl_minus_log_z": -90.0, "log_Z": 100.0})
    assert "loss 80 | relaxed KL 10 | log Z 100 nats" in line
    assert "relaxed KL - log Z -90 nats" in progress(2, {"loss": 80.0, "kl_minus_log_z": -90.0})
    # A log Z of an earlier step: both names say which, since the sum is off by log Z's change since then.
    line = progress(3, {"loss": 80.0, "kl_minus_log_z": -130.0, "log_Z": 120.0, "log_Z_step": 2000})
    assert "relaxed KL (log Z of step 2000) -10 | log Z (step 2000) 120 nats" in line


def test_progress_line_without_a_rate_has_no_eta():
    clock = _FakeClock()
    progress = metrics.ProgressLogger(total_steps=10, images_per_step=1, clock=clock)
    line = progress(0)  # no time has passed and no step was made
    assert "? steps/s" in line and line.endswith("ETA ?")


def test_a_resumed_writer_drops_what_a_killed_run_wrote_after_the_checkpoint(tmp_path):
    with metrics.MetricsWriter(tmp_path) as writer:
        for step in (1, 2, 3, 4):
            writer.write(step, {"loss": float(step)})
    with metrics.MetricsWriter(tmp_path, start_step=2) as writer:  # resumed from the checkpoint of step 2
        writer.write(3, {"loss": 30.0})
    records = metrics.read_metrics(tmp_path / metrics.METRICS_FILENAME)
    assert [(r["step"], r["loss"]) for r in records] == [(1, 1.0), (2, 2.0), (3, 30.0)]
    scalars = metrics.read_tensorboard_scalars(tmp_path / metrics.TENSORBOARD_DIRNAME)
    assert scalars["loss"] == [(1, 1.0), (2, 2.0), (3, 30.0)]
