"""The tracker: one backend session, one ledger, one sampler, one emitter.

Data flows one way: the backend's readings (:mod:`gputime._reads`) go into the
ledger (:mod:`gputime._ledger`), whose figures come out as task handles,
``stats()``, spans (:mod:`gputime._emitter`) and metrics (:mod:`gputime._metrics`).
The tracker wires them and runs the task path: it is the only module that
knows them all.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast, overload

from gputime import _exit, _fork, _gcsafe, _metrics, _validate
from gputime._backends import Backend, DeviceInfo, open_backend
from gputime._emitter import Emitter
from gputime._faults import FaultLog
from gputime._figures import ServiceStats
from gputime._handle import TaskHandle, unrecorded
from gputime._ledger import WOKE, Ledger
from gputime._reads import DeviceReader
from gputime._sampler import Sampler
from gputime._timeline import DEFAULT_MAX_SAMPLES, DEFAULT_MAX_TASKS, Timeline, hooks
from gputime._types import Attribution, Clock, DeviceSelector

if TYPE_CHECKING:
    from types import TracebackType

    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider

    from gputime import _task
    from gputime._channels import SampleSink

Listener = Callable[[TaskHandle], object]
ListenerT = TypeVar("ListenerT", bound=Listener)


class Tracker:
    """Measures GPU time per service for the tasks run through it.

    Args:
        backend: ``"auto"`` (NVML if it starts, else ``"none"`` with one
            warning), ``"nvml"``, ``"none"``, or a backend object such as
            :class:`gputime.testing.SimulatedGpu`.
        interval: Seconds between sampler ticks while tasks run.
        threshold: Utilisation percent at or below which a sample counts as idle.
        attribution: ``"device"``, ``"split"`` or ``"process"`` (docs/semantics.md).
        devices: Device indices or ids to track; ``None`` for all this process may use.
        clock: Monotonic seconds; ``None`` takes the backend's clock if it has
            one (a ``SimulatedGpu``), else ``time.monotonic``.
        threaded: False runs no thread: only :meth:`poll` and task exits sample.
        tracer_provider: OpenTelemetry tracer provider; the global one if ``None``.
        meter_provider: OpenTelemetry meter provider; the global one if ``None``.
        metrics_per_device: Report the GPU time and energy counters per device
            (attribute ``hw.id``: the device id) instead of summed over devices,
            to join them with DCGM's series; off by default (one series per
            service and device).
        timeline: Record a :class:`~gputime.Timeline` of task windows and
            device readings: ``True`` for one with the default bounds, or a
            ``Timeline`` to record into (other bounds). Off by default, and
            then it costs nothing. See :meth:`record_timeline`.

    Raises:
        ValueError: A bad argument; the message names it and its value.
        gputime.BackendUnavailable: ``backend="nvml"`` where NVML cannot start.
    """

    def __init__(
        self,
        backend: str | Backend = "auto",
        *,
        interval: float = 0.5,
        threshold: float = 0.0,
        attribution: Attribution = "device",
        devices: Sequence[DeviceSelector] | None = None,
        clock: Clock | None = None,
        threaded: bool = True,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        metrics_per_device: bool = False,
        timeline: bool | Timeline = False,
    ) -> None:
        self._closed = True  # until construction succeeds, close() has nothing to do
        if not isinstance(timeline, (bool, Timeline)):
            raise ValueError(f"timeline={timeline!r}: must be True, False or a gputime.Timeline")
        if isinstance(timeline, Timeline) and timeline._taken():
            # Before the backend opens: nothing to release.
            raise ValueError(
                "timeline: this Timeline records another tracker; make one per tracker"
            )
        # Declared apart: a tuple assignment carries no annotation, and the
        # public attributes' types must not be left to inference.
        self.interval: float
        self.threshold: float
        self.attribution: Attribution
        self.interval, self.threshold, self.attribution = _validate.tracker_options(
            interval, threshold, attribution, devices, clock
        )
        self.threaded: bool = bool(threaded)
        self.backend: Backend
        self.clock: Clock
        self.backend, session, self.clock = open_backend(
            backend, clock=clock, devices=devices, attribution=self.attribution
        )
        self._faults = FaultLog()
        self._reader = reader = DeviceReader(session, self._faults)
        self._device_count = reader.count
        period, jitter = reader.timing()
        self._ledger = Ledger(
            devices=reader.count,
            unmeasured=reader.unmeasured,
            layout=reader.layout,
            measures_utilization=session.measures_utilization,
            measures_energy=session.measures_energy,
            sample_period=period,
            sample_jitter=jitter,
            attribution=self.attribution,
            threshold=self.threshold,
            clock=self.clock,
        )
        # The ledger's queues of recorded ends (the same objects for its life).
        self._recorded = self._ledger.recorded
        self._finished = self._ledger.finished
        # The seed's setOnTaskStartCallback / setOnTaskEndCallback.
        self._start_listeners: tuple[Listener, ...] = ()
        self._end_listeners: tuple[Listener, ...] = ()
        # A tracker that reads no device has nothing to sample: no thread at all.
        self._sampler = (
            Sampler(self, interval=self.interval, name=f"gputime-sampler-{id(self):x}")
            if self.threaded and reader.count
            else None
        )
        try:
            # The ledger's own stats, not ours: they may finish deferred ends,
            # which call into the SDK, and totals are read inside its collection.
            self._member, metrics_pending = _metrics.join(
                meter_provider, self._ledger.stats, self._faults, bool(metrics_per_device)
            )
        except Exception as exc:  # noqa: BLE001 - a broken SDK must not break Tracker()
            self._faults.report("otel.meter", exc)
            self._member, metrics_pending = None, False
        self._emitter = Emitter(
            self.device_ids, self._faults, self._member, metrics_pending, tracer_provider
        )
        self._timeline: Timeline | None = None
        # The timeline's listeners and sink as installed, removed by identity.
        self._timeline_hooks: tuple[Listener, Listener, SampleSink] | None = None
        if timeline is not False:
            self._attach_timeline(timeline if isinstance(timeline, Timeline) else Timeline())
        self._closed = False
        _fork.register(self)
        _exit.install(self)  # tasks still open at interpreter exit end before teardown

    # -- public API --------------------------------------------------------------------

    @property
    def devices(self) -> Sequence[DeviceInfo]:
        """The tracked devices."""
        return self._reader.devices

    @property
    def device_ids(self) -> tuple[str, ...]:
        """Ids of the tracked devices (NVML UUIDs; simulated ids otherwise)."""
        return tuple(device.id for device in self._reader.devices)

    @property
    def sampler_running(self) -> bool:
        """Whether the background sampler is reading (not parked, not stopped)."""
        ledger = self._ledger
        sampler = self._sampler
        return (
            sampler is not None
            and sampler.alive
            and (ledger.active_tasks > 0 or ledger.settle_deadline is not None)
        )

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def gpu_task(
        self,
        service: str,
        *,
        name: str | None = None,
        span: bool = True,
        attributes: Mapping[str, Any] | None = None,
    ) -> _task.gpu_task:
        """``gpu_task(service, name=..., span=..., attributes=..., tracker=self)``."""
        from gputime._task import gpu_task  # noqa: PLC0415 - _task imports this module

        return gpu_task(service, name=name, span=span, attributes=attributes, tracker=self)

    def start_task(
        self,
        service: str,
        *,
        name: str | None = None,
        span: bool = True,
        attributes: Mapping[str, Any] | None = None,
    ) -> TaskHandle:
        """Start a task now and return its handle; ``handle.end()`` ends it.

        For runners that call back on start and on finish (job queues, Celery
        signals, framework hooks): the same figures, span, metrics and
        listeners as ``gpu_task``. The span is not made current (a callback
        returns before the work runs), unless the handle is used as ``with
        tracker.start_task(...) as task:``.

        Raises:
            TypeError, ValueError: A bad argument, as for ``gpu_task``.
        """
        from gputime._task import gpu_task  # noqa: PLC0415 - _task imports this module

        spec = gpu_task(service, name=name, span=span, attributes=attributes, tracker=self)
        return self._start_task(spec, False)

    @overload
    def stats(self) -> dict[str, ServiceStats]: ...

    @overload
    def stats(self, service: str) -> ServiceStats: ...

    def stats(self, service: str | None = None) -> dict[str, ServiceStats] | ServiceStats:
        """Per-service figures.

        Returns:
            With no argument, ``dict[str, ServiceStats]`` of every service seen;
            with a service name, that service's :class:`ServiceStats` (zeros
            for a service never seen).
        """
        if service is not None:
            _validate.service(service)
        stats = self._ledger.stats(service)  # applies recorded ends first
        if self._finished:
            self._emit_finished()
        return stats if service is None else stats[service]

    def reset(self, service: str | None = None) -> None:
        """Zero one service's figures (or all); running tasks go on counting from now."""
        if service is not None:
            _validate.service(service)
        if self._member is not None:
            self._member.reset(service, self._ledger.reset)  # counters stay monotonic
        else:
            self._ledger.reset(service)

    def poll(self) -> None:
        """One sampling tick now, on the caller's thread.

        Reads nothing when no task runs and every window is settled.
        """
        ledger = self._ledger
        ledger.apply_recorded()
        if self._finished:
            self._emit_finished()
        if self._closed or not self._device_count or not ledger.wants_reading():
            return
        reader = self._reader
        reads = reader.read_all(ledger.read_plan())
        ledger.ingest(reads, reader.timing())

    def on_task_start(self, listener: ListenerT) -> ListenerT:
        """Call ``listener(task)`` when a task starts; usable as a decorator."""
        self._start_listeners = (*self._start_listeners, _validate.callable_("listener", listener))
        return listener

    def on_task_end(self, listener: ListenerT) -> ListenerT:
        """Call ``listener(task)`` when a task ends (figures final); usable as a decorator."""
        self._end_listeners = (*self._end_listeners, _validate.callable_("listener", listener))
        return listener

    def _adopt_listeners(self, old: Tracker) -> None:
        """Take over ``old``'s listeners, ahead of any of our own (``configure()``).

        Not those that feed ``old``'s timeline: a timeline is one tracker's.
        """
        hooks = old._timeline_hooks or ()
        starts = tuple(f for f in old._start_listeners if f not in hooks)
        ends = tuple(f for f in old._end_listeners if f not in hooks)
        self._start_listeners = _merged(starts, self._start_listeners)
        self._end_listeners = _merged(ends, self._end_listeners)

    @property
    def timeline(self) -> Timeline | None:
        """The :class:`~gputime.Timeline` being recorded, ``None`` when off (the default)."""
        return self._timeline

    def record_timeline(
        self,
        *,
        max_tasks: int = DEFAULT_MAX_TASKS,
        max_samples: int = DEFAULT_MAX_SAMPLES,
    ) -> Timeline:
        """Start recording a timeline now, and return it; the one recording, if any.

        For a tracker made without ``timeline=`` (the default tracker:
        ``gputime.get_tracker().record_timeline()``). Tasks that began before
        are recorded when they end. The bounds apply to a new timeline only:
        where one is being recorded, it is returned as it is.

        Args:
            max_tasks: Task windows kept (a ring: the oldest go first).
            max_samples: Device readings kept, likewise.

        Raises:
            ValueError: A bound that is not a positive integer.
        """
        current = self._timeline
        if current is not None:
            return current
        timeline = Timeline(max_tasks=max_tasks, max_samples=max_samples)
        self._attach_timeline(timeline)
        return timeline

    def stop_timeline(self) -> Timeline | None:
        """Stop recording; returns the timeline (still readable), ``None`` if none was on.

        A task running now is not recorded when it ends (nor shown as running).
        """
        timeline, installed = self._timeline, self._timeline_hooks
        if timeline is None or installed is None:
            return None
        started, ended, _ = installed
        self._ledger.channels.on_sample = None
        self._start_listeners = tuple(f for f in self._start_listeners if f is not started)
        self._end_listeners = tuple(f for f in self._end_listeners if f is not ended)
        self._timeline = None
        self._timeline_hooks = None
        timeline._unbind()
        return timeline

    def close(self) -> None:
        """Stop the sampler and release the backend. Idempotent.

        Tasks still running keep being counted; their figures then lack the
        readings a closed tracker no longer makes (status ``partial``).
        """
        if self._closed:
            return
        self._ledger.apply_recorded()
        if self._finished:
            self._emit_finished()
        self._closed = True
        self._reader.closed = True
        if self._sampler is not None:
            self._sampler.close()
        self._reader.close()

    def __enter__(self) -> Tracker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<Tracker backend={self.backend.name!r} devices={list(self.device_ids)!r} "
            f"attribution={self.attribution!r}{' closed' if self._closed else ''}>"
        )

    def _attach_timeline(self, timeline: Timeline) -> None:
        """Feed ``timeline``: task listeners (run outside every lock) and the sample sink.

        Nothing is added to the task path: the listener tuples are checked
        there already, and the channels check their sink per credited reading.
        """
        timeline._bind(self, self._reader.measured, self._ledger.profile, self.clock, self._faults)
        installed = self._timeline_hooks = hooks(timeline)
        started, ended, sink = installed
        self._timeline = timeline
        self._start_listeners = (started, *self._start_listeners)
        self._end_listeners = (ended, *self._end_listeners)
        self._ledger.channels.on_sample = sink

    # -- the task path -----------------------------------------------------------------

    def _start_task(self, spec: _task.gpu_task, activate: bool) -> TaskHandle:
        handle = TaskHandle(self, spec)
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
            if (
                not self._device_count
                or (end < ledger.channels.fresh_until and not self._closed)
                or handle._generation != ledger.generation  # begun before a fork
            ):
                ended = ledger.end(handle, end, None)  # nothing new can have been sampled
            else:
                reader = self._reader
                reads = reader.read_all(ledger.read_plan())
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

    # -- what the sampler thread and gpu_task ask -----------------------------------------

    def _sampling_state(self) -> tuple[bool, float | None, float]:
        """For the sampler thread: tasks running, settle deadline, clock now."""
        ledger = self._ledger
        return ledger.active_tasks > 0, ledger.settle_deadline, self.clock()

    def _settle_done(self, deadline: float) -> None:
        self._ledger.settle_done(deadline)

    def _calibrate_if_due(self) -> None:
        """For the sampler thread, while tasks run: the session's background work."""
        if not self._closed:
            self._reader.calibrate_if_due(self.clock())

    def _report_fault(self, kind: str, exc: BaseException, where: object = None) -> None:
        """Log a fault once per kind and exception type (the sampler thread's)."""
        self._faults.report(kind, exc, where)

    def _activate(self, handle: TaskHandle) -> object:
        """Make a task's span current (decorated generators, around each resume)."""
        return self._emitter.activate(handle)

    def _deactivate(self, token: object) -> None:
        """Undo :meth:`_activate`."""
        self._emitter.deactivate(token)

    def _after_fork_in_child(self) -> None:
        self._ledger.clear_after_fork()
        timeline, installed = self._timeline, self._timeline_hooks
        if timeline is not None and installed is not None:
            timeline._after_fork_in_child()  # the child's timeline starts empty
            self._ledger.channels.on_sample = installed[2]  # the child's channels are new
        if self._member is not None:
            self._member._after_fork_in_child()
        if self._sampler is not None:
            self._sampler.after_fork()
        self._faults._after_fork_in_child()  # the child logs its own faults
        self._reader.after_fork()


def _merged(first: tuple[Listener, ...], then: tuple[Listener, ...]) -> tuple[Listener, ...]:
    """``first`` then ``then``, each listener once."""
    return (*first, *(listener for listener in then if listener not in first))
