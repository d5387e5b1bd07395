"""The OpenTelemetry emitter: a span per task, metrics per service.

Everything here goes through the OpenTelemetry *API* only; whatever SDK and
exporters the application set up (or none) decide where it lands.

The hot path (``task_started`` / ``task_ended``) is built around one question,
answered once and re-checked only when the answer can change: is anybody
listening? With no SDK configured, the tracer and the duration histogram stay
``None`` and a task costs a few attribute reads here (about 60 ns over the two
calls themselves): no span object, no context attach, no attribute dict, no
metric call. While the *global* providers are
still unset, each task also reads one module attribute of the API to notice
the moment an SDK is installed (the global providers can be set only once, so
after that nothing is re-checked).

Metrics read the ledger's service totals from observable instruments, at
collection time, so the GPU time of a long-running task shows as the sampler
ingests it, counted once however many tasks of the service overlap. Counters
must never go down, but ``reset(service)`` zeroes the ledger: each emitter keeps,
per service, an offset that carries what was counted before every reset (see
:meth:`Emitter.reset` and ``docs/opentelemetry.md``).

The instruments of one meter provider are shared by every tracker that uses it
(an SDK meter hands back the first instrument of a name and drops the callbacks
of later ones), so a :class:`_MetricSet` per provider sums the trackers'
figures, caps the number of distinct services, and keeps the contribution of a
tracker that was garbage collected.
"""

from __future__ import annotations

import contextvars
import logging
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, cast

from opentelemetry import context as otel_context
from opentelemetry import trace as otel_trace
from opentelemetry.context import Context
from opentelemetry.trace import NoOpTracer, SpanKind, Status, StatusCode

from gputime._version import __version__

if TYPE_CHECKING:
    from opentelemetry import metrics as otel_metrics
    from opentelemetry.metrics import CallbackOptions, NoOpMeter, Observation
    from opentelemetry.metrics import _internal as _metrics_internal
else:
    # The metrics API costs a quarter of importing gputime, and a process that
    # imports gputime need not make a tracker: bound by _load_metrics_api()
    # when the first emitter is made.
    otel_metrics = _metrics_internal = NoOpMeter = Observation = None


def _load_metrics_api() -> None:
    global otel_metrics, _metrics_internal, NoOpMeter, Observation
    if otel_metrics is None:
        from opentelemetry import metrics  # noqa: PLC0415 - see above

        try:
            # Private: only the fast "is an SDK installed" check reads it (see
            # _UNKNOWN); an API without it takes the public getters instead.
            from opentelemetry.metrics import _internal  # noqa: PLC0415
        except ImportError:
            _internal = None  # getattr(None, name, _UNKNOWN) is _UNKNOWN: the public path
        # mypy sees these names as the classes imported for type checking.
        NoOpMeter, Observation = metrics.NoOpMeter, metrics.Observation  # type: ignore[misc]
        otel_metrics, _metrics_internal = metrics, _internal


if TYPE_CHECKING:
    from opentelemetry.metrics import Histogram, Meter, MeterProvider
    from opentelemetry.trace import Span, Tracer, TracerProvider
    from opentelemetry.util.types import AttributeValue

    from gputime._ledger import ServiceStats
    from gputime._tracker import TaskHandle, Tracker

_logger = logging.getLogger("gputime")

#: Instrumentation scope name of the tracer and the meter.
SCOPE = "gputime"

#: Bucket boundaries of ``gputime.task.duration`` in seconds: GPU tasks run from
#: a few milliseconds (one kernel batch) to minutes (a long synthesis or a
#: training step), so the buckets step 1-2.5-5 from 1 ms to 10 s and then
#: widen to 10 minutes.
DURATION_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
)

#: How many distinct service names get their own metric series per meter
#: provider; later ones share the overflow series. Override with the
#: ``GPUTIME_METRICS_MAX_SERVICES`` environment variable (read when a tracker is
#: made). Spans are not capped: a span is an event, not a time series.
MAX_SERVICES = 100
MAX_SERVICES_ENV = "GPUTIME_METRICS_MAX_SERVICES"

#: The ``gputime.service`` value of the overflow series.
OVERFLOW_SERVICE = "_overflow"

_OVERFLOW_ATTRIBUTES: Mapping[str, AttributeValue] = {
    "gputime.service": OVERFLOW_SERVICE,
    "otel.metric.overflow": True,
}

#: Columns of the carried totals, and the running-task count.
_BUSY, _UTIL, _ENERGY, _ACTIVE = 0, 1, 2, 3

# The API keeps the global providers in these module attributes, None until
# set. Reading one is the cheapest exact test for "has an SDK been installed
# since we last looked"; if a future API renames them, the sentinel makes every
# check fall through to the public getters (slower, still correct).
_UNKNOWN = object()

#: What a task keeps of its span: the span, and for a span made current the
#: token and the context that ``attach`` was given (else ``None`` twice).
_SpanState = tuple["Span", object, "Context | None"]

_error_types: dict[type[BaseException], str] = {}

#: Whether the missing bucket advice was logged (once per process).
_unadvised_warned = False


def error_type(exc: BaseException) -> str:
    """The ``error.type`` of an exception: ``module.QualName``, the bare name for builtins."""
    kind = type(exc)
    name = _error_types.get(kind)
    if name is None:
        module = kind.__module__
        name = kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"
        if len(_error_types) < 512:  # bounded: classes made on the fly must not leak
            _error_types[kind] = name
    return name


def _global_tracer_provider() -> TracerProvider | None:
    """The global tracer provider, ``None`` while none was set."""
    provider = otel_trace.get_tracer_provider()
    return None if isinstance(provider, otel_trace.ProxyTracerProvider) else provider


def _global_meter_provider() -> MeterProvider | None:
    """The global meter provider, ``None`` while none was set."""
    if getattr(_metrics_internal, "_METER_PROVIDER", _UNKNOWN) is None:
        # Also loads a provider named by OTEL_PYTHON_METER_PROVIDER, if any.
        otel_metrics.get_meter_provider()
    provider = getattr(_metrics_internal, "_METER_PROVIDER", _UNKNOWN)
    if provider is _UNKNOWN:
        candidate = otel_metrics.get_meter_provider()
        return None if type(candidate).__name__ == "_ProxyMeterProvider" else candidate
    return provider  # type: ignore[return-value] # checked above: a provider or None


def _max_services() -> int:
    raw = os.environ.get(MAX_SERVICES_ENV)
    if raw is None:
        return MAX_SERVICES
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        _logger.warning(
            "gputime: %s=%r is not a positive integer; using %d",
            MAX_SERVICES_ENV,
            raw,
            MAX_SERVICES,
        )
        return MAX_SERVICES
    return value


class Emitter:
    """Turns task starts and ends into spans and service totals into metrics.

    One per :class:`~gputime.Tracker`. Nothing here raises into user code:
    faults are reported once per kind through the tracker.

    Args:
        tracker: The tracker whose tasks and totals this emits.
        tracer_provider: Where spans go; the global provider if ``None``.
        meter_provider: Where metrics go; the global provider if ``None``.
    """

    __slots__ = (
        "__weakref__",
        "_carry",
        "_device_ids",
        "_meter_provider",
        "_metric_set",
        "_metrics_pending",
        "_tracer",
        "_tracer_pending",
        "_tracer_provider",
        "_tracker",
        "histogram",
    )

    def __init__(
        self,
        tracker: Tracker,
        tracer_provider: TracerProvider | None,
        meter_provider: MeterProvider | None,
    ) -> None:
        _load_metrics_api()
        self._tracker = tracker
        self._tracer_provider = tracer_provider
        self._meter_provider = meter_provider
        # Immutable per tracker; a tuple is a valid string[] attribute as is.
        self._device_ids: tuple[str, ...] = tuple(tracker.device_ids)
        # Per service, [offset, last raw total] for busy, util and energy (see reset()).
        self._carry: dict[str, list[list[float]]] = {}
        self._tracer: Tracer | None = None
        self._tracer_pending = False
        self.histogram: Histogram | None = None
        self._metric_set: _MetricSet | None = None
        self._metrics_pending = False
        try:
            self._init_tracing()
        except Exception as exc:  # noqa: BLE001 - a broken SDK must not break Tracker()
            self._tracer, self._tracer_pending = None, False
            tracker._report_fault("otel.tracer", exc)
        try:
            self._init_metrics()
        except Exception as exc:  # noqa: BLE001 - idem
            self.histogram, self._metrics_pending = None, False
            tracker._report_fault("otel.meter", exc)

    # -- set-up --------------------------------------------------------------------------

    def _init_tracing(self) -> None:
        provider = self._tracer_provider
        if provider is None or isinstance(provider, otel_trace.ProxyTracerProvider):
            provider = _global_tracer_provider()
            if provider is None:
                # No SDK yet: check for one on each task, until the global is set.
                self._tracer_pending = True
                return
        self._use_tracer(provider)

    def _use_tracer(self, provider: TracerProvider) -> None:
        tracer = provider.get_tracer(SCOPE, __version__)
        # A no-op tracer (OTEL_SDK_DISABLED, NoOpTracerProvider) never records:
        # treat it like no SDK at all.
        self._tracer = None if isinstance(tracer, NoOpTracer) else tracer

    def _resolve_global_tracer(self) -> Tracer | None:
        """The first task after the global tracer provider was set."""
        self._tracer_pending = False
        try:
            provider = _global_tracer_provider()
            if provider is None:  # no SDK yet: only an API without the global comes here
                self._tracer_pending = True
                return None
            self._use_tracer(provider)
        except Exception as exc:  # noqa: BLE001 - never into user code
            self._tracker._report_fault("otel.tracer", exc)
        return self._tracer

    def _init_metrics(self) -> None:
        provider = self._meter_provider
        global_provider = _global_meter_provider()
        is_global = (
            provider is None
            or provider is global_provider
            or provider is getattr(_metrics_internal, "_PROXY_METER_PROVIDER", _UNKNOWN)
        )
        if is_global:
            # The global provider. Its instruments are made once per process on
            # the API's meter (a proxy until an SDK is set, which then takes
            # the observable callbacks over by itself); the histogram is
            # recorded only once an SDK is there (re-checked per task until then).
            meter = otel_metrics.get_meter(SCOPE, __version__)
            # Keyed by the API's proxy provider (one per process; tests that
            # swap the API's globals get a fresh one).
            key: object = getattr(_metrics_internal, "_PROXY_METER_PROVIDER", _GLOBAL)
        else:
            assert provider is not None
            meter = provider.get_meter(SCOPE, __version__)
            key = provider
        if isinstance(meter, NoOpMeter):
            return
        metric_set = _MetricSet.for_provider(key, meter)
        metric_set.join(self)
        self._metric_set = metric_set
        if not is_global:
            self.histogram = metric_set.histogram
            metric_set.check_buckets_advised()
        elif global_provider is None:
            self._metrics_pending = True
        else:
            # The set may have been made on the proxy meter before the SDK came.
            self.histogram = metric_set.use_real_meter(global_provider)
            metric_set.check_buckets_advised()

    def _resolve_global_histogram(self) -> Histogram | None:
        """The first task start after the global meter provider was set."""
        self._metrics_pending = False
        metric_set = self._metric_set
        try:
            provider = _global_meter_provider()
            if provider is None:  # no SDK yet: only an API without the global comes here
                self._metrics_pending = True
                return None
            assert metric_set is not None  # pending only once the set was made
            self.histogram = metric_set.use_real_meter(provider)
            metric_set.check_buckets_advised()
        except Exception as exc:  # noqa: BLE001 - never into user code
            self._tracker._report_fault("otel.meter", exc)
        return self.histogram

    # -- the task path ---------------------------------------------------------------------

    def task_started(self, handle: TaskHandle, activate: bool) -> None:
        """A task began; with ``activate`` its span becomes current until it ends."""
        tracer = self._tracer
        if tracer is None and self._tracer_pending:
            # Inline, not a helper call: this is the whole cost of a task when
            # no SDK is configured. The API sets this global once, when an SDK
            # is installed; a future API without it sends us to the getter.
            try:
                unset = otel_trace._TRACER_PROVIDER is None
            except AttributeError:  # see above
                unset = False
            if not unset:
                tracer = self._resolve_global_tracer()
        if self.histogram is None and self._metrics_pending:
            # Looked for at the start, so that a task end with no span and no
            # histogram need not call in at all (see Tracker._end_task).
            try:
                unset = _metrics_internal._METER_PROVIDER is None
            except AttributeError:  # a future API without the global
                unset = False
            if not unset:
                self._resolve_global_histogram()
        if not handle._spec.span:  # the slot, not the property: every task pays this
            self._borrow_current_span(handle)
            return
        if tracer is None:
            return  # nobody listens: no span, no context, nothing allocated
        try:
            # Attributes all go in at the end, in one call: the figures only
            # exist then, and one call costs less than two (the SDK cleans and
            # locks per call).
            span = tracer.start_span(handle.name, kind=SpanKind.INTERNAL)
            if activate:
                context = otel_trace.set_span_in_context(span)
                handle._otel = (span, otel_context.attach(context), context)
            else:
                handle._otel = (span, None, None)
        except Exception as exc:  # noqa: BLE001 - never into user code
            self._tracker._report_fault("otel.span", exc)

    def _borrow_current_span(self, handle: TaskHandle) -> None:
        try:
            span = otel_trace.get_current_span()
            if span.is_recording():
                handle._otel = (span, None, None)
        except Exception as exc:  # noqa: BLE001 - never into user code
            self._tracker._report_fault("otel.span", exc)

    def task_ended(
        self, handle: TaskHandle, exc: BaseException | None, end_ns: int | None = None
    ) -> None:
        """A task ended (figures final); ``exc`` is what it raised, if anything.

        ``end_ns`` is the wall-clock end in nanoseconds for an end finished
        later than it happened (see ``Tracker._defer_end``); ``None`` is now.
        """
        state = handle._otel
        if state is not None:
            handle._otel = None
            self._finish_span(handle, cast("_SpanState", state), exc, end_ns)
        histogram = self.histogram
        if histogram is None:
            return  # no SDK records durations (looked for at the task's start)
        try:
            metric_set = self._metric_set
            assert metric_set is not None  # the histogram comes from it
            attrs = metric_set.series_attributes(handle.service)
            if isinstance(exc, Exception):
                attrs = {**attrs, "error.type": error_type(exc)}
            histogram.record(handle.duration, attrs)
        except Exception as fault:  # noqa: BLE001 - never into user code
            self._tracker._report_fault("otel.metric", fault)

    def _finish_span(
        self,
        handle: TaskHandle,
        state: _SpanState,
        exc: BaseException | None,
        end_ns: int | None,
    ) -> None:
        span, token, context = state
        try:
            if token is not None:
                _detach(token, context)
            if span.is_recording():
                span.set_attributes(self._end_attributes(handle))
                # Only an Exception marks the task failed: cancellation, an early
                # generator close, KeyboardInterrupt and SystemExit are
                # BaseExceptions that end the span with status UNSET. A borrowed
                # span (span=False) belongs to code that sees the exception
                # itself and decides; it only gets the figures.
                if handle.span and isinstance(exc, Exception):
                    span.set_attribute("error.type", error_type(exc))
                    span.record_exception(exc)
                    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        except Exception as fault:  # noqa: BLE001 - never into user code
            self._tracker._report_fault("otel.span", fault)
        finally:
            if handle.span:
                try:
                    span.end(end_time=end_ns)
                except Exception as fault:  # noqa: BLE001 - never into user code
                    self._tracker._report_fault("otel.span", fault)

    def _end_attributes(self, handle: TaskHandle) -> dict[str, AttributeValue]:
        figures = handle.figures
        attrs: dict[str, AttributeValue] = {
            "gputime.service": handle.service,
            "gputime.gpu.busy_ms": figures.gpu_ms,
            "gputime.gpu.util_ms": figures.gpu_util_ms,
            "gputime.gpu.ids": self._device_ids,
            "gputime.task.concurrency": handle.concurrency,
            "gputime.status": figures.status,
        }
        if figures.energy_mj is not None:
            attrs["gputime.gpu.energy_mj"] = figures.energy_mj
        user = handle.attributes
        if user:
            # The user's attributes first, so that a clash with a gputime name
            # cannot overwrite the measurement.
            attrs = {**user, **attrs}
        return attrs

    def activate(self, handle: TaskHandle) -> object:
        """Make the task's span current (generators: around each resume)."""
        state = handle._otel
        if state is None or not handle.span:
            return None
        try:
            # Built on the context current at this resume, so the consumer's
            # other context values (baggage) carry through.
            span = cast("_SpanState", state)[0]
            return otel_context.attach(otel_trace.set_span_in_context(span))
        except Exception as exc:  # noqa: BLE001 - never into user code
            self._tracker._report_fault("otel.context", exc)
            return None

    def deactivate(self, token: object) -> None:
        """Undo :meth:`activate`, right after the resume it wrapped, in the same context.

        Unconditionally: whatever the generator's body made current during its
        step (a span it keeps open across its ``yield``) is the body's, and the
        consumer must get back the context it resumed the generator in.
        """
        if token is not None:
            try:
                otel_context.detach(token)  # type: ignore[arg-type] # made by attach()
            except Exception as exc:  # noqa: BLE001 - never into user code
                self._tracker._report_fault("otel.context", exc)

    # -- service totals for the metrics ----------------------------------------------------

    def reset(
        self,
        service: str | None,
        ledger_reset: Callable[[str | None], Mapping[str, ServiceStats] | None],
    ) -> None:
        """Run the ledger's reset so that the exported counters stay monotonic.

        ``ledger_reset(service)`` zeroes the ledger and returns the snapshots it
        zeroed (taken under the ledger lock). Their totals are added to this
        emitter's per-service offsets while the metric callbacks are held off,
        so an exported counter goes on from exactly where it was. Without this
        hook (or if ``ledger_reset`` returns ``None``) a reset is still noticed
        at the next collection, as a total that went down, and what the service
        counted between the previous collection and the reset is lost (the
        counter stays monotonic, it only misses that stretch).
        """
        metric_set = self._metric_set
        if metric_set is None:
            ledger_reset(service)
            return
        with metric_set.lock:
            zeroed = ledger_reset(service)
            if not zeroed:
                return
            for name, before in zeroed.items():
                carry = self._carry.get(name)
                if carry is None:
                    carry = self._carry[name] = [[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]
                for column, value in enumerate(_totals(before)):
                    carry[column][0] += value
                    carry[column][1] = 0.0

    def _observe(self) -> Iterable[tuple[str, tuple[float, float, float | None], int]]:
        """Per service: monotonic (busy s, util s, energy J or None), and running tasks.

        Called by the metric set with its lock held.
        """
        # The ledger itself, not Tracker.stats(): that may finish deferred
        # task ends, which record into the SDK and call listeners, and this
        # runs inside the SDK's collection.
        stats: dict[str, ServiceStats] = self._tracker._ledger.stats()
        carries = self._carry
        for name, snapshot in stats.items():
            carry = carries.get(name)
            if carry is None:
                carry = carries[name] = [[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]
            values = _totals(snapshot)
            out: list[float] = []
            for column, raw in enumerate(values):
                kept = carry[column]
                if raw < kept[1]:
                    # The ledger went down: a reset this emitter was not told
                    # about. Keep what was seen before it.
                    kept[0] += kept[1]
                kept[1] = raw
                out.append(kept[0] + raw)
            energy = out[_ENERGY] / 1000.0 if snapshot.energy_mj is not None else None
            yield (
                name,
                (out[_BUSY] / 1000.0, out[_UTIL] / 1000.0, energy),
                snapshot.active_tasks,
            )

    def _after_fork_in_child(self) -> None:
        # A new process starts at zero (spec rule 7): nothing carried over.
        self._carry = {}


def _detach(token: object, attached: Context | None) -> None:
    """Undo ``otel_context.attach(attached)`` where that can be done correctly.

    A task may end in another context than the one its span was made current
    in: a generator holding a ``with gpu_task`` block stepped in copied
    contexts (Starlette runs each step of a sync generator in a fresh copy),
    or closed by another task. Resetting there would fail, and OpenTelemetry
    would log "Failed to detach context"; resetting a token whose context has
    been attached over since would drop the later spans from the context. So:

    - our context is not the current one here: nothing of ours to undo here
      (a copy that held it was discarded, or a later span is current);
    - it is, and the token belongs here: reset, as ``detach`` would;
    - it is, in a copy of the context it was attached in: put back, in this
      copy, what was current before, so the ended span is not left current.
    """
    if not isinstance(token, contextvars.Token):  # pragma: no cover - see below
        # A runtime context of another kind (OTEL_PYTHON_CONTEXT): its own detach.
        otel_context.detach(token)  # type: ignore[arg-type] # made by attach()
        return
    variable = token.var
    if variable.get(None) is not attached:
        return
    try:
        variable.reset(token)
    except ValueError:  # made in another context: this one is a copy of it
        previous = token.old_value
        variable.set(Context() if previous is contextvars.Token.MISSING else previous)
    except RuntimeError:  # pragma: no cover - each token is reset once
        pass


def _totals(snapshot: ServiceStats) -> tuple[float, float, float]:
    """A snapshot's busy, util and energy totals, in milli-units."""
    return snapshot.gpu_ms, snapshot.gpu_util_ms, snapshot.energy_mj or 0.0


class _GlobalKey:
    """Registry key of the global provider where the API has no proxy to key by."""


_GLOBAL = _GlobalKey()


class _MetricSet:
    """The instruments of one meter provider, shared by the trackers using it.

    Also owns the service-name cap: the first :data:`MAX_SERVICES` names seen
    get a series each, the rest share the overflow series (one warning).
    """

    @classmethod
    def for_provider(cls, key: object, meter: Meter) -> _MetricSet:
        """The metric set of a provider (``key``), made on ``meter`` the first time."""
        with _registry_lock:
            found = _registry.get(key)
            if found is None:
                found = _registry[key] = cls(meter)
            return found

    def __init__(self, meter: Meter) -> None:
        # Guards the members, their last contributions, the retired and
        # exported totals, the series and every member emitter's carries. Held
        # only over gputime's own arithmetic and ledger reads: nothing logs,
        # records into an SDK or calls a listener while it is held.
        self.lock = threading.Lock()
        self.max_services = _max_services()
        self._series: dict[str, Mapping[str, AttributeValue]] = {}
        self._own_series = 0
        self._warned = False
        #: The first service sent to the overflow series, until it is logged.
        self._overflowed: str | None = None
        # Emitters feeding the instruments, and what each contributed at the
        # last collection, so that a garbage-collected tracker's counts stay.
        # Series are keyed by service name, None for the overflow series.
        self._members: dict[int, tuple[weakref.ref[Emitter], dict[str | None, list[float]]]] = {}
        self._retired: dict[str | None, list[float]] = {}
        self._exported: dict[str | None, list[float]] = {}
        #: Whether the histogram's meter took DURATION_BUCKETS as advice.
        self.buckets_advised = True
        self.histogram = self._make_histogram(meter)
        meter.create_observable_counter(
            "gputime.gpu.busy_time",
            callbacks=[self._callback(_BUSY)],
            unit="s",
            description="GPU-busy time of the service's tasks, summed over devices "
            "(time shared by overlapping tasks of one service counted once)",
        )
        meter.create_observable_counter(
            "gputime.gpu.util_time",
            callbacks=[self._callback(_UTIL)],
            unit="s",
            description="Utilisation-weighted GPU time of the service's tasks, summed over devices",
        )
        meter.create_observable_counter(
            "gputime.gpu.energy",
            callbacks=[self._callback(_ENERGY)],
            unit="J",
            description="GPU energy during the service's tasks, where the backend measures it",
        )
        meter.create_observable_up_down_counter(
            "gputime.task.active",
            callbacks=[self._callback(_ACTIVE)],
            unit="{task}",
            description="Tasks of the service running now",
        )

    def _make_histogram(self, meter: Meter) -> Histogram:
        name, unit = "gputime.task.duration", "s"
        description = "Duration of the service's tasks, on the tracker's clock"
        try:
            histogram = meter.create_histogram(
                name,
                unit=unit,
                description=description,
                explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
            )
        except TypeError:
            # opentelemetry-api/sdk < 1.30 (or a meter of another make) takes no
            # bucket advice: the SDK's default buckets, made for milliseconds,
            # put every task under 5 s in one bucket. check_buckets_advised()
            # says so once an SDK records.
            self.buckets_advised = False
            return meter.create_histogram(name, unit=unit, description=description)
        self.buckets_advised = True
        return histogram

    def check_buckets_advised(self) -> None:
        """Warn once per process when the recording meter took no bucket advice.

        Called where the histogram is bound to a recording meter (never under a
        lock, never from the garbage collector).
        """
        global _unadvised_warned
        if self.buckets_advised or _unadvised_warned:
            return
        _unadvised_warned = True
        _logger.warning(
            "gputime: this OpenTelemetry meter takes no bucket advice (opentelemetry-api "
            "and -sdk < 1.30): gputime.task.duration gets the SDK's default buckets, "
            "which put every task under 5 s in one bucket. Upgrade to 1.30 or later, "
            "or give the SDK's MeterProvider a View with gputime's buckets "
            "(docs/compatibility.md)."
        )

    def use_real_meter(self, provider: MeterProvider) -> Histogram:
        """The global SDK arrived: record on its histogram directly, not through the proxy."""
        meter = provider.get_meter(SCOPE, __version__)
        if isinstance(meter, NoOpMeter):
            self.buckets_advised = True  # nothing records: no buckets to be wrong
            return self.histogram
        # The SDK already made this instrument for the proxy: it hands back the same one.
        self.histogram = self._make_histogram(meter)
        return self.histogram

    def join(self, emitter: Emitter) -> None:
        with self.lock:
            old = self._members.get(id(emitter))
            if old is not None:
                # The id of a tracker collected since the last collection, reused.
                self._retire(old[1])
            self._members[id(emitter)] = (weakref.ref(emitter), {})

    def _retire(self, last: dict[str | None, list[float]]) -> None:
        for key, values in last.items():
            _add(self._retired.setdefault(key, [0.0, 0.0, -1.0]), values)

    def series_attributes(self, service: str) -> Mapping[str, AttributeValue]:
        """The metric attributes of a service (shared dict, never mutated)."""
        attrs = self._series.get(service)
        if attrs is not None:
            return attrs
        with self.lock:
            attrs = self._assign(service)
        self._log_overflow()
        return attrs

    def _assign(self, service: str) -> Mapping[str, AttributeValue]:
        attrs = self._series.get(service)
        if attrs is None:
            if self._own_series < self.max_services:
                self._own_series += 1
                attrs = {"gputime.service": service}
            else:
                attrs = _OVERFLOW_ATTRIBUTES
                if not self._warned:
                    self._warned = True
                    self._overflowed = service  # logged once the lock is released
            self._series[service] = attrs
        return attrs

    def _log_overflow(self) -> None:
        service, self._overflowed = self._overflowed, None
        if service is not None:
            _logger.warning(
                "gputime: more than %d service names; metrics of %r and later "
                "new services go to gputime.service=%r (spans keep the real name; "
                "raise the cap with %s)",
                self.max_services,
                service,
                OVERFLOW_SERVICE,
                MAX_SERVICES_ENV,
            )

    def _callback(self, column: int) -> Callable[[CallbackOptions], Iterable[Observation]]:
        # A weak reference: the SDK keeps callbacks for its whole life, and it
        # must not keep the metric set (and through it trackers) alive.
        ref = weakref.ref(self)

        def callback(options: CallbackOptions) -> Iterable[Observation]:
            metric_set = ref()
            if metric_set is None:  # pragma: no cover - the registry holds it while in use
                return []
            return metric_set._observations(column)

        return callback

    def _observations(self, column: int) -> list[Observation]:
        faults: list[tuple[Emitter, Exception]] = []
        with self.lock:
            out = []
            for key, (values, active) in self._collect(faults).items():
                attrs = _OVERFLOW_ATTRIBUTES if key is None else self._series[key]
                if column == _ACTIVE:
                    out.append(Observation(active, attrs))
                elif values[column] >= 0.0:  # energy is -1 where not measured
                    out.append(Observation(values[column], attrs))
        for emitter, exc in faults:
            emitter._tracker._report_fault("otel.metric", exc)
        self._log_overflow()
        return out

    def _collect(
        self, faults: list[tuple[Emitter, Exception]]
    ) -> dict[str | None, tuple[list[float], int]]:
        """Per series: [busy s, util s, energy J or -1] and running tasks.

        The counters are summed over the trackers, plus what retired (garbage
        collected) trackers left, and never below what was exported before.
        A tracker whose figures cannot be read goes into ``faults``, to be
        reported once the lock is released.
        """
        totals: dict[str | None, list[float]] = {}
        active: dict[str | None, int] = {}
        for member, (ref, last) in list(self._members.items()):
            emitter = ref()
            if emitter is None:
                del self._members[member]
                self._retire(last)
                continue
            contribution: dict[str | None, list[float]] = {}
            try:
                observed = list(emitter._observe())
            except Exception as exc:  # noqa: BLE001 - a collection must not fail
                faults.append((emitter, exc))
                observed = []
            for service, (busy, util, energy), running in observed:
                key = None if self._assign(service) is _OVERFLOW_ATTRIBUTES else service
                values = contribution.setdefault(key, [0.0, 0.0, -1.0])
                _add(values, [busy, util, -1.0 if energy is None else energy])
                active[key] = active.get(key, 0) + running
            self._members[member] = (ref, contribution)
            for key, values in contribution.items():
                _add(totals.setdefault(key, [0.0, 0.0, -1.0]), values)
        for key, values in self._retired.items():
            _add(totals.setdefault(key, [0.0, 0.0, -1.0]), values)
        collected: dict[str | None, tuple[list[float], int]] = {}
        for key, values in totals.items():
            exported = self._exported.setdefault(key, [0.0, 0.0, -1.0])
            for column in range(3):
                exported[column] = max(exported[column], values[column])
            collected[key] = (list(exported), active.get(key, 0))
        return collected

    def _after_fork_in_child(self) -> None:
        self.lock = threading.Lock()
        self._retired = {}
        self._exported = {}
        self._members = {member: (ref, {}) for member, (ref, _) in self._members.items()}


# One metric set per meter provider, alive as long as the provider is.
_registry: weakref.WeakKeyDictionary[object, _MetricSet] = weakref.WeakKeyDictionary()
_registry_lock = threading.Lock()


def _add(into: list[float], values: list[float]) -> None:
    """Add busy, util and energy columns; energy -1 means 'not measured'."""
    into[_BUSY] += values[_BUSY]
    into[_UTIL] += values[_UTIL]
    if values[_ENERGY] >= 0.0:
        into[_ENERGY] = max(into[_ENERGY], 0.0) + values[_ENERGY]


def _reinit_registry_in_child() -> None:
    # The registry's lock may have been held by another thread at fork time;
    # each emitter is re-initialised by its tracker's own fork hook.
    global _registry_lock
    _registry_lock = threading.Lock()
    for metric_set in list(_registry.values()):
        metric_set._after_fork_in_child()


if hasattr(os, "register_at_fork"):  # pragma: no branch - POSIX; Windows has no fork
    os.register_at_fork(after_in_child=_reinit_registry_in_child)
