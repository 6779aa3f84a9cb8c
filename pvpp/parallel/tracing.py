"""Counting the traces of a compiled function: under jit / pmap a call of the Python function is a trace, so
the count says how often it was compiled (a retrace is a recompilation, which the tests check against)."""

from __future__ import annotations

import functools
from typing import Callable


class TraceCounter:
    """Calls `fn` and counts the calls; under jit / pmap a call of the Python function is a trace."""

    def __init__(self, name: str, fn: Callable):
        self.name = name
        self.count = 0
        self._fn = fn
        functools.update_wrapper(self, fn)

    def __call__(self, *args, **kwargs):
        self.count += 1
        return self._fn(*args, **kwargs)
