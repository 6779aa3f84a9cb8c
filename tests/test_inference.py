"""pvpp.load: one call from a workdir or an export to pure functions over uint8 images; the commands with
--checkpoint alone."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

import pvpp
from helpers import random_variables
from pvpp import data, train
from pvpp.evaluation import evaluate
from pvpp.experiments import evaluate as evaluate_command
from pvpp.experiments import sample as sample_command
from pvpp.generation import sample
from pvpp.model import ModelConfig, PixelVAEPP
from pvpp.runs import workdir as workdir_files
from helpers import MODEL, run, synthetic_splits, assert_trees_equal


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("trained")
    final = run(workdir)
    return workdir, final


def test_load_a_workdir_or_its_export_and_use_the_pure_functions(trained):
    workdir, final = trained
    model = pvpp.load(workdir)
    assert model.source["kind"] == "ema_export" and model.config == MODEL
    export = pvpp.load(workdir / train.EMA_PARAMS_DIRNAME)
    assert_trees_equal(model.params, export.params)
    images = synthetic_splits()[1].images[:4]
    key = jax.random.key(3)
    z = model.encode(key, images)
    assert z.shape == (4, MODEL.num_latents) and set(np.unique(z)) <= {0.0, 1.0}
    recon = model.reconstruct(key, images[:2], decodes=2, batch_size=4)
    assert recon.shape == (2, 2, 8, 8, 1) and recon.dtype == np.uint8 and set(np.unique(recon)) <= {0, 1}
    samples = model.sample(key, 3, num_gibbs_sweeps=5, batch_size=4)
    assert samples.shape == (3, 8, 8, 1) and samples.dtype == np.uint8
    log_z = model.log_partition(key, method="exact")
    ll = model.log_likelihood(key, images, num_samples=4, log_partition="exact")
    assert ll.shape == (4,) and np.all(np.isfinite(ll)) and np.all(ll < 0)
    # The same numbers as the evaluation module with the same key and settings.
    config = evaluate.EvalConfig(num_importance_samples=4, chunk_size=4, batch_size=4, log_partition="exact")
    want = evaluate.evaluate(model.config, model.params, images, np.arange(4), config, key=key)
    np.testing.assert_allclose(ll, want.per_image["log_likelihood"], rtol=1e-6)
    assert float(log_z.estimate) == pytest.approx(want.summary["log_partition"]["estimate"], rel=1e-6)
    with pytest.raises(ValueError, match="binarize grey levels first"):
        model.encode(key, np.full((1, 8, 8, 1), 200, np.uint8))


def test_cached_and_naive_sample_commands_write_identical_arrays(trained, tmp_path):
    workdir, _ = trained
    arrays = {}
    for sampler in sample.SAMPLERS:
        out = tmp_path / sampler
        paths = sample_command.run([
            "sample", f"--workdir={workdir}", f"--output_dir={out}", "--num_latents=2", "--decodes_per_latent=2",
            "--num_reconstructions=0", "--num_gibbs_sweeps=5", "--batch_size=4", "--seed=3", f"--sampler={sampler}",
            # Trained on synthetic 8x8 data: name a real data set (never read without reconstructions).
            "--dataset=caltech101_silhouettes", "--allow_other_dataset",
        ])
        arrays[sampler] = dict(np.load(paths["arrays"]))
        assert json.loads((out / "samples.json").read_text())["settings"]["sampler"] == sampler
    assert arrays["cached"].keys() == arrays["naive"].keys()
    for name, value in arrays["naive"].items():
        np.testing.assert_array_equal(arrays["cached"][name], value, err_msg=name)
    assert len(np.unique(arrays["naive"]["prior_images"])) == 2  # trained: not a blank image


def test_the_commands_take_an_export_alone(tmp_path, data_dir):
    config = ModelConfig(
        image_shape=(28, 28, 1),
        nr_resnet=1,
        nr_filters=8,
        num_concat_latents=8,
        prior="rbm",
        rbm_num_left=4,
        encoder_filters=8,
        dropout_rate=0.0,
    )
    model = PixelVAEPP(config)
    x = jax.numpy.asarray(
        data.load("caltech101_silhouettes", "test", data_dir=data_dir).images[:4], jax.numpy.float32
    )
    params = random_variables(lambda x: model.init(jax.random.key(0), x, jax.random.key(1)), x * 2 - 1)[
        "params"
    ]
    export = tmp_path / "export"
    workdir_files.export_for_inference(export, config, params, dataset="caltech101_silhouettes")
    evaluate_command.run(
        [
            "evaluate",
            f"--checkpoint={export}",
            f"--data_dir={data_dir}",
            "--num_examples=6",
            "--num_importance_samples=1",
            "--ais_num_chains=100",
            "--ais_num_betas=1000",
            "--seed=4",
            "--progress=false",
        ]
    )
    (written,) = (tmp_path / "eval").glob("caltech101_silhouettes_test_k1_n6_seed4_params-*.json")
    summary = json.loads(written.read_text())
    assert summary["parameters"]["kind"] == "export" and summary["num_images"] == 6
