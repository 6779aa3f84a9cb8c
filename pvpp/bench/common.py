"""Shared pieces of the benchmarks: machine description, timing with the machine's load, JSON output."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np


def machine_info() -> dict[str, Any]:
    """What the figures were measured on."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "jax_backend": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
        "jax_devices": [str(d) for d in jax.devices()],
        "jax_version": jax.__version__,
        "jaxlib_version": jaxlib.__version__,
        "numpy_version": np.__version__,
        "load_average_1min_at_start": os.getloadavg()[0],
    }


def measured(fn: Callable[[], Any]) -> tuple[Any, dict[str, float]]:
    """(result, record) of fn(), waiting for every array in the result. The record holds the wall and process CPU
    seconds of the call and the 1-minute load average before and after it: a CPU figure taken while the load
    exceeds the core count shares the cores with other work (`busy` is then true, and a warning is printed)."""
    load_before, cpu_start, start = os.getloadavg()[0], time.process_time(), time.perf_counter()
    out = jax.block_until_ready(fn())
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    load_after = os.getloadavg()[0]
    busy = max(load_before, load_after) > (os.cpu_count() or 1)
    if busy:
        log(
            f"WARNING: the machine was busy (1-minute load {load_before:.1f} -> {load_after:.1f} on "
            f"{os.cpu_count()} cores): do not use this figure"
        )
    record = {
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "load_1min_before": load_before,
        "load_1min_after": load_after,
        "busy": busy,
    }
    return out, record


def random_variables(init_fn, *args, seed: int = 0):
    """Variables with the structure of `init_fn(*args)` filled with random values, by parameter name:
    weight-norm scales g ~ U(0.5, 1.5); biases and logits ~ N(0, 0.1^2); kernels and RBM weights ~ N(0, 0.1^2).

    The shapes come from `jax.eval_shape(init_fn, ...)`, so the (large, data-dependent) init is never compiled:
    for benchmarks and structural tests, whose cost or property does not depend on trained values."""
    shapes = jax.eval_shape(init_fn, *args)
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = jax.tree_util.keystr(path[-1:])
        if "scale" in name:
            value = rng.uniform(0.5, 1.5, leaf.shape)
        else:
            value = rng.normal(0.0, 0.1, leaf.shape)
        return jnp.asarray(value, leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


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
