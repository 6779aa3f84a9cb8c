"""What the commands print: pvpp's own lines as plain text, other libraries' INFO chatter only on request.

absl formats every record with a prefix (`I1202 05:15:41.268463 140272814357376 metrics.py:288]`), and jax, tfds
and orbax log INFO lines a reader does not need ("Unable to initialize backend 'tpu'", "Reusing dataset ...").
`setup` changes that for the command-line programs unless `--verbosity` (or `-v`) is given, which restores absl's
full log: records from pvpp's own modules print as their message (warnings and errors with 'WARNING:' / 'ERROR:'
in front), and INFO records of other libraries are dropped (their warnings and errors still show).
"""

from __future__ import annotations

import logging as std_logging
import os

from absl import flags
from absl import logging

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def setup(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Plain pvpp lines and no third-party INFO on absl's handler, unless --verbosity was given explicitly."""
    if _verbosity_given(flag_values):
        return
    handler = logging.get_absl_handler()
    if any(isinstance(f, _ThirdPartyInfoFilter) for f in handler.filters):
        return
    handler.addFilter(_ThirdPartyInfoFilter())
    handler.setFormatter(_PlainFormatter())


def _verbosity_given(flag_values: flags.FlagValues) -> bool:
    try:
        return bool(flag_values["verbosity"].present)
    except KeyError:
        return False


def is_own(record: std_logging.LogRecord) -> bool:
    """Whether the record comes from a module of the pvpp package."""
    return os.path.abspath(record.pathname).startswith(_PACKAGE + os.sep)


class _ThirdPartyInfoFilter(std_logging.Filter):
    def filter(self, record: std_logging.LogRecord) -> bool:
        return is_own(record) or record.levelno >= std_logging.WARNING


class _PlainFormatter(std_logging.Formatter):
    def format(self, record: std_logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message = f"{message}\n{self.formatException(record.exc_info)}"
        if record.levelno >= std_logging.ERROR:
            return f"ERROR: {message}"
        if record.levelno >= std_logging.WARNING:
            return f"WARNING: {message}"
        return message
