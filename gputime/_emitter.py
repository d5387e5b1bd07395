"""The emitter: a span per task, and the duration of each task on a histogram.

The hot path (:meth:`Emitter.task_started` / :meth:`Emitter.task_ended`) is built
around one question, answered once and re-checked only when the answer can
change: is anybody listening? With no SDK configured, the tracer and the
histogram stay ``None`` and a task costs a few attribute reads here: no span
object, no context attach, no attribute dict, no metric call. While the
*global* providers are still unset, each task start also reads one module
attribute of the API to notice the moment an SDK is installed (see
:mod:`gputime._providers`).

The emitter is given what it needs (the device ids, the fault log, the
tracker's metrics member) and holds no reference to its tracker, so a dropped
tracker is freed by reference counting alone.
"""

from __future__ import annotations

import contextvars
from typing import TYPE_CHECKING, cast

from opentelemetry import context as otel_context
from opentelemetry import trace as otel_trace
from opentelemetry.context import Context
from opentelemetry.trace import NoOpTracer, SpanKind, Status, StatusCode

from gputime import _exit, _providers

if TYPE_CHECKING:
    from opentelemetry.metrics import Histogram
    from opentelemetry.trace import Span, Tracer, TracerProvider
    from opentelemetry.util.types import AttributeValue

    from gputime._faults import FaultLog
    from gputime._handle import TaskHandle
    from gputime._member import Member

#: What a task keeps of its span: the span, and for a span made current the
#: token and the context that ``attach`` was given (else ``None`` twice).
_SpanState = tuple["Span", object, "Context | None"]

_error_types: dict[type[BaseException], str] = {}


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


class Emitter:
    """Turns a tracker's task starts and ends into spans and duration records.

    Nothing here raises into user code: faults are reported once per kind.

    Args:
        device_ids: The tracker's device ids (``gputime.gpu.ids``).
        faults: Where faults are reported.
        member: The tracker's part in its meter provider's metrics (the
            histogram comes from there); ``None`` where no meter records.
        metrics_pending: The global meter provider is still unset: look for it
            at each task start, as for the tracer.
        tracer_provider: Where spans go; the global provider if ``None``.
    """

    __slots__ = (
        "_device_ids",
        "_faults",
        "_member",
        "_metrics_pending",
        "_tracer",
        "_tracer_pending",
        "histogram",
    )

    def __init__(
        self,
        device_ids: tuple[str, ...],
        faults: FaultLog,
        member: Member | None,
        metrics_pending: bool,
        tracer_provider: TracerProvider | None,
    ) -> None:
        # Immutable per tracker; a tuple is a valid string[] attribute as is.
        self._device_ids = device_ids
        self._faults = faults
        self._member = member
        self._tracer: Tracer | None = None
        self._tracer_pending = False
        self._metrics_pending = member is not None and metrics_pending
        self.histogram: Histogram | None = None
        if member is not None and not metrics_pending:
            self.histogram = member.metric_set.duration.instrument
        try:
            self._init_tracing(tracer_provider)
        except Exception as exc:  # noqa: BLE001 - a broken SDK must not break Tracker()
            self._tracer, self._tracer_pending = None, False
            faults.report("otel.tracer", exc)

    # -- set-up --------------------------------------------------------------------------

    def _init_tracing(self, provider: TracerProvider | None) -> None:
        if provider is None or isinstance(provider, otel_trace.ProxyTracerProvider):
            provider = _providers.global_tracer_provider()
            if provider is None:
                # No SDK yet: check for one on each task, until the global is set.
                self._tracer_pending = True
                return
        self._use_tracer(provider)

    def _use_tracer(self, provider: TracerProvider) -> None:
        tracer = provider.get_tracer(_providers.SCOPE, _providers.VERSION)
        # A no-op tracer (OTEL_SDK_DISABLED, NoOpTracerProvider) never records:
        # treat it like no SDK at all.
        self._tracer = None if isinstance(tracer, NoOpTracer) else tracer

    def _resolve_global_tracer(self) -> Tracer | None:
        """The first task after the global tracer provider was set."""
        self._tracer_pending = False
        try:
            provider = _providers.global_tracer_provider()
            if provider is None:  # no SDK yet: only an API without the global comes here
                self._tracer_pending = True
                return None
            self._use_tracer(provider)
            # The SDK set up after the tracker registered its shutdown at exit
            # since: tasks still open at exit must end before it.
            _exit.move_last()
        except Exception as exc:  # noqa: BLE001 - never into user code
            self._faults.report("otel.tracer", exc)
        return self._tracer

    def _resolve_global_histogram(self) -> None:
        """The first task start after the global meter provider was set."""
        self._metrics_pending = False
        member = self._member
        try:
            provider = _providers.global_meter_provider()
            if provider is None:  # no SDK yet: only an API without the global comes here
                self._metrics_pending = True
                return
            assert member is not None  # pending only with a member
            duration = member.metric_set.duration
            self.histogram = duration.use_real_meter(provider)
            duration.check_buckets_advised()
            _exit.move_last()  # as for the tracer provider
        except Exception as exc:  # noqa: BLE001 - never into user code
            self._faults.report("otel.meter", exc)

    # -- the task path ---------------------------------------------------------------------

    def task_started(self, handle: TaskHandle, activate: bool) -> None:
        """A task began; with ``activate`` its span becomes current until it ends."""
        tracer = self._tracer
        if tracer is None and self._tracer_pending:
            # Inline, not a helper call: this is the whole cost of a task when
            # no SDK is configured. The API sets this global once, when an SDK
            # is installed; an API without it sends us to the getter.
            try:
                unset = _providers.trace_api._TRACER_PROVIDER is None
            except AttributeError:  # see above
                unset = False
            if not unset:
                tracer = self._resolve_global_tracer()
        if self.histogram is None and self._metrics_pending:
            # Looked for at the start, so that a task end with no span and no
            # histogram need not call in at all (see Tracker._end_task).
            try:
                unset = _providers.metrics_internal._METER_PROVIDER is None
            except AttributeError:  # an API without the global
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
            self._faults.report("otel.span", exc)

    def _borrow_current_span(self, handle: TaskHandle) -> None:
        try:
            span = otel_trace.get_current_span()
            if span.is_recording():
                handle._otel = (span, None, None)
        except Exception as exc:  # noqa: BLE001 - never into user code
            self._faults.report("otel.span", exc)

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
            member = self._member
            assert member is not None  # the histogram comes from it
            attrs = member.metric_set.series_attributes(handle.service)
            if isinstance(exc, Exception):
                attrs = {**attrs, "error.type": error_type(exc)}
            histogram.record(handle.duration, attrs)
        except Exception as fault:  # noqa: BLE001 - never into user code
            self._faults.report("otel.metric", fault)

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
            self._faults.report("otel.span", fault)
        finally:
            if handle.span:
                try:
                    span.end(end_time=end_ns)
                except Exception as fault:  # noqa: BLE001 - never into user code
                    self._faults.report("otel.span", fault)

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
        if len(self._device_ids) > 1:
            _add_device_attributes(attrs, handle)
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
            self._faults.report("otel.context", exc)
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
                self._faults.report("otel.context", exc)


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


def _add_device_attributes(attrs: dict[str, AttributeValue], handle: TaskHandle) -> None:
    """Per-device figures of a multi-device task, as arrays aligned by position.

    Only the devices the task kept busy (``gpu_ms > 0``), so that a span's
    size follows what the task used, not how many GPUs the host has; a task
    that kept none busy gets none of these attributes.
    """
    used = [(device, f) for device, f in handle.devices.items() if f.gpu_ms > 0.0]
    if not used:
        return
    attrs["gputime.gpu.devices.ids"] = [device for device, _ in used]
    attrs["gputime.gpu.devices.busy_ms"] = [f.gpu_ms for _, f in used]
    attrs["gputime.gpu.devices.util_ms"] = [f.gpu_util_ms for _, f in used]
    energy = [f.energy_mj for _, f in used]
    if all(value is not None for value in energy):
        attrs["gputime.gpu.devices.energy_mj"] = [value or 0.0 for value in energy]
    attrs["gputime.gpu.devices.status"] = [f.status for _, f in used]
