"""The errors that end a command with one line instead of a traceback: problems of the input, the files or the
machine (a busy or foreign workdir, damaged checkpoints, a full disk, missing or corrupt data, a diverging run),
not bugs of pvpp. Every entry point runs its work through `exit_on_stopping_errors`.

In a multi-process run (`pvpp.parallel.distributed`) a process that stops, on any error, says so naming itself and
exits at once (`os._exit`), without jax's shutdown barrier: otherwise it would wait there, still sending
heartbeats, while the others wait for it in a collective. It first tells the others
(`pvpp.parallel.liveness.mark_failed`), which then stop at once.

A command stopped by SIGTERM or SIGINT (`pvpp.runs.stopping`) ends with one line and exit status
`pvpp.runs.stopping.STOPPED_EXIT_STATUS` (75): training after saving the checkpoint of the step that was running (with
several processes every process stops at the same step and they exit together), anything else at once, leaving
no partial file."""

from __future__ import annotations

import logging as std_logging
import os
import sys
import threading
import traceback
import warnings
from typing import Any, Callable

import jax
from absl import app, logging

from pvpp.data.raw import DataFileError
from pvpp.experiments import console
from pvpp.parallel import distributed, liveness
from pvpp.runs import checkpoint, stopping
from pvpp.runs.results import InconsistentResultError, ResultExistsError
from pvpp.runs.workdir import UnreadableConfigError, WorkdirBusyError, WorkdirConflictError
from pvpp.training.config import SettingError

STOPPING_ERRORS = (
    WorkdirBusyError,
    WorkdirConflictError,
    UnreadableConfigError,
    SettingError,
    checkpoint.CheckpointWriteError,
    checkpoint.UnreadableCheckpointError,
    checkpoint.CorruptCheckpointError,
    checkpoint.CheckpointMismatchError,
    DataFileError,
    ResultExistsError,
    InconsistentResultError,
    FileNotFoundError,
    PermissionError,
    FloatingPointError,
)


def exit_on_stopping_errors(work: Callable[..., Any], *args, **kwargs) -> Any:
    """`work(*args, **kwargs)`; a `STOPPING_ERRORS` error is logged and ends the process with exit status 1
    and its message as the last line (the traceback stays out of the way). Meanwhile an exception that ends a
    background thread (orbax's checkpoint writers) is logged in one line instead of Python's traceback: the
    thread's owner reports it (e.g. as a CheckpointWriteError). After a failed write, tensorstore's callbacks
    into orbax's closed event loop raise 'Event loop is closed' by the hundred, and asyncio logs each of
    orbax's failed writer tasks: those repeat the one error and are dropped (asyncio serves only orbax here)."""
    previous_hook, previous_unraisable = threading.excepthook, sys.unraisablehook
    asyncio_logger = std_logging.getLogger("asyncio")
    previous_level = asyncio_logger.level
    threading.excepthook = _log_thread_failure
    sys.unraisablehook = _drop_closed_loop_callbacks
    asyncio_logger.setLevel(std_logging.CRITICAL)
    try:
        with stopping.interruptible():  # SIGTERM raises, as Ctrl-C does, so that clean-ups run
            result = work(*args, **kwargs)
    except stopping.TrainingStopped as err:
        _stopped(str(err))
    except (KeyboardInterrupt, stopping.Interrupted) as err:
        _interrupted(err)
    except STOPPING_ERRORS as err:
        # The hooks stay: the failed writers' leftovers are collected while the interpreter shuts down (and
        # their never-awaited coroutines would each warn).
        warnings.filterwarnings("ignore", message="coroutine .* was never awaited", category=RuntimeWarning)
        logging.error("%s: %s", type(err).__name__, err)
        _exit(f"{type(err).__name__}: {err}")
    except BaseException as err:
        if not distributed.is_multiprocess() or (isinstance(err, SystemExit) and not err.code):
            raise
        liveness.await_verdict_on(err)  # a collective that lost its peer: the watch names the process and exits
        if not isinstance(err, app.UsageError):  # a usage error is its message; anything else a bug to trace
            traceback.print_exc()
        _exit(f"{type(err).__name__}: {err}")
    threading.excepthook, sys.unraisablehook = previous_hook, previous_unraisable
    asyncio_logger.setLevel(previous_level)
    return result


def _exit(message: str) -> None:
    """Ends the process with status 1 and `message` as the last line; with several processes, at once (see the
    module docstring), naming this process."""
    if not distributed.is_multiprocess():
        sys.exit(f"pvpp: {message}")
    liveness.mark_failed()
    liveness.exit_process(message)


def _stopped(message: str) -> None:
    """Training stopped on request, its checkpoint saved: `message` as the last line, exit status
    STOPPED_EXIT_STATUS. With several processes every one stopped at the same step: a normal exit (the processes'
    shutdown waits for each other)."""
    where = f"process {jax.process_index()} of {jax.process_count()}: " if distributed.is_multiprocess() else ""
    logging.warning("%s%s", where, message)
    sys.stdout.flush()
    sys.stderr.write(f"pvpp: {where}{message}\n")
    sys.stderr.flush()
    sys.exit(stopping.STOPPED_EXIT_STATUS)


def _interrupted(err: BaseException) -> None:
    """Stopped by a signal before the work was done: one line, exit status STOPPED_EXIT_STATUS; with several
    processes the others are told and stop too."""
    message = f"{stopping.describe(err)} before the work was done; no partial file was left: rerun the command"
    if distributed.is_multiprocess():
        liveness.mark_failed()
        liveness.exit_process(message, stopping.STOPPED_EXIT_STATUS)
    sys.stdout.flush()
    sys.stderr.write(f"pvpp: {message}\n")
    sys.stderr.flush()
    sys.exit(stopping.STOPPED_EXIT_STATUS)


def _log_thread_failure(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "a background thread"
    first_line = (str(args.exc_value).strip().splitlines() or [""])[0][:300]
    logging.warning("%s failed: %s: %s", name, args.exc_type.__name__, first_line)


def _drop_closed_loop_callbacks(unraisable) -> None:
    if isinstance(unraisable.exc_value, RuntimeError) and "Event loop is closed" in str(unraisable.exc_value):
        return
    sys.__unraisablehook__(unraisable)


def quiet_orbax_logs() -> None:
    """Orbax logs a dozen INFO lines per checkpoint through absl, and the full traceback of every failed
    background write: keep its warnings and errors, as one line each (the error itself is reported by pvpp).
    Also sets up the console (`pvpp.experiments.console`: plain pvpp lines, no third-party INFO)."""
    std_logging.getLogger("absl").addFilter(_OrbaxOneLiners())  # on the logger: whichever handler prints
    console.setup()


class _OrbaxOneLiners(std_logging.Filter):
    def filter(self, record: std_logging.LogRecord) -> bool:
        if f"{os.sep}orbax{os.sep}" not in record.pathname:
            return True
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        return record.levelno >= std_logging.WARNING
