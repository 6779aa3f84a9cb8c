"""Shared pieces of the benchmarks: machine description, timing, JSON output."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from typing import Any, Callable

import jax
import numpy as np


def machine_info() -> dict[str, Any]:
    """What the figures were measured on."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "jax_backend": jax.default_backend(),
        "jax_devices": [str(d) for d in jax.devices()],
        "jax_version": jax.__version__,
        "numpy_version": np.__version__,
    }


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """(result, seconds) of fn(), waiting for every array in the result."""
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    return out, time.perf_counter() - start


def write_result(result: dict[str, Any], output: str | None) -> None:
    """Writes the JSON document to `output` (a path) or stdout."""
    text = json.dumps(result, indent=2, sort_keys=False)
    if output:
        with open(output, "w") as f:
            f.write(text + "\n")
    else:
        print(text)


def log(message: str) -> None:
    """A progress line on stderr (stdout may carry the JSON)."""
    print(message, file=sys.stderr, flush=True)
