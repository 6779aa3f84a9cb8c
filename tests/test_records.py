"""A run's record is the truth: settings changed on resume are refused or recorded, a refused resume writes
nothing, SIGTERM / Ctrl-C stop after saving the running step, a damaged prepared-data copy is rebuilt, and misuse
ends in one line naming the argument. The tiny run of tests/helpers.py (its compiled programs are shared)."""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from absl import app, flags

import pvpp
from helpers import MODEL, NUM_IMAGES, TRAIN, assert_states_equal, run, synthetic_splits
from pvpp import data, settings, train
from pvpp.experiments import common, evaluate as evaluate_command, omniglot
from pvpp.experiments.errors import exit_on_stopping_errors
from pvpp.generation import images as image_io
from pvpp.inference import LoadedModel
from pvpp.runs import checkpoint, metrics, results, stopping, workdir as workdir_files
from pvpp.training import loop, resume
from pvpp.training.optim import OptimConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------------------------------------
# The classification of the settings


def test_every_setting_has_a_kind_and_every_training_flag_names_its_setting():
    description = {
        "model": MODEL.to_dict(),
        "train": TRAIN.to_dict(),
        "data": train.DataConfig("mnist").to_dict(),
        "num_devices": 1,
        "micro_batches": 1,
        "num_steps": 6,
        "versions": {"jax": jax.__version__},
    }
    kinds = {path: resume.kind_of(path) for path in resume.flatten(description)}
    assert set(kinds.values()) <= {settings.FIXED, settings.CHANGEABLE, settings.RECORDED}
    expected = {
        "model.nr_filters": settings.FIXED,
        "model.tau": settings.CHANGEABLE,
        "train.batch_size": settings.FIXED,
        "train.seed": settings.FIXED,
        "train.num_chains": settings.FIXED,
        "train.num_steps": settings.CHANGEABLE,
        "train.optim.learning_rate": settings.CHANGEABLE,
        "train.optim.lr_decay_per_step": settings.CHANGEABLE,
        "train.negative_ais.num_betas": settings.CHANGEABLE,
        "train.checkpoint_every": settings.CHANGEABLE,
        "data.name": settings.FIXED,
        "data.data_dir": settings.RECORDED,
        "num_devices": settings.CHANGEABLE,
        "micro_batches": settings.CHANGEABLE,
        "train.micro_batches": settings.RECORDED,
        "versions.jax": settings.RECORDED,
    }
    assert {path: kinds[path] for path in expected} == expected
    # Every flag that sets a recorded setting names it, and names a flag that exists.
    flag_values = flags.FlagValues()
    common.define_flags(omniglot.DATASETS, omniglot.MODEL_DEFAULTS, flag_values)  # it has --data_variant
    start_up = {"distributed", "coordinator_address", "num_processes", "process_id", "heartbeat_timeout",
                "shutdown_timeout", "initialization_timeout", "workdir", "allow_changed_settings"}
    setting_flags = set(common.SETTING_FLAGS.values())
    assert setting_flags <= set(flag_values)
    assert set(flag_values) - start_up - setting_flags == set()
    assert set(common.SETTING_FLAGS) <= set(kinds) | {"data.variant", "data.source"}
    # A class with a field of no kind is refused where it is declared.
    with pytest.raises(TypeError, match=r"unclassified fields \['b'\]"):
        settings.check_classified(
            dataclasses.make_dataclass("Unclassified", ["a", "b"], namespace={"ON_RESUME": {"a": settings.FIXED}})
        )


# ----------------------------------------------------------------------------------------------------------
# Changed settings on resume


@pytest.mark.slow  # three training segments
def test_a_changed_learning_rate_is_refused_without_the_flag_untouched_and_recorded_with_it(tmp_path):
    workdir = tmp_path / "run"
    run(workdir, num_steps=4)  # checkpoints 2 and 4
    files = {p: p.read_bytes() for p in (workdir / "config.json", workdir / metrics.METRICS_FILENAME)}
    faster = OptimConfig(learning_rate=0.05, lr_decay_per_step=0.9999)
    train_data, eval_data = synthetic_splits()
    for config, error, match in (
        (TRAIN.replace(optim=faster), workdir_files.ChangedSettingsError,
         r"--learning_rate: 0\.001 -> 0\.05; --lr_decay: 0\.999995 -> 0\.9999.*pass --allow_changed_settings"),
        (TRAIN.replace(num_steps=4, num_chains=8), workdir_files.WorkdirConflictError,
         r"another train configuration \(--num_chains: 4 -> 8; recorded -> given\), which a resumed run cannot"),
    ):
        with pytest.raises(error, match=match):
            train.run_training(MODEL, config, train_data, eval_data, workdir, setting_names=common.SETTING_NAMES)
        assert {p: p.read_bytes() for p in files} == files  # nothing written: config.json byte-identical

    # Allowed: steps 5 and 6 with the new settings. Gradient clipping switched on too (at a norm never reached):
    # the checkpoints' optimizer state, which lacks the clipping's (leafless) piece, is converted.
    faster = dataclasses.replace(faster, grad_clip_norm=1e9)
    run(workdir, optim=faster)
    record = json.loads((workdir / "config.json").read_text())
    segments = [
        (s["start_step"], s["train"]["optim"]["learning_rate"], s["train"]["optim"]["grad_clip_norm"], s["train"]["num_steps"])
        for s in record["segments"]
    ]
    assert segments == [(0, 0.001, None, 4), (4, 0.05, 1e9, 6)]
    assert record["train"]["optim"]["learning_rate"] == 0.05 and record["num_steps"] == 6
    notes = [r for r in metrics.read_metrics(workdir / metrics.METRICS_FILENAME) if "note" in r]
    assert [r["step"] for r in notes] == [4] and "learning_rate: 0.001 -> 0.05" in notes[0]["note"]
    texts = [
        (event.step, value.tensor.string_val[0].decode())
        for event in metrics._read_events(str(workdir / metrics.TENSORBOARD_DIRNAME))
        for value in event.summary.value
        if value.tag.startswith("notes")
    ]
    assert [step for step, _ in texts] == [4] and texts[0][1] == notes[0]["note"]


def test_a_resume_that_restores_an_older_step_drops_the_segments_it_discarded():
    old = {"model": {"a": 1}, "train": {"lr": 1}, "num_steps": 4}
    new = {"model": {"a": 1}, "train": {"lr": 2}, "num_steps": 6}
    first, started = resume.record(None, old, 0)
    assert started and first["segments"] == [{"start_step": 0, **old}]
    second, started = resume.record(first, new, 4)
    assert started and [s["start_step"] for s in second["segments"]] == [0, 4]
    same, started = resume.record(second, new, 4)  # resumed again from 4 with the same settings
    assert not started and same == second
    back, started = resume.record(second, old, 2)  # checkpoint 4 was lost: from 2 with the first settings
    assert not started and back["segments"] == [{"start_step": 0, **old}]
    reused = {**old, "data": {"source": "the prepared copy, reused"}}
    first = resume.record(None, {**old, "data": {"source": "the prepared copy, prepared now"}}, 0)[0]
    _, started = resume.record(first, reused, 2)  # how the data were found is no setting
    assert not started and resume.note(resume.differences(first, reused), 2) is None


# ----------------------------------------------------------------------------------------------------------
# Graceful stops


def test_sigterm_at_step_3_saves_step_3_releases_the_lock_and_a_rerun_ends_bitwise_as_an_uninterrupted_run(
    tmp_path, monkeypatch, caplog
):
    want = run(tmp_path / "uninterrupted")
    real = loop.step_functions
    seen = {}

    def step_functions(*args):
        fns = real(*args)
        calls = []

        def train_step(state, images):
            calls.append(1)
            if len(calls) == 3:  # SIGTERM while step 3 runs
                os.kill(os.getpid(), signal.SIGTERM)
                seen["handlers"] = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
            return fns.train(state, images)

        return dataclasses.replace(fns, train=train_step)

    monkeypatch.setattr(loop, "step_functions", step_functions)
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    workdir = tmp_path / "stopped"
    with pytest.raises(stopping.TrainingStopped, match=r"^stopped by SIGTERM after step 3: its checkpoint is in") as stop:
        run(workdir)
    assert stop.value.step == 3
    assert seen["handlers"] == (signal.SIG_DFL, signal.SIG_DFL)  # a second signal would end the process at once
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    with workdir_files.lock(workdir):  # released
        pass
    with checkpoint.CheckpointManager(workdir / train.CHECKPOINT_DIRNAME, read_only=True) as manager:
        assert manager.all_steps() == [2, 3]
    assert [r["step"] for r in metrics.read_metrics(workdir / metrics.METRICS_FILENAME) if "train/loss" in r] == [2, 3]

    monkeypatch.setattr(loop, "step_functions", real)
    assert_states_equal(run(workdir), want)


RUNNER = """
import json, os, sys
import jax
jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_compilation_cache_dir", os.environ["PVPP_TEST_JAX_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
import numpy as np
from pvpp import data, train
from pvpp.experiments.errors import exit_on_stopping_errors, quiet_orbax_logs
from pvpp.model import ModelConfig
model = ModelConfig.from_dict(json.loads(sys.argv[2]))
config = train.TrainConfig.from_dict(json.loads(sys.argv[3]))
images = (np.random.default_rng(0).uniform(size=({num}, 8, 8, 1)) < 0.4).astype(np.uint8)
quiet_orbax_logs()
exit_on_stopping_errors(train.run_training, model, config, data.DataSplit("synthetic", "train", images, None, "static"),
                        data.DataSplit("synthetic", "test", images[:16], None, "static"), sys.argv[1])
"""


def test_ctrl_c_during_training_prints_one_line_saves_the_step_and_exits_with_the_stop_status(tmp_path):
    config = TRAIN.replace(num_steps=100_000, checkpoint_every=100_000, log_every=1, eval_every=100_000)
    workdir = tmp_path / "run"
    command = [sys.executable, "-c", RUNNER.format(num=NUM_IMAGES), str(workdir), json.dumps(MODEL.to_dict()),
               json.dumps(config.to_dict())]
    env = dict(os.environ, PVPP_TEST_JAX_CACHE_DIR=jax.config.jax_compilation_cache_dir)
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        records, deadline = workdir / metrics.METRICS_FILENAME, time.monotonic() + 240
        while not (records.exists() and "train/loss" in records.read_text()):
            assert process.poll() is None, process.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no training step within 240 s"
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == stopping.STOPPED_EXIT_STATUS, stderr[-3000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("pvpp: stopped by SIGINT (Ctrl-C) after step ") and str(workdir) in last, last
    step = int(last.split("after step ")[1].split(":")[0])
    with checkpoint.CheckpointManager(workdir / train.CHECKPOINT_DIRNAME, read_only=True) as manager:
        assert manager.all_steps() == [step]


@pytest.mark.parametrize("interruption", [KeyboardInterrupt(), stopping.Interrupted(signal.SIGTERM)])
def test_a_command_interrupted_before_training_or_while_writing_says_so_in_one_line(
    tmp_path, monkeypatch, capsys, interruption
):
    def replace_then_interrupt(source, target):
        raise interruption

    monkeypatch.setattr(results.os, "replace", replace_then_interrupt)
    with pytest.raises(SystemExit) as exit_:
        exit_on_stopping_errors(image_io.save_grid, tmp_path / "grid.png", np.zeros((2, 4, 4, 1), np.uint8), 2)
    assert exit_.value.code == stopping.STOPPED_EXIT_STATUS
    (line,) = capsys.readouterr().err.strip().splitlines()
    name = "SIGINT (Ctrl-C)" if isinstance(interruption, KeyboardInterrupt) else "SIGTERM"
    assert line.startswith(f"pvpp: stopped by {name} before the work was done; no partial file was left"), line
    assert os.listdir(tmp_path) == []  # neither the PNG nor its temporary file


# ----------------------------------------------------------------------------------------------------------
# A damaged prepared-data copy


@pytest.mark.parametrize("damage", ["flipped_bytes", "truncated", "broken_dataset_info"])
def test_a_damaged_prepared_copy_is_reported_in_one_line_and_rebuilt(tmp_path, monkeypatch, data_dir, caplog, damage):
    monkeypatch.setenv("PVPP_PREPARED_DIR", str(tmp_path / "prepared"))  # never the real cache
    want = data.load("caltech101_silhouettes", "train", data_dir=data_dir)
    folder = tmp_path / "prepared" / "pvpp_caltech101_silhouettes" / "1.0.0"
    records = folder / "pvpp_caltech101_silhouettes-train.array_record-00000-of-00001"
    content = bytearray(records.read_bytes())
    if damage == "flipped_bytes":
        content[len(content) // 2 : len(content) // 2 + 16] = bytes(b ^ 0xFF for b in content[len(content) // 2 : len(content) // 2 + 16])
        records.write_bytes(bytes(content))
    elif damage == "truncated":
        records.write_bytes(bytes(content[: len(content) // 2]))
    else:
        info = folder / "dataset_info.json"
        info.write_text(info.read_text()[:100])
    with caplog.at_level("WARNING"):
        got = data.load("caltech101_silhouettes", "train", data_dir=data_dir)
    said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(said) == 1 and len(said[0].splitlines()) == 1, said
    assert said[0].startswith(f"The prepared copy {folder} is damaged (") and f"rebuilding it from the files in {data_dir}" in said[0]
    np.testing.assert_array_equal(got.images, want.images)
    np.testing.assert_array_equal(got.labels, want.labels)


# ----------------------------------------------------------------------------------------------------------
# Misuse: one line naming the argument


def test_a_config_json_that_is_not_json_stops_training_and_evaluation_with_one_line(tmp_path, capsys):
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.json").write_text('{"model": {"nr_filters": 8,')
    train_data, eval_data = synthetic_splits()
    with pytest.raises(SystemExit, match=rf"^pvpp: UnreadableConfigError: workdir {workdir}: its config.json is not valid JSON"):
        exit_on_stopping_errors(train.run_training, MODEL, TRAIN, train_data, eval_data, workdir)
    with pytest.raises(app.UsageError, match=rf"^--workdir: workdir {workdir}: its config.json is not valid JSON"):
        evaluate_command.run(["evaluate", f"--workdir={workdir}", "--progress=false"])
    assert sorted(os.listdir(workdir)) == ["config.json"]


def test_a_batch_larger_than_the_split_stops_with_one_line_naming_the_flag(tmp_path):
    train_data, eval_data = synthetic_splits()
    with pytest.raises(SystemExit, match=rf"^pvpp: SettingError: --batch_size=128 exceeds the {NUM_IMAGES} training images"):
        exit_on_stopping_errors(
            train.run_training, MODEL, TRAIN.replace(batch_size=128), train_data, eval_data, tmp_path / "run",
            setting_names=common.SETTING_NAMES,
        )
    assert not (tmp_path / "run").exists()


def test_a_record_from_before_micro_batches_counts_as_one_and_more_is_a_change(tmp_path):
    """config.json written before the micro-batch count was recorded: its run used one; a resume with 4 needs the
    flag and is recorded as a change."""
    description = {"model": MODEL.to_dict(), "train": TRAIN.to_dict(), "data": {"name": "synthetic"},
                   "num_devices": 1, "num_steps": 6}
    workdir_files.write_config(tmp_path, description)
    assert resume.check_resumable(tmp_path, {**description, "micro_batches": 1})[1] == []
    with pytest.raises(workdir_files.ChangedSettingsError, match="the micro-batches in use: 1 -> 4"):
        resume.check_resumable(tmp_path, {**description, "micro_batches": 4})
    _, changes = resume.check_resumable(tmp_path, {**description, "micro_batches": 4}, allow_changed_settings=True)
    assert [(c.path, c.recorded, c.given) for c in changes] == [("micro_batches", 1, 4)]


def test_evaluating_an_export_of_another_model_names_the_checkpoint_flag(tmp_path):
    workdir = tmp_path / "run"
    workdir_files.write_config(workdir, {"model": MODEL.to_dict(), "train": TRAIN.to_dict(), "data": {"name": "synthetic"}})
    export = tmp_path / "other"
    workdir_files.export_for_inference(export, MODEL.replace(nr_filters=16), {"w": np.ones(3, np.float32)}, dataset="synthetic")
    with pytest.raises(app.UsageError, match=r"^--checkpoint: .* another model than the run in workdir .*nr_filters: 8 vs 16"):
        evaluate_command.run(["evaluate", f"--workdir={workdir}", f"--checkpoint={export}", "--progress=false"])


def test_pvpp_load_of_an_empty_folder_and_the_loaded_model_misused_say_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a workdir or export: it holds neither config.json"):
        pvpp.load(tmp_path)
    model = LoadedModel(MODEL.replace(dropout_rate=0.0), {"unused": np.zeros(1)}, None, {"kind": "test"})
    key, images = jax.random.key(0), synthetic_splits()[1].images[:2]
    no_images = images[:0]
    for call, match in (
        (lambda: model.encode(key, no_images), r"^images: an empty batch \(0, 8, 8, 1\)"),
        (lambda: model.reconstruct(key, no_images), r"^images: an empty batch"),
        (lambda: model.log_likelihood(key, no_images, log_partition=0.0), r"^images: an empty batch"),
        (lambda: model.log_likelihood(key, images, num_samples=0), r"^num_samples must be >= 1, got 0"),
        (lambda: model.reconstruct(key, images, decodes=0), r"^decodes must be >= 1, got 0"),
        (lambda: model.sample(key, 0), r"^num must be >= 1, got 0"),
        (lambda: model.decode(key, np.zeros((0, MODEL.num_latents))), r"^z: an empty batch"),
    ):
        with pytest.raises(ValueError, match=match):
            call()
    default = inspect.signature(LoadedModel.log_partition).parameters["ais"].default
    assert (default.num_chains, default.num_betas, default.reverse_start, default.reverse_start_sweeps) == (
        100, 1000, "forward_ais", 100,
    )
