"""The results document is generated from the committed evaluation files and is up to date; the paired
difference is computed per image on the same images."""

import json
import pathlib

import numpy as np
import pytest

from pvpp.experiments import report
from pvpp.runs import results

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_results_document_is_what_the_committed_evaluations_give():
    document = report.build_document(str(ROOT / "experiments" / "results"))
    assert (ROOT / "experiments" / "RESULTS.md").read_text() == document, (
        "experiments/RESULTS.md is stale: run python -m pvpp.experiments.report"
    )


def test_paired_difference_matches_per_image_arithmetic_and_refuses_other_images():
    rng = np.random.default_rng(0)
    indices = np.arange(50)
    first = {"example_indices": indices, "log_likelihood": rng.normal(-80, 5, 50)}
    second = {"example_indices": indices, "log_likelihood": first["log_likelihood"] - rng.normal(1.0, 0.5, 50)}
    difference, error, share = report.paired_difference(first, second)
    d = first["log_likelihood"] - second["log_likelihood"]
    assert difference == pytest.approx(d.mean()) and error == pytest.approx(d.std(ddof=1) / np.sqrt(50))
    assert share == pytest.approx(np.mean(d > 0))
    with pytest.raises(ValueError, match="same images"):
        report.paired_difference(first, {**second, "example_indices": indices + 1})


def test_a_study_folder_becomes_its_tables(tmp_path):
    """A synthetic study with two seeds per prior: the summary row's mean over seeds and the paired rows."""
    study = tmp_path / "toy_study"
    study.mkdir()
    (study / "study.json").write_text('{"title": "Toy", "paper": {"rbm": {"log_likelihood": -1.5}}}')
    rng = np.random.default_rng(1)
    for prior, shift in (("rbm", 0.0), ("gaussian", -1.0)):
        for seed in (0, 1):
            ll = rng.normal(-10 + shift, 1, 20)
            summary = {
                "num_images": 20, "settings": {"num_importance_samples": 5}, "parameters": {"step": 7},
                "log_partition": None,
                "nats": {"negative_log_likelihood": float(-ll.mean()), "standard_error": 0.1, "kl": 2.0,
                         "negative_elbo": float(-ll.mean()) + 1},
            }
            per_image = {"example_indices": np.arange(20), "log_likelihood": ll, "elbo": ll - 1}
            results.write_results(study / f"{prior}_s{seed}.json", summary, per_image)
    text = report.build_document(str(tmp_path))
    assert "## Toy" in text and "| PixelVAE++, RBM prior | 2 |" in text and "-1.50" in text
    assert "| over seeds: mean (sd) |" in text and text.count("| 0 | +") + text.count("| 1 | +") == 2


def test_figures_are_shown_with_what_was_seen_and_a_missing_image_is_named(tmp_path):
    """study.json's figures become Markdown images (paths relative to the experiments folder) with their notes."""
    results_dir = tmp_path / "experiments" / "results"
    study = results_dir / "toy_study"
    study.mkdir(parents=True)
    (tmp_path / "experiments" / "grid.png").write_bytes(b"png")
    figure = {"title": "Toy grid", "image": "grid.png", "seen": "Round blobs."}
    (study / "study.json").write_text(json.dumps({"title": "Toy", "figures": [figure]}))
    text = report.build_document(str(results_dir))
    assert "![Toy grid](grid.png)" in text and "*Toy grid.* Round blobs." in text
    (study / "study.json").write_text(json.dumps({"title": "Toy", "figures": [{**figure, "image": "gone.png"}]}))
    with pytest.raises(FileNotFoundError, match="gone.png"):
        report.build_document(str(results_dir))
