"""Spans and metrics exported over OTLP/HTTP and decoded with the official protobuf messages."""

from __future__ import annotations

from typing import Any

import pytest

from gputime import Tracker
from gputime.testing import FakeClock, SimulatedGpu
from tests.e2e.conftest import OtlpReceiver, wait_for

P = 1 / 6


class ModelError(Exception):
    pass


def _attributes(key_values: Any) -> dict[str, Any]:
    """OTLP KeyValues as {key: (value kind, python value)}."""
    out: dict[str, Any] = {}
    for kv in key_values:
        kind = kv.value.WhichOneof("value")
        value = getattr(kv.value, kind)
        if kind == "array_value":
            value = [getattr(v, v.WhichOneof("value")) for v in value.values]
        out[kv.key] = (kind, value)
    return out


def test_spans_over_otlp_http(otlp_receiver: OtlpReceiver) -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": "gputime-e2e"}))
    exporter = OTLPSpanExporter(endpoint=f"{otlp_receiver.endpoint}/v1/traces", timeout=5)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    tracer = provider.get_tracer("e2e")
    clock = FakeClock()
    gpu = SimulatedGpu(devices=2, clock=clock)
    try:
        with Tracker(backend=gpu, threaded=False, tracer_provider=provider) as tracker:
            gpu.set_utilization(100, device=0)
            gpu.set_utilization(50, device=1)
            with tracer.start_as_current_span("request"):
                with tracker.gpu_task("nmt", attributes={"model": "nllb", "batch": 8}):
                    clock.advance(6 * P)
                    with tracer.start_as_current_span("decode"):
                        pass

                @tracker.gpu_task("tts", name="synthesise")
                def synthesise() -> None:
                    clock.advance(3 * P)
                    raise ModelError("voice not loaded")

                with pytest.raises(ModelError):
                    synthesise()
        assert provider.force_flush(10_000)
    finally:
        provider.shutdown()

    wait_for("the spans at the receiver", lambda: otlp_receiver.traces)
    assert set(otlp_receiver.content_types) == {"application/x-protobuf"}
    spans = {}
    for request in otlp_receiver.traces:
        for resource_spans in request.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            assert resource["service.name"] == ("string_value", "gputime-e2e")
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    spans[span.name] = (scope_spans.scope, span)
    assert set(spans) == {"request", "gpu_task nmt", "decode", "synthesise"}

    scope, nmt = spans["gpu_task nmt"]
    assert (scope.name, scope.version) == ("gputime", __import__("gputime").__version__)
    assert nmt.kind == nmt.SPAN_KIND_INTERNAL
    assert nmt.parent_span_id == spans["request"][1].span_id
    assert spans["decode"][1].parent_span_id == nmt.span_id
    assert nmt.status.code == nmt.status.STATUS_CODE_UNSET
    attrs = _attributes(nmt.attributes)
    assert attrs == {
        "gputime.service": ("string_value", "nmt"),
        "gputime.gpu.busy_ms": ("double_value", pytest.approx(2000.0)),
        "gputime.gpu.util_ms": ("double_value", pytest.approx(1500.0)),
        "gputime.gpu.ids": ("array_value", ["SIM-0", "SIM-1"]),
        "gputime.gpu.devices.ids": ("array_value", ["SIM-0", "SIM-1"]),
        "gputime.gpu.devices.busy_ms": ("array_value", pytest.approx([1000.0, 1000.0])),
        "gputime.gpu.devices.util_ms": ("array_value", pytest.approx([1000.0, 500.0])),
        "gputime.gpu.devices.status": ("array_value", ["ok", "ok"]),
        "gputime.task.concurrency": ("int_value", 1),
        "gputime.status": ("string_value", "ok"),
        "model": ("string_value", "nllb"),
        "batch": ("int_value", 8),
    }

    _, failed = spans["synthesise"]
    assert failed.parent_span_id == spans["request"][1].span_id
    assert failed.status.code == failed.status.STATUS_CODE_ERROR
    attrs = _attributes(failed.attributes)
    assert attrs["error.type"] == ("string_value", f"{__name__}.ModelError")
    assert attrs["gputime.gpu.busy_ms"] == ("double_value", pytest.approx(1000.0))
    assert attrs["gputime.status"] == ("string_value", "ok")
    assert [event.name for event in failed.events] == ["exception"]
    event = _attributes(failed.events[0].attributes)
    assert event["exception.type"][1].endswith("ModelError")
    assert event["exception.message"] == ("string_value", "voice not loaded")


def test_metrics_over_otlp_http(otlp_receiver: OtlpReceiver) -> None:
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.proto.metrics.v1.metrics_pb2 import AGGREGATION_TEMPORALITY_CUMULATIVE
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

    exporter = OTLPMetricExporter(endpoint=f"{otlp_receiver.endpoint}/v1/metrics", timeout=5)
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    provider = MeterProvider(metric_readers=[reader])
    clock = FakeClock()
    gpu = SimulatedGpu(clock=clock)
    try:
        with Tracker(backend=gpu, threaded=False, meter_provider=provider) as tracker:
            gpu.set_utilization(100)
            with tracker.gpu_task("nmt"):
                clock.advance(6 * P)
            clock.advance(P)
            tracker.poll()
            assert provider.force_flush(10_000)
    finally:
        provider.shutdown()

    wait_for("the metrics at the receiver", lambda: otlp_receiver.metrics)
    metrics = {}
    for request in otlp_receiver.metrics:
        for resource_metrics in request.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    metrics[metric.name] = metric
    busy = metrics["gputime.gpu.busy_time"]
    assert busy.unit == "s"
    assert busy.sum.is_monotonic
    assert busy.sum.aggregation_temporality == AGGREGATION_TEMPORALITY_CUMULATIVE
    (point,) = busy.sum.data_points
    assert _attributes(point.attributes) == {"gputime.service": ("string_value", "nmt")}
    assert point.as_double == pytest.approx(1.0)
    active = metrics["gputime.task.active"]
    assert active.unit == "{task}"
    assert not active.sum.is_monotonic
    duration = metrics["gputime.task.duration"]
    assert duration.unit == "s"
    (hist,) = duration.histogram.data_points
    assert hist.count == 1
    assert hist.sum == pytest.approx(1.0)
    assert list(hist.explicit_bounds)[:3] == [0.001, 0.0025, 0.005]
