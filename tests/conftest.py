"""Shared test set-up: strict broadcasting, a persistent compilation cache, the data directory."""

import os
import pathlib

import jax
import pytest

# Eight CPU devices for the whole session (the device count is process-wide and fixed when the backend starts):
# multi-device tests pmap over them; single-device code runs on device 0 at the same speed.
jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_numpy_rank_promotion", "raise")
# Compilations are cached across runs of the suite (keyed by the HLO), so a second run is fast.
_CACHE = pathlib.Path(os.environ.get("PVPP_TEST_JAX_CACHE", pathlib.Path.home() / ".cache" / "pvpp" / "jax-tests"))
jax.config.update("jax_compilation_cache_dir", str(_CACHE))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


#: Modules whose tests take long (several processes, the benchmark suite, the notebook, trained fixtures, real-data
#: runs): marked 'slow', so that `pytest -m "not slow"` is the quick tier a developer runs on every change.
SLOW_MODULES = {
    "test_bench", "test_distributed", "test_evaluate", "test_experiments", "test_hostile", "test_notebook",
    "test_readme", "test_train", "test_zoo", "test_cached_sampler", "test_inference", "test_old_workdir",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.module.__name__ in SLOW_MODULES or item.get_closest_marker("integration"):
            item.add_marker(pytest.mark.slow)


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
