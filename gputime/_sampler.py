"""The one sampler thread a tracker shares across all services.

Modelled on the OpenTelemetry SDK's batch processor: a named daemon thread that
waits on events, parked (no backend reads) while no task runs, woken by the
first task after idle, and stopped by :meth:`Sampler.close`, which sets a flag,
wakes the thread and joins it with a timeout.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

_JOIN_TIMEOUT_S = 5.0


class Sampler:
    """Runs ``tick`` every ``interval`` seconds while ``has_work`` says so.

    Args:
        tick: One sampling tick (reads every device, feeds the ledger). Must not raise.
        interval: Seconds between ticks while tasks run.
        seconds_to_settle: ``None`` while tasks run; once the last task ended,
            the seconds until the final read that collects the sample covering
            its end (it may be 0 or negative: read now).
        settle_done: Called after that final read, before parking.
        name: The thread's name.
    """

    def __init__(
        self,
        *,
        tick: Callable[[], None],
        interval: float,
        active: Callable[[], bool],
        seconds_to_settle: Callable[[], float | None],
        settle_done: Callable[[], None],
        name: str,
    ) -> None:
        self._tick = tick
        self._interval = interval
        self._active = active
        self._seconds_to_settle = seconds_to_settle
        self._settle_done = settle_done
        self._name = name
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    @property
    def running(self) -> bool:
        """Whether the thread exists and is reading (not parked, not stopped)."""
        thread = self._thread
        return (
            thread is not None
            and thread.is_alive()
            and not self._stop.is_set()
            and (self._active() or self._seconds_to_settle() is not None)
        )

    def wake(self) -> None:
        """The first task after idle began: start the thread or unpark it."""
        if self._stop.is_set():
            return
        if self._thread is None:
            with self._start_lock:
                if self._thread is None and not self._stop.is_set():
                    thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                    thread.start()
                    self._thread = thread
        self._wake.set()

    def close(self, timeout: float = _JOIN_TIMEOUT_S) -> None:
        """Stop the thread and wait (at most ``timeout`` seconds) for it to end."""
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def after_fork(self) -> None:
        """In a forked child: the parent's thread does not exist here."""
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._start_lock = threading.Lock()
        self._thread = None

    def _run(self) -> None:
        stop, wake = self._stop, self._wake
        while not stop.is_set():
            wake.clear()
            if self._active():
                if stop.wait(self._interval):
                    return
                self._tick()
                continue
            remaining = self._seconds_to_settle()
            if remaining is None:
                wake.wait()  # parked: no reads until the next task (rule 1)
                continue
            # The last task ended: one more read once the driver has produced
            # the sample covering its end, then park.
            if remaining > 0 and stop.wait(min(remaining, self._interval)):
                return
            if self._active():
                continue
            if remaining > self._interval:
                continue
            self._tick()
            self._settle_done()
