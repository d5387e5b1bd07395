"""The tracker: one backend session, one ledger, one sampler, one emitter."""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, overload

from gputime._backends import (
    Attribution,
    Backend,
    Clock,
    DeviceInfo,
    DeviceSelector,
    resolve_backend,
)
from gputime._ledger import Figures, Ledger, ReadOutcome, ServiceStats, Status, TaskRecord
from gputime._otel import Emitter
from gputime._sampler import Sampler

if TYPE_CHECKING:
    from types import TracebackType

    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider

    from gputime._task import gpu_task

_logger = logging.getLogger("gputime")

ATTRIBUTIONS: tuple[Attribution, ...] = ("device", "split", "process")

Listener = Callable[["TaskHandle"], object]
ListenerT = TypeVar("ListenerT", bound=Listener)


class TrackerClosedError(RuntimeError):
    """The read outcome of a task that ended after its tracker was closed."""


class TaskHandle:
    """One running or finished task, as bound by ``with gpu_task(...) as task``.

    Figures are live while the task runs (real samples so far) and final once
    it ended (including the stretch after the newest sample, see the spec).
    """

    __slots__ = (
        "_cm_token",
        "_otel",
        "_record",
        "_tracker",
        "attributes",
        "end_time",
        "error",
        "name",
        "service",
        "span",
        "start_time",
    )

    def __init__(
        self,
        tracker: Tracker,
        record: TaskRecord,
        service: str,
        name: str | None,
        span: bool,
        attributes: dict[str, Any] | None,
    ) -> None:
        self._tracker = tracker
        self._record = record
        self._cm_token: object = None
        self._otel: object = None
        #: The service this task belongs to.
        self.service = service
        #: The span name (``gpu_task {service}`` unless ``name=`` was given).
        self.name = name if name is not None else f"gpu_task {service}"
        #: Whether this task makes its own span.
        self.span = span
        #: Extra span attributes given to ``gpu_task``.
        self.attributes = attributes
        #: Tracker clock when the task began.
        self.start_time = record.start
        #: Tracker clock when the task ended; ``None`` while it runs.
        self.end_time: float | None = None
        #: The exception the task raised (``None`` if it returned or was cancelled).
        self.error: BaseException | None = None

    @property
    def tracker(self) -> Tracker:
        """The tracker that measures this task."""
        return self._tracker

    @property
    def running(self) -> bool:
        """True until the task ended."""
        return self.end_time is None

    @property
    def concurrency(self) -> int:
        """Running tasks of this service when this one began, itself included."""
        return self._record.concurrency

    @property
    def duration(self) -> float:
        """Seconds on the tracker's clock, so far if still running."""
        end = self.end_time if self.end_time is not None else self._tracker.clock()
        return max(0.0, end - self.start_time)

    @property
    def figures(self) -> Figures:
        """All GPU figures at once, consistent with each other."""
        return self._tracker._ledger.figures(self._record)

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
        self.interval = interval
        self.threshold = threshold
        self.attribution: Attribution = attribution
        self.threaded = bool(threaded)
        self.backend = resolved
        self._session = resolved.open(clock=clock, devices=devices, attribution=attribution)
        self._device_count = len(self._session.devices)
        self._ledger = Ledger(
            devices=self._device_count,
            measures_utilization=self._session.measures_utilization,
            measures_energy=self._session.measures_energy,
            sample_period=self._session.sample_period,
            attribution=attribution,
            threshold=threshold,
            clock=clock,
        )
        self._start_listeners: tuple[Listener, ...] = ()
        self._end_listeners: tuple[Listener, ...] = ()
        self._faults_logged: set[tuple[str, type[BaseException]]] = set()
        self._faults_lock = threading.Lock()
        self._sampler = Sampler(
            tick=self.poll,
            interval=interval,
            active=lambda: self._ledger.active_tasks > 0,
            seconds_to_settle=self._seconds_to_settle,
            settle_done=self._ledger.settle_done,
            name=f"gputime-sampler-{id(self):x}",
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
        return self._sampler.running

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def gpu_task(self, service: str, **kwargs: Any) -> gpu_task:
        """``gpu_task(service, tracker=self, **kwargs)``."""
        from gputime._task import gpu_task  # noqa: PLC0415 - _task imports this module

        return gpu_task(service, tracker=self, **kwargs)

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
        if service is None:
            return self._ledger.stats()
        _check_service(service)
        return self._ledger.stats(service)[service]

    def reset(self, service: str | None = None) -> None:
        """Zero one service's figures (or all); running tasks go on counting from now."""
        if service is not None:
            _check_service(service)
        self._ledger.reset(service)

    def poll(self) -> None:
        """One sampling tick now, on the caller's thread.

        Reads nothing when no task runs and every window is settled (rule 1).
        """
        if self._closed or not self._device_count or not self._ledger.wants_reading():
            return
        self._ledger.ingest(self._read_all())

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
        self._closed = True
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

    def _start_task(
        self,
        service: str,
        name: str | None,
        span: bool,
        attributes: dict[str, Any] | None,
        activate: bool,
    ) -> TaskHandle:
        record, first = self._ledger.begin(service)
        if first and self.threaded and not self._closed:
            self._sampler.wake()
        handle = TaskHandle(self, record, service, name, span, attributes)
        self._emitter.task_started(handle, activate)
        if self._start_listeners:
            self._notify(self._start_listeners, handle, "on_task_start")
        return handle

    def _end_task(self, handle: TaskHandle, exc: BaseException | None) -> None:
        end = self.clock()
        reads: Sequence[ReadOutcome] = self._read_all() if self._device_count else ()
        self._ledger.end(handle._record, end, reads)
        handle.end_time = handle._record.end if handle._record.end is not None else end
        if isinstance(exc, Exception):
            handle.error = exc
        self._emitter.task_ended(handle, exc)
        if self._end_listeners:
            self._notify(self._end_listeners, handle, "on_task_end")

    def _read_all(self) -> list[ReadOutcome]:
        """One read per device, outside the ledger lock; failures become outcomes."""
        if self._closed:
            closed = TrackerClosedError("the tracker was closed while the task ran")
            return [closed] * self._device_count
        session = self._session
        reads: list[ReadOutcome] = []
        for device, since in enumerate(self._ledger.read_plan()):
            try:
                reads.append(session.read(device, since))
            except Exception as exc:  # noqa: BLE001 - any driver fault is a failed reading
                self._report_fault("read", exc)
                reads.append(exc)
        return reads

    def _seconds_to_settle(self) -> float | None:
        deadline = self._ledger.settle_deadline
        return None if deadline is None else deadline - self.clock()

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
        self._sampler.after_fork()
        self._faults_lock = threading.Lock()
        if not self._closed:
            try:
                self._session.after_fork()
            except Exception as exc:  # noqa: BLE001 - the child must start even without a GPU
                self._report_fault("after_fork", exc)


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
