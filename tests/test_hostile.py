"""Durable runs against a hostile world: damaged checkpoints and exports, a rerun of a finished run, two processes on
one workdir. Uses test_train's tiny model, settings and data (the compiled programs are shared)."""

from __future__ import annotations

import json
import logging
import os
import pathlib
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from absl import app, flags

from pvpp import data, train
from pvpp.experiments import caltech101, common, evaluate as evaluate_command, mnist
from pvpp.experiments.errors import exit_on_stopping_errors
from pvpp.inference import load_model
from pvpp.runs import checkpoint, workdir as workdir_files
from pvpp.training import loop
from pvpp.training.optim import ema_params
from helpers import MODEL, TRAIN, assert_states_equal, run, assert_trees_equal

ROOT = pathlib.Path(__file__).resolve().parent.parent


def flip_bytes(directory: pathlib.Path, tree) -> list[pathlib.Path]:
    """Inverts 16 bytes of every copy of every array of `tree` (>= 64 bytes) found raw in the data files under
    `directory`; the files keep their sizes. Where orbax keeps an array out of line the file stays readable and
    only the values change (the integrity record catches it); a copy inside a b-tree node fails its CRC (an
    unreadable step). Either way the step must not be used. Returns the files changed."""
    changed = []
    for path in (p for p in directory.rglob("*") if p.is_file() and p.parent.name == "d"):
        content = bytearray(path.read_bytes())
        for leaf in jax.tree.leaves(tree):
            raw = np.asarray(leaf).tobytes()
            if len(raw) < 64 or len(set(raw[:64])) < 16:  # too short or too regular (zeros) to find
                continue
            at = content.find(raw[:64])
            while at >= 0:
                for i in range(at + 32, at + 48):
                    content[i] ^= 0xFF
                at = content.find(raw[:64], at + 64)
        if content != path.read_bytes():
            path.write_bytes(bytes(content))
            changed.append(path)
    assert changed, f"no array of the tree is stored raw under {directory}"
    return changed


def truncate(directory: pathlib.Path) -> None:
    """Cuts the largest file under `directory` to half its size (unreadable)."""
    largest = max((p for p in directory.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    largest.write_bytes(largest.read_bytes()[: largest.stat().st_size // 2])


def test_flipped_bytes_in_the_latest_checkpoint_fall_back_to_the_previous_step(tmp_path, caplog):
    want = run(tmp_path / "uninterrupted")
    workdir = tmp_path / "damaged"
    at_4 = run(workdir, num_steps=4)  # checkpoints 2 and 4
    flip_bytes(workdir / train.CHECKPOINT_DIRNAME / "4", at_4.params)
    with caplog.at_level(logging.INFO):
        resumed = run(workdir)
    messages = [r.getMessage() for r in caplog.records]
    assert any("step 4" in m and "unreadable (" in m for m in messages), messages
    assert any("Resumed from the checkpoint of step 2" in m for m in messages)
    assert_states_equal(resumed, want)  # steps 3 and 4 recomputed exactly; the damaged step was set aside
    assert (workdir / train.CHECKPOINT_DIRNAME / "4.unreadable").is_dir()
    exported, config = checkpoint.load_params(workdir / train.EMA_PARAMS_DIRNAME)  # verified on read
    assert config["step"] == TRAIN.num_steps
    assert_trees_equal(exported, ema_params(want.opt_state))


def test_a_damaged_export_is_refused_evaluation_falls_back_and_a_rerun_rewrites_it(tmp_path, caplog):
    workdir = tmp_path / "run"
    final = run(workdir)
    export = workdir / train.EMA_PARAMS_DIRNAME
    flip_bytes(export, ema_params(final.opt_state))
    with pytest.raises((checkpoint.CorruptCheckpointError, checkpoint.UnreadableCheckpointError)):
        checkpoint.load_params(export)
    with caplog.at_level(logging.WARNING):
        inference = load_model(workdir)
    assert inference.source["kind"] == "checkpoint_ema" and inference.source["step"] == TRAIN.num_steps
    assert any("cannot be used" in r.getMessage() for r in caplog.records)
    assert_trees_equal(inference.params, ema_params(final.opt_state))
    run(
        workdir
    )  # the finished run, rerun: its export was damaged, so it is written again from the checkpoint
    exported, config = checkpoint.load_params(export)
    assert config["step"] == TRAIN.num_steps
    assert_trees_equal(exported, ema_params(final.opt_state))


def test_a_finished_run_rerun_leaves_its_intact_export_untouched(tmp_path, caplog):
    workdir = tmp_path / "run"
    run(workdir)
    export = workdir / train.EMA_PARAMS_DIRNAME
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in export.rglob("*") if p.is_file()}
    with caplog.at_level(logging.INFO):
        run(workdir)
    assert any("already finished" in r.getMessage() for r in caplog.records)
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in export.rglob("*") if p.is_file()} == before


def test_a_checkpoint_with_nan_is_not_resumed_from(tmp_path, caplog):
    """A step whose arrays read back as written but hold NaN (saved by a faulty writer) is set aside too."""
    workdir = tmp_path / "run"
    good = run(workdir, num_steps=2)
    poisoned = good.replace(params=jax.tree.map(lambda p: p * np.nan, good.params), step=good.step + 1)
    position = {"seed": np.int64(0), "epoch": np.int64(0), "batch_index": np.int64(3)}
    with checkpoint.CheckpointManager(workdir / train.CHECKPOINT_DIRNAME, async_save=False) as manager:
        manager.save(3, {"train_state": poisoned, "data_position": position})
    with caplog.at_level(logging.INFO):
        resumed = run(workdir, num_steps=4)
    messages = [r.getMessage() for r in caplog.records]
    assert any("step 3" in m and "NaN or inf" in m for m in messages), messages
    assert any("Resumed from the checkpoint of step 2" in m for m in messages)
    assert all(bool(np.all(np.isfinite(np.asarray(leaf)))) for leaf in jax.tree.leaves(resumed.params))


HOLDER = """
import sys, time
from pvpp.runs import workdir
with workdir.lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_a_second_run_on_a_busy_workdir_stops_naming_the_other_process_and_a_dead_ones_lock_is_taken(
    tmp_path,
):
    workdir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(workdir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        started = time.monotonic()
        with pytest.raises(workdir_files.WorkdirBusyError, match=rf"in use by process {holder.pid} on "):
            run(workdir)
        assert time.monotonic() - started < 30  # at once, before any training
        assert not (workdir / train.CHECKPOINT_DIRNAME).exists() and not (workdir / "metrics.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()
    state = run(workdir)  # the killed holder's lock is released by the kernel: taken over
    assert int(state.step) == TRAIN.num_steps


def test_a_flag_file_of_another_data_set_is_refused_before_any_work(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    flag_values = flags.FlagValues()
    common.define_flags(mnist.DATASETS, mnist.MODEL_DEFAULTS, flag_values)
    with pytest.raises(
        flags.IllegalFlagValueError, match=r"cifar10 .*trains mnist, binarized_mnist.*experiments\.cifar10"
    ):
        flag_values(["prog", "--flagfile=experiments/cifar10_cpu.flags", f"--workdir={tmp_path / 'run'}"])
    assert not (tmp_path / "run").exists()


def test_every_runnable_flag_file_states_its_data_set():
    for flag_file in sorted((ROOT / "experiments").glob("*.flags")):
        if flag_file.stem.endswith("_common"):
            continue
        lines = flag_file.read_text().splitlines()
        included = [ROOT / line.split("=", 1)[1] for line in lines if line.startswith("--flagfile=")]
        stated = [
            line
            for f in [flag_file, *included]
            for line in f.read_text().splitlines()
            if line.startswith("--dataset=")
        ]
        assert len(stated) == 1, (flag_file.name, stated)


def test_evaluation_refuses_another_data_set_unless_asked(tmp_path):
    workdir = tmp_path / "run"
    run(workdir)  # trained on the data set named 'synthetic'
    with pytest.raises(
        app.UsageError, match=r"--dataset=mnist is not the data set .* \(synthetic\).*--allow_other_dataset"
    ):
        evaluate_command.run(["evaluate", f"--workdir={workdir}", "--dataset=mnist", "--progress=false"])
    assert not (workdir / "eval").exists()
    assert evaluate_command.default_output(
        str(workdir), "mnist", evaluate_command.eval_config_from_flags()
    ).endswith("eval/mnist_test_k1000_seed0.json")
    assert evaluate_command.default_output(
        str(workdir), "mnist", evaluate_command.eval_config_from_flags(), "step20"
    ).endswith("eval/mnist_test_k1000_seed0_step20.json")


# ----------------------------------------------------------------------------------------------------------
# The command line: one line, not a traceback, for problems of the input, the files or the machine

RUNNER_WITH_FILE_SIZE_LIMIT = """
import json, os, resource, signal, sys
import jax
jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_compilation_cache_dir", os.environ["PVPP_TEST_JAX_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 1e9)  # read the cache, never write it
import numpy as np
from pvpp import data, train
from pvpp.experiments.errors import exit_on_stopping_errors, quiet_orbax_logs
from pvpp.model import ModelConfig
model = ModelConfig.from_dict(json.loads(sys.argv[2]))
config = train.TrainConfig.from_dict(json.loads(sys.argv[3]))
images = (np.random.default_rng(0).uniform(size=(64, 8, 8, 1)) < 0.4).astype(np.uint8)
limit = int(sys.argv[4])
if limit:  # no file can grow past `limit` bytes (EFBIG, as a full disk gives ENOSPC): checkpoint data can't be written
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
quiet_orbax_logs()  # as the entry points do
exit_on_stopping_errors(train.run_training, model, config, data.DataSplit("synthetic", "train", images, None, "static"),
                        data.DataSplit("synthetic", "test", images[:16], None, "static"), sys.argv[1])
"""


def test_a_full_disk_stops_training_with_one_message_naming_the_checkpoint(tmp_path):
    config = TRAIN.replace(num_steps=20, checkpoint_every=5, log_every=5, eval_every=1000)
    workdir = tmp_path / "run"

    def command(limit: int) -> subprocess.CompletedProcess:
        args = [str(workdir), json.dumps(MODEL.to_dict()), json.dumps(config.to_dict()), str(limit)]
        env = dict(os.environ, PVPP_TEST_JAX_CACHE_DIR=jax.config.jax_compilation_cache_dir)
        return subprocess.run(
            [sys.executable, "-c", RUNNER_WITH_FILE_SIZE_LIMIT, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    full = command(100_000)
    lines = full.stderr.strip().splitlines()
    assert full.returncode == 1, full.stderr[-3000:]
    message = f"pvpp: CheckpointWriteError: writing the checkpoint of step 5 to {workdir}"
    assert any(line.startswith(message) for line in lines[-3:]), lines[-3:]
    assert "File too large" in full.stderr and "Traceback" not in full.stderr and len(lines) < 20, (
        full.stderr[-3000:]
    )
    assert not any(
        p.name.isdigit() for p in (workdir / train.CHECKPOINT_DIRNAME).iterdir()
    )  # only the partial step
    again = command(
        0
    )  # the same command with room on the disk: the partial step is cleaned up, the run completes
    assert again.returncode == 0, again.stderr[-3000:]
    assert sorted(p.name for p in (workdir / train.CHECKPOINT_DIRNAME).iterdir()) == ["10", "15", "20"]


def _cli(args: list[str], env_changes: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(
        os.environ,
        JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir,
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5",
        **(env_changes or {}),
    )
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def _assert_one_line(done: subprocess.CompletedProcess, expected: str) -> None:
    output = done.stdout + done.stderr
    assert done.returncode != 0, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert expected in output.strip().splitlines()[-1] or expected in output, output[-3000:]


def test_missing_or_corrupt_data_stop_with_one_line(tmp_path, data_dir):
    caltech = ["pvpp.experiments.caltech101", "--flagfile=experiments/caltech101_cpu.flags"]
    empty, prepared = tmp_path / "empty", tmp_path / "prepared"
    empty.mkdir()
    done = _cli(
        [*caltech, f"--workdir={tmp_path / 'a'}", f"--data_dir={empty}"], {"PVPP_PREPARED_DIR": str(prepared)}
    )
    _assert_one_line(
        done, "pvpp: FileNotFoundError: pvpp_caltech101_silhouettes: file caltech101_silhouettes_28"
    )
    assert f"the data folder {empty} is empty" in done.stderr and not (tmp_path / "a").exists()

    corrupt = tmp_path / "corrupt" / "caltech101_silhouettes"
    corrupt.mkdir(parents=True)
    original = (data_dir / "caltech101_silhouettes" / "caltech101_silhouettes_28_split1.mat").read_bytes()
    damaged = bytearray(original)
    damaged[len(damaged) // 2] ^= 0xFF
    (corrupt / "caltech101_silhouettes_28_split1.mat").write_bytes(bytes(damaged))
    done = _cli(
        [*caltech, f"--workdir={tmp_path / 'b'}", f"--data_dir={corrupt.parent}"],
        {"PVPP_PREPARED_DIR": str(prepared)},
    )
    _assert_one_line(done, "pvpp: DataFileError:")
    assert not (tmp_path / "b").exists()


def test_a_workdir_of_other_model_flags_or_an_impossible_one_stop_with_one_line(
    tmp_path, data_dir, monkeypatch
):
    caltech = [
        "pvpp.experiments.caltech101",
        "--flagfile=experiments/caltech101_cpu.flags",
        f"--data_dir={data_dir}",
    ]
    parent_is_a_file = tmp_path / "a_file"
    parent_is_a_file.write_text("")
    done = _cli([*caltech, f"--workdir={parent_is_a_file / 'run'}"])
    _assert_one_line(
        done, f"--workdir={parent_is_a_file / 'run'} cannot be created: {parent_is_a_file} is not a directory"
    )

    # A workdir whose config.json holds the same run with 16 filters instead of 8.
    monkeypatch.chdir(ROOT)
    flag_values = flags.FlagValues()
    common.define_flags(caltech101.DATASETS, caltech101.MODEL_DEFAULTS, flag_values)
    workdir = tmp_path / "run"
    flag_values(
        ["prog", "--flagfile=experiments/caltech101_cpu.flags", f"--workdir={workdir}", "--nr_filters=16"]
    )
    model, train_config, data_config, _ = common.configs_from_flags(flag_values, caltech101.MODEL_DEFAULTS)
    description = {"model": model.to_dict(), "train": train_config.to_dict(), "data": data_config.to_dict()}
    workdir_files.write_config(workdir, description)
    before = (workdir / train.CONFIG_FILENAME).read_text()
    done = _cli([*caltech, f"--workdir={workdir}"])
    _assert_one_line(done, "pvpp: WorkdirConflictError:")
    assert "nr_filters: 16 -> 8" in done.stderr
    assert (workdir / train.CONFIG_FILENAME).read_text() == before and sorted(os.listdir(workdir)) == [
        "config.json"
    ]


def test_all_checkpoints_unreadable_or_a_truncated_export_stop_with_one_line(tmp_path):
    workdir = tmp_path / "run"
    run(workdir)
    for step_dir in (workdir / train.CHECKPOINT_DIRNAME).iterdir():
        truncate(step_dir)
    with pytest.raises(
        SystemExit, match=r"^pvpp: UnreadableCheckpointError: none of the checkpoints in .*could be read"
    ):
        exit_on_stopping_errors(run, workdir)
    export = workdir / train.EMA_PARAMS_DIRNAME
    truncate(export)
    with pytest.raises(app.UsageError, match=r"^--checkpoint: .*"):
        evaluate_command.run(
            ["evaluate", f"--workdir={workdir}", f"--checkpoint={export}", "--progress=false"]
        )


def test_the_data_source_recorded_is_the_one_that_was_read(tmp_path, data_dir):
    """An empty data folder with a prepared copy in the cache still trains: the split says it came from the copy
    (training records this as config.json's data.source)."""
    prepared, empty = tmp_path / "prepared", tmp_path / "empty"
    empty.mkdir()
    first = data.load("caltech101_silhouettes", "test", data_dir=data_dir, prepared_dir=prepared)
    assert first.source.endswith(f"prepared now from the files in {data_dir}"), first.source
    again = data.load("caltech101_silhouettes", "test", data_dir=empty, prepared_dir=prepared)
    assert "reused as found" in again.source and str(prepared) in again.source, again.source
    np.testing.assert_array_equal(again.images, first.images)


def test_a_run_that_diverges_before_its_first_checkpoint_says_that_nothing_was_saved(tmp_path, monkeypatch):
    def first_step_not_finite(values):
        scalars = real(values)
        scalars["finite"] = 0.0
        return scalars

    real = loop.first_copy_scalars
    monkeypatch.setattr(loop, "first_copy_scalars", first_step_not_finite)
    with pytest.raises(
        FloatingPointError, match=r"at step 1: .*No checkpoint has been saved yet: a rerun starts from step 0"
    ):
        run(tmp_path / "run")
    assert not any(p.name.isdigit() for p in (tmp_path / "run" / train.CHECKPOINT_DIRNAME).iterdir())
