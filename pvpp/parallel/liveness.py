"""Every process of a multi-process run says that it is alive and watches the others, so that when one dies, is
frozen or stops on an error the others stop within a bounded time with a pvpp message naming it, instead of
waiting in a collective:

    pvpp: process 0 of 2: process 1 has not answered for 5 s (killed, crashed or frozen): stopping too

How. A daemon thread of each process writes a counter under `pvpp/alive/<process>` in the key-value store of JAX's
coordination service (`jax.distributed`) every `period` seconds and reads the others' entries (each process
reads all N, so the service answers N^2 small reads per period). A process whose counter has not changed for
`timeout` seconds counts as dead; one whose entry says 'failed' stopped on an error of its own (`mark_failed`,
called by `pvpp.experiments.errors` before it exits) and ends the others at once. When the service itself
cannot be reached for `timeout` seconds, process 0, which hosts it, is gone. The heartbeat comes from its own
thread, so a process whose main thread deadlocks while the interpreter runs still counts as alive.

At normal exit each process writes 'done' and waits, still watching, until every other one is done too (at most
`shutdown_timeout` seconds; then it names those that are not and exits with status 1); only then does JAX's own
shutdown barrier run. A process that exits on an uncaught exception writes 'failed' instead, without waiting.

JAX's coordination service also stops the survivors of a dead process, with a crash report of its own, after
its heartbeat timeout: `pvpp.parallel.distributed.initialize` sets that to `backstop_timeout(timeout)`, twice
pvpp's and at least `BACKSTOP_FLOOR`, when the watch can run, so pvpp's message comes first. When process 0 dies
JAX's client is first: its report says that it lost the coordination service.

Pauses. JAX's agents (jaxlib 0.10) send a heartbeat every half of that timeout, and its service ages them with the
wall clock and no guard of its own. When the whole machine stops and goes on (a virtual machine paused for a
snapshot or a live migration; a step of the wall clock does the same), every process looks silent for the length
of the pause, all at once, and JAX ends a healthy run when the pause exceeds half its timeout: hence the floor.
pvpp's watch measures time with the monotonic clock, and when its own thread has not run for half the timeout
(this process or the machine was paused or starved) it restarts the others' clocks instead of blaming them for a
silence it could not observe.

The key-value store is reached through `jax._src.distributed.global_state.client` (JAX has no public handle on
it; orbax reaches it the same way). Where that is missing (`available()` is False), the watch is off and JAX's
heartbeats alone stop the run, after `timeout`.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time

import jax
from absl import logging

try:  # private: JAX has no public handle on its key-value store (see the module docstring)
    from jax._src import distributed as _jax_distributed
except ImportError:  # pragma: no cover - a JAX without it: the watch is off
    _jax_distributed = None

PREFIX = "pvpp/alive/"
DONE, FAILED = "done", "failed"
#: Words of the errors a collective raises when another process died under it (gloo on CPU).
_LOST_PEER_SIGNS = ("closed by peer", "reset by peer", "Connection refused", "Broken pipe")


def available() -> bool:
    """Whether this JAX has the key-value store the watch uses (checked before `jax.distributed.initialize`)."""
    return hasattr(_jax_distributed, "global_state")


#: Seconds: the least heartbeat timeout given to JAX's coordination service while pvpp's watch runs, so that a
#: pause of the machine (up to half of it) does not end a run (see "Pauses" above).
BACKSTOP_FLOOR = 600


def backstop_timeout(timeout: int) -> int:
    """The heartbeat timeout (s) to give JAX's coordination service when pvpp watches with `timeout`: JAX's
    check is then a backstop, for a process whose watch thread itself died."""
    return max(2 * timeout, BACKSTOP_FLOOR) if available() else timeout


def start(timeout: float, shutdown_timeout: float, period: float | None = None) -> "Watch | None":
    """Starts this process's watch of the others (see the module docstring); None with one process or without
    JAX's key-value store. period: seconds between heartbeats (default min(1, timeout / 5))."""
    if jax.process_count() <= 1:
        return None
    client = _coordination_client()
    if client is None:
        logging.warning(
            "pvpp cannot reach JAX's key-value store: a dead process is noticed by JAX's heartbeats only"
        )
        return None
    global _WATCH
    period = period or min(1.0, timeout / 5)
    _WATCH = Watch(client, jax.process_index(), jax.process_count(), timeout, shutdown_timeout, period)
    _WATCH.start()
    atexit.register(_WATCH.finish)  # after jax.distributed's own hook, so it runs before that one
    return _WATCH


def mark_failed() -> None:
    """Tells the other processes that this one stops on an error (they stop at once); nothing without a watch.
    Process 0 hosts the key-value store, so it waits two periods for the others to read the news first."""
    if _WATCH is not None:
        _WATCH.announce(FAILED)
        if _WATCH.process == 0:
            time.sleep(2 * _WATCH.period)


def await_verdict_on(error: BaseException) -> None:
    """When `error` looks like a collective that lost its peer (gloo's 'Connection reset / closed by peer'),
    waits up to the watch's timeout for the watch to name the process that died and end this one with that
    message. Returns at once for other errors or without a watch, and as soon as every other process is seen
    alive after the error (the error was something else)."""
    text = str(error)
    if _WATCH is None or not any(sign in text for sign in _LOST_PEER_SIGNS):
        return
    logging.warning(
        "a collective lost its peer; waiting up to %g s to learn which process died", _WATCH.timeout
    )
    since = time.monotonic()
    while time.monotonic() - since < _WATCH.timeout + 3 * _WATCH.period:
        time.sleep(_WATCH.period)
        if _WATCH.all_alive_since(since + _WATCH.period):
            return


def exit_process(message: str, status: int = 1) -> None:
    """Ends this process of a multi-process run at once (`os._exit(status)`, no shutdown barrier) with
    `pvpp: process I of N: message` as its last line."""
    where = f"process {jax.process_index()} of {jax.process_count()}"
    logging.error("%s: %s", where, message)
    sys.stdout.flush()
    sys.stderr.write(f"pvpp: {where}: {message}\n")
    sys.stderr.flush()
    os._exit(status)


class Watch:
    """The heartbeat and watch thread of one process (use `start`)."""

    def __init__(
        self, client, process: int, count: int, timeout: float, shutdown_timeout: float, period: float
    ):
        self.client, self.process, self.count = client, process, count
        self.timeout, self.shutdown_timeout, self.period = timeout, shutdown_timeout, period
        self._state = "0"
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._all_done = threading.Event()
        self._others = [p for p in range(count) if p != process]
        self._last_change = {p: time.monotonic() for p in self._others}
        self._last_value: dict[int, str | None] = {}
        self._last_check: float | None = None
        self._thread = threading.Thread(target=self._run, name="pvpp-liveness", daemon=True)

    def start(self) -> None:
        self._beat(0)
        self._thread.start()

    def announce(self, state: str) -> None:
        """Writes DONE or FAILED as this process's entry (a failure to reach the store is ignored)."""
        with self._lock:
            self._state = state
            try:
                self.client.key_value_set(PREFIX + str(self.process), state, allow_overwrite=True)
            except Exception:  # noqa: BLE001 - the store may be gone already; the others then notice the silence
                pass

    def all_alive_since(self, moment: float) -> bool:
        """Whether every other process's entry changed after `moment` (time.monotonic) or says DONE."""
        return all(self._last_change[p] > moment or self._last_value.get(p) == DONE for p in self._others)

    def finish(self) -> None:
        """At exit: FAILED after an uncaught exception; otherwise DONE, then wait (still watching, at most
        `shutdown_timeout` s) until every process is done, and stop the thread."""
        if not self._thread.is_alive():
            return
        if getattr(sys, "last_value", None) is not None:  # the interpreter printed an uncaught exception
            self.announce(FAILED)
            return
        self.announce(DONE)
        deadline = time.monotonic() + self.shutdown_timeout
        while not self._all_done.wait(self.period) and self._thread.is_alive():
            if time.monotonic() > deadline:
                waiting = [p for p in self._others if self._last_value.get(p) != DONE]
                self._stop_run(
                    f"processes {waiting} did not finish within {self.shutdown_timeout:g} s of this one"
                )
        self._stop.set()
        self._thread.join(timeout=2 * self.period)

    def _run(self) -> None:
        unreachable_since = None
        beat = 0
        while not self._stop.wait(self.period):
            if getattr(_jax_distributed.global_state, "client", None) is not self.client:
                return  # jax.distributed.shutdown() ran: nothing left to watch
            beat += 1
            now = time.monotonic()
            try:
                self._beat(beat)
                entries = self.client.key_value_dir_get(PREFIX)
            except Exception as err:  # noqa: BLE001 - every failure to reach the service counts as silence
                unreachable_since = unreachable_since or now
                if now - unreachable_since > self.timeout:
                    first_line = (str(err).splitlines() or [""])[0][:200]
                    self._stop_run(
                        f"the coordination service (process 0) has not answered for {self.timeout:g} s "
                        f"({type(err).__name__}: {first_line})"
                    )
                continue
            unreachable_since = None
            try:
                self._check(entries, now)
            except Exception as err:  # noqa: BLE001 - a bug here must not silence the heartbeat
                logging.warning("pvpp's process watch skipped a check: %s: %s", type(err).__name__, err)

    def _check(self, entries, now: float) -> None:
        """Reads the others' entries (key, value pairs of the store) as seen at `now` (time.monotonic)."""
        if self._last_check is not None and now - self._last_check > self.timeout / 2:
            logging.warning(
                "pvpp's process watch did not run for %.0f s (this process or the machine was paused or starved): "
                "the others' silence is counted from now",
                now - self._last_check,
            )
            self._last_change = {p: now for p in self._others}
        self._last_check = now
        values = {}
        for key, value in entries:
            name = key.rsplit("/", 1)[-1]
            if name.isdigit():
                values[int(name)] = value
        for other in self._others:
            value = values.get(other)
            if value == FAILED:
                self._stop_run(f"process {other} stopped on an error (its log says which)")
            if value != self._last_value.get(other):
                self._last_value[other], self._last_change[other] = value, now
            elif value != DONE and now - self._last_change[other] > self.timeout:
                self._stop_run(
                    f"process {other} has not answered for {self.timeout:g} s (killed, crashed or frozen)"
                )
        if self._state == DONE and all(values.get(p) == DONE for p in self._others):
            self._all_done.set()

    def _beat(self, beat: int) -> None:
        with self._lock:
            if self._state not in (DONE, FAILED):
                self._state = str(beat)
                self.client.key_value_set(PREFIX + str(self.process), self._state, allow_overwrite=True)

    def _stop_run(self, reason: str) -> None:
        exit_process(f"{reason}: stopping too")


_WATCH: Watch | None = None


def _coordination_client():
    state = getattr(_jax_distributed, "global_state", None)
    client = getattr(state, "client", None)
    needed = ("key_value_set", "key_value_dir_get")
    return client if client is not None and all(hasattr(client, name) for name in needed) else None
