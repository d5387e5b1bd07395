"""The tracker: one backend session, one ledger, one sampler, one emitter."""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast, overload

from gputime import _gcsafe
from gputime._backends import (
    Attribution,
    Backend,
    BackendUnavailable,
    Clock,
    DeviceInfo,
    DeviceSelector,
    NoGpu,
    resolve_backend,
    warn_auto_fallback,
)
from gputime._ledger import WOKE, Figures, Ledger, ReadOutcome, ServiceStats, Status, TaskRecord
from gputime._otel import Emitter
from gputime._sampler import Sampler

if TYPE_CHECKING:
    from types import TracebackType

    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider

    from gputime import _task

_logger = logging.getLogger("gputime")

ATTRIBUTIONS: tuple[Attribution, ...] = ("device", "split", "process")

Listener = Callable[["TaskHandle"], object]
ListenerT = TypeVar("ListenerT", bound=Listener)


class TrackerClosedError(RuntimeError):
    """The read outcome of a task that ended after its tracker was closed."""


class TaskHandle(TaskRecord):
    """One running or finished task, as bound by ``with gpu_task(...) as task``.

    Figures are live while the task runs (real samples so far) and final once
    it ended (including the stretch after the newest sample, see the spec).
    The handle is also the ledger's record of the task: one object per task.
    """

    __slots__ = ("_cm_token", "_otel", "_spec", "_tracker", "error", "service")

    _cm_token: object  # set by gpu_task.__enter__ only: one store fewer per call

    def __init__(self, tracker: Tracker, spec: _task.gpu_task) -> None:
        self._values = None
        self._done = False
        self.end_time: float | None = None
        self._final = None
        self._tracker = tracker
        self._spec = spec
        self._otel: object = None
        #: The service this task belongs to.
        self.service: str = spec.service
        #: The exception the task raised (``None`` if it returned or was cancelled).
        self.error: BaseException | None = None

    @property
    def name(self) -> str:
        """The span name: ``gpu_task {service}`` unless ``name=`` was given."""
        name = self._spec.name
        return name if name is not None else f"gpu_task {self.service}"

    @property
    def span(self) -> bool:
        """Whether this task makes its own span."""
        return self._spec.span

    @property
    def attributes(self) -> dict[str, Any] | None:
        """Extra span attributes given to ``gpu_task``."""
        return self._spec.attributes

    @property
    def tracker(self) -> Tracker:
        """The tracker that measures this task."""
        return self._tracker

    @property
    def running(self) -> bool:
        """True until the task ended."""
        return self.end_time is None

    @property
    def duration(self) -> float:
        """Seconds on the tracker's clock, so far if still running."""
        end = self.end_time
        if end is None:
            try:
                end = self._tracker.clock()
            except Exception:  # noqa: BLE001 - a failing clock must not break the job
                return 0.0
        duration = end - self.start_time
        return duration if duration > 0.0 else 0.0  # also 0 for a start the clock failed

    @property
    def figures(self) -> Figures:
        """All GPU figures at once, consistent with each other."""
        return self._tracker._ledger.figures(self)

    @property
    def gpu_ms(self) -> float:
        """GPU-busy milliseconds inside the task window, summed over devices."""
        return self.figures.gpu_ms

    @property
    def gpu_util_ms(self) -> float:
        """Utilisation-weighted GPU milliseconds inside the task window."""
        return self.figures.gpu_util_ms

    @property
    def energy_mj(self) -> float | None:
        """Energy in millijoules during the task; ``None`` where not measured."""
        return self.figures.energy_mj

    @property
    def status(self) -> Status:
        """``ok``, ``partial`` or ``unavailable``: live while running, final afterwards."""
        return self.figures.status

    @property
    def coverage(self) -> float:
        """Fraction of the task window (times devices) for which readings arrived."""
        return self.figures.coverage

    def __repr__(self) -> str:
        f = self.figures
        state = "running" if self.running else "ended"
        return (
            f"<TaskHandle {self.service!r} {state} gpu_ms={f.gpu_ms:.1f} "
            f"gpu_util_ms={f.gpu_util_ms:.1f} status={f.status}>"
        )


class Tracker:
    """Measures GPU time per service for the tasks run through it.

    Args:
        backend: ``"auto"`` (NVML if it starts, else ``"none"`` with one
            warning), ``"nvml"``, ``"none"``, or a backend object such as
            :class:`gputime.testing.SimulatedGpu`.
        interval: Seconds between sampler ticks while tasks run.
        threshold: Utilisation percent at or below which a sample counts as idle.
        attribution: ``"device"``, ``"split"`` or ``"process"`` (see the spec).
        devices: Device indices or ids to track; ``None`` for all this process may use.
        clock: Monotonic seconds; ``None`` takes the backend's clock if it has
            one (a ``SimulatedGpu``), else ``time.monotonic``.
        threaded: False runs no thread: only :meth:`poll` and task exits sample.
        tracer_provider: OpenTelemetry tracer provider; the global one if ``None``.
        meter_provider: OpenTelemetry meter provider; the global one if ``None``.

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
    ) -> None:
        self._closed = True  # until construction succeeds, close() has nothing to do
        interval = _check_number("interval", interval)
        if interval <= 0:
            raise ValueError(f"interval={interval!r}: must be a finite number > 0")
        threshold = _check_number("threshold", threshold)
        if not 0 <= threshold < 100:
            raise ValueError(f"threshold={threshold!r}: must be in [0, 100)")
        if attribution not in ATTRIBUTIONS:
            raise ValueError(
                f"attribution={attribution!r}: must be one of {', '.join(map(repr, ATTRIBUTIONS))}"
            )
        if devices is not None and (
            isinstance(devices, (str, bytes)) or not isinstance(devices, Sequence)
        ):
            raise ValueError(f"devices={devices!r}: must be None or a list of indices or ids")
        if clock is not None and not callable(clock):
            raise ValueError(f"clock={clock!r}: must be a callable returning seconds")
        resolved = resolve_backend(backend)
        if clock is None:
            backend_clock = getattr(resolved, "clock", None)
            clock = backend_clock if callable(backend_clock) else time.monotonic
        self.clock: Clock = clock
        self.interval: float = interval
        self.threshold: float = threshold
        self.attribution: Attribution = attribution
        self.threaded: bool = bool(threaded)
        try:
            session = resolved.open(clock=clock, devices=devices, attribution=attribution)
        except BackendUnavailable as exc:
            if backend != "auto":
                raise
            warn_auto_fallback(str(exc))
            resolved = NoGpu(reason=str(exc))
            session = resolved.open(clock=clock, devices=devices, attribution=attribution)
        self.backend = resolved
        self._session = session
        self._resume: Callable[[], object] | None = getattr(session, "resume", None)
        # Optional background work of the session's (NVML: when energy counters step).
        due, calibrate = (
            getattr(session, "calibration_due", None),
            getattr(session, "calibrate", None),
        )
        self._calibration: tuple[Callable[[float], bool], Callable[[], object]] | None = (
            (due, calibrate) if callable(due) and callable(calibrate) else None
        )
        # Devices that cannot report utilisation (MIG) are never read; the
        # ledger counts them as missing, so figures read partial, never idle.
        self._read_index = tuple(
            i
            for i, device in enumerate(session.devices)
            if device.details.get("utilization", True) is not False
        )
        self._device_count = len(self._read_index) if session.measures_utilization else 0
        self._ledger = Ledger(
            devices=self._device_count,
            unmeasured=len(session.devices) - self._device_count,
            measures_utilization=self._session.measures_utilization,
            measures_energy=self._session.measures_energy,
            sample_period=self._session.sample_period,
            sample_jitter=self._sample_jitter(),
            attribution=attribution,
            threshold=threshold,
            clock=clock,
        )
        # The ledger's queues of recorded ends (the same objects for its life).
        self._recorded = self._ledger.recorded
        self._finished = self._ledger.finished
        self._start_listeners: tuple[Listener, ...] = ()
        self._end_listeners: tuple[Listener, ...] = ()
        self._faults_logged: set[tuple[str, type[BaseException]]] = set()
        self._faults_lock = threading.Lock()
        # A tracker that reads no device has nothing to sample: no thread at all.
        self._sampler = (
            Sampler(self, interval=interval, name=f"gputime-sampler-{id(self):x}")
            if self.threaded and self._device_count
            else None
        )
        self._emitter = Emitter(self, tracer_provider, meter_provider)
        self._closed = False
        _register_for_fork(self)

    # -- public API --------------------------------------------------------------------

    @property
    def devices(self) -> Sequence[DeviceInfo]:
        """The tracked devices."""
        return self._session.devices

    @property
    def device_ids(self) -> tuple[str, ...]:
        """Ids of the tracked devices (NVML UUIDs; simulated ids otherwise)."""
        return tuple(device.id for device in self._session.devices)

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
            _check_service(service)
        stats = self._ledger.stats(service)  # applies recorded ends first
        if self._finished:
            self._emit_finished()
        return stats if service is None else stats[service]

    def reset(self, service: str | None = None) -> None:
        """Zero one service's figures (or all); running tasks go on counting from now."""
        if service is not None:
            _check_service(service)
        self._emitter.reset(service, self._ledger.reset)

    def poll(self) -> None:
        """One sampling tick now, on the caller's thread.

        Reads nothing when no task runs and every window is settled (rule 1).
        """
        ledger = self._ledger
        ledger.apply_recorded()
        if self._finished:
            self._emit_finished()
        if self._closed or not self._device_count or not ledger.wants_reading():
            return
        reads = self._read_all()
        ledger.ingest(reads, self._timing())

    def on_task_start(self, listener: ListenerT) -> ListenerT:
        """Call ``listener(task)`` when a task starts; usable as a decorator."""
        self._start_listeners = (*self._start_listeners, _check_listener(listener))
        return listener

    def on_task_end(self, listener: ListenerT) -> ListenerT:
        """Call ``listener(task)`` when a task ends (figures final); usable as a decorator."""
        self._end_listeners = (*self._end_listeners, _check_listener(listener))
        return listener

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
        if self._sampler is not None:
            self._sampler.close()
        try:
            self._session.close()
        except Exception as exc:  # noqa: BLE001 - a driver fault must not escape close()
            self._report_fault("close", exc)

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
            self._report_fault("task start", exc)
            _unrecorded(handle)
            first = 0
        if first and (
            (first == WOKE and self._resume is not None)
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
        if first == WOKE and self._resume is not None:
            # Fresh baselines (NVML's energy counter) after an idle spell: one
            # driver call per idle spell, never per task.
            try:
                self._resume()
            except Exception as exc:  # noqa: BLE001 - a driver fault is a reported status
                self._report_fault("resume", exc)
        # The one cross-thread wake: the first task after the sampler parked.
        sampler = self._sampler
        if sampler is not None and sampler.parked:
            try:
                sampler.wake()
            except Exception as exc:  # noqa: BLE001 - e.g. no thread can be started
                self._report_fault("sampler", exc)

    def _start_in_collection(self, handle: TaskHandle, spec: _task.gpu_task) -> None:
        if self._ledger.held_here():
            _unrecorded(handle)  # waiting for the lock would wait for this very thread
            return
        try:
            first = self._ledger.begin(handle, spec.service)
            sampler = self._sampler
            if first and sampler is not None and sampler.parked and not self._closed:
                sampler.wake_from_collection()  # its ticks finish the recorded end
        except Exception:  # noqa: BLE001 - no logging inside a collection
            _unrecorded(handle)

    def _end_task(self, handle: TaskHandle, exc: BaseException | None) -> None:
        ledger = self._ledger
        if (_gcsafe.collecting and _gcsafe.in_collection()) or ledger.held_here():
            self._defer_end(handle, exc)
            return
        try:
            end = self.clock()
        except Exception as fault:  # noqa: BLE001 - the task must end all the same
            self._report_fault("clock", fault)
            end = -math.inf  # the ledger moves it up to its newest known instant
        try:
            if (
                not self._device_count
                or (end < ledger.fresh_until and not self._closed)
                or handle._generation != ledger.generation  # begun before a fork
            ):
                reads = None  # nothing to read, or nothing new can have been sampled
            else:
                reads = self._read_all()
            # The last task's end sets the settle deadline; the sampler, awake
            # while tasks ran, finds it at its next tick (no wake: see Sampler).
            ledger.end(handle, end, reads, None if reads is None else self._timing())
        except Exception as fault:  # noqa: BLE001 - instrumentation never breaks the job
            self._report_fault("task end", fault)
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

    def _read_all(self) -> list[ReadOutcome]:
        """One read per device, outside the ledger lock; failures become outcomes."""
        if self._closed:
            closed = TrackerClosedError("the tracker was closed while the task ran")
            return [closed] * self._device_count
        read = self._session.read
        index = self._read_index
        reads: list[ReadOutcome] = []
        for channel, since in enumerate(self._ledger.read_plan()):
            try:
                reads.append(read(index[channel], since))
            except Exception as exc:  # noqa: BLE001 - any driver fault is a failed reading
                self._report_fault("read", exc)
                reads.append(exc)
        return reads

    def _timing(self) -> tuple[float, float | None]:
        """The driver's period and jitter as the backend knows them now.

        NVML learns them from the samples it reads, so they are taken after
        each read and applied with it: the exits that follow skip their reads
        by what that read taught.
        """
        return self._session.sample_period, self._sample_jitter()

    def _sample_jitter(self) -> float | None:
        # Backends that know when their next sample can appear say so; the
        # others get no read skipped at task exit.
        jitter = getattr(self._session, "sample_jitter", None)
        return None if jitter is None else float(jitter)

    def _sampling_state(self) -> tuple[bool, float | None, float]:
        """For the sampler thread: tasks running, settle deadline, clock now."""
        ledger = self._ledger
        return ledger.active_tasks > 0, ledger.settle_deadline, self.clock()

    def _settle_done(self, deadline: float) -> None:
        self._ledger.settle_done(deadline)

    def _calibrate_if_due(self) -> None:
        """For the sampler thread, while tasks run: let the session calibrate when it is time.

        NVML watches each energy counter for a few hundred milliseconds once a
        minute to learn when it steps (see ``docs/nvml.md``): work that must
        never land on a task's path, so only the sampler thread does it.
        """
        calibration = self._calibration
        if calibration is None or self._closed:
            return
        due, calibrate = calibration
        try:
            if due(self.clock()):
                calibrate()
        except Exception as exc:  # noqa: BLE001 - a driver fault is a reported status
            self._report_fault("calibrate", exc)

    def _notify(self, listeners: tuple[Listener, ...], handle: TaskHandle, kind: str) -> None:
        for listener in listeners:
            try:
                listener(handle)
            except Exception as exc:  # noqa: BLE001 - a listener must never break the task
                self._report_fault(kind, exc, listener)

    def _report_fault(self, kind: str, exc: BaseException, where: object = None) -> None:
        """Log a fault once per kind and exception type, at WARNING on logger ``gputime``."""
        key = (kind, type(exc))
        with self._faults_lock:
            if key in self._faults_logged:
                return
            self._faults_logged.add(key)
        _logger.warning(
            "gputime: %s failed%s: %r (further %s faults of this type are not logged)",
            kind,
            f" in {where!r}" if where is not None else "",
            exc,
            kind,
            exc_info=exc if kind not in ("read",) else None,
        )

    def _after_fork_in_child(self) -> None:
        self._ledger.clear_after_fork()
        self._emitter._after_fork_in_child()
        if self._sampler is not None:
            self._sampler.after_fork()
        self._faults_lock = threading.Lock()
        self._faults_logged = set()  # the child logs its own faults
        if not self._closed:
            try:
                self._session.after_fork()
            except Exception as exc:  # noqa: BLE001 - the child must start even without a GPU
                self._report_fault("after_fork", exc)


def _unrecorded(handle: TaskHandle) -> None:
    """A handle the ledger never opened: its end changes nothing, its figures read partial."""
    handle._generation = -1
    handle._fail_epoch = 0
    handle.start_time = math.nan
    handle.concurrency = 0


def _check_number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name}={value!r}: must be a finite number")
    return float(value)


def _check_service(service: object) -> str:
    if not isinstance(service, str):
        raise TypeError(f"service must be a string, not {type(service).__name__}: {service!r}")
    if not service.strip():
        raise ValueError(f"service={service!r}: must not be empty or blank")
    return service


def _check_listener(listener: object) -> Listener:
    if not callable(listener):
        raise TypeError(f"listener must be callable, not {type(listener).__name__}")
    return listener


_fork_registry: weakref.WeakSet[Tracker] = weakref.WeakSet()
_fork_hook_installed = False


def _register_for_fork(tracker: Tracker) -> None:
    # One process-wide hook over a weak set: a tracker that is garbage collected
    # needs no re-initialisation and must not be kept alive by the hook.
    global _fork_hook_installed
    _fork_registry.add(tracker)
    if not _fork_hook_installed and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_reinit_trackers_in_child)
        _fork_hook_installed = True


def _reinit_trackers_in_child() -> None:
    for tracker in list(_fork_registry):
        tracker._after_fork_in_child()
