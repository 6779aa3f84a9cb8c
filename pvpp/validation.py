"""Argument checks shared by every public function and config: one helper per kind of value.

Each raises an exception whose message starts with the argument's name (for flags: the flag's name), so the
command-line programs can print it as it is.
"""

from __future__ import annotations

import numbers

import jax
import numpy as np


class NotAnIntError(TypeError, ValueError):
    """A value that should be an int is of another type (both a TypeError and a ValueError, so callers that
    catch either, as the configs' users and absl flags do, see it)."""


def check_int(value, name: str, minimum: int | None = None) -> int:
    """`value` as a Python int. NotAnIntError unless it is an integer (Python or NumPy; bool is refused),
    ValueError when it is below `minimum`."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise NotAnIntError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_divisible(value: int, name: str, count: int, parts: str = "devices") -> None:
    """ValueError unless `value`, the setting `name` (a field, or a flag such as '--batch_size'), splits into `count`
    equal parts (`parts`: 'devices', 'processes', with a hint if any), in the one message every check of a batch or
    a device count against the devices or processes gives: '<name>=<value> is not divisible by the <count> <parts>'."""
    if value % count:
        raise ValueError(f"{name}={value} is not divisible by the {count} {parts}")


def check_choice(value, name: str, choices) -> None:
    """ValueError unless `value` is one of `choices`."""
    if value not in tuple(choices):
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


def is_traced(value) -> bool:
    """True inside `jit` / `vmap` / `grad`: value checks only run on concrete arrays."""
    return isinstance(value, jax.core.Tracer)
