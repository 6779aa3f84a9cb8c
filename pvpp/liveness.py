"""Every process of a multi-process run says that it is alive and watches the others, so that when one dies,
hangs or stops on an error the others stop within a bounded time with a pvpp message naming it, instead of
waiting in a collective:

    pvpp: process 0 of 2: process 1 has not answered for 5 s (killed, crashed or hung): stopping too

How. A daemon thread of each process writes a counter under `pvpp/alive/<process>` in the key-value store of JAX's
coordination service (`jax.distributed`) every `period` seconds and reads the others' entries. A process whose
counter has not changed for `timeout` seconds counts as dead; one whose entry says 'failed' stopped on an
error of its own (`mark_failed`, called by `pvpp.experiments.errors` before it exits) and ends the others at
once. When the service itself cannot be reached for `timeout` seconds, process 0, which hosts it, is gone.
At normal exit each process writes 'done' and waits, still watching, until every other one is done too; only
then does JAX's own shutdown barrier run (which no longer waits for a dead process).

JAX's coordination service also stops the survivors of a dead process, with a crash report of its own, after
its heartbeat timeout: `initialize` sets that to `backstop_timeout(timeout)`, twice pvpp's, so pvpp's message
comes first. When process 0 dies JAX's client may still be first: its report then says that it lost the
coordination service.

The key-value store is reached through `jax._src.distributed.global_state.client` (JAX has no public handle on
it; orbax reaches it the same way). Where that is missing, `start` logs a warning and JAX's heartbeats alone
stop the run.
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


def backstop_timeout(timeout: int) -> int:
    """The heartbeat timeout (s) to give JAX's coordination service when pvpp watches with `timeout`."""
    return 2 * timeout


def start(timeout: float, period: float | None = None) -> "Watch | None":
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
    _WATCH = Watch(client, jax.process_index(), jax.process_count(), timeout, period or min(1.0, timeout / 5))
    _WATCH.start()
    atexit.register(_WATCH.finish)  # after jax.distributed's own hook, so it runs before that one
    return _WATCH


def mark_failed() -> None:
    """Tells the other processes that this one stops on an error (they stop at once); nothing without a watch."""
    if _WATCH is not None:
        _WATCH.announce(FAILED)


def await_verdict_on(error: BaseException) -> None:
    """When `error` looks like a collective that lost its peer (gloo's 'Connection reset / closed by peer'),
    waits up to the watch's timeout for the watch to name the process that died, and end this one with that
    message; returns at once for other errors or without a watch."""
    text = str(error)
    if _WATCH is None or not any(sign in text for sign in _LOST_PEER_SIGNS):
        return
    logging.warning(
        "a collective lost its peer; waiting up to %g s to learn which process died", _WATCH.timeout
    )
    time.sleep(_WATCH.timeout + 3 * _WATCH.period)


class Watch:
    """The heartbeat and watch thread of one process (use `start`)."""

    def __init__(self, client, process: int, count: int, timeout: float, period: float):
        self.client, self.process, self.count = client, process, count
        self.timeout, self.period = timeout, period
        self._state = "0"
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._all_done = threading.Event()
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

    def finish(self) -> None:
        """At normal exit: DONE, then wait (still watching) until every process is done; then stop the thread."""
        if not self._thread.is_alive():
            return
        self.announce(DONE)
        while not self._all_done.wait(self.period) and self._thread.is_alive():
            pass
        self._stop.set()
        self._thread.join(timeout=2 * self.period)

    def _run(self) -> None:
        last_change = {p: time.monotonic() for p in range(self.count) if p != self.process}
        last_value: dict[int, str] = {}
        unreachable_since = None
        beat = 0
        while not self._stop.wait(self.period):
            beat += 1
            now = time.monotonic()
            try:
                self._beat(beat)
                entries = dict(self.client.key_value_dir_get(PREFIX))
            except Exception as err:  # noqa: BLE001 - every failure to reach the service counts as silence
                unreachable_since = unreachable_since or now
                if now - unreachable_since > self.timeout:
                    self._stop_run(
                        f"the coordination service (process 0) has not answered for {self.timeout:g} s "
                        f"({type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''})"
                    )
                continue
            unreachable_since = None
            values = {int(key.rsplit("/", 1)[1]): value for key, value in entries.items()}
            for other in last_change:
                value = values.get(other)
                if value == FAILED:
                    self._stop_run(f"process {other} stopped on an error (its log says which)")
                if value != last_value.get(other):
                    last_value[other], last_change[other] = value, now
                elif value != DONE and now - last_change[other] > self.timeout:
                    self._stop_run(
                        f"process {other} has not answered for {self.timeout:g} s (killed, crashed or hung)"
                    )
            if self._state == DONE and all(values.get(p) == DONE for p in last_change):
                self._all_done.set()

    def _beat(self, beat: int) -> None:
        with self._lock:
            if self._state not in (DONE, FAILED):
                self._state = str(beat)
                self.client.key_value_set(PREFIX + str(self.process), self._state, allow_overwrite=True)

    def _stop_run(self, reason: str) -> None:
        where = f"process {self.process} of {self.count}"
        logging.error("%s: %s: stopping too", where, reason)
        sys.stdout.flush()
        sys.stderr.write(f"pvpp: {where}: {reason}: stopping too\n")
        sys.stderr.flush()
        os._exit(1)


_WATCH: Watch | None = None


def _coordination_client():
    state = getattr(_jax_distributed, "global_state", None)
    client = getattr(state, "client", None)
    needed = ("key_value_set", "key_value_dir_get")
    return client if client is not None and all(hasattr(client, name) for name in needed) else None
