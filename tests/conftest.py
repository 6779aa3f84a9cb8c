"""Shared test set-up: strict broadcasting, a persistent compilation cache, the data directory."""

import os
import pathlib

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")
# Compilations are cached across runs of the suite (keyed by the HLO), so a second run is fast.
_CACHE = pathlib.Path(__file__).resolve().parent.parent / ".jax_cache"
jax.config.update("jax_compilation_cache_dir", str(_CACHE))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


@pytest.fixture(scope="session")
def data_dir() -> pathlib.Path:
    """The real data sets (../shared/data). Missing data is an error, not a skip."""
    path = os.environ.get("PVPP_DATA_DIR")
    if not path:
        path = str(pathlib.Path(__file__).resolve().parent.parent.parent / "shared" / "data")
    path = pathlib.Path(path).resolve()
    if not path.is_dir():
        raise FileNotFoundError(
            f"data directory {path} does not exist: set PVPP_DATA_DIR to the folder holding the real data sets"
        )
    return path
