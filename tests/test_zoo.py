"""The zoo: every shipped entry's card, files and reference outputs (no data), its check subset (real data), the
wheel and the size budget; and the machinery on the suite's own tiny run: train -> evaluate -> package into a
PVPP_ZOO_PATH folder -> list -> pvpp.load("zoo:...") -> the evaluation's log-likelihoods, with corrupt files,
bad cards, revisions and the command line.

The shipped-entry tests run once per entry found in pvpp/zoo/models; the tiny entry runs every check those do, so
the checks are exercised even before any entry ships.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import jax
import numpy as np
import pytest

from pvpp.data.raw import file_digest

from helpers import assert_trees_equal

from pvpp import data, train
import pvpp
from pvpp.evaluation import evaluate
from pvpp.experiments import evaluate as evaluate_command
from pvpp.model import ModelConfig
from pvpp.zoo import check_subset, cli, names, registry, schema, weights
import pvpp.zoo

ROOT = pathlib.Path(__file__).resolve().parent.parent
SHIPPED = [e.resolved for e in registry.shipped_entries()]
TINY = "caltech101-rbm-tinytest"
MODEL = ModelConfig(
    image_shape=(28, 28, 1), nr_resnet=1, nr_filters=8, dropout_rate=0.0, num_concat_latents=8, rbm_num_left=4,
    encoder_filters=8, latent_map_channels=4,
)
TRAIN = train.TrainConfig(
    batch_size=8, num_steps=4, num_devices=1, num_chains=4, log_every=2, eval_every=1000, eval_examples=8,
    eval_grids=0, checkpoint_every=4, keep_checkpoints=1, log_z_ais=train.AISConfig(num_chains=16, num_betas=20),
)
EVAL_SEED, EVAL_K, EVAL_IMAGES, EVAL_BATCH = 3, 4, 24, 4


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, data_dir):
    """The suite's tiny run on Caltech-101 (4 steps, exact log Z), its evaluation, and its entry packaged into a
    PVPP_ZOO_PATH folder (set for the module): {'workdir', 'eval_json', 'zoo', 'entry', 'summary', 'per_image'}."""
    base = tmp_path_factory.mktemp("zoo")
    workdir, zoo_dir = base / "run", base / "user_zoo"
    zoo_dir.mkdir()
    train.train_and_evaluate(MODEL, TRAIN, train.DataConfig("caltech101_silhouettes", data_dir=str(data_dir)), workdir)
    eval_json = base / "eval" / "tiny.json"
    summary = evaluate_command.run([
        "evaluate", f"--workdir={workdir}", f"--output={eval_json}", f"--num_examples={EVAL_IMAGES}",
        f"--num_importance_samples={EVAL_K}", f"--batch_size={EVAL_BATCH}", "--log_partition=exact",
        f"--seed={EVAL_SEED}", "--progress=false",
    ])
    written = json.loads(eval_json.read_text())
    arrays_file = (written.get("per_image") or {}).get("file") or "tiny.npz"
    per_image = dict(np.load(eval_json.parent / arrays_file))
    (base / "common.flags").write_text("--dataset=caltech101_silhouettes\n")
    flag_file = base / "tiny.flags"
    flag_file.write_text("--flagfile=common.flags\n--num_steps=4\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(registry.PATH_VARIABLE, str(zoo_dir))
        entry = pvpp.zoo.package(
            workdir, eval_json, TINY, budget="4 steps of a tiny model: the test suite's round trip",
            command=written.get("command") or "python -m pvpp.experiments.evaluate (in-process, tests/test_zoo.py)",
            flag_file=flag_file, data_dir=data_dir,
        )
        yield dict(workdir=workdir, eval_json=eval_json, zoo=zoo_dir, entry=entry, summary=summary,
                   per_image=per_image, base=base)


def _copy_zoo(tiny, tmp_path) -> pathlib.Path:
    """A second user zoo holding a copy of the tiny entry (to damage without touching the module's)."""
    other = tmp_path / "zoo_copy"
    shutil.copytree(tiny["zoo"], other)
    return other


# ----------------------------------------------------------------------------------------------------------
# Shipped entries (none yet: each test is then reported as skipped for an empty parameter set)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_card_passes_its_schema(name, monkeypatch):
    monkeypatch.delenv(registry.PATH_VARIABLE, raising=False)
    card = pvpp.zoo.card(name)
    assert card["identity"]["resolved_name"] == name and card["training"]["steps"] > 0
    assert card["budget"].strip() and card["result"]["command"].startswith("python -m pvpp.experiments.evaluate")


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_entry_digests_finiteness_and_reference_outputs(name, monkeypatch):
    monkeypatch.delenv(registry.PATH_VARIABLE, raising=False)
    checked = pvpp.zoo.verify(name)
    assert checked.reference_error <= pvpp.zoo.card(name)["reference"]["tolerance"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_check_subset_reproduces_the_card(name, data_dir, monkeypatch):
    monkeypatch.delenv(registry.PATH_VARIABLE, raising=False)
    again = check_subset.reproduce_entry(name, data_dir)
    assert again.ok, (again.basis, again.recomputed - again.recorded, again.tolerance)


def test_the_shipped_zoo_is_within_its_size_budget():
    total = sum(p.stat().st_size for p in registry.SHIPPED_DIR.rglob("*") if p.is_file())
    assert total <= pvpp.zoo.SIZE_BUDGET_BYTES, f"{total / 2**20:.1f} MiB > {pvpp.zoo.SIZE_BUDGET_BYTES / 2**20} MiB"


def test_a_built_wheel_holds_every_zoo_file_and_lists_them_installed(tiny, tmp_path):
    """The package-data declaration, checked on a wheel built from a copy of the sources with the tiny entry added
    to the shipped ones; the installed wheel then lists it as shipped."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "setup.cfg", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "pvpp", source / "pvpp", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(tiny["entry"].folder, source / "pvpp" / "zoo" / "models" / TINY / "r1")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"),
         str(source)], capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("pvpp-*.whl")
    inside = set(zipfile.ZipFile(wheel).namelist())
    models = source / "pvpp" / "zoo" / "models"
    wanted = {f"pvpp/zoo/models/{p.relative_to(models).as_posix()}" for p in models.rglob("*") if p.is_file()}
    assert len(wanted) >= 5 and wanted <= inside, sorted(wanted - inside)
    assert not any(n.startswith("pvpp/zoo/models/") and n.endswith(".py") for n in inside)
    target = tmp_path / "installed"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    # -S: no .pth files, so an editable install of the checkout cannot shadow the wheel; the dependencies come
    # from this environment's site-packages, after the wheel.
    env = {k: v for k, v in os.environ.items() if k != registry.PATH_VARIABLE}
    path = os.pathsep.join([str(target), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    listed = subprocess.run(
        [sys.executable, "-S", "-m", "pvpp.zoo", "list"], capture_output=True, text=True, timeout=300,
        cwd=tmp_path, env={**env, "PYTHONPATH": path},
    )
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert f"{TINY}@r1" in listed.stdout and "shipped" in listed.stdout


# ----------------------------------------------------------------------------------------------------------
# Names and the schema


def test_names_say_what_a_model_is_and_bad_ones_are_one_line_errors():
    assert names.parse("caltech101-rbm-cpubudget@r2") == ("caltech101-rbm-cpubudget", 2)
    assert names.parts("staticmnist-pixelcnn-cpubudget") == ("binarized_mnist", "none", "cpubudget")
    for bad, said in (("caltech-rbm-x", "data-set part 'caltech'"), ("caltech101-vamp-x", "prior part 'vamp'"),
                      ("caltech101-rbm", "is not '<dataset>-<prior>-<budget>'"), ("caltech101-rbm-x@2", "r<N>"),
                      ("caltech101-rbm-x@r0", "r<N>")):
        with pytest.raises(pvpp.zoo.UnknownEntryError, match=said):
            names.parse(bad)


def test_the_schema_names_the_bad_field(tiny):
    good = json.loads((tiny["entry"].folder / "card.json").read_text())
    schema.validate_card(good, "tiny")
    cases = [
        (lambda c: c["result"].pop("k"), "field result.k: missing"),
        (lambda c: c["files"]["weights"].update(sha256="abc"), "field files.weights.sha256: expected a sha256"),
        (lambda c: c["check_subset"]["log_likelihood"].append(1.0), "field check_subset.log_likelihood: expected 8"),
        (lambda c: c["data"].update(dataset="mnist"), "field identity.name: the name caltech101-rbm-tinytest says"),
        (lambda c: c["model"].update(nr_resnet=0), "field model: not a ModelConfig"),
        (lambda c: c["paper"].update(extra=1), "field paper.extra: not a field of the schema"),
        (lambda c: c["identity"].update(revision=True), "field identity.revision: expected an integer"),
    ]
    for damage, message in cases:
        card = json.loads(json.dumps(good))
        damage(card)
        with pytest.raises(pvpp.zoo.CardError, match=f"^tiny: {message}"):
            schema.validate_card(card, "tiny")


# ----------------------------------------------------------------------------------------------------------
# The tiny entry: the round trip and every data-free check


def test_round_trip_package_list_load_gives_the_evaluations_log_likelihoods(tiny, data_dir):
    listed = pvpp.zoo.list()
    user = [c for c in listed if not pvpp.zoo.where(c["identity"]["resolved_name"]).shipped]
    assert [c["identity"]["resolved_name"] for c in user] == [f"{TINY}@r1"]
    table = str(listed)
    assert f"{TINY}@r1" in table and "caltech101_silhouettes" in table and "user" in table
    assert f"{tiny['summary']['nats']['negative_log_likelihood'] * -1:.2f} nats" in table
    assert f"{user[0]['files']['num_parameters']:,}" in table and "-77.46" in table  # the paper, labelled
    assert any(line.startswith(f"| {TINY}@r1 | caltech101_silhouettes | rbm |") for line in listed.markdown().splitlines())
    rbm_entries = pvpp.zoo.list(dataset="caltech101", prior="rbm")
    assert user[0] in rbm_entries and all(c["model"]["prior"] == "rbm" for c in rbm_entries)
    assert all(c["model"]["prior"] == "gaussian" for c in pvpp.zoo.list(prior="gaussian"))

    model = pvpp.load(f"zoo:{TINY}")
    assert model.source["name"] == f"{TINY}@r1" and model.card["identity"]["revision"] == 1
    assert model.config == MODEL and model.data["name"] == "caltech101_silhouettes"
    per_image = tiny["per_image"]
    split = evaluate.load_split("caltech101_silhouettes", "test", data_dir=data_dir)
    images, _ = evaluate.evaluation_images(split, per_image["example_indices"], EVAL_SEED)
    common = dict(num_samples=EVAL_K, batch_size=EVAL_BATCH, example_indices=per_image["example_indices"])
    key = jax.random.key(EVAL_SEED)  # the evaluation's root key
    from_card = model.log_likelihood(key, images, log_partition="card", **common)
    tolerance = check_subset.rounding_tolerance(per_image["log_likelihood"])
    assert np.all(np.abs(from_card - per_image["log_likelihood"]) <= tolerance)
    log_z = model.card["result"]["log_partition"]["estimate"]
    np.testing.assert_array_equal(model.log_likelihood(key, images, log_partition=log_z, **common), from_card)
    assert np.all(np.abs(model.log_likelihood(key, images, log_partition="exact", **common) - from_card) <= tolerance)
    with pytest.raises(ValueError, match="needs a model loaded from the zoo"):
        pvpp.load(tiny["workdir"]).log_likelihood(key, images[:1], num_samples=1, log_partition="card")

    # The weights are the run's EMA parameters, to the bit.
    run = pvpp.load(tiny["workdir"])
    assert_trees_equal(run.params, model.params)
    assert model.sample(key, 2, num_gibbs_sweeps=5, batch_size=2).shape == (2, 28, 28, 1)


def test_the_tiny_card_records_its_run_and_evaluation(tiny, data_dir):
    card = pvpp.zoo.card(TINY)
    assert card["training"]["steps"] == 4 and ModelConfig.from_dict(card["training"]["config"]["model"]) == MODEL
    assert card["training"]["wall_time_s"] > 0 and "metrics.jsonl" in card["training"]["wall_time_basis"]
    flag_text = card["training"]["flag_file"]["text"]
    assert "--num_steps=4" in flag_text and "--dataset=caltech101_silhouettes" in flag_text  # the include, inlined
    assert card["data"]["source_files"][0]["sha256"] == data.sources.CALTECH101_SILHOUETTES_FILE.sha256
    result = card["result"]
    assert result["negative_log_likelihood_nats"] == tiny["summary"]["nats"]["negative_log_likelihood"]
    assert result["k"] == EVAL_K and result["num_images"] == EVAL_IMAGES and result["log_partition"]["method"] == "exact"
    subset = card["check_subset"]
    assert len(subset["indices"]) == check_subset.DEFAULT_SIZE and set(subset["indices"]) <= set(
        tiny["per_image"]["example_indices"].tolist())
    rows = [tiny["per_image"]["example_indices"].tolist().index(i) for i in subset["indices"]]
    np.testing.assert_array_equal(subset["log_likelihood"], tiny["per_image"]["log_likelihood"][rows])
    assert len(subset["monte_carlo"]["std_nats"]) == len(rows) and card["paper"]["test_log_likelihood"] == -77.46


def test_the_tiny_entry_passes_every_data_free_check(tiny):
    checked = pvpp.zoo.verify(TINY)
    assert checked.name == f"{TINY}@r1" and checked.reference_error <= 1e-5
    config, params = pvpp.zoo.get(f"{TINY}@r1")
    assert config == MODEL and weights.count(params) == pvpp.zoo.card(TINY)["files"]["num_parameters"]
    # The weight file is a function of the weights alone: written again, the same bytes.
    again = tiny["base"] / "again.npz"
    weights.write_weights(again, params)
    assert again.read_bytes() == (tiny["entry"].folder / "weights.npz").read_bytes()


def test_the_tiny_check_subset_reproduces_its_card_from_the_real_data(tiny, data_dir):
    again = check_subset.reproduce_entry(TINY, data_dir)
    assert again.ok and again.basis.startswith("rounding"), (again.recomputed - again.recorded)
    card = pvpp.zoo.card(TINY)
    config, params = pvpp.zoo.get(TINY)
    other = check_subset.reproduce(config, params, card["check_subset"], card["data"], "tiny", same_versions=False,
                                   data_dir=data_dir)
    assert other.ok and "Monte-Carlo" in other.basis and np.all(other.tolerance >= again.tolerance)


def test_flipped_bytes_renamed_or_misshaped_arrays_are_refused_naming_the_entry(tiny, tmp_path, monkeypatch):
    other = _copy_zoo(tiny, tmp_path)
    monkeypatch.setenv(registry.PATH_VARIABLE, str(other))
    folder = other / TINY / "r1"
    path = folder / "weights.npz"
    original = path.read_bytes()
    flipped = bytearray(original)
    flipped[len(flipped) // 2] ^= 0xFF
    path.write_bytes(bytes(flipped))
    with pytest.raises(pvpp.zoo.CorruptEntryError, match=rf"^zoo entry {TINY}@r1: weights.npz has sha256 .* changed"):
        pvpp.zoo.get(TINY)
    with pytest.raises(SystemExit, match=rf"^pvpp: ZooError: 1 of \d+ zoo entries failed verification: {TINY}@r1"):
        cli.main(["verify"])

    # Arrays renamed / mis-shaped with a matching digest in the card: the template check names the array.
    card_path = folder / "card.json"
    card = json.loads(card_path.read_text())
    arrays = dict(np.load(tiny["entry"].folder / "weights.npz"))
    name = sorted(arrays)[0]
    for changed, message in (
        ({**{k: v for k, v in arrays.items() if k != name}, name + "_renamed": arrays[name]}, f"array {name} of the model is missing"),
        ({**arrays, name: arrays[name][..., None]}, f"array {name} is stored as float32"),
        ({**arrays, "extra/kernel": np.zeros(1, np.float32)}, "array extra/kernel of the weight file is not a parameter"),
    ):
        weights.write_arrays(path, changed)
        card["files"]["weights"].update(sha256=file_digest(path), size_bytes=path.stat().st_size)
        card_path.write_text(json.dumps(card))
        with pytest.raises(pvpp.zoo.CorruptEntryError, match=f"^zoo entry {TINY}@r1: {message}"):
            pvpp.zoo.get(TINY)

    # A value changed and its digest faked: the per-array integrity record catches it.
    weights.write_arrays(path, {**arrays, name: arrays[name] + 1.0})
    card["files"]["weights"].update(sha256=file_digest(path), size_bytes=path.stat().st_size)
    card_path.write_text(json.dumps(card))
    with pytest.raises(pvpp.zoo.CorruptEntryError, match=f"^zoo entry {TINY}@r1: 1 array.* differ"):
        pvpp.zoo.get(TINY)
    card_path.write_text("{not json")
    with pytest.raises(SystemExit, match=rf"^pvpp: CardError: zoo entry {TINY}@r1 .*card.json cannot be read as JSON"):
        cli.main(["show", TINY])


def test_reference_outputs_that_the_weights_no_longer_give_are_refused(tiny, tmp_path, monkeypatch):
    other = _copy_zoo(tiny, tmp_path)
    monkeypatch.setenv(registry.PATH_VARIABLE, str(other))
    folder = other / TINY / "r1"
    stored = dict(np.load(folder / "reference.npz"))
    stored["decoder_output"] = stored["decoder_output"] * (1 + 1e-4)
    weights.write_arrays(folder / "reference.npz", stored)
    card = json.loads((folder / "card.json").read_text())
    card["files"]["reference"].update(
        sha256=file_digest(folder / "reference.npz"), size_bytes=(folder / "reference.npz").stat().st_size
    )
    (folder / "card.json").write_text(json.dumps(card))
    with pytest.raises(pvpp.zoo.CorruptEntryError, match=f"^zoo entry {TINY}@r1: reference decoder_output recomputed"):
        pvpp.zoo.verify(TINY)
    pvpp.zoo.get(TINY)  # the weights themselves are intact


def test_revisions_resolve_to_the_newest_and_are_never_overwritten(tiny, tmp_path, monkeypatch):
    other = _copy_zoo(tiny, tmp_path)
    monkeypatch.setenv(registry.PATH_VARIABLE, str(other))
    second = other / TINY / "r2"
    shutil.copytree(other / TINY / "r1", second)
    card = json.loads((second / "card.json").read_text())
    card["identity"].update(revision=2, resolved_name=f"{TINY}@r2")
    (second / "card.json").write_text(json.dumps(card))
    assert pvpp.zoo.where(TINY).revision == 2 and pvpp.zoo.where(f"{TINY}@r1").revision == 1
    assert pvpp.load(f"zoo:{TINY}").source["name"] == f"{TINY}@r2"
    with pytest.raises(pvpp.zoo.UnknownEntryError, match=r"has no revision r7 \(revisions: r1, r2\)"):
        pvpp.zoo.card(f"{TINY}@r7")
    with pytest.raises(pvpp.zoo.UnknownEntryError, match="no zoo entry named 'caltech101-rbm-other'"):
        pvpp.zoo.get("caltech101-rbm-other")
    with pytest.raises(pvpp.zoo.EntryExistsError, match="never re-pointed"):
        pvpp.zoo.package(tiny["workdir"], tiny["eval_json"], TINY, revision=2, destination=other, budget="b")
    # The same name@revision in two roots is refused, not silently shadowed.
    monkeypatch.setenv(registry.PATH_VARIABLE, f"{other}:{tiny['zoo']}")
    with pytest.raises(pvpp.zoo.ZooError, match=f"zoo entry {TINY}@r1 exists twice"):
        pvpp.zoo.list()
    # A card in the wrong folder.
    (second / "card.json").write_text(json.dumps({**card, "identity": {**card["identity"], "revision": 1,
                                                                         "resolved_name": f"{TINY}@r1"}}))
    monkeypatch.setenv(registry.PATH_VARIABLE, str(other))
    with pytest.raises(pvpp.zoo.CardError, match=f"names {TINY}@r1, but the card lies in the folder of {TINY}@r2"):
        pvpp.zoo.card(TINY)


def test_package_refuses_what_does_not_fit(tiny, tmp_path):
    common = dict(destination=tmp_path / "z", budget="b")
    with pytest.raises(pvpp.zoo.ZooError, match="says data set caltech101_silhouettes and prior 'gaussian'"):
        pvpp.zoo.package(tiny["workdir"], tiny["eval_json"], "caltech101-gaussian-tinytest", **common)
    with pytest.raises(pvpp.zoo.ZooError, match="says data set mnist"):
        pvpp.zoo.package(tiny["workdir"], tiny["eval_json"], "dynamicmnist-rbm-tinytest", **common)
    with pytest.raises(pvpp.zoo.ZooError, match="not a training workdir"):
        pvpp.zoo.package(tmp_path, tiny["eval_json"], TINY, **common)
    stripped = json.loads(tiny["eval_json"].read_text())
    stripped.pop("command", None)
    copy = tiny["eval_json"].parent / "no_command.json"
    copy.write_text(json.dumps(stripped))
    if "per_image" not in stripped:
        shutil.copy(tiny["eval_json"].with_suffix(".npz"), copy.with_suffix(".npz"))
    with pytest.raises(pvpp.zoo.ZooError, match="has no 'command' field; pass command="):
        pvpp.zoo.package(tiny["workdir"], copy, TINY, **common)
    assert not (tmp_path / "z" / TINY).exists()


def test_command_line_list_show_verify_and_export(tiny, tmp_path, capsys, data_dir):
    cli.main(["list", "--dataset=caltech101_silhouettes"])
    assert f"{TINY}@r1" in capsys.readouterr().out
    cli.main(["show", TINY])
    shown = capsys.readouterr().out
    assert "test LL: " in shown and "paper: -77.46 nats (the paper's reported number" in shown
    cli.main(["show", TINY, "--json"])
    assert json.loads(capsys.readouterr().out)["identity"]["name"] == TINY
    cli.main(["verify", TINY, f"--data_dir={data_dir}"])
    verified = capsys.readouterr().out
    assert verified.startswith(f"ok      {TINY}@r1: digests") and "check subset within" in verified
    with pytest.raises(SystemExit, match="^pvpp: UnknownEntryError: no zoo entry named 'caltech101-rbm-nothere'"):
        cli.main(["show", "caltech101-rbm-nothere"])
    export = tmp_path / "export"
    cli.main(["export", TINY, str(export)])
    exported = pvpp.load(export)
    assert exported.source["kind"] == "export" and exported.data["name"] == "caltech101_silhouettes"
    zoo_params = pvpp.zoo.get(TINY)[1]
    assert_trees_equal(exported.params, zoo_params)
    # The evaluation command reads the export unchanged, and gives the run's evaluation again.
    output = tmp_path / "eval.json"
    evaluate_command.run([
        "evaluate", f"--checkpoint={export}", f"--data_dir={data_dir}", f"--output={output}",
        f"--num_examples={EVAL_IMAGES}", f"--num_importance_samples={EVAL_K}", f"--batch_size={EVAL_BATCH}",
        "--log_partition=exact", f"--seed={EVAL_SEED}", "--progress=false",
    ])
    written = json.loads(output.read_text())
    arrays = dict(np.load(output.parent / written["per_image"]["file"])) if "per_image" in written else dict(
        np.load(output.with_suffix(".npz")))
    np.testing.assert_array_equal(arrays["example_indices"], tiny["per_image"]["example_indices"])
    difference = np.abs(arrays["log_likelihood"] - tiny["per_image"]["log_likelihood"])
    assert np.all(difference <= check_subset.rounding_tolerance(tiny["per_image"]["log_likelihood"]))


def test_the_package_command_writes_the_next_revision_with_the_same_weight_bytes(tiny, tmp_path, capsys,
                                                                                 monkeypatch):
    destination = tmp_path / "mine"
    cli.main([
        "package", f"--workdir={tiny['workdir']}", f"--eval_json={tiny['eval_json']}", f"--name={TINY}",
        "--budget=the same run, packaged again", f"--destination={destination}", "--monte_carlo_seeds=0",
        "--command=python -m pvpp.experiments.evaluate --workdir=RUN",
    ])
    assert capsys.readouterr().out.startswith(f"packaged {TINY}@r2 in {destination / TINY / 'r2'}")
    monkeypatch.setenv(registry.PATH_VARIABLE, str(destination))
    card = pvpp.zoo.card(TINY)
    assert card["identity"]["revision"] == 2 and card["check_subset"]["monte_carlo"] is None
    first = json.loads((tiny["entry"].folder / "card.json").read_text())
    assert card["files"]["weights"]["sha256"] == first["files"]["weights"]["sha256"]
    assert card["check_subset"]["log_likelihood"] == first["check_subset"]["log_likelihood"]
    pvpp.zoo.verify(TINY)
