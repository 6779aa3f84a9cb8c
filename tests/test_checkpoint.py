"""pvpp.runs.checkpoint: bitwise round trips, keep-last-N, fallback past a corrupted checkpoint, survival of a
SIGKILL mid-save, export / load of parameters."""

import dataclasses
import gc
import logging
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from helpers import MODEL, TRAIN
from pvpp.runs import checkpoint
from pvpp.training import compiled, optim, saving

# When orbax fails to read a corrupted checkpoint, its pending read coroutines are left unawaited and, when
# garbage-collected, report "Exception ignored in: <coroutine ...>". That is orbax's noise after an error we
# provoke on purpose, not a failure; the fixture below collects them inside the test that caused them.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture(autouse=True)
def _collect_orbax_leftovers():
    yield
    gc.collect()


def _train_like_state(seed: int) -> dict:
    """A pytree shaped like a training state: params, optax state with EMA, keys, data-iterator position."""
    rng = np.random.default_rng(seed)
    params = {
        # 256 KiB of incompressible data: the largest data file of a checkpoint holds this array.
        "decoder": {"kernel": jnp.asarray(rng.standard_normal((64, 64, 16), dtype=np.float32))},
        "prior": {
            "weights": jnp.asarray(rng.standard_normal((6, 6), dtype=np.float32)),
            "bias": jnp.zeros(6),
        },
    }
    tx = optim.make_optimizer(optim.OptimConfig(grad_clip_norm=5.0))
    opt_state = tx.init(params)
    grads = jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape, dtype=np.float32)), params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return {
        "step": np.int64(seed),
        "params": optax.apply_updates(params, updates),
        "opt_state": opt_state,
        "chains": jnp.asarray(rng.integers(0, 2, size=(8, 6)), dtype=jnp.int32),
        "key": jax.random.fold_in(jax.random.key(0), seed),  # a typed PRNG key
        "raw_key": jax.random.PRNGKey(seed),  # a raw uint32 key
        "data": {"position": np.asarray([seed, 7 * seed], dtype=np.int64), "epoch": seed // 2},
    }


def _assert_bitwise_equal(restored, expected):
    assert jax.tree.structure(restored) == jax.tree.structure(expected)

    def check(path, got, want):
        where = jax.tree_util.keystr(path)
        assert type(got) is type(want) or (isinstance(got, jax.Array) and isinstance(want, jax.Array)), where
        if isinstance(want, jax.Array) and jax.dtypes.issubdtype(want.dtype, jax.dtypes.prng_key):
            assert jax.random.key_impl(got) == jax.random.key_impl(want), where
            got, want = jax.random.key_data(got), jax.random.key_data(want)
        got, want = np.asarray(got), np.asarray(want)
        assert got.dtype == want.dtype and got.shape == want.shape, where
        assert got.tobytes() == want.tobytes(), where

    jax.tree_util.tree_map_with_path(check, restored, expected)


def test_round_trip_is_bitwise_and_keeps_the_ema(tmp_path):
    state = _train_like_state(3)
    with checkpoint.CheckpointManager(tmp_path / "ckpt") as manager:
        manager.save(3, state)
        step, restored = manager.restore_latest(_train_like_state(0))
    assert step == 3
    _assert_bitwise_equal(restored, state)
    # The EMA lives in the optimizer state, so it comes back exactly (not reset to the parameters).
    ema = optim.ema_params(restored["opt_state"])
    weights = restored["params"]["prior"]["weights"]
    assert not np.array_equal(np.asarray(ema["prior"]["weights"]), np.asarray(weights))
    _assert_bitwise_equal(ema, optim.ema_params(state["opt_state"]))


def test_restore_onto_an_abstract_template(tmp_path):
    state = _train_like_state(1)
    with checkpoint.CheckpointManager(tmp_path, async_save=False) as manager:
        manager.save(1, state)

        def abstract(x):
            if isinstance(x, jax.Array):
                return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
            return x

        template = jax.tree.map(abstract, _train_like_state(0))
        restored = manager.restore(1, template)
    _assert_bitwise_equal(restored, state)


def test_keeps_the_last_n_checkpoints(tmp_path):
    with checkpoint.CheckpointManager(tmp_path, max_to_keep=2) as manager:
        for step in range(1, 6):
            manager.save(step, _train_like_state(step))
        manager.wait_until_finished()
        assert manager.all_steps() == [4, 5]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.isdigit()) == ["4", "5"]
    with checkpoint.CheckpointManager(tmp_path, read_only=True) as reader:
        assert reader.latest_step() == 5
        _assert_bitwise_equal(reader.restore(4, _train_like_state(0)), _train_like_state(4))
        with pytest.raises(RuntimeError, match="read-only"):
            reader.save(6, _train_like_state(6))


def test_empty_directory_restores_nothing_and_steps_must_increase(tmp_path):
    with checkpoint.CheckpointManager(tmp_path) as manager:
        assert manager.restore_latest(_train_like_state(0)) is None
        manager.save(2, _train_like_state(2))
        with pytest.raises(ValueError, match="not after the latest"):
            manager.save(2, _train_like_state(2))
        with pytest.raises(ValueError, match="step must be"):
            manager.save(-1, _train_like_state(2))


def _truncate_largest_data_file(step_dir: pathlib.Path) -> pathlib.Path:
    # The array data of an orbax (OCDBT) checkpoint: <step>/state/ocdbt.process_<i>/d/<hash>.
    files = [
        p
        for p in step_dir.rglob("*")
        if p.is_file() and p.parent.name == "d" and "ocdbt." in p.parent.parent.name
    ]
    largest = max(files, key=lambda p: p.stat().st_size)
    size = largest.stat().st_size
    assert size > 100_000, "the largest data file must be the one holding the big array"
    with open(largest, "r+b") as f:
        f.truncate(size // 2)
    return largest


def test_a_corrupted_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
    directory = tmp_path / "ckpt"
    with checkpoint.CheckpointManager(directory, max_to_keep=3) as manager:
        manager.save(10, _train_like_state(10))
        manager.save(20, _train_like_state(20))
    _truncate_largest_data_file(directory / "20")

    with checkpoint.CheckpointManager(directory, max_to_keep=3) as manager:
        with caplog.at_level(logging.WARNING):
            step, restored = manager.restore_latest(_train_like_state(0))
        assert step == 10
        _assert_bitwise_equal(restored, _train_like_state(10))
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert any("step 20" in message and "unreadable" in message for message in warnings), warnings
        # Training resumes from step 10 and writes step 20 again: the bad one is moved aside, not deleted.
        manager.save(20, _train_like_state(21))
        step, restored = manager.restore_latest(_train_like_state(0))
    assert step == 20
    _assert_bitwise_equal(restored, _train_like_state(21))
    assert (directory / "20.unreadable").is_dir()


def test_no_readable_checkpoint_is_a_clear_error(tmp_path):
    with checkpoint.CheckpointManager(tmp_path, max_to_keep=3) as manager:
        manager.save(1, _train_like_state(1))
        manager.save(2, _train_like_state(2))
    for step in (1, 2):
        _truncate_largest_data_file(tmp_path / str(step))
    with checkpoint.CheckpointManager(tmp_path, read_only=True) as reader:
        with pytest.raises(checkpoint.UnreadableCheckpointError, match=r"step 2: .*step 1: "):
            reader.restore_latest(_train_like_state(0))


def test_a_wrong_template_is_an_error_not_a_fallback(tmp_path):
    with checkpoint.CheckpointManager(tmp_path, max_to_keep=3) as manager:
        manager.save(1, _train_like_state(1))
        manager.save(2, _train_like_state(2))
        wrong_shape = _train_like_state(0)
        wrong_shape["chains"] = jnp.zeros((8, 7), jnp.int32)
        with pytest.raises(checkpoint.CheckpointMismatchError, match=r"chains.*int32\[8, 6\].*int32\[8, 7\]"):
            manager.restore_latest(wrong_shape)
        wrong_dtype = _train_like_state(0)
        wrong_dtype["params"]["prior"]["bias"] = jnp.zeros(6, jnp.bfloat16)
        with pytest.raises(checkpoint.CheckpointMismatchError, match="bias"):
            manager.restore_latest(wrong_dtype)
        extra = _train_like_state(0)
        extra["new_field"] = np.zeros(2)
        with pytest.raises(checkpoint.CheckpointMismatchError, match="new_field"):
            manager.restore_latest(extra)
        assert manager.all_steps() == [1, 2]  # nothing was treated as unreadable


_CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    import jax.numpy as jnp
    from pvpp.runs.checkpoint import CheckpointManager

    directory, mode = sys.argv[1], sys.argv[2]

    def state(step, size):
        values = np.random.default_rng(step).standard_normal(size, dtype=np.float32)
        return {"w": jnp.asarray(values), "step": np.int64(step)}

    manager = CheckpointManager(directory, max_to_keep=3, async_save=mode != "exit")
    manager.save(1, state(1, 1000))
    manager.wait_until_finished()
    # Incompressible data, so that the write takes a while: 128 MiB to kill in the middle, 8 MiB to exit during.
    size = {"kill": 32 * 2**20, "exit_async": 2 * 2**20}.get(mode, 1000)
    big = state(2, size)
    print("saving 2", flush=True)
    manager.save(2, big)
    if mode == "kill":
        manager.wait_until_finished()
        print("saved 2", flush=True)
    # mode "exit": a synchronous save (the default), then leave without close(): the save is complete.
    # mode "exit_async": leave with the asynchronous save in flight, without close().
    """
)


def _child_state(step, size):
    values = np.random.default_rng(step).standard_normal(size, dtype=np.float32)
    return {"w": jnp.asarray(values), "step": np.int64(step)}


def _start_child(tmp_path, mode):
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "ckpt"), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )


def _step_2_in_progress(directory):
    """Names of orbax's temporary directories for step 2 ("2.orbax-checkpoint-tmp...")."""
    return [p.name for p in directory.iterdir() if p.name.startswith("2.") and "tmp" in p.name]


def test_sigkill_during_a_save_leaves_the_previous_checkpoint_restorable(tmp_path):
    directory = tmp_path / "ckpt"
    child = _start_child(tmp_path, "kill")
    try:
        assert child.stdout.readline().strip() == "saving 2"
        # Kill as soon as orbax's temporary directory for step 2 exists, i.e. in the middle of writing it.
        deadline = time.monotonic() + 60
        while not _step_2_in_progress(directory) and time.monotonic() < deadline:
            time.sleep(0.001)
        in_progress = _step_2_in_progress(directory)
        final_step_2_existed = (directory / "2").exists()
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=60)
    assert in_progress and not final_step_2_existed, "the kill did not land in the middle of the save"
    assert not (directory / "2").exists()

    # A writable manager removes the partial directory.
    with checkpoint.CheckpointManager(directory) as manager:
        assert manager.all_steps() == [1]
        step, restored = manager.restore_latest(_child_state(0, 1000))
        assert step == 1
        _assert_bitwise_equal(restored, _child_state(1, 1000))
        assert not _step_2_in_progress(directory)
        manager.save(2, _child_state(2, 1000))  # and the run can go on
        assert manager.restore_latest(_child_state(0, 1000))[0] == 2


def test_a_default_save_is_complete_when_the_program_exits_without_close(tmp_path):
    child = _start_child(tmp_path, "exit")
    output, _ = child.communicate(timeout=120)
    assert child.returncode == 0 and output.strip() == "saving 2"
    with checkpoint.CheckpointManager(tmp_path / "ckpt", read_only=True) as reader:
        step, restored = reader.restore_latest(_child_state(0, 1000))
    assert step == 2
    _assert_bitwise_equal(restored, _child_state(2, 1000))


def test_an_unclosed_asynchronous_save_at_exit_is_finished(tmp_path):
    # The exit hook closes the manager before Python stops its thread pools, so the save in flight completes.
    child = _start_child(tmp_path, "exit_async")
    output, _ = child.communicate(timeout=120)
    assert child.returncode == 0 and output.strip() == "saving 2"
    with checkpoint.CheckpointManager(tmp_path / "ckpt") as writer:
        step, restored = writer.restore_latest(_child_state(0, 2 * 2**20))
    assert step == 2
    _assert_bitwise_equal(restored, _child_state(2, 2 * 2**20))
    assert not _step_2_in_progress(tmp_path / "ckpt")


def test_export_and_load_params_round_trip(tmp_path):
    state = _train_like_state(5)
    params = optim.ema_params(state["opt_state"])
    config = {"latent_sizes": [200, 200], "prior": "rbm", "tau": 0.25, "nested": {"nr_resnet": 2}}
    path = tmp_path / "export"
    checkpoint.export_params(path, params, config)

    loaded, loaded_config = checkpoint.load_params(path)  # no template needed
    assert loaded_config == config
    _assert_bitwise_equal(loaded, params)
    loaded, _ = checkpoint.load_params(path, template=jax.tree.map(jnp.zeros_like, params))
    _assert_bitwise_equal(loaded, params)

    with pytest.raises(FileExistsError):
        checkpoint.export_params(path, params, config)
    checkpoint.export_params(path, jax.tree.map(lambda x: x + 1, params), config, overwrite=True)
    loaded, _ = checkpoint.load_params(path)
    _assert_bitwise_equal(loaded, jax.tree.map(lambda x: x + 1, params))

    wrong = jax.tree.map(jnp.zeros_like, params)
    wrong["prior"]["bias"] = jnp.zeros(5)
    with pytest.raises(checkpoint.CheckpointMismatchError, match="bias"):
        checkpoint.load_params(path, template=wrong)
    with pytest.raises(TypeError, match="JSON"):
        checkpoint.export_params(tmp_path / "other", params, {"bad": object()})
    with pytest.raises(FileNotFoundError):
        checkpoint.load_params(tmp_path / "missing")


def test_flipped_bytes_in_array_data_are_caught_by_the_integrity_record(tmp_path, caplog):
    """Flipped bytes of the same size in a large array's data read back silently as other values (orbax keeps
    large arrays out of line without a checksum): the integrity record refuses the step, and the export."""
    rng = np.random.default_rng(0)
    state = {"w": jnp.asarray(rng.normal(size=(100, 200)), jnp.float32), "b": jnp.ones(5), "k": jax.random.key(0)}
    with checkpoint.CheckpointManager(tmp_path / "run", async_save=False) as manager:
        manager.save(1, state)
        manager.save(2, jax.tree.map(lambda x: x, state))
    checkpoint.export_params(tmp_path / "export", {"w": state["w"]}, {"step": 2})
    for directory in (tmp_path / "run" / "2", tmp_path / "export"):
        largest = max((p for p in directory.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
        content = bytearray(largest.read_bytes())
        middle = len(content) // 2
        content[middle : middle + 16] = bytes(b ^ 0xFF for b in content[middle : middle + 16])
        largest.write_bytes(bytes(content))
    with caplog.at_level(logging.WARNING):
        with checkpoint.CheckpointManager(tmp_path / "run", read_only=True) as manager:
            step, restored = manager.restore_latest(state)
    messages = [r.getMessage() for r in caplog.records]
    assert step == 1 and any("step 2" in m and "differ from what was written" in m for m in messages), messages
    np.testing.assert_array_equal(restored["w"], state["w"])
    with pytest.raises(checkpoint.CorruptCheckpointError, match="differ from what was written.*w"):
        checkpoint.load_params(tmp_path / "export")


def test_the_checkpoint_template_has_the_shapes_of_the_state_a_run_builds():
    """One recipe for the train state and its optimizer: the checkpoint template (shapes only) is the state the
    compiled init builds, leaf for leaf (clipped optimizer and PCD chains included)."""
    config = TRAIN.replace(optim=dataclasses.replace(TRAIN.optim, grad_clip_norm=1.0))
    device = jax.devices()[0]
    template = saving.checkpoint_template(MODEL, config, device)["train_state"]
    init = compiled.step_functions(MODEL, config, (device,)).init
    images = jax.ShapeDtypeStruct((config.batch_size, *MODEL.image_shape), jnp.uint8)
    built = jax.eval_shape(init, jax.random.key(config.seed), images)
    chex.assert_trees_all_equal_structs(template, built)
    chex.assert_trees_all_equal_shapes_and_dtypes(template, built)
