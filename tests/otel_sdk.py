"""The OpenTelemetry SDK set up for one test: in-memory spans and metrics, and fixtures.

Every test injects its own tracer and meter providers (in-memory span exporter,
in-memory metric reader) into a tracker on the simulated GPU and the fake clock,
so the figures are exact. Tests of the global providers swap the API's globals
with ``monkeypatch`` and get them restored (``fresh_globals``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from opentelemetry import trace as otel_trace
from opentelemetry.metrics import _internal as metrics_internal
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util._once import Once

from gputime import Tracker
from gputime.testing import SimulatedGpu

P = 1 / 6


# -- fixtures and helpers --------------------------------------------------------------------


@dataclass
class Sdk:
    """An SDK set up for one test: spans land in ``spans``, metrics in ``reader``."""

    exporter: InMemorySpanExporter = field(default_factory=InMemorySpanExporter)
    reader: InMemoryMetricReader = field(default_factory=InMemoryMetricReader)
    tracer_provider: TracerProvider = field(default_factory=TracerProvider)
    meter_provider: MeterProvider | None = None

    def __post_init__(self) -> None:
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def span(self, name: str) -> ReadableSpan:
        found = [s for s in self.spans() if s.name == name]
        assert len(found) == 1, [s.name for s in self.spans()]
        return found[0]

    def metrics(self) -> dict[str, Any]:
        """Metric name -> the SDK's metric, from one collection."""
        data = self.reader.get_metrics_data()
        out: dict[str, Any] = {}
        if data is None:
            return out
        for resource_metrics in data.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    out[metric.name] = (scope_metrics.scope, metric)
        return out

    def points(self, name: str, metrics: Mapping[str, Any] | None = None) -> dict[Any, Any]:
        """Data points of one metric keyed by their attributes (as sorted tuples)."""
        metrics = self.metrics() if metrics is None else metrics
        if name not in metrics:
            return {}
        _, metric = metrics[name]
        return {tuple(sorted(point.attributes.items())): point for point in metric.data.data_points}

    def value(self, name: str, service: str = "nmt") -> float:
        point = self.points(name).get((("gputime.service", service),))
        assert point is not None, f"no {name} point for {service}"
        return float(point.value)

    def close(self) -> None:
        self.tracer_provider.shutdown()
        assert self.meter_provider is not None
        self.meter_provider.shutdown()


@pytest.fixture
def sdk() -> Iterator[Sdk]:
    setup = Sdk()
    yield setup
    setup.close()


@pytest.fixture
def traced(gpu: SimulatedGpu, sdk: Sdk) -> Iterator[Tracker]:
    """A tracker on the simulated GPU whose spans and metrics go to ``sdk``."""
    with Tracker(
        backend=gpu,
        threaded=False,
        tracer_provider=sdk.tracer_provider,
        meter_provider=sdk.meter_provider,
    ) as tracker:
        yield tracker


@pytest.fixture
def busy(gpu: SimulatedGpu) -> SimulatedGpu:
    gpu.set_utilization(100)
    return gpu


@pytest.fixture
def fresh_globals(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unset global tracer and meter providers, restored after the test."""
    monkeypatch.setattr(otel_trace, "_TRACER_PROVIDER", None)
    monkeypatch.setattr(otel_trace, "_TRACER_PROVIDER_SET_ONCE", Once())
    monkeypatch.setattr(metrics_internal, "_METER_PROVIDER", None)
    monkeypatch.setattr(metrics_internal, "_METER_PROVIDER_SET_ONCE", Once())
    monkeypatch.setattr(
        metrics_internal, "_PROXY_METER_PROVIDER", metrics_internal._ProxyMeterProvider()
    )
    monkeypatch.delenv("OTEL_PYTHON_TRACER_PROVIDER", raising=False)
    monkeypatch.delenv("OTEL_PYTHON_METER_PROVIDER", raising=False)


class MyError(Exception):
    class NestedError(Exception):
        pass


def _current_span_id() -> int:
    return otel_trace.get_current_span().get_span_context().span_id


class Broken:
    """Stands in for any OpenTelemetry object: every call raises."""

    def __getattr__(self, name: str) -> Any:
        def fail(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError(f"broken {name}")

        return fail


class BrokenSpan:
    def __init__(self, span: Any) -> None:
        self._span = span

    def is_recording(self) -> bool:
        return True

    def set_attributes(self, attributes: Any) -> None:
        raise RuntimeError("attributes refused")

    def end(self) -> None:
        self._span.end()
        raise RuntimeError("end refused")
