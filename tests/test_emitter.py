"""Spans through the OpenTelemetry SDK, name for name (docs/opentelemetry.md).

A span per task, current for the task, with its figures at its end; errors,
cancellations, generators, ``span=False``, nobody listening, faults.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from opentelemetry import context as otel_context
from opentelemetry import metrics as otel_metrics
from opentelemetry import trace as otel_trace
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.metrics import _internal as metrics_internal
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import NoOpTracerProvider, SpanKind, StatusCode

import gputime
from gputime import Tracker, _emitter, _providers
from gputime.testing import FakeClock, SimulatedGpu
from tests.otel_sdk import (
    Broken,
    BrokenSpan,
    MyError,
    P,
    Sdk,
    _current_span_id,
)

# -- spans -----------------------------------------------------------------------------------


class TestSpan:
    def test_one_internal_span_named_after_the_service(self, traced: Tracker, sdk: Sdk):
        with traced.gpu_task("nmt"):
            pass
        (span,) = sdk.spans()
        assert span.name == "gpu_task nmt"
        assert span.kind is SpanKind.INTERNAL
        assert span.instrumentation_scope is not None
        assert span.instrumentation_scope.name == "gputime"
        assert span.instrumentation_scope.version == gputime.__version__
        assert span.status.status_code is StatusCode.UNSET
        assert span.events == ()

    def test_name_argument_names_the_span(self, traced: Tracker, sdk: Sdk):
        with traced.gpu_task("nmt", name="translate batch"):
            pass
        assert [s.name for s in sdk.spans()] == ["translate batch"]

    def test_attributes_and_values_against_the_simulated_gpu(
        self, traced: Tracker, sdk: Sdk, gpu: SimulatedGpu, clock: FakeClock
    ):
        with traced.gpu_task("nmt") as task:
            gpu.set_utilization(50)
            clock.advance(6 * P)
        span = sdk.span("gpu_task nmt")
        attrs = dict(span.attributes or {})
        assert attrs == {
            "gputime.service": "nmt",
            "gputime.gpu.busy_ms": pytest.approx(1000.0),
            "gputime.gpu.util_ms": pytest.approx(500.0),
            "gputime.gpu.ids": ("SIM-0",),
            "gputime.task.concurrency": 1,
            "gputime.status": "ok",
        }
        assert attrs["gputime.gpu.busy_ms"] == task.gpu_ms
        assert attrs["gputime.gpu.util_ms"] == task.gpu_util_ms
        assert isinstance(attrs["gputime.gpu.busy_ms"], float)
        assert isinstance(attrs["gputime.gpu.util_ms"], float)
        assert isinstance(attrs["gputime.task.concurrency"], int)
        assert "gputime.gpu.energy_mj" not in attrs  # the simulated GPU measures no energy
        assert "error.type" not in attrs

    def test_two_devices_are_listed_and_summed(self, sdk: Sdk, clock: FakeClock):
        gpu = SimulatedGpu(devices=2, clock=clock)
        tracker = Tracker(backend=gpu, threaded=False, tracer_provider=sdk.tracer_provider)
        with tracker, tracker.gpu_task("nmt"):
            gpu.set_utilization(100, device=0)
            gpu.set_utilization(100, device=1)
            clock.advance(6 * P)
        attrs = sdk.span("gpu_task nmt").attributes or {}
        assert attrs["gputime.gpu.ids"] == ("SIM-0", "SIM-1")
        assert attrs["gputime.gpu.busy_ms"] == pytest.approx(2000.0)

    def test_concurrency_counts_running_tasks_of_the_service_at_entry(
        self, traced: Tracker, sdk: Sdk
    ):
        with (
            traced.gpu_task("nmt", name="first"),
            traced.gpu_task("tts", name="other service"),
            traced.gpu_task("nmt", name="second"),
        ):
            pass
        concurrency = {
            s.name: (s.attributes or {})["gputime.task.concurrency"] for s in sdk.spans()
        }
        assert concurrency == {"first": 1, "other service": 1, "second": 2}

    def test_status_partial_when_a_reading_failed(
        self, traced: Tracker, sdk: Sdk, gpu: SimulatedGpu, clock: FakeClock, busy
    ):
        with traced.gpu_task("nmt"):
            clock.advance(2 * P)
            gpu.fail_reads(1)
            traced.poll()
            clock.advance(2 * P)
        attrs = sdk.span("gpu_task nmt").attributes or {}
        assert attrs["gputime.status"] == "partial"

    def test_status_unavailable_without_a_gpu(self, sdk: Sdk):
        tracker = Tracker(backend="none", threaded=False, tracer_provider=sdk.tracer_provider)
        with tracker, tracker.gpu_task("nmt"):
            pass
        attrs = sdk.span("gpu_task nmt").attributes or {}
        assert attrs["gputime.status"] == "unavailable"
        assert attrs["gputime.gpu.ids"] == ()
        assert attrs["gputime.gpu.busy_ms"] == 0.0

    def test_user_attributes_pass_through_with_their_types(self, traced: Tracker, sdk: Sdk):
        given = {
            "model": "nllb-600m",
            "batch": 8,
            "temperature": 0.5,
            "warm": True,
            "langs": ["en", "fr"],
        }
        with traced.gpu_task("nmt", attributes=given):
            pass
        attrs = sdk.span("gpu_task nmt").attributes or {}
        assert attrs["model"] == "nllb-600m"
        assert attrs["batch"] == 8
        assert attrs["temperature"] == 0.5
        assert attrs["warm"] is True
        assert attrs["langs"] == ("en", "fr")

    def test_user_attributes_cannot_overwrite_the_measurement(
        self, traced: Tracker, sdk: Sdk, clock: FakeClock, busy
    ):
        with traced.gpu_task(
            "nmt", attributes={"gputime.gpu.busy_ms": -1.0, "gputime.service": "forged"}
        ):
            clock.advance(3 * P)
        attrs = sdk.span("gpu_task nmt").attributes or {}
        assert attrs["gputime.gpu.busy_ms"] == pytest.approx(500.0)
        assert attrs["gputime.service"] == "nmt"

    def test_spans_started_inside_are_children(self, traced: Tracker, sdk: Sdk):
        tracer = sdk.tracer_provider.get_tracer("test")
        with tracer.start_as_current_span("request") as request:
            with traced.gpu_task("nmt"), tracer.start_as_current_span("kernel"):
                pass
            # The task's span is no longer current once it ended.
            assert _current_span_id() == request.get_span_context().span_id
        task = sdk.span("gpu_task nmt")
        kernel = sdk.span("kernel")
        assert task.parent is not None
        assert task.parent.span_id == request.get_span_context().span_id
        assert kernel.parent is not None
        assert kernel.parent.span_id == task.context.span_id
        assert task.context.trace_id == kernel.context.trace_id

    def test_root_span_when_nothing_is_current(self, traced: Tracker, sdk: Sdk):
        with traced.gpu_task("nmt"):
            pass
        assert sdk.span("gpu_task nmt").parent is None

    def test_decorated_function(self, traced: Tracker, sdk: Sdk):
        tracer = sdk.tracer_provider.get_tracer("test")

        @traced.gpu_task("nmt")
        def translate() -> int:
            with tracer.start_as_current_span("inner"):
                return 42

        assert translate() == 42
        assert sdk.span("inner").parent.span_id == sdk.span("gpu_task nmt").context.span_id  # type: ignore[union-attr]

    def test_thread_with_copied_context_parents_under_the_task(self, traced: Tracker, sdk: Sdk):
        tracer = sdk.tracer_provider.get_tracer("test")

        def work() -> None:
            with tracer.start_as_current_span("in thread"):
                pass

        with traced.gpu_task("nmt"):
            ctx = contextvars.copy_context()
            thread = threading.Thread(target=ctx.run, args=(work,))
            thread.start()
            thread.join()
        child = sdk.span("in thread")
        assert child.parent is not None
        assert child.parent.span_id == sdk.span("gpu_task nmt").context.span_id


@pytest.mark.asyncio
class TestAsync:
    async def test_coroutine_span_is_current_across_awaits(self, traced: Tracker, sdk: Sdk):
        tracer = sdk.tracer_provider.get_tracer("test")

        @traced.gpu_task("tts")
        async def synth(n: int) -> None:
            await asyncio.sleep(0)
            with tracer.start_as_current_span(f"step {n}"):
                await asyncio.sleep(0)

        with tracer.start_as_current_span("request"):
            await asyncio.gather(synth(1), synth(2))
        request = sdk.span("request")
        tasks = [s for s in sdk.spans() if s.name == "gpu_task tts"]
        assert len(tasks) == 2
        assert {t.parent.span_id for t in tasks if t.parent} == {request.context.span_id}
        by_id = {t.context.span_id for t in tasks}
        steps = [sdk.span("step 1"), sdk.span("step 2")]
        parents = {s.parent.span_id for s in steps if s.parent}
        assert parents == by_id  # each step under its own task's span

    async def test_async_with(self, traced: Tracker, sdk: Sdk):
        tracer = sdk.tracer_provider.get_tracer("test")
        async with traced.gpu_task("tts"):
            await asyncio.sleep(0)
            with tracer.start_as_current_span("inner"):
                pass
        assert sdk.span("inner").parent.span_id == sdk.span("gpu_task tts").context.span_id  # type: ignore[union-attr]
        assert otel_trace.get_current_span() is otel_trace.INVALID_SPAN

    async def test_cancellation_is_not_an_error(self, traced: Tracker, sdk: Sdk):
        started = asyncio.Event()

        @traced.gpu_task("tts")
        async def synth() -> None:
            started.set()
            await asyncio.Event().wait()

        job = asyncio.ensure_future(synth())
        await started.wait()
        job.cancel()
        with pytest.raises(asyncio.CancelledError):
            await job
        span = sdk.span("gpu_task tts")
        assert span.status.status_code is StatusCode.UNSET
        assert "error.type" not in (span.attributes or {})
        assert span.events == ()
        assert span.end_time is not None
        points = sdk.points("gputime.task.duration")
        assert list(points) == [(("gputime.service", "tts"),)]

    async def test_async_generator_span_current_only_while_it_runs(self, traced: Tracker, sdk: Sdk):
        tracer = sdk.tracer_provider.get_tracer("test")
        seen: list[int] = []

        @traced.gpu_task("tts")
        async def chunks() -> AsyncIterator[int]:
            for i in range(2):
                seen.append(_current_span_id())
                with tracer.start_as_current_span(f"chunk {i}"):
                    pass
                yield i

        with tracer.start_as_current_span("consumer") as consumer:
            async for _ in chunks():
                assert _current_span_id() == consumer.get_span_context().span_id
        task = sdk.span("gpu_task tts")
        assert seen == [task.context.span_id] * 2
        assert sdk.span("chunk 1").parent.span_id == task.context.span_id  # type: ignore[union-attr]
        assert task.parent.span_id == consumer.get_span_context().span_id  # type: ignore[union-attr]

    async def test_async_generator_closed_early_is_not_an_error(self, traced: Tracker, sdk: Sdk):
        @traced.gpu_task("tts")
        async def chunks() -> AsyncIterator[int]:
            for i in range(10):
                yield i

        stream = chunks()
        assert await stream.__anext__() == 0
        await stream.aclose()  # type: ignore[attr-defined]
        span = sdk.span("gpu_task tts")
        assert span.status.status_code is StatusCode.UNSET
        assert "error.type" not in (span.attributes or {})


class TestGenerator:
    def test_span_current_only_while_the_body_runs(self, traced: Tracker, sdk: Sdk):
        tracer = sdk.tracer_provider.get_tracer("test")
        seen: list[int] = []

        @traced.gpu_task("nmt")
        def tokens() -> Iterator[int]:
            for i in range(3):
                seen.append(_current_span_id())
                yield i

        with tracer.start_as_current_span("consumer") as consumer:
            for _ in tokens():
                assert _current_span_id() == consumer.get_span_context().span_id
        task = sdk.span("gpu_task nmt")
        assert seen == [task.context.span_id] * 3
        assert task.parent.span_id == consumer.get_span_context().span_id  # type: ignore[union-attr]
        assert task.status.status_code is StatusCode.UNSET

    def test_closed_early_is_not_an_error(self, traced: Tracker, sdk: Sdk):
        closed_in: list[int] = []

        @traced.gpu_task("nmt")
        def tokens() -> Iterator[int]:
            try:
                yield 1
                yield 2
            finally:
                closed_in.append(_current_span_id())

        stream = tokens()
        next(stream)
        stream.close()
        span = sdk.span("gpu_task nmt")
        assert closed_in == [span.context.span_id]  # the cleanup ran under the task's span
        assert span.status.status_code is StatusCode.UNSET
        assert span.events == ()

    def test_raising_generator_is_an_error(self, traced: Tracker, sdk: Sdk):
        @traced.gpu_task("nmt")
        def tokens() -> Iterator[int]:
            yield 1
            raise MyError("bad token")

        with pytest.raises(MyError):
            list(tokens())
        span = sdk.span("gpu_task nmt")
        assert span.status.status_code is StatusCode.ERROR
        assert (span.attributes or {})["error.type"] == f"{MyError.__module__}.MyError"


class TestErrors:
    def test_exception_marks_the_span_once(self, traced: Tracker, sdk: Sdk, clock, busy):
        error = MyError("out of memory")

        @traced.gpu_task("nmt")
        def fail() -> None:
            clock.advance(3 * P)
            raise error

        with pytest.raises(MyError) as raised:
            fail()
        assert raised.value is error  # the same object propagates
        span = sdk.span("gpu_task nmt")
        assert span.status.status_code is StatusCode.ERROR
        assert span.status.description == "MyError: out of memory"
        attrs = span.attributes or {}
        assert attrs["error.type"] == f"{MyError.__module__}.MyError"
        assert attrs["gputime.status"] == "ok"  # the measurement was complete
        assert attrs["gputime.gpu.busy_ms"] == pytest.approx(500.0)
        assert [event.name for event in span.events] == ["exception"]
        event_attrs = span.events[0].attributes or {}
        assert event_attrs["exception.message"] == "out of memory"

    def test_builtin_exception_has_the_bare_name(self, traced: Tracker, sdk: Sdk):
        @traced.gpu_task("nmt")
        def fail() -> None:
            raise ValueError("no")

        with pytest.raises(ValueError, match="no"):
            fail()
        assert (sdk.span("gpu_task nmt").attributes or {})["error.type"] == "ValueError"

    def test_nested_class_uses_the_qualified_name(self, traced: Tracker, sdk: Sdk):
        with pytest.raises(MyError.NestedError), traced.gpu_task("nmt"):
            raise MyError.NestedError
        attrs = sdk.span("gpu_task nmt").attributes or {}
        assert attrs["error.type"] == f"{MyError.__module__}.MyError.NestedError"

    @pytest.mark.parametrize("kind", [KeyboardInterrupt, SystemExit, GeneratorExit])
    def test_base_exceptions_that_stop_work_are_not_errors(
        self, traced: Tracker, sdk: Sdk, kind: type[BaseException]
    ):
        with pytest.raises(kind), traced.gpu_task("nmt"):
            raise kind
        span = sdk.span("gpu_task nmt")
        assert span.status.status_code is StatusCode.UNSET
        assert "error.type" not in (span.attributes or {})
        assert span.events == ()

    def test_error_type_names(self):
        assert _emitter.error_type(KeyError("k")) == "KeyError"
        # Python 3.10's asyncio.TimeoutError is a class of its own (the builtin from 3.11).
        timeout = (
            "TimeoutError"
            if asyncio.TimeoutError is TimeoutError
            else "asyncio.exceptions.TimeoutError"
        )
        assert _emitter.error_type(asyncio.TimeoutError()) == timeout
        assert _emitter.error_type(MyError()) == f"{MyError.__module__}.MyError"

    def test_error_type_cache_is_bounded(self, monkeypatch: pytest.MonkeyPatch):
        monkeypatch.setattr(_emitter, "_error_types", {})
        for i in range(600):
            kind = type(f"Made{i}", (Exception,), {})
            assert _emitter.error_type(kind()) == f"{__name__}.Made{i}"
        assert len(_emitter._error_types) == 512


class TestSpanFalse:
    def test_adds_the_attributes_to_the_current_span(
        self, traced: Tracker, sdk: Sdk, clock: FakeClock, busy
    ):
        tracer = sdk.tracer_provider.get_tracer("test")
        with (
            tracer.start_as_current_span("request"),
            traced.gpu_task("nmt", span=False, attributes={"model": "m"}),
        ):
            clock.advance(3 * P)
        (request,) = sdk.spans()
        attrs = request.attributes or {}
        assert attrs["gputime.service"] == "nmt"
        assert attrs["gputime.gpu.busy_ms"] == pytest.approx(500.0)
        assert attrs["gputime.status"] == "ok"
        assert attrs["model"] == "m"

    def test_leaves_the_owners_error_handling_alone(self, traced: Tracker, sdk: Sdk):
        tracer = sdk.tracer_provider.get_tracer("test")
        with (
            tracer.start_as_current_span("request"),
            pytest.raises(MyError),
            traced.gpu_task("nmt", span=False),
        ):
            raise MyError
        (request,) = sdk.spans()
        assert request.status.status_code is StatusCode.UNSET
        assert "error.type" not in (request.attributes or {})

    def test_no_current_span_makes_nothing(self, traced: Tracker, sdk: Sdk):
        @traced.gpu_task("nmt", span=False)
        def work() -> int:
            return 1

        assert work() == 1
        assert sdk.spans() == []

    def test_generator_with_span_false(self, traced: Tracker, sdk: Sdk):
        tracer = sdk.tracer_provider.get_tracer("test")

        @traced.gpu_task("nmt", span=False)
        def tokens() -> Iterator[int]:
            yield 1

        with tracer.start_as_current_span("request"):
            assert list(tokens()) == [1]
        (request,) = sdk.spans()
        assert (request.attributes or {})["gputime.service"] == "nmt"


class TestNobodyListens:
    def test_no_op_providers_do_no_span_work(self, gpu: SimulatedGpu):
        with Tracker(
            backend=gpu,
            threaded=False,
            tracer_provider=NoOpTracerProvider(),
            meter_provider=NoOpMeterProvider(),
        ) as tracker:
            emitter = tracker._emitter
            assert emitter._tracer is None
            assert emitter.histogram is None
            before = otel_context.get_current()
            with tracker.gpu_task("nmt") as task:
                assert task._otel is None
                assert otel_context.get_current() is before  # nothing attached

    def test_unset_global_providers_do_no_work_then_pick_up_an_sdk(
        self, fresh_globals: None, gpu: SimulatedGpu, sdk: Sdk
    ):
        with Tracker(backend=gpu, threaded=False) as tracker:
            emitter = tracker._emitter
            with tracker.gpu_task("nmt") as task:
                assert task._otel is None
            assert emitter._tracer is None
            assert emitter.histogram is None
            otel_trace.set_tracer_provider(sdk.tracer_provider)
            otel_metrics.set_meter_provider(sdk.meter_provider)  # type: ignore[arg-type]
            with tracker.gpu_task("nmt"):
                pass
        assert [s.name for s in sdk.spans()] == ["gpu_task nmt"]
        duration = sdk.points("gputime.task.duration")
        assert duration[(("gputime.service", "nmt"),)].count == 1  # only the task after the SDK
        # The observable counters came over from the proxy meter by themselves.
        assert sdk.value("gputime.task.active") == 0
        assert sdk.value("gputime.gpu.busy_time") == 0.0

    def test_global_providers_already_set(self, fresh_globals: None, gpu: SimulatedGpu, sdk: Sdk):
        otel_trace.set_tracer_provider(sdk.tracer_provider)
        otel_metrics.set_meter_provider(sdk.meter_provider)  # type: ignore[arg-type]
        with Tracker(backend=gpu, threaded=False) as first, first.gpu_task("nmt"):
            pass
        # An injected provider that is the global one shares the global instruments.
        with (
            Tracker(backend=gpu, threaded=False, meter_provider=sdk.meter_provider) as second,
            second.gpu_task("nmt"),
        ):
            pass
        assert len(sdk.spans()) == 2
        assert sdk.points("gputime.task.duration")[(("gputime.service", "nmt"),)].count == 2

    def test_global_provider_that_is_a_no_op(self, fresh_globals: None, gpu: SimulatedGpu):
        otel_trace.set_tracer_provider(NoOpTracerProvider())
        otel_metrics.set_meter_provider(NoOpMeterProvider())
        with Tracker(backend=gpu, threaded=False) as tracker, tracker.gpu_task("nmt") as task:
            assert task._otel is None
        assert tracker._emitter._tracer is None
        assert tracker._emitter.histogram is None

    def test_sdk_set_later_to_a_no_op(self, fresh_globals: None, gpu: SimulatedGpu):
        with Tracker(backend=gpu, threaded=False) as tracker:
            otel_trace.set_tracer_provider(NoOpTracerProvider())
            otel_metrics.set_meter_provider(NoOpMeterProvider())
            with tracker.gpu_task("nmt") as task:
                assert task._otel is None
            assert tracker._emitter._tracer_pending is False
            assert tracker._emitter._metrics_pending is False

    def test_global_meter_provider_found_without_the_private_global(
        self, fresh_globals: None, monkeypatch: pytest.MonkeyPatch, sdk: Sdk
    ):
        # Should a future API rename its module global, the public getter decides.
        monkeypatch.setattr(_providers, "metrics_internal", object())
        assert _providers.global_meter_provider() is None
        otel_metrics.set_meter_provider(sdk.meter_provider)  # type: ignore[arg-type]
        assert _providers.global_meter_provider() is sdk.meter_provider

    def test_sampled_out_span_is_current_but_gets_no_attributes(self, gpu: SimulatedGpu):
        exporter = InMemorySpanExporter()
        provider = TracerProvider(sampler=ALWAYS_OFF)
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        tracker = Tracker(backend=gpu, threaded=False, tracer_provider=provider)
        with tracker, tracker.gpu_task("nmt") as task:
            span, _, _ = task._otel  # type: ignore[misc]
            assert otel_trace.get_current_span() is span
            assert not span.is_recording()
        assert exporter.get_finished_spans() == ()


# -- metrics ---------------------------------------------------------------------------------


class TestFaults:
    def test_a_provider_that_fails_at_set_up(
        self, gpu: SimulatedGpu, caplog: pytest.LogCaptureFixture
    ):
        with caplog.at_level(logging.WARNING, logger="gputime"):
            tracker = Tracker(
                backend=gpu,
                threaded=False,
                tracer_provider=Broken(),  # type: ignore[arg-type]
                meter_provider=Broken(),  # type: ignore[arg-type]
            )
        with tracker, tracker.gpu_task("nmt"):
            pass
        assert tracker.stats("nmt").task_count == 1
        assert "otel.tracer failed" in caplog.text
        assert "otel.meter failed" in caplog.text

    def test_a_tracer_that_fails_per_span(
        self, gpu: SimulatedGpu, caplog: pytest.LogCaptureFixture
    ):
        provider = TracerProvider()
        with Tracker(backend=gpu, threaded=False, tracer_provider=provider) as tracker:
            tracker._emitter._tracer = Broken()  # type: ignore[assignment]
            with caplog.at_level(logging.WARNING, logger="gputime"):
                for _ in range(3):
                    with tracker.gpu_task("nmt"):
                        pass
        assert caplog.text.count("otel.span failed") == 1

    def test_a_span_that_fails_to_end(self, gpu: SimulatedGpu, caplog, sdk: Sdk):
        tracker = Tracker(backend=gpu, threaded=False, tracer_provider=sdk.tracer_provider)
        with (
            tracker,
            caplog.at_level(logging.WARNING, logger="gputime"),
            tracker.gpu_task("nmt") as task,
        ):
            span, token, context = task._otel  # type: ignore[misc]
            task._otel = (BrokenSpan(span), token, context)
        assert "otel.span failed" in caplog.text
        assert otel_trace.get_current_span() is otel_trace.INVALID_SPAN  # still detached

    def test_a_failing_histogram(self, traced: Tracker, caplog: pytest.LogCaptureFixture):
        traced._emitter.histogram = Broken()  # type: ignore[assignment]
        with caplog.at_level(logging.WARNING, logger="gputime"), traced.gpu_task("nmt"):
            pass
        assert "otel.metric failed" in caplog.text

    def test_a_failing_collection(
        self, traced: Tracker, sdk: Sdk, monkeypatch: pytest.MonkeyPatch, caplog
    ):
        with traced.gpu_task("nmt"):
            pass

        def broken_stats(service: str | None = None) -> Any:
            raise RuntimeError("ledger on fire")

        assert traced._member is not None
        monkeypatch.setattr(traced._member, "_totals", broken_stats)
        with caplog.at_level(logging.WARNING, logger="gputime"):
            assert sdk.points("gputime.gpu.busy_time") == {}
        assert "otel.metric failed" in caplog.text

    def test_failing_activation(self, traced: Tracker, monkeypatch: pytest.MonkeyPatch, caplog):
        @traced.gpu_task("nmt")
        def tokens() -> Iterator[int]:
            yield 1

        monkeypatch.setattr(_emitter.otel_context, "attach", Broken().attach)
        monkeypatch.setattr(_emitter.otel_context, "detach", Broken().detach)
        with caplog.at_level(logging.WARNING, logger="gputime"):
            assert list(tokens()) == [1]
            traced._emitter.deactivate(object())
        assert "otel.context failed" in caplog.text

    def test_a_failing_borrowed_span(self, traced: Tracker, monkeypatch, caplog):
        monkeypatch.setattr(_emitter.otel_trace, "get_current_span", Broken().get)
        with caplog.at_level(logging.WARNING, logger="gputime"), traced.gpu_task("nmt", span=False):
            pass
        assert "otel.span failed" in caplog.text

    def test_global_resolution_faults(
        self, fresh_globals: None, gpu: SimulatedGpu, monkeypatch, caplog
    ):
        with Tracker(backend=gpu, threaded=False) as tracker:
            monkeypatch.setattr(otel_trace, "_TRACER_PROVIDER", Broken())
            monkeypatch.setattr(metrics_internal, "_METER_PROVIDER", Broken())
            with caplog.at_level(logging.WARNING, logger="gputime"), tracker.gpu_task("nmt"):
                pass
        assert "otel.tracer failed" in caplog.text
        assert "otel.meter failed" in caplog.text
