"""The research notebook (experiments/notebooks/pvpp_tour.ipynb) runs from a clean kernel, every cell, on the real data:
it trains a small model, loads it with pvpp.load, encodes, reconstructs, samples, and checks AIS against exact log Z."""

import os
import pathlib

import jax
import nbformat
from nbclient import NotebookClient

NOTEBOOK = pathlib.Path(__file__).resolve().parent.parent / "experiments" / "notebooks" / "pvpp_tour.ipynb"


def test_the_notebook_runs_every_cell(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("PVPP_DATA_DIR", str(data_dir))
    monkeypatch.setenv("PVPP_NOTEBOOK_WORKDIR", str(tmp_path / "run"))
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", jax.config.jax_compilation_cache_dir)  # the suite's cache
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    # An error in any cell raises CellExecutionError naming the cell.
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert sum("image/png" in output.get("data", {}) for output in outputs) == 3  # curve, reconstructions, samples
    text = "".join(output.get("text", "") for output in outputs)
    assert "test log-likelihood, k = 20" in text and (tmp_path / "run" / "ema_params").is_dir()
    assert os.path.exists(tmp_path / "run" / "tensorboard")
