"""Training: the pmap step on 1 and 8 devices, resume (in process and after SIGKILL), corrupted checkpoints,
NaN detection, the workdir layout.

One tiny model (8x8 binary images, nr_resnet 1, 8 filters, 8 latents, RBM 4 + 4, dropout off) and one set of
step settings for every test, so that the compiled functions (`pvpp.train` caches them per configuration) are
shared; runs differ only in length and periods. conftest gives the process 8 CPU devices."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pvpp import data, train
from pvpp.model import ModelConfig
from pvpp.runs import checkpoint, metrics
from pvpp.training.optim import ema_params

from helpers import (  # noqa: F401
    MODEL, NUM_IMAGES, TRAIN, assert_states_equal, assert_trees_equal, run, synthetic_splits, with_key_data,
)

@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run of 6 steps: (final state, workdir)."""
    workdir = tmp_path_factory.mktemp("reference")
    return run(workdir), workdir


# ----------------------------------------------------------------------------------------------------------
# Configuration and validation


def test_train_config_rejects_bad_values():
    with pytest.raises(ValueError, match="exactly one of num_steps and num_epochs"):
        train.TrainConfig(num_steps=10, num_epochs=2)
    with pytest.raises(ValueError, match="exactly one of num_steps and num_epochs"):
        train.TrainConfig(num_steps=None)
    with pytest.raises(ValueError, match=r"batch_size=10 is not divisible by the 4 devices \(num_devices\)"):
        train.TrainConfig(batch_size=10, num_devices=4)
    with pytest.raises(ValueError, match=r"device batch \(batch_size / num_devices\)=4 is not divisible by the 3 "):
        train.TrainConfig(batch_size=8, num_devices=2, micro_batches=3)
    with pytest.raises(ValueError, match="micro_batches"):
        train.TrainConfig(micro_batches=0)
    with pytest.raises(ValueError, match="negative_phase"):
        train.TrainConfig(negative_phase="cd")
    with pytest.raises(ValueError, match="num_betas"):
        train.AISConfig(num_betas=1)
    config = TRAIN.replace(num_steps=None, num_epochs=3)
    assert train.TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@pytest.mark.parametrize(
    "changes, data_changes, match",
    [
        (dict(num_devices=16, batch_size=16), {}, "num_devices 16 exceeds the 8 local devices"),
        (dict(num_devices=None, batch_size=12), {}, "batch_size=12 is not divisible by the 8 devices"),
        ({}, dict(images=np.zeros((64, 28, 28, 1), np.uint8)), r"images are \(28, 28, 1\)"),
        (dict(batch_size=128, num_devices=None), {}, "exceeds the 64 training images"),
        (dict(num_devices=None, batch_size=16, micro_batches=4), {}, r"micro-batches \(train_config.micro_batches\)"),
    ],
)
def test_run_training_validates_before_writing(tmp_path, changes, data_changes, match):
    train_data, eval_data = synthetic_splits()
    train_data = data.DataSplit(**{**train_data.__dict__, **data_changes})
    workdir = tmp_path / "run"
    with pytest.raises(ValueError, match=match):
        train.run_training(MODEL, TRAIN.replace(**changes), train_data, eval_data, workdir)
    assert not workdir.exists()


def test_workdir_of_another_model_is_refused_untouched(reference, tmp_path):
    _, workdir = reference
    before = {p: p.stat().st_mtime_ns for p in workdir.rglob("*")}
    train_data, eval_data = synthetic_splits()
    with pytest.raises(ValueError, match="another model configuration .*nr_filters: 8 -> 16"):
        train.run_training(MODEL.replace(nr_filters=16), TRAIN, train_data, eval_data, workdir)
    assert {p: p.stat().st_mtime_ns for p in workdir.rglob("*")} == before


# ----------------------------------------------------------------------------------------------------------
# The step on 1 and 8 devices


def test_micro_batches_in_use_default_by_platform_and_decoder_size():
    """None: 4 micro-batches for a decoder of 64+ filters on a CPU (halved until they divide the device batch and
    keep 4 images), 1 for smaller decoders and on accelerators; a value given is used as it is."""
    auto = train.TrainConfig(batch_size=128)
    assert auto.micro_batches_in_use(64, 1, "cpu") == 4
    assert auto.micro_batches_in_use(128, 16, "cpu") == 2  # 8 images per device
    assert auto.micro_batches_in_use(128, 32, "cpu") == 1  # 4 images per device
    assert auto.micro_batches_in_use(32, 1, "cpu") == 1
    assert auto.micro_batches_in_use(64, 1, "gpu") == 1
    assert train.TrainConfig(batch_size=128, micro_batches=2).micro_batches_in_use(8, 1, "gpu") == 2


def test_micro_batches_make_the_update_of_as_many_devices_dropout_included():
    """1 device x 4 micro-batches == 4 devices x 1 == 2 devices x 2, with dropout ON: the dropout key of a
    micro-batch is folded with its index in the global batch, the latent noise with the example's."""
    model = MODEL.replace(dropout_rate=0.5)
    images, _ = synthetic_splits()
    batch = images.images[:8]
    root = jax.random.key(TRAIN.seed)
    results = {}
    for num_devices, micro_batches in ((4, 1), (1, 4), (2, 2)):
        devices = tuple(jax.local_devices()[:num_devices])
        fns = train.step_functions(model, TRAIN.replace(micro_batches=micro_batches), devices)
        sharding = train.device_sharding(devices)
        state = train.replicate(fns.init(root, batch), sharding)
        state, metrics = fns.train(state, jax.device_put(batch.reshape(num_devices, -1, 8, 8, 1), sharding))
        results[num_devices, micro_batches] = (train.unreplicate(state), float(np.asarray(metrics["loss"])[0]))
    (reference, loss), *others = results.values()
    for state, other_loss in others:
        assert other_loss == pytest.approx(loss, rel=1e-5)
        assert_states_equal(state, reference, exact=False)
    # Sanity: dropout is on, so other dropout keys give another update.
    fns = train.step_functions(model, TRAIN, tuple(jax.local_devices()[:1]))
    state = train.replicate(fns.init(root, batch), train.device_sharding(tuple(jax.local_devices()[:1])))
    _, metrics = fns.train(state, batch[None])
    assert float(np.asarray(metrics["loss"])[0]) != pytest.approx(loss, rel=1e-5)



@pytest.mark.parametrize("prior", ["rbm", "gaussian", "bernoulli", "none"])
def test_eight_devices_make_the_update_of_one_device_with_the_whole_batch(prior):
    """8 devices x 1 image == 1 device x 8 images (dropout off), for every prior: same latent noise per global
    example index, gradients averaged with pmean, the RBM's chains advanced with the same key everywhere."""
    assert jax.local_device_count() == 8
    model = MODEL.replace(prior=prior)
    images, _ = synthetic_splits()
    batches = [images.images[8 * i : 8 * (i + 1)] for i in range(2)]
    root = jax.random.key(TRAIN.seed)
    results = {}
    for num_devices in (1, 8):
        devices = tuple(jax.local_devices()[:num_devices])
        fns = train.step_functions(model, TRAIN, devices)
        sharding = train.device_sharding(devices)
        state = train.replicate(fns.init(root, batches[0]), sharding)
        losses = []
        for batch in batches:
            per_device = jax.device_put(batch.reshape(num_devices, 8 // num_devices, 8, 8, 1), sharding)
            state, metrics = fns.train(state, per_device)
            losses.append(np.asarray(metrics["loss"]))
        # After every step the copies on all devices are identical (bitwise): params, EMA, Adam, chains.
        for leaf in jax.tree.leaves(with_key_data(state)):
            copies = np.asarray(leaf)
            for d in range(1, num_devices):
                np.testing.assert_array_equal(copies[d], copies[0])
        results[num_devices] = (train.unreplicate(state), np.stack(losses))
    (state_1, losses_1), (state_8, losses_8) = results[1], results[8]
    np.testing.assert_allclose(losses_8, np.broadcast_to(losses_1[:, :1], losses_8.shape), rtol=1e-5)
    assert_states_equal(state_8, state_1, exact=False)
    assert (state_1.chains is not None) == (prior == "rbm")
    if prior == "rbm":  # the chains saw identical parameters and keys: they agree exactly
        np.testing.assert_array_equal(state_8.chains.z_left, state_1.chains.z_left)
    # Sanity: the step did change the parameters, the prior's own included.
    init = fns.init(root, batches[0])
    changed = jax.tree.map(lambda a, b: not np.allclose(a, b), state_1.params, init.params)
    assert any(jax.tree.leaves(changed["decoder"]))
    if prior in ("rbm", "bernoulli"):
        assert any(jax.tree.leaves(changed["rbm" if prior == "rbm" else "bernoulli_prior"]))



def test_progress_lines_say_which_steps_log_z_their_relaxed_kl_uses(tmp_path, caplog):
    """The RBM's log Z is known only at the periodic evaluations (steps 3 and 6 here), and it changes as the RBM
    trains: the progress lines of steps 4 and 6 (logged before that step's evaluation) name step 3's."""
    with caplog.at_level(logging.INFO):
        run(tmp_path)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    by_step = {line.split()[1].split("/")[0]: line for line in lines}
    assert "relaxed KL - log Z" in by_step["2"] and "step 3" not in by_step["2"], lines  # no log Z yet
    for step in ("4", "6"):
        assert "relaxed KL (log Z of step 3)" in by_step[step] and "log Z (step 3)" in by_step[step], lines

def test_the_train_step_is_traced_once_per_configuration(reference, tmp_path):
    """A recompilation check (as chex.assert_max_traces): two runs of one configuration in one process, 6 + 4
    steps with evaluations, trace the compiled train and evaluation steps once."""
    run(tmp_path, num_steps=4)
    traces = train.step_functions(MODEL, TRAIN, tuple(jax.local_devices()[:1])).traces()
    assert traces["train"] == 1 and traces["evaluate"] == 1, traces


@pytest.mark.parametrize(
    "prior, negative_phase",
    [("rbm", "ais"), ("gaussian", "pcd"), ("bernoulli", "pcd"), ("none", "pcd")],
)
def test_step_traces_for_every_prior_and_the_ais_negative_phase(prior, negative_phase):
    """Shapes only (jax.eval_shape: traced, not compiled): the step and the evaluation accept every prior, and
    the AIS negative phase; the state keeps its structure and chains exist exactly for RBM + PCD."""
    model = MODEL.replace(prior=prior)
    negative_ais = train.AISConfig(num_chains=4, num_betas=3)
    config = TRAIN.replace(negative_phase=negative_phase, negative_ais=negative_ais)
    devices = tuple(jax.local_devices()[:2])
    fns = train.step_functions(model, config, devices)
    images = jax.ShapeDtypeStruct((8, 8, 8, 1), jnp.uint8)
    state = jax.eval_shape(fns.init, jax.random.key(0), images)
    assert (state.chains is not None) == (prior == "rbm" and negative_phase == "pcd")
    replicated = jax.tree.map(lambda s: jax.ShapeDtypeStruct((2,) + s.shape, s.dtype), state)
    per_device = jax.ShapeDtypeStruct((2, 4, 8, 8, 1), jnp.uint8)
    new_state, metrics = jax.eval_shape(fns.train, replicated, per_device)
    assert jax.tree.structure(new_state) == jax.tree.structure(replicated)
    assert {"loss", "reconstruction", "kl", "grad_norm", "learning_rate", "finite"} <= set(metrics)
    sums = jax.eval_shape(
        fns.evaluate, replicated.params, jax.ShapeDtypeStruct((), jnp.float32), jax.random.key(1), per_device,
        jax.ShapeDtypeStruct((2, 4), jnp.bool_),
    )
    assert set(sums) == {"loss", "reconstruction", "kl", "negative_elbo", "count"}


# ----------------------------------------------------------------------------------------------------------
# Runs, resume, corrupted checkpoints, NaN


def test_workdir_layout_config_metrics_checkpoints_export(reference):
    final, workdir = reference
    assert int(final.step) == TRAIN.num_steps
    config = json.loads((workdir / train.CONFIG_FILENAME).read_text())
    assert ModelConfig.from_dict(config["model"]) == MODEL
    assert train.TrainConfig.from_dict(config["train"]) == TRAIN
    assert config["data"]["name"] == "synthetic" and config["num_devices"] == 1 and config["num_steps"] == 6

    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in records if "train/loss" in r]
    eval_steps = [r["step"] for r in records if "eval/loss" in r]
    assert train_steps == [2, 4, 6] and eval_steps == [3, 6]
    last_eval = [r for r in records if "eval/loss" in r][-1]
    for name in (
        "eval/negative_elbo",
        "eval/reconstruction",
        "eval/kl",
        "eval_ema/loss",
        "log_partition",
        "log_partition_lower",
        "log_partition_upper",
        "ais_effective_sample_size",
    ):
        assert np.isfinite(last_eval[name]), name
    assert last_eval["log_partition_lower"] <= last_eval["log_partition"] <= last_eval["log_partition_upper"]
    # The relaxed loss with beta 1 is reconstruction + KL (log Z included).
    np.testing.assert_allclose(
        last_eval["eval/loss"], last_eval["eval/reconstruction"] + last_eval["eval/kl"], rtol=1e-5
    )

    assert sorted(
        int(p.name) for p in (workdir / train.CHECKPOINT_DIRNAME).iterdir() if p.name.isdigit()
    ) == [2, 4, 6]
    exported, export_config = checkpoint.load_params(workdir / train.EMA_PARAMS_DIRNAME)
    assert export_config["step"] == 6 and ModelConfig.from_dict(export_config["model"]) == MODEL
    assert_trees_equal(exported, ema_params(final.opt_state))


def test_interrupted_and_resumed_run_equals_uninterrupted(reference, tmp_path):
    want, _ = reference
    first = run(tmp_path, num_steps=3)  # saves its last step, 3; then the same command with the full length
    assert int(first.step) == 3
    resumed = run(tmp_path)
    assert_states_equal(resumed, want)
    # The data position of step 3 is that of an iterator after 3 batches.
    iterator = data.batch_iterator(synthetic_splits()[0], TRAIN.batch_size, seed=TRAIN.seed, num_devices=1)
    for _ in range(3):
        next(iterator)
    with checkpoint.CheckpointManager(tmp_path / train.CHECKPOINT_DIRNAME, read_only=True) as manager:
        template = {"train_state": first, "data_position": iterator.get_state()}
        saved = manager.restore(3, template)
    assert {k: int(v) for k, v in saved["data_position"].items()} == {
        k: int(v) for k, v in iterator.get_state().items()
    }


def test_corrupted_latest_checkpoint_is_reported_and_the_previous_used(reference, tmp_path, caplog):
    want, _ = reference
    run(tmp_path, num_steps=4)  # checkpoints 2 and 4
    step_dir = tmp_path / train.CHECKPOINT_DIRNAME / "4"
    largest = max((p for p in step_dir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    largest.write_bytes(largest.read_bytes()[: largest.stat().st_size // 2])  # truncated
    with caplog.at_level(logging.INFO):
        resumed = run(tmp_path)
    assert any("step 4" in r.getMessage() and "unreadable" in r.getMessage() for r in caplog.records)
    assert any("Resumed from the checkpoint of step 2" in r.getMessage() for r in caplog.records)
    assert_states_equal(resumed, want)  # steps 3 and 4 recomputed exactly


def test_non_finite_step_raises_and_saves_nothing_after_the_last_good_checkpoint(reference, tmp_path):
    """A finite state whose parameters are 1e30 times too large overflows on the next step: the run stops with
    FloatingPointError naming that step, and no checkpoint is written after the last good one."""
    good = run(tmp_path, num_steps=2)  # checkpoint 2
    diverging = good.replace(
        step=jnp.asarray(3, jnp.int32), params=jax.tree.map(lambda p: p * 1e30, good.params)
    )
    iterator = data.batch_iterator(synthetic_splits()[0], TRAIN.batch_size, seed=TRAIN.seed, num_devices=1)
    for _ in range(3):
        next(iterator)
    with checkpoint.CheckpointManager(tmp_path / train.CHECKPOINT_DIRNAME, async_save=False) as manager:
        manager.save(3, {"train_state": diverging, "data_position": iterator.get_state()})
    with pytest.raises(FloatingPointError, match=r"at step 4.*last good checkpoint is step 3"):
        run(tmp_path, checkpoint_every=1)
    steps = sorted(int(p.name) for p in (tmp_path / train.CHECKPOINT_DIRNAME).iterdir() if p.name.isdigit())
    assert steps == [2, 3]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in records) <= 3  # no metrics of the bad step were written either


# ----------------------------------------------------------------------------------------------------------
# SIGKILL at an arbitrary point, then the same command again

RUNNER = """
import json, os, sys
import jax
jax.config.update("jax_num_cpu_devices", 8)  # as in the test process: the same compilations (cache)
jax.config.update("jax_compilation_cache_dir", os.environ["PVPP_TEST_JAX_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
import numpy as np
from absl import logging
from pvpp import data, train
from pvpp.model import ModelConfig
logging.set_verbosity(logging.INFO)
model = ModelConfig.from_dict(json.loads(sys.argv[2]))
config = train.TrainConfig.from_dict(json.loads(sys.argv[3]))
images = (np.random.default_rng(0).uniform(size=({num}, 8, 8, 1)) < 0.4).astype(np.uint8)
train.run_training(model, config, data.DataSplit("synthetic", "train", images, None, "static"),
                   data.DataSplit("synthetic", "test", images[:16], None, "static"), sys.argv[1])
"""


def test_sigkill_at_an_arbitrary_point_then_the_same_command_resumes(tmp_path):
    config = TRAIN.replace(num_steps=40, checkpoint_every=10, log_every=10, eval_every=20)
    workdir = tmp_path / "killed"
    cache = jax.config.jax_compilation_cache_dir
    command = [
        sys.executable,
        "-c",
        RUNNER.format(num=NUM_IMAGES),
        str(workdir),
        json.dumps(MODEL.to_dict()),
        json.dumps(config.to_dict()),
    ]
    env = dict(os.environ, PVPP_TEST_JAX_CACHE_DIR=cache)
    checkpoints = workdir / train.CHECKPOINT_DIRNAME

    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    while not (checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir())):
        assert process.poll() is None, process.stdout.read().decode()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint within 240 s"
        time.sleep(0.05)
    time.sleep(random.Random(0).uniform(0.0, 0.5))  # somewhere in the loop: stepping, saving, logging
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it was killed: lengthen it"
    steps_at_kill = sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
    assert steps_at_kill and steps_at_kill[-1] < config.num_steps

    done = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=240)
    log = done.stdout.decode()
    assert done.returncode == 0, log[-3000:]
    assert f"Resumed from the checkpoint of step {steps_at_kill[-1]}" in log

    # The killed-and-resumed run ends where an uninterrupted one does.
    want = run(
        tmp_path / "uninterrupted",
        **{k: getattr(config, k) for k in ("num_steps", "checkpoint_every", "log_every", "eval_every")},
    )
    with checkpoint.CheckpointManager(checkpoints, read_only=True) as manager:
        iterator = data.batch_iterator(
            synthetic_splits()[0], TRAIN.batch_size, seed=TRAIN.seed, num_devices=1
        )
        step, saved = manager.restore_latest({"train_state": want, "data_position": iterator.get_state()})
    assert step == config.num_steps
    assert_states_equal(saved["train_state"], want)
    # What the killed run logged after its last checkpoint was removed on resume: every logged step appears once,
    # in metrics.jsonl and in the TensorBoard event files.
    logged = list(range(config.log_every, config.num_steps + 1, config.log_every))
    records = metrics.read_metrics(workdir / metrics.METRICS_FILENAME)
    assert [r["step"] for r in records if "train/loss" in r] == logged
    scalars = metrics.read_tensorboard_scalars(workdir / metrics.TENSORBOARD_DIRNAME)
    assert [step for step, _ in scalars["train/loss"]] == logged
    np.testing.assert_allclose(
        [value for _, value in scalars["train/loss"]], [r["train/loss"] for r in records if "train/loss" in r],
        rtol=1e-6,
    )
    # The sample and reconstruction grids of each evaluation, once per evaluation step: 8 samples in a row; the
    # 8 evaluation images over their 8 reconstructions (binary images drawn 0 / 255).
    grids = metrics.read_tensorboard_images(workdir / metrics.TENSORBOARD_DIRNAME)
    tile = 8 + 1  # an 8x8 image and one pixel of padding
    for tag, rows in (("samples", 1), ("reconstructions", 2)):
        assert [step for step, _ in grids[tag]] == [20, 40], tag
        for _, grid in grids[tag]:
            # (TensorBoard stores grey images as RGB PNGs.)
            assert grid.shape[:2] == (rows * tile + 1, 8 * tile + 1) and set(np.unique(grid)) <= {0, 255, 128}
    evaluation_images = synthetic_splits()[1].images[:8, :, :, 0] * 255
    _, last = grids["reconstructions"][-1]
    shown = np.stack([last[1 : 1 + 8, 1 + k * tile : 1 + k * tile + 8, 0] for k in range(8)])
    np.testing.assert_array_equal(shown, evaluation_images)
