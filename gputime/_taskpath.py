"""The task path: what runs on every task start and end, from a job's own thread.

A base class of :class:`gputime.Tracker`, apart because it is the one part of the
tracker that runs per task (the cost users pay, docs/performance.md) and has the
rules that go with that: no exception into the job, nothing that can block in a
garbage collection or under the ledger lock, one cross-thread wake at most. The
tracker builds the parts it uses; this class only declares them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from gputime import _gcsafe
from gputime._handle import TaskHandle, unrecorded
from gputime._ledger import WOKE

if TYPE_CHECKING:
    from collections import deque

    from gputime import _task
    from gputime._emitter import Emitter
    from gputime._faults import FaultLog
    from gputime._ledger import Ledger
    from gputime._reads import DeviceReader
    from gputime._sampler import Sampler
    from gputime._sums import TaskRecord
    from gputime._types import Clock

Listener = Callable[[TaskHandle], object]


class TaskPath:
    """Starting and ending tasks: ledger, exit read, span, metrics, listeners.

    Every part is the tracker's, made in ``Tracker.__init__``.
    """

    clock: Clock
    _closed: bool
    _device_count: int
    _ledger: Ledger
    _reader: DeviceReader
    _sampler: Sampler | None
    _faults: FaultLog
    _emitter: Emitter
    # The ledger's queues of recorded ends (the same objects for its life).
    _recorded: deque[tuple[TaskRecord, float, object]]
    _finished: deque[tuple[TaskRecord, object]]
    # The seed's setOnTaskStartCallback / setOnTaskEndCallback.
    _start_listeners: tuple[Listener, ...]
    _end_listeners: tuple[Listener, ...]

    def _start_task(self, spec: _task.gpu_task, activate: bool) -> TaskHandle:
        # TaskPath is only ever the Tracker's base; no cast() call on the task path.
        handle = TaskHandle(self, spec)  # type: ignore[arg-type]
        if (_gcsafe.collecting and _gcsafe.in_collection()) or self._ledger.held_here():
            # Started by a finaliser (a generator's ``finally`` that the
            # collector runs, or that a reference dropped under the ledger
            # lock runs): counted if it can be, no span, context or listener.
            self._start_in_collection(handle, spec)
            return handle
        try:
            first = self._ledger.begin(handle, spec.service)
        except Exception as exc:  # noqa: BLE001 - instrumentation never breaks the job
            self._faults.report("task start", exc)
            unrecorded(handle)
            first = 0
        if first and (
            (first == WOKE and self._reader.resume is not None)
            or (self._sampler is not None and self._sampler.parked)
        ):
            self._first_task_began(first)
        if self._finished:
            self._emit_finished()
        self._emitter.task_started(handle, activate)
        if self._start_listeners:
            self._notify(self._start_listeners, handle, "on_task_start")
        return handle

    def _first_task_began(self, first: int) -> None:
        """No other task runs: refresh baselines after an idle spell, wake a parked sampler."""
        if self._closed:
            return
        resume = self._reader.resume
        if first == WOKE and resume is not None:
            # Fresh baselines (NVML's energy counter) after an idle spell: one
            # driver call per idle spell, never per task.
            try:
                resume()
            except Exception as exc:  # noqa: BLE001 - a driver fault is a reported status
                self._faults.report("resume", exc)
        # The one cross-thread wake: the first task after the sampler parked.
        sampler = self._sampler
        if sampler is not None and sampler.parked:
            try:
                sampler.wake()
            except Exception as exc:  # noqa: BLE001 - e.g. no thread can be started
                self._faults.report("sampler", exc)

    def _start_in_collection(self, handle: TaskHandle, spec: _task.gpu_task) -> None:
        if self._ledger.held_here():
            unrecorded(handle)  # waiting for the lock would wait for this very thread
            return
        try:
            first = self._ledger.begin(handle, spec.service)
            sampler = self._sampler
            if first and sampler is not None and sampler.parked and not self._closed:
                sampler.wake_from_collection()  # its ticks finish the recorded end
        except Exception:  # noqa: BLE001 - no logging inside a collection
            unrecorded(handle)

    def _end_task(self, handle: TaskHandle, exc: BaseException | None) -> None:
        ledger = self._ledger
        if (_gcsafe.collecting and _gcsafe.in_collection()) or ledger.held_here():
            self._defer_end(handle, exc)
            return
        try:
            end = self.clock()
        except Exception as fault:  # noqa: BLE001 - the task must end all the same
            self._faults.report("clock", fault)
            end = -math.inf  # the ledger moves it up to its newest known instant
        try:
            if not self._device_count:
                ended = ledger.end_unmeasured(handle, end)
            elif (
                end < ledger.channels.fresh_until and not self._closed
            ) or handle._generation != ledger.generation:  # begun before a fork
                ended = ledger.end(handle, end, None)  # nothing new can have been sampled
            else:
                reader = self._reader
                reads = reader.read_all(ledger.channels.read_plan())
                # The last task's end sets the settle deadline; the sampler,
                # awake while tasks ran, finds it at its next tick (no wake).
                ended = ledger.end(handle, end, reads, reader.timing())
            if not ended:
                return  # ended before (TaskHandle.end() twice): emitted then
        except Exception as fault:  # noqa: BLE001 - instrumentation never breaks the job
            self._faults.report("task end", fault)
        if self._finished:
            self._emit_finished()  # ends recorded earlier come first
        if exc is not None and isinstance(exc, Exception):
            handle.error = exc
        emitter = self._emitter
        if handle._otel is not None or emitter.histogram is not None:
            emitter.task_ended(handle, exc)  # a span to end, or a duration to record
        if self._end_listeners:
            self._notify(self._end_listeners, handle, "on_task_end")

    def _defer_end(self, handle: TaskHandle, exc: BaseException | None) -> None:
        """Record an end that cannot finish here, without a lock, a context change or a log.

        Here means inside a garbage collection, or on a thread that holds the
        ledger lock (a finaliser run by a reference dropped under it). The end
        time is taken now. The ledger applies it, in order, before any later
        event (:attr:`Ledger.recorded`); the next task event, ``stats()``,
        ``poll()`` (the sampler's ticks) or ``close()`` then emits it from a
        safe place (:meth:`_emit_finished`): same figures, span end time,
        metrics and listeners as an ordinary end, without the exit read.
        """
        try:
            end = self.clock()
        except Exception:  # noqa: BLE001 - no logging here; the ledger orders it
            end = -math.inf
        # deque.append is atomic and takes no lock.
        self._recorded.append((handle, end, (exc, time.time_ns())))

    def _emit_finished(self) -> None:
        """Span, metrics and listeners of recorded ends the ledger has applied."""
        if (_gcsafe.collecting and _gcsafe.in_collection()) or self._ledger.held_here():
            return
        finished = self._finished
        while finished:
            try:
                record, payload = finished.popleft()
            except IndexError:  # pragma: no cover - another thread took the last one
                return
            handle = cast("TaskHandle", record)
            exc, end_ns = cast("tuple[BaseException | None, int]", payload)
            if exc is not None and isinstance(exc, Exception):
                handle.error = exc
            self._emitter.task_ended(handle, exc, end_ns)
            if self._end_listeners:
                self._notify(self._end_listeners, handle, "on_task_end")

    def _notify(self, listeners: tuple[Listener, ...], handle: TaskHandle, kind: str) -> None:
        for listener in listeners:
            try:
                listener(handle)
            except Exception as exc:  # noqa: BLE001 - a listener must never break the task
                self._faults.report(kind, exc, listener)

    def _activate(self, handle: TaskHandle) -> object:
        """Make a task's span current (decorated generators, around each resume)."""
        return self._emitter.activate(handle)

    def _deactivate(self, token: object) -> None:
        """Undo :meth:`_activate`."""
        self._emitter.deactivate(token)
