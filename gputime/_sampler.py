"""The one sampler thread a tracker shares across all services.

Modelled on the OpenTelemetry SDK's batch processor: a named daemon thread that
waits on an event, parked (no backend reads) while no task runs, woken only by
a task that starts while it is parked, and stopped by :meth:`Sampler.close`,
which sets a flag, wakes the thread and joins it with a timeout. The thread
holds its tracker only through a weak reference, so a tracker dropped without
``close()`` is still collected (and its thread ends).
"""

from __future__ import annotations

import math
import threading
import weakref
from typing import Protocol

from gputime import _gcsafe

_JOIN_TIMEOUT_S = 5.0


class _Signal:
    """A wake-up flag for one waiting thread, which code inside a garbage collection may raise.

    Like :class:`threading.Event`, except :meth:`raise_nonblocking`: a finaliser
    the collector runs on a thread that already holds this signal's lock (the
    sampler thread itself, inside :meth:`wait`) must not wait for it, so it
    only notifies if the lock is free. Were it not, the flag is still set and
    the waiter sees it at its next wake-up.
    """

    __slots__ = ("_cond", "_flag")

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._flag = False

    def raise_(self) -> None:
        """Set the flag and wake the waiter."""
        self._flag = True
        with self._cond:
            self._cond.notify_all()

    def raise_nonblocking(self) -> bool:
        """Set the flag; wake the waiter if that needs no waiting. True if it was woken."""
        self._flag = True
        if not self._cond.acquire(blocking=False):
            return False
        try:
            self._cond.notify_all()
        finally:
            self._cond.release()
        return True

    def clear(self) -> None:
        self._flag = False

    def wait(self, timeout: float | None) -> bool:
        """Wait until raised (or ``timeout`` seconds); whether it was raised."""
        with self._cond:
            if not self._flag:
                self._cond.wait(timeout)
            return self._flag


class SamplerOwner(Protocol):
    """What the sampler needs from its tracker."""

    def _sampling_state(self) -> tuple[bool, float | None, float]:
        """``(tasks running, settle deadline or None, clock now)``."""

    def poll(self) -> None:
        """One sampling tick."""

    def _settle_done(self, deadline: float) -> None:
        """The last read for ``deadline`` was made."""

    def _calibrate_if_due(self) -> None:
        """Background work of the backend's, due while tasks run (never on a task's path)."""

    def _report_fault(self, kind: str, exc: BaseException, where: object = None) -> None:
        """Log a fault once per kind."""


class Sampler:
    """Ticks every ``interval`` seconds while tasks run, settles, lingers, then parks.

    Waking a thread costs the waker a thread switch and a hand-over of the GIL,
    so tasks wake the sampler only from its parked state: after the last task
    ends the thread stays awake (reading nothing unless a settle read is due)
    for one whole idle interval before it parks, and a service running tasks
    back to back never wakes it at all. The last task's end does not wake it
    either: the settle read comes at the next tick, and never sooner than one
    driver sample period after that end.

    Args:
        owner: The tracker; held weakly.
        interval: Seconds between ticks while tasks run.
        name: The thread's name.
    """

    def __init__(self, owner: SamplerOwner, *, interval: float, name: str) -> None:
        self._owner = weakref.ref(owner)
        self._interval = interval
        self._name = name
        self._wake = _Signal()
        self._stopped = False
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        #: True while the thread waits to be woken (or has not started): the
        #: one attribute a task start reads to decide whether to wake it.
        self.parked = True
        #: How many times a task woke the thread (cross-thread wake-ups).
        self.wakes = 0
        # Whether the previous step found nothing to do: a second such step
        # (a whole idle interval) parks.
        self._idle = False
        # A tracker collected without close() stops its thread.
        weakref.finalize(owner, self.close, 0.0)

    @property
    def alive(self) -> bool:
        """Whether the thread exists and has not been stopped."""
        thread = self._thread
        return thread is not None and thread.is_alive() and not self._stopped

    def wake(self) -> None:
        """The first task after idle began while the thread is parked: start or unpark it."""
        if self._stopped:
            return
        self.parked = False
        self.wakes += 1
        if self._thread is None:
            with self._start_lock:
                if self._thread is None and not self._stopped:
                    thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                    thread.start()
                    self._thread = thread
        self._wake.raise_()

    def wake_from_collection(self) -> None:
        """:meth:`wake` for code inside a garbage collection: never blocks.

        A thread is not started from there (starting one waits for it), and a
        wake that would have to wait is left to the next task start.
        """
        if self._stopped or self._thread is None:
            return
        if self._wake.raise_nonblocking():
            self.parked = False
            self.wakes += 1

    def close(self, timeout: float = _JOIN_TIMEOUT_S) -> None:
        """Stop the thread and wait (at most ``timeout`` seconds) for it to end.

        Also the finaliser of a tracker dropped without ``close()``, which the
        garbage collector may run: there it neither waits for a lock nor joins.
        """
        self._stopped = True
        if _gcsafe.in_collection():
            self._wake.raise_nonblocking()
            return
        self._wake.raise_()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread() and timeout > 0:
            thread.join(timeout)

    def after_fork(self) -> None:
        """In a forked child: the parent's thread does not exist here."""
        self._wake = _Signal()
        self._stopped = False
        self._start_lock = threading.Lock()
        self._thread = None
        self.parked = True
        self._idle = False

    def _run(self) -> None:
        wake = self._wake
        while not self._stopped:
            # Raised only by a wake from the parked state or by close(): awake,
            # a wake has nothing to add (close() is seen through ``_stopped``).
            wake.clear()
            try:
                timeout = self._step()
            except Exception as exc:  # noqa: BLE001 - the thread must outlive any fault
                owner = self._owner()
                if owner is not None:
                    owner._report_fault("sampler", exc)
                del owner
                timeout = self._interval
            if timeout is None:
                return
            if timeout == math.inf:
                self._park()
            elif timeout > 0:
                wake.wait(timeout)

    def _park(self) -> None:
        """Wait for the next first task after idle (no reads while parked: no task, no query)."""
        wake = self._wake
        wake.clear()
        self.parked = True
        # A task that began before ``parked`` was set saw it False and did not
        # wake us: look once more now that it is set.
        owner = self._owner()
        if owner is not None:
            active, deadline, _ = owner._sampling_state()
            if active or deadline is not None:
                self.parked = False
                return
        del owner  # no strong reference while parked
        wake.wait(None)
        wake.clear()
        self._idle = False

    def _step(self) -> float | None:
        """Do what is due now; return how long to wait (inf: park; None: stop)."""
        owner = self._owner()
        if owner is None or self._stopped:
            return None
        active, deadline, now = owner._sampling_state()
        if active:
            self._idle = False
            del owner  # no strong reference while waiting
            return self._tick_after_interval()
        if deadline is not None:
            self._idle = False
            if deadline > now:
                # The driver has not produced the sample covering the end yet;
                # the deadline is looked up anew after the wait.
                return min(deadline - now, self._interval)
            owner.poll()
            owner._settle_done(deadline)
            return 0.0
        if not self._idle:
            self._idle = True  # linger one whole interval: the next task may come soon
            return self._interval
        return math.inf

    def _tick_after_interval(self) -> float | None:
        if self._wake.wait(self._interval) or self._stopped:
            return 0.0  # close(), or a wake that raced the thread's start: look again
        owner = self._owner()
        if owner is None:
            return None
        owner.poll()
        owner._calibrate_if_due()
        return 0.0
