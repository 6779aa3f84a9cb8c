"""Several processes (`jax.distributed`) on this machine: CPU processes with gloo collectives and a coordinator on
127.0.0.1, launched as the README says, on free local ports, always killed at the end.

The property: 2 processes x 4 devices make the training of 1 process x 8 devices at the same global batch (each
process reads its part of every batch, the step's collectives span both), write the workdir's files once, stop
together when one is killed (with pvpp's message naming it), resume from the last checkpoint, and evaluate to
the same numbers as one process. A SIGTERM to one of the processes stops both at the same saved step.

Gloo connects the processes at the first collective over a set of devices and waits only 30 s there: with a cold
compilation cache on busy cores the processes' compilations of the train step can end minutes apart, so
`pvpp.parallel.distributed.warm_up_collectives` makes that connection while they are in step (a later
collective waits as long as it takes).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from pvpp.data import BatchIterator
from pvpp.model import ModelConfig
from pvpp.parallel import distributed, liveness
from pvpp.runs import checkpoint, metrics, stopping, workdir as workdir_files
from pvpp.training import saving
from pvpp.training.config import TrainConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Seconds: how soon the survivor of a kill must stop (JAX's own check: liveness.backstop_timeout). Not shorter: while
# both processes trace and compile on two cores that the suite's other worker also uses, heartbeats can be late by
# tens of seconds: a 5 s timeout once stopped a healthy run before its first checkpoint. With 20 s (JAX's 40 s then)
# JAX's coordination service once declared both healthy processes of the SIGTERM test dead at the same instant
# (clean-clone CI of 3df4c5e), 3 s after the kernel logged a snapshot of this virtual machine ("crng reseeded due
# to virtual machine fork"): a pause of the whole machine looks to JAX's check (wall clock, no guard) like the
# silence of every process. Its timeout now has a floor of 600 s (`liveness.BACKSTOP_FLOOR`), and pvpp's own
# watch does not count a pause of its own as the others' silence.
HEARTBEAT = 60
NUM_STEPS = 6
TRAIN_FLAGS = [
    "--flagfile=experiments/caltech101_cpu.flags",
    f"--num_steps={NUM_STEPS}",
    "--checkpoint_every=2",
    "--keep_checkpoints=5",
    "--log_every=2",
    f"--eval_every={NUM_STEPS}",
    "--eval_examples=32",
    "--eval_batch_size=32",
    "--ais_chains=8",
    "--ais_betas=10",
    "--eval_grids=0",  # no TensorBoard sample grids: not what this test is about, and a compile per run
]
# 2 x 4 and 1 x 8 devices agree to float32 rounding, not to the bit: gloo (across processes) adds the 8 gradients
# in another order than XLA's in-process all-reduce, and XLA on CPU computes even one device's gradient
# differently with 4 devices per process than with 8 (a lone convolution's gradient differed by 1e-5 before
# any reduction; gathering the gradients and adding them in device order still left 585 of 865 arrays 1 ulp
# apart after 2 steps). Adam's moments amplify the rounding where gradients cancel. Measured over 20 steps:
# parameters within 5e-5 and the EMA within 1e-5 of their largest value per array, Adam's moments within 5e-3;
# the chains, step, key and data position are bitwise equal.
RELATIVE_TOLERANCE = {"params": 1e-3, "ema": 1e-3, "moments": 2e-2}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def processes(module: str, flags: list[str], *, num_processes: int, devices: int, logs, code: str | None = None):
    """Starts `python -m module` (or `python -c code`, named `module`) as `num_processes` processes with `devices`
    CPU devices each, the start-up flags of the run first (so that `flags` can override them); yields the Popen
    list; kills whatever still runs on the way out. logs: a folder for their output."""
    port, started = free_port(), []
    env = dict(
        os.environ,
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
        JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir,
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5",
    )
    try:
        for index in range(num_processes):
            extra = []
            if num_processes > 1:
                extra = [
                    f"--coordinator_address=127.0.0.1:{port}",
                    f"--num_processes={num_processes}",
                    f"--process_id={index}",
                    f"--heartbeat_timeout={HEARTBEAT}",
                ]
            log = open(os.path.join(logs, f"{module.rsplit('.', 1)[-1]}_{port}_{index}.log"), "w+")
            program = ["-m", module] if code is None else ["-c", code]
            started.append(
                subprocess.Popen(
                    [sys.executable, *program, *extra, *flags],
                    cwd=REPO,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
            started[-1].log = log
        yield started
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
            process.wait()
            process.log.close()


def output(process) -> str:
    process.log.flush()
    process.log.seek(0)
    return process.log.read()


def finish(started, timeout: float) -> list[str]:
    """Waits for every process; their outputs. Fails naming the process that failed or did not end."""
    deadline = time.monotonic() + timeout
    for index, process in enumerate(started):
        try:
            process.wait(timeout=max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            pytest.fail(f"process {index} did not end within {timeout} s:\n{output(process)[-3000:]}")
        assert process.returncode == 0, f"process {index} failed:\n{output(process)[-3000:]}"
    return [output(process) for process in started]


def on_one_and_two_processes(module: str, flags_of, logs) -> None:
    """Runs `python -m module` with flags_of(count) on 1 process x 8 devices, then on 2 processes x 4."""
    for count in (1, 2):
        with processes(module, flags_of(count), num_processes=count, devices=8 // count, logs=logs) as started:
            finish(started, 300)


def train(workdir, data_dir, num_processes: int, devices: int, logs, timeout: float = 300, extra=()) -> list[str]:
    flags = [*TRAIN_FLAGS, f"--workdir={workdir}", f"--data_dir={data_dir}", *extra]
    with processes("pvpp.experiments.caltech101", flags, num_processes=num_processes, devices=devices, logs=logs) as ps:
        return finish(ps, timeout)


def latest_state(workdir) -> tuple[list[int], int, dict]:
    """(the steps in checkpoints/, the latest step, its state with typed keys as key data)."""
    run = workdir_files.read_config(workdir)
    template = saving.checkpoint_template(
        ModelConfig.from_dict(run["model"]), TrainConfig.from_dict(run["train"]), jax.local_devices()[0]
    )
    with checkpoint.CheckpointManager(os.path.join(workdir, "checkpoints"), read_only=True) as manager:
        steps = manager.all_steps()
        step, saved = manager.restore_latest(template)
    saved["train_state"] = saved["train_state"].replace(key=jax.random.key_data(saved["train_state"].key))
    return steps, step, saved


def assert_same_training(got: dict, want: dict) -> None:
    """Integer leaves (step, chains' bits, key, data position) bitwise; floats within RELATIVE_TOLERANCE of the
    largest magnitude of each array."""
    got_leaves = jax.tree_util.tree_flatten_with_path(got)[0]
    want_leaves = jax.tree_util.tree_flatten_with_path(want)[0]
    assert [p for p, _ in got_leaves] == [p for p, _ in want_leaves]
    for (path, a), (_, b) in zip(got_leaves, want_leaves):
        name, a, b = jax.tree_util.keystr(path), np.asarray(a), np.asarray(b)
        if "chains" in name or not np.issubdtype(b.dtype, np.floating):
            np.testing.assert_array_equal(a, b, err_msg=name)
            continue
        group = "ema" if "ema_params" in name else "moments" if ".mu" in name or ".nu" in name else "params"
        scale = max(float(np.max(np.abs(b))), 1e-6) if b.size else 1.0
        np.testing.assert_allclose(a, b, rtol=0, atol=RELATIVE_TOLERANCE[group] * scale, err_msg=name)


def test_two_processes_train_like_one_stop_together_when_one_is_killed_resume_evaluate_and_sample(tmp_path, data_dir):
    logs = tmp_path / "logs"
    logs.mkdir()
    reference = tmp_path / "one_process"
    train(reference, data_dir, 1, 8, logs)

    # Two processes; process 1 is killed once the first checkpoint is there.
    workdir = tmp_path / "two_processes"
    flags = [*TRAIN_FLAGS, f"--workdir={workdir}", f"--data_dir={data_dir}"]
    with processes("pvpp.experiments.caltech101", flags, num_processes=2, devices=4, logs=logs) as (first, second):
        deadline = time.monotonic() + 300
        checkpoints = workdir / "checkpoints"
        while not (checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir())):
            assert first.poll() is None and second.poll() is None, output(first)[-3000:] + output(second)[-3000:]
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.05)
        second.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        try:
            first.wait(timeout=HEARTBEAT + 30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"process 0 still runs {HEARTBEAT + 30} s after process 1 was killed")
        stopped_after = time.monotonic() - killed_at
        survivor = output(first)
    print(f"process 0 stopped {stopped_after:.1f} s after process 1 was killed (heartbeat timeout {HEARTBEAT} s)")
    steps_at_kill = sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
    assert steps_at_kill[-1] < NUM_STEPS, "the run ended before process 1 was killed: lengthen it"
    assert first.returncode != 0
    assert stopped_after < HEARTBEAT + 30
    # pvpp's watch (not JAX's crash report, which comes only after twice the timeout) names the dead process.
    assert "pvpp: process 0 of 2: process 1 has not answered" in survivor, survivor[-3000:]

    # The same command on both processes resumes from the last checkpoint and ends like one process.
    # With TensorBoard grids at the last step's evaluation (a changed setting, allowed and recorded): process 0
    # draws them alone, which must not make it wait for the others (nor them for it).
    first_log, second_log = train(workdir, data_dir, 2, 4, logs, extra=["--eval_grids=2", "--allow_changed_settings"])
    assert f"Resumed from the checkpoint of step {steps_at_kill[-1]}" in first_log
    segments = workdir_files.read_config(workdir)["segments"]
    assert [s["start_step"] for s in segments] == [0, steps_at_kill[-1]]
    assert [s["train"]["eval_grids"] for s in segments] == [0, 2]
    steps, step, got = latest_state(workdir)
    want_steps, _, want = latest_state(reference)
    assert step == NUM_STEPS and steps == want_steps == [2, 4, 6]
    assert_same_training(got, want)

    # Written once, by process 0: config.json, one metrics record per logged step, the progress lines, the export.
    assert sorted(os.listdir(checkpoints)) == ["2", "4", "6"]
    assert workdir_files.read_config(workdir)["num_devices"] == 8
    records = metrics.read_metrics(workdir / metrics.METRICS_FILENAME)
    assert [r["step"] for r in records if "train/loss" in r] == [2, 4, 6]
    assert "step 6/6" in first_log and "step 6/6" not in second_log
    assert (workdir / workdir_files.EMA_PARAMS_DIRNAME).is_dir()

    # Evaluation over 8 devices: 1 process x 8 or 2 x 4, each process its share of the images (one batch per
    # device) and AIS's chains split over all 8; process 0 writes the same JSON as one process.
    results = {count: tmp_path / f"eval_{count}.json" for count in (1, 2)}
    on_one_and_two_processes(
        "pvpp.experiments.evaluate",
        lambda count: [
            f"--workdir={workdir}",
            f"--output={results[count]}",
            "--num_importance_samples=4",
            "--num_examples=10",
            "--batch_size=2",
            "--ais_num_chains=16",
            "--ais_num_betas=20",
            "--progress=false",
        ],
        logs,
    )
    one, two = (json.loads(results[count].read_text()) for count in (1, 2))
    assert one.pop("command") != two.pop("command")  # the --output differs, nothing else
    assert one.pop("per_image")["digests"] == two.pop("per_image")["digests"] and one == two
    assert sorted(p.name.split(".")[0] + p.suffix for p in tmp_path.glob("eval_2.*")) == ["eval_2.json", "eval_2.npz"]

    # Samples: the batches shared over the devices of both processes; the same images as one process.
    outputs = {count: tmp_path / f"samples_{count}" for count in (1, 2)}
    on_one_and_two_processes(
        "pvpp.experiments.sample",
        lambda count: [
            f"--workdir={workdir}",
            f"--output_dir={outputs[count]}",
            "--num_latents=3",
            "--decodes_per_latent=2",
            "--num_reconstructions=2",
            "--decodes_per_image=2",
            "--num_gibbs_sweeps=10",
            "--batch_size=1",
        ],
        logs,
    )
    with np.load(outputs[1] / "samples.npz") as one, np.load(outputs[2] / "samples.npz") as two:
        assert sorted(one.files) == sorted(two.files)
        for name in one.files:
            np.testing.assert_array_equal(one[name], two[name], err_msg=name)


def test_sigterm_to_one_of_two_processes_stops_both_after_saving_the_same_step(tmp_path, data_dir):
    """JAX's preemption service: process 1 alone gets SIGTERM; both save one checkpoint of the same step and exit
    with the stop status, naming that step."""
    workdir, logs = tmp_path / "run", tmp_path / "logs"
    logs.mkdir()
    flags = [
        *TRAIN_FLAGS, "--num_steps=60", "--checkpoint_every=1000", "--log_every=1", "--eval_every=1000",
        f"--workdir={workdir}", f"--data_dir={data_dir}",
    ]
    with processes("pvpp.experiments.caltech101", flags, num_processes=2, devices=4, logs=logs) as started:
        deadline = time.monotonic() + 300
        records = workdir / metrics.METRICS_FILENAME
        while not (records.exists() and "train/loss" in records.read_text()):
            assert all(p.poll() is None for p in started), "".join(output(p)[-3000:] for p in started)
            assert time.monotonic() < deadline, "no training step within 300 s"
            time.sleep(0.05)
        started[1].send_signal(signal.SIGTERM)
        for process in started:
            process.wait(timeout=120)
        texts = [output(process) for process in started]
    assert [p.returncode for p in started] == [stopping.STOPPED_EXIT_STATUS] * 2, texts[0][-2000:] + texts[1][-2000:]
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert len(steps) == 1 and steps[0] < 60, steps
    for index, text in enumerate(texts):
        said = [line for line in text.splitlines() if line.startswith(f"pvpp: process {index} of 2: stopped by ")]
        assert len(said) == 1 and f"after step {steps[0]}:" in said[0], text[-3000:]
        assert "Traceback" not in text, text[-3000:]


FAILING_PROGRAM = """
import sys, time
import jax
import numpy as np
from absl import flags
from jax.experimental import multihost_utils
from pvpp.experiments import errors, processes

FLAGS = flags.FlagValues()
processes.define_flags(FLAGS)
flags.DEFINE_string("mode", None, "stopping_error or uncaught", flag_values=FLAGS)
FLAGS(sys.argv)
processes.start(FLAGS)  # as the entry points start

def work():
    for step in range(100000):
        multihost_utils.process_allgather(np.ones(3))
        if jax.process_index() == 1 and step == 3:
            raise FileNotFoundError("no such file: the data")
        time.sleep(0.05)

if FLAGS.mode == "uncaught":  # a script of the user's own: the exception reaches the interpreter
    work()
errors.exit_on_stopping_errors(work)
"""


@pytest.mark.parametrize("mode", ["stopping_error", "uncaught"])
def test_a_process_that_stops_on_an_error_stops_the_others_at_once_naming_it(tmp_path, mode):
    """Far sooner than the 60 s heartbeat timeout: the failing process tells the others before it exits (pvpp's
    error exit, or at interpreter exit after an uncaught exception)."""
    flags = [f"--mode={mode}", "--heartbeat_timeout=60"]
    with processes("failing", flags, num_processes=2, devices=1, logs=tmp_path, code=FAILING_PROGRAM) as started:
        for process in started:
            try:
                process.wait(timeout=50)
            except subprocess.TimeoutExpired:
                pytest.fail(f"process {started.index(process)} still runs:\n{output(process)[-2000:]}")
        texts = [output(process) for process in started]
    assert started[0].returncode == 1 and started[1].returncode != 0, texts
    if mode == "stopping_error":
        assert "pvpp: process 1 of 2: FileNotFoundError: no such file: the data" in texts[1], texts[1][-2000:]
    assert "pvpp: process 0 of 2: process 1 stopped on an error" in texts[0], texts[0][-2000:]


def test_each_process_reads_its_part_of_the_same_global_batch():
    images = np.random.default_rng(0).integers(0, 256, (70, 4, 4, 1), dtype=np.uint8)
    for remainder, count in (("drop", 70), ("pad", 70), ("keep", 66)):
        settings = dict(seed=1, labels=np.arange(count), remainder=remainder, num_epochs=2, dynamic_binarization=True)
        if remainder != "keep":
            settings["num_devices"] = 8
        whole = BatchIterator(images[:count], 16, **settings)
        parts = [BatchIterator(images[:count], 16, process_slice=(i, 2), **settings) for i in range(2)]
        for batch in whole:
            pieces = [next(part) for part in parts]
            for key, value in batch.items():
                np.testing.assert_array_equal(np.concatenate([p[key] for p in pieces]), value, err_msg=key)
        # The position is global: a part restores another count's state.
        parts[0].set_state(whole.get_state())


def test_distributed_config_validates_and_is_off_by_default():
    assert not distributed.DistributedConfig().enabled
    assert distributed.DistributedConfig(auto=True).enabled
    with pytest.raises(ValueError, match="go together"):
        distributed.DistributedConfig(coordinator_address="127.0.0.1:1234")
    with pytest.raises(ValueError, match="HOST:PORT"):
        distributed.DistributedConfig(coordinator_address="localhost", num_processes=2, process_id=0)
    with pytest.raises(ValueError, match="process_id must be below"):
        distributed.DistributedConfig(coordinator_address="h:1", num_processes=2, process_id=2)
    # One process: nothing to join, every helper answers for it.
    assert distributed.is_primary() and not distributed.is_multiprocess()
    tree = {"a": jax.numpy.ones(3)}
    assert distributed.to_replicated(tree) is tree and distributed.from_replicated(tree) is tree


def test_the_watch_does_not_blame_the_others_for_a_pause_of_its_own(monkeypatch):
    """A check that comes more than half the timeout after the previous one (this process or the machine was
    paused or starved: a VM snapshot, say) restarts the others' clocks; a silence the watch saw still stops the
    run after the timeout."""
    stops = []
    watch = liveness.Watch(client=None, process=0, count=2, timeout=60, shutdown_timeout=1, period=1)
    monkeypatch.setattr(watch, "_stop_run", stops.append)
    entries = [("pvpp/alive/0", "5"), ("pvpp/alive/1", "7")]  # process 1's counter never moves from here on
    watch._check(entries, 1000.0)
    watch._check(entries, 1001.0)
    watch._check(entries, 1100.0)  # 99 s after the last check: the watch itself was paused
    for now in range(1101, 1160):
        watch._check(entries, float(now))
    assert stops == []  # 59 s of silence seen since the pause
    watch._check(entries, 1161.0)
    assert stops == ["process 1 has not answered for 60 s (killed, crashed or frozen)"]


def test_jax_heartbeat_check_is_a_backstop_that_survives_a_pause_of_the_machine():
    """jaxlib 0.10 ages heartbeats, sent every half of its timeout, with the wall clock: its timeout is twice
    pvpp's and at least BACKSTOP_FLOOR, so a pause of up to half of that does not end a healthy run."""
    assert liveness.available()
    assert liveness.backstop_timeout(60) == liveness.BACKSTOP_FLOOR >= 600
    assert liveness.backstop_timeout(400) == 800
