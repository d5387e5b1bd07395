"""The tracker: one backend session, one ledger, one sampler, one emitter.

Data flows one way: the backend's readings (:mod:`gputime._reads`) go into the
ledger (:mod:`gputime._ledger`), whose figures come out as task handles,
``stats()``, spans (:mod:`gputime._emitter`) and metrics (:mod:`gputime._metrics`).
The tracker wires them and runs the task path: it is the only module that
knows them all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, overload

from gputime import _exit, _fork, _metrics, _validate
from gputime._backends import Backend, DeviceInfo, open_backend
from gputime._emitter import Emitter
from gputime._faults import FaultLog
from gputime._figures import ServiceStats
from gputime._handle import TaskHandle
from gputime._ledger import Ledger
from gputime._listeners import Listeners
from gputime._reads import DeviceReader
from gputime._sampler import Sampler
from gputime._taskpath import TaskPath
from gputime._timeline import Timeline
from gputime._types import Attribution, Clock, DeviceSelector

if TYPE_CHECKING:
    from types import TracebackType

    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider

    from gputime import _task


class Tracker(TaskPath, Listeners):
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
        self._recorded = self._ledger.recorded
        self._finished = self._ledger.finished
        self._start_listeners = ()
        self._end_listeners = ()
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
        self._timeline = None
        self._timeline_hooks = None
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
