"""A workdir written by pvpp 0.1.0 before the prior objects and the training package (commit cce95e6) still
resumes and loads.

`data/workdir_v0.1.0.tar.gz` holds config.json, the checkpoint of step 2 and ema_params of a 2-step run of
test_train's MODEL / TRAIN on its synthetic images, made by that commit's `pvpp.train.run_training`. The
parameter tree ('rbm', 'bernoulli_prior', the encoders) and the checkpoint layout (TrainState with 'chains')
were kept, so old runs restore unchanged; only the key streams changed (a resumed old run draws other, equally
distributed, noise than the old code would have).
"""

import logging
import pathlib
import tarfile

import jax
import numpy as np

from pvpp import train
from pvpp.inference import load_model
from helpers import MODEL, TRAIN, synthetic_splits, assert_trees_equal

ARCHIVE = pathlib.Path(__file__).resolve().parent / "data" / "workdir_v0.1.0.tar.gz"
# The model, step settings and data of test_train (the compiled programs are shared), 2 steps.
OLD_TRAIN = TRAIN.replace(num_steps=2)


def _old_workdir(tmp_path) -> pathlib.Path:
    workdir = tmp_path / "old_run"
    with tarfile.open(ARCHIVE) as archive:
        archive.extractall(workdir, filter="data")
    return workdir


def test_an_old_workdir_loads_for_inference_and_resumes(tmp_path, caplog):
    workdir = _old_workdir(tmp_path)
    old_export = load_model(workdir)
    assert old_export.source == {"kind": "ema_export", "path": str(workdir / "ema_params"), "step": 2}
    assert old_export.config == MODEL
    (workdir / "ema_params").rename(tmp_path / "old_ema")  # the EMA inside the old checkpoint reads too
    from_checkpoint = load_model(workdir)
    assert from_checkpoint.source["kind"] == "checkpoint_ema" and from_checkpoint.source["step"] == 2
    assert_trees_equal(from_checkpoint.params, old_export.params)

    with caplog.at_level(logging.INFO):
        state = train.run_training(
            MODEL, OLD_TRAIN.replace(num_steps=4), *synthetic_splits(), workdir, allow_changed_settings=True
        )
    assert any("Resumed from the checkpoint of step 2" in r.getMessage() for r in caplog.records)
    assert int(state.step) == 4 and state.chains.z_left.shape == (4, 4)
    assert all(bool(np.all(np.isfinite(np.asarray(leaf)))) for leaf in jax.tree.leaves(state.params))
