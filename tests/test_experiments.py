"""The entry points: flag files -> configs, bad flags stopped before anything is written, the CPU run on real
data.

Flags are parsed into a fresh `flags.FlagValues` per test (the entry points define theirs only when run as
programs); two tests run the real programs in subprocesses.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import pathlib
import subprocess
import sys

import jax
import pytest
from absl import app, flags

from pvpp import train
from pvpp.experiments import common
from pvpp.model import ModelConfig

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Files named *_common.flags hold settings shared by several experiments (included with --flagfile), not runs.
ALL_FLAG_FILES = sorted((ROOT / "experiments").glob("*.flags"))
FLAG_FILES = [f for f in ALL_FLAG_FILES if not f.stem.endswith("_common")]
ENTRY_POINTS = {"mnist": "mnist", "omniglot": "omniglot", "caltech101": "caltech101", "cifar10": "cifar10"}


def entry_point(flag_file: pathlib.Path):
    """The entry-point module of a flag file (by its name prefix)."""
    prefix = flag_file.stem.split("_")[0]
    return importlib.import_module(f"pvpp.experiments.{ENTRY_POINTS[prefix]}")


def parse(module, argv: list[str]) -> flags.FlagValues:
    flag_values = flags.FlagValues()
    common.define_flags(module.DATASETS, module.MODEL_DEFAULTS, flag_values)
    flag_values(["prog", *argv])
    return flag_values


def test_the_experiment_flag_files_exist():
    names = {f.stem for f in FLAG_FILES}
    for data_set in ("mnist_static", "mnist_dynamic", "omniglot", "caltech101", "cifar10"):
        assert {data_set, f"{data_set}_gaussian", f"{data_set}_pixelcnn"} <= names, data_set
    assert {"caltech101_cpu", "mnist_cpu", "cifar10_cpu"} <= names
    for common_file in sorted(set(ALL_FLAG_FILES) - set(FLAG_FILES)):
        include = f"--flagfile=experiments/{common_file.name}"
        assert any(include in f.read_text().splitlines() for f in FLAG_FILES), f"{common_file.name} is unused"


@pytest.mark.parametrize("flag_file", FLAG_FILES, ids=lambda p: p.stem)
def test_flag_file_builds_valid_configs(flag_file, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # nested --flagfile lines are relative to the repository root, like the README commands
    module = entry_point(flag_file)
    workdir = tmp_path / "run"
    flag_values = parse(module, [f"--flagfile={flag_file}", f"--workdir={workdir}"])
    model_config, train_config, data_config, resolved = common.configs_from_flags(
        flag_values, module.MODEL_DEFAULTS
    )
    assert resolved == str(workdir) and not workdir.exists()
    assert data_config.name in module.DATASETS
    assert model_config.image_shape == module.MODEL_DEFAULTS.image_shape
    text = flag_file.read_text()
    assert text.startswith("#") and "python -m pvpp.experiments." + module.__name__.rsplit(".", 1)[1] in text
    if "_cpu" in flag_file.stem:
        return
    # Paper experiments: the architecture of the entry point's paper configuration, the paper's optimizer.
    expected_prior = {"gaussian": "gaussian", "pixelcnn": "none"}.get(
        flag_file.stem.rsplit("_", 1)[-1], "rbm"
    )
    assert model_config == module.MODEL_DEFAULTS.replace(prior=expected_prior)
    optim = train_config.optim
    assert (optim.learning_rate, optim.lr_decay_per_step, optim.adam_b1, optim.adam_b2, optim.ema_decay) == (
        1e-3,
        0.999995,
        0.95,
        0.9995,
        0.9995,
    )
    assert model_config.tau == 0.25 and model_config.dropout_rate == 0.5
    if data_config.name == "cifar10":
        assert (train_config.batch_size, train_config.num_devices) == (64, 8)
    else:
        assert train_config.batch_size == 128


@pytest.mark.parametrize(
    "study, entry, dataset",
    [("caltech101_cpu_budget", "caltech101", "caltech101_silhouettes"),
     ("mnist_static_cpu_budget", "mnist", "binarized_mnist")],
)
def test_cpu_budget_variants_differ_only_in_the_prior(tmp_path, monkeypatch, study, entry, dataset):
    """The CPU-budget comparisons (Caltech-101, statically binarized MNIST): same decoder, encoders, latents, data,
    optimiser and budget; only the prior (and the RBM's own settings) changes; validation on the validation split."""
    monkeypatch.chdir(ROOT)
    module = importlib.import_module(f"pvpp.experiments.{entry}")
    configs = {}
    for variant in ("rbm", "gaussian", "pixelcnn"):
        flag_file = ROOT / "experiments" / f"{study}_{variant}.flags"
        flag_values = parse(module, [f"--flagfile={flag_file}", f"--workdir={tmp_path / variant}"])
        configs[variant] = common.configs_from_flags(flag_values, module.MODEL_DEFAULTS)[:3]
    assert {v: c[0].prior for v, c in configs.items()} == {"rbm": "rbm", "gaussian": "gaussian", "pixelcnn": "none"}
    rbm_model, rbm_train, rbm_data = configs["rbm"]
    assert rbm_data.name == dataset and rbm_data.eval_split == "validation"
    assert rbm_model.num_latents == 128 and rbm_model.rbm_num_left == 64 and rbm_train.sweeps_per_step == 5
    for variant in ("gaussian", "pixelcnn"):
        model_config, train_config, data_config = configs[variant]
        # rbm_num_left (the RBM's split) is unused by the other priors.
        assert model_config.replace(prior="rbm", rbm_num_left=rbm_model.rbm_num_left) == rbm_model, variant
        chain_settings = {"num_chains": rbm_train.num_chains, "sweeps_per_step": rbm_train.sweeps_per_step}
        assert train_config.replace(**chain_settings) == rbm_train, variant
        assert data_config == rbm_data, variant


@pytest.mark.parametrize(
    "flag_file, entry, dataset, variant, validation_size",
    [("mnist_dynamic_cpu_budget_rbm", "mnist", "mnist", None, None),
     ("omniglot_cpu_budget_rbm", "omniglot", "omniglot", "resized_105", 2000)],
)
def test_zoo_cpu_budget_runs_are_the_static_mnist_rbm_run_on_other_data(
    tmp_path, monkeypatch, flag_file, entry, dataset, variant, validation_size
):
    """The zoo's dynamically binarized MNIST and Omniglot RBM models share every model, training and evaluation
    setting with the statically binarized MNIST CPU-budget RBM run; only the data differ."""
    monkeypatch.chdir(ROOT)
    mnist = importlib.import_module("pvpp.experiments.mnist")
    reference_flags = parse(
        mnist, [f"--flagfile={ROOT / 'experiments' / 'mnist_static_cpu_budget_rbm.flags'}", f"--workdir={tmp_path}"]
    )
    reference = common.configs_from_flags(reference_flags, mnist.MODEL_DEFAULTS)[:3]
    module = importlib.import_module(f"pvpp.experiments.{entry}")
    flag_values = parse(module, [f"--flagfile={ROOT / 'experiments' / (flag_file + '.flags')}", f"--workdir={tmp_path}"])
    model_config, train_config, data_config = common.configs_from_flags(flag_values, module.MODEL_DEFAULTS)[:3]
    assert (data_config.name, data_config.variant, data_config.validation_size) == (dataset, variant, validation_size)
    assert data_config.eval_split == "validation"
    assert model_config == reference[0]
    assert train_config == reference[1]
    assert dataclasses.replace(data_config, name="binarized_mnist", variant=None, validation_size=None) == reference[2]



def test_zoo_cifar10_budget_run_is_the_papers_model_made_smaller(tmp_path, monkeypatch):
    """The zoo's CIFAR-10 RBM model keeps every choice of the paper's CIFAR-10 experiment but its sizes and its
    budget: the likelihood, all three latent groups, the RBM and its negative phase, the relaxation, Adam; and it
    watches a validation split held out of the training images, not the test split."""
    monkeypatch.chdir(ROOT)
    module = importlib.import_module("pvpp.experiments.cifar10")
    configs = {}
    for name in ("cifar10", "cifar10_cpu_budget_rbm"):
        flag_values = parse(module, [f"--flagfile={ROOT / 'experiments' / (name + '.flags')}", f"--workdir={tmp_path}"])
        configs[name] = common.configs_from_flags(flag_values, module.MODEL_DEFAULTS)[:3]
    (paper_model, paper_train, _), (model, train, data) = configs["cifar10"], configs["cifar10_cpu_budget_rbm"]
    sizes = ("nr_resnet", "nr_filters", "nr_logistic_mix", "num_concat_latents", "num_cond_latents",
             "shared_latents_per_layer", "encoder_filters", "latent_map_channels", "rbm_num_left")
    assert all(getattr(model, size) > 0 for size in sizes)
    assert model.replace(**{size: getattr(paper_model, size) for size in sizes}) == paper_model
    assert model.rbm_num_left == model.num_concat_latents + model.num_cond_latents  # the RBM between [z1, z2] and z3
    assert train.negative_phase == paper_train.negative_phase == "pcd"
    adam = ("learning_rate", "adam_b1", "adam_b2")
    assert [getattr(train.optim, a) for a in adam] == [getattr(paper_train.optim, a) for a in adam]
    assert (data.name, data.eval_split, data.validation_size) == ("cifar10", "validation", 2000)
    assert train.num_steps * train.batch_size < paper_train.num_steps * paper_train.batch_size

def test_mnist_dataset_flag_picks_static_or_dynamic(tmp_path):
    module = importlib.import_module("pvpp.experiments.mnist")
    for name in ("mnist", "binarized_mnist"):
        flag_values = parse(module, [f"--workdir={tmp_path}", f"--dataset={name}"])
        assert common.configs_from_flags(flag_values, module.MODEL_DEFAULTS)[2].name == name


def test_flags_override_the_paper_defaults_and_epochs_replace_steps(tmp_path):
    module = importlib.import_module("pvpp.experiments.caltech101")
    flag_values = parse(
        module,
        [
            f"--workdir={tmp_path}",
            "--nr_resnet=2",
            "--prior=gaussian",
            "--num_epochs=3",
            "--learning_rate=0.0005",
            "--ais_betas=50",
        ],
    )
    model_config, train_config, _, _ = common.configs_from_flags(flag_values, module.MODEL_DEFAULTS)
    assert model_config == module.MODEL_DEFAULTS.replace(nr_resnet=2, prior="gaussian")
    assert (train_config.num_steps, train_config.num_epochs) == (None, 3)
    assert train_config.optim.learning_rate == 0.0005 and train_config.log_z_ais.num_betas == 50
    # Unset flags take the dataclass defaults: one source of defaults.
    defaults = train.TrainConfig()
    for name in ("batch_size", "seed", "num_chains", "eval_every", "checkpoint_every", "negative_ais"):
        assert getattr(train_config, name) == getattr(defaults, name), name
    assert (
        dataclasses.replace(train_config.optim, learning_rate=defaults.optim.learning_rate) == defaults.optim
    )


@pytest.mark.parametrize(
    "argv, error, flag_named",
    [
        (["--dataset=cifar100"], flags.IllegalFlagValueError, "--dataset"),
        (["--nr_resnet=0"], flags.IllegalFlagValueError, "--nr_resnet"),
        (
            ["--batch_size=12", "--num_devices=8"],
            app.UsageError,
            "--batch_size=12 is not divisible by the 8 devices",
        ),
        (["--num_devices=16"], app.UsageError, "--num_devices=16 exceeds"),
        (["--data_dir=/nonexistent/pvpp-data"], app.UsageError, "--data_dir=/nonexistent/pvpp-data"),
        (["--num_steps=10", "--num_epochs=2"], app.UsageError, "--num_steps and --num_epochs"),
        (["--num_devices=4", "--batch_size=8", "--eval_batch_size=6"], app.UsageError, "--eval_batch_size=6"),
        (["--num_concat_latents=10", "--rbm_num_left=200"], app.UsageError, "rbm_num_left"),
    ],
)
def test_bad_flags_name_the_flag_and_write_nothing(argv, error, flag_named, tmp_path):
    module = importlib.import_module("pvpp.experiments.mnist")
    workdir = tmp_path / "run"
    with pytest.raises(error, match=flag_named):
        flag_values = parse(module, [f"--workdir={workdir}", *argv])
        common.configs_from_flags(flag_values, module.MODEL_DEFAULTS)
    assert not workdir.exists()


def test_positional_arguments_are_a_usage_error():
    module = importlib.import_module("pvpp.experiments.mnist")
    with pytest.raises(app.UsageError, match="unexpected positional arguments: extra"):
        common.main(["prog", "extra"], model_defaults=module.MODEL_DEFAULTS)


def _cli(args: list[str], data_dir, timeout: int) -> subprocess.CompletedProcess:
    env = dict(
        os.environ,
        PVPP_DATA_DIR=str(data_dir),
        JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir,
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5",
    )
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )


def test_cli_stops_at_start_up_on_bad_flags(data_dir, tmp_path):
    workdir = tmp_path / "run"
    for bad, named in (("--nr_resnet=0", "--nr_resnet"), ("--data_dir=/nonexistent/pvpp-data", "--data_dir")):
        done = _cli(
            [
                "pvpp.experiments.caltech101",
                "--flagfile=experiments/caltech101_cpu.flags",
                f"--workdir={workdir}",
                bad,
            ],
            data_dir,
            timeout=120,
        )
        assert done.returncode != 0 and named in done.stdout, done.stdout[-2000:]
        assert not workdir.exists()


@pytest.mark.integration
def test_caltech101_cpu_flag_file_trains_on_the_real_data(data_dir, tmp_path):
    """The README's command, as written: the test-set loss improves over the first evaluation."""
    workdir = tmp_path / "pvpp_caltech"
    done = _cli(
        [
            "pvpp.experiments.caltech101",
            "--flagfile=experiments/caltech101_cpu.flags",
            f"--workdir={workdir}",
        ],
        data_dir,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:]
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval/loss" in r]
    assert [r["step"] for r in evals] == [100, 200, 300]
    assert evals[-1]["eval/loss"] < evals[0]["eval/loss"]
    assert evals[-1]["eval/negative_elbo"] < evals[0]["eval/negative_elbo"]
    config = json.loads((workdir / "config.json").read_text())
    assert ModelConfig.from_dict(config["model"]).nr_filters == 8
    assert config["data"]["name"] == "caltech101_silhouettes" and config["data"]["data_dir"] == str(data_dir)
    assert config["data"]["source"].startswith("the prepared copy ")  # what was actually read
    assert (workdir / "ema_params").is_dir()
