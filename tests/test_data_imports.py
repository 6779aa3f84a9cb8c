"""`import pvpp.data` stays free of tensorflow_datasets; the tfds-backed names still load on first use."""

import pathlib
import subprocess
import sys
import textwrap

_ROOT = pathlib.Path(__file__).resolve().parent.parent


def _run(code: str) -> None:
    """Runs `code` in a fresh interpreter (so no earlier import counts); fails with its output if it fails."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout


def test_names_do_not_import_tfds():
    _run(
        """
        import sys
        import pvpp.data as d
        from pvpp.data import SPLITS, DATASET_NAMES, DataSplit, batch_iterator, binarize_dynamically

        assert "validation" in d.SPLITS and "mnist" in d.DATASET_NAMES, (d.SPLITS, d.DATASET_NAMES)
        d.DataSplit, d.BatchIterator, d.batch_iterator, d.binarize_dynamically
        assert "tensorflow_datasets" not in sys.modules, "import pvpp.data imported tensorflow_datasets"
        """
    )


def test_heavy_names_load_lazily():
    _run(
        """
        import sys
        import pvpp.data as d

        assert "tensorflow_datasets" not in sys.modules
        assert callable(d.load) and callable(d.prepare) and callable(d.loading.resolve_data_dir)
        assert "tensorflow_datasets" in sys.modules
        assert tuple(d.DATASETS) == d.DATASET_NAMES, (tuple(d.DATASETS), d.DATASET_NAMES)
        assert d.DataSplit is d.loading.DataSplit and d.SPLITS is d.loading.SPLITS
        from pvpp.data import DataFileError, DatasetSpec, PvppMnist, builders, load
        assert load is d.loading.load and PvppMnist is builders.PvppMnist
        assert all(hasattr(d, name) for name in d.__all__), [n for n in d.__all__ if not hasattr(d, n)]
        try:
            d.no_such_name
        except AttributeError:
            pass
        else:
            raise AssertionError("d.no_such_name did not raise AttributeError")
        """
    )
