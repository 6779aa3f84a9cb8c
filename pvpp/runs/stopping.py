"""Stopping a command on request: SIGTERM (what SLURM and most schedulers send at a time limit or on preemption)
and SIGINT (Ctrl-C).

Training stops gracefully (`pvpp.training.loop`):

    with graceful_stop() as request:
        ...                                   # after every step:
        if request.reached(step): ...         # save the checkpoint of `step`, then raise TrainingStopped

The first signal lets the current step finish; its checkpoint is saved, the workdir's lock released, and the
command ends with one line, e.g.

    pvpp: stopped by SIGTERM after step 1200: its checkpoint is in runs/x/checkpoints; the same command resumes

and exit status `STOPPED_EXIT_STATUS` (75, EX_TEMPFAIL of sysexits.h: try again later). A second signal ends the
process at once, by the signal's default action (the last checkpoint written stays intact: saves are atomic).

Several processes (`pvpp.parallel.distributed`): JAX's preemption service decides, so that every process saves the same
step. A SIGTERM to any process is announced to all, and `multihost_utils.reached_preemption_sync_point(step)` is
True at the same step on every process; SIGINT is handed to that service as a SIGTERM of this process. JAX keeps
SIGTERM for itself: a second SIGTERM does not end the process (a second SIGINT does). One process does not use
the service.

Everything else (evaluation, sampling, the start of a training run): `interruptible()` makes SIGTERM raise
`Interrupted` in the main thread, as Ctrl-C raises KeyboardInterrupt, so that `finally` clean-ups run (temporary
files are removed; results are renamed into place only when complete) and the command ends with one line and
the same exit status (`pvpp.experiments.errors`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator

from absl import logging
from jax.experimental import multihost_utils

from pvpp.parallel import distributed, liveness

#: The exit status of a command stopped by SIGTERM or SIGINT (EX_TEMPFAIL): rerunning it continues or redoes it.
STOPPED_EXIT_STATUS = 75
_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(BaseException):
    """SIGTERM arrived during `interruptible()` (a BaseException, like KeyboardInterrupt: `except Exception`
    clauses let it through)."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal_name(signum)}")
        self.signum = signum


class TrainingStopped(Exception):
    """Training stopped on request after saving the checkpoint of `step` in `directory`."""

    def __init__(self, step: int, reason: str, directory):
        super().__init__(
            f"stopped by {reason} after step {step}: its checkpoint is in {directory}; the same command resumes "
            "from it"
        )
        self.step, self.reason, self.directory = step, reason, directory


def signal_name(signum: int) -> str:
    """'SIGTERM', 'SIGINT (Ctrl-C)', ..."""
    name = signal.Signals(signum).name
    return f"{name} (Ctrl-C)" if signum == signal.SIGINT else name


def describe(err: BaseException) -> str:
    """How an interruption reads in the command's last line: 'stopped by SIGINT (Ctrl-C)', ..."""
    if isinstance(err, Interrupted):
        return str(err)
    return f"stopped by {signal_name(signal.SIGINT)}"


class StopRequest:
    """Whether a stop was asked for (see the module docstring); `reached(step)` must be called after every step,
    on every process."""

    def __init__(self, *, across_processes: bool = False, active: bool = True):
        self.signum: int | None = None
        self._across_processes = across_processes
        self._active = active
        self._announced = False

    def reached(self, step: int) -> bool:
        """Whether to save `step` and stop now (with several processes: the step every process saves). Logs
        one line when it first answers True (signal handlers do not print: a print interrupted by one fails)."""
        if not self._active:
            return False
        if self._across_processes:
            stop = bool(multihost_utils.reached_preemption_sync_point(step))
        else:
            stop = self.signum is not None
        if stop and not self._announced:
            self._announced = True
            again = "SIGINT" if self._across_processes else "the signal"
            logging.warning(
                "%s: saving the checkpoint of step %d, then stopping (send %s again to stop at once).",
                self.reason, step, again,
            )
        return stop

    @property
    def reason(self) -> str:
        """The signal that asked for the stop, as the command's last line names it."""
        if self.signum is not None:
            return signal_name(self.signum)
        return "a SIGTERM to one of the processes (JAX's preemption notice)"

    def _on_signal(self, signum: int, frame) -> None:
        """One process: remembers the signal; the next one of either kind ends the process at once."""
        self.signum = signum
        for each in _SIGNALS:
            signal.signal(each, signal.SIG_DFL)

    def _to_preemption_service(self, signum: int, frame) -> None:
        """Several processes: SIGINT becomes this process's SIGTERM, which JAX's preemption service announces."""
        self.signum = signum
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)


@contextlib.contextmanager
def graceful_stop() -> Iterator[StopRequest]:
    """Within the block, SIGTERM and SIGINT ask for a stop after the current step (see the module docstring);
    the previous handlers come back at its end. Outside the main thread, or with several processes but no
    preemption service, the request never fires and the signals keep their handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield StopRequest(active=False)
        return
    if distributed.is_multiprocess():
        if not _preemption_service_running():
            logging.warning("JAX's preemption service is off: SIGTERM and SIGINT stop the processes at once.")
            yield StopRequest(active=False)
            return
        request = StopRequest(across_processes=True)
        handlers = {signal.SIGINT: request._to_preemption_service}
    else:
        request = StopRequest()
        handlers = {each: request._on_signal for each in _SIGNALS}
    with _handlers(handlers):
        yield request


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Within the block, SIGTERM raises `Interrupted` in the main thread (one process; with several, JAX's
    preemption service keeps SIGTERM). Nothing outside the main thread."""
    if threading.current_thread() is not threading.main_thread() or distributed.is_multiprocess():
        yield
        return
    with _handlers({signal.SIGTERM: _raise_interrupted}):
        yield


def _raise_interrupted(signum: int, frame) -> None:
    raise Interrupted(signum)


@contextlib.contextmanager
def _handlers(handlers) -> Iterator[None]:
    """Installs {signal: handler} for the block and puts the previous Python handlers back (a handler that was
    not set from Python, e.g. by a library's C code, cannot be put back and is left as the block leaves it)."""
    previous = {signum: signal.signal(signum, handler) for signum, handler in handlers.items()}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            if handler is not None:
                signal.signal(signum, handler)


def _preemption_service_running() -> bool:
    """Whether JAX's preemption sync manager runs (it has no public handle: reached as pvpp.parallel.liveness
    reaches JAX's key-value store)."""
    state = getattr(liveness._jax_distributed, "global_state", None)
    return getattr(state, "preemption_sync_manager", None) is not None
