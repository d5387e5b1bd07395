"""Streaming responses through a real Starlette app under a real uvicorn server.

Bodies are measured generators (decorated, or holding ``with gpu_task``; sync
and async), clients hang up mid-stream, a metric reader collects all the while,
and the abandoned bodies are closed by the garbage collector. Every task must
be counted once, every span ended, and OpenTelemetry must log no "Failed to
detach context".
"""

from __future__ import annotations

import gc
import logging
import random
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gputime import Tracker
from gputime.testing import SimulatedGpu
from tests.e2e.conftest import free_port, get_json, installed, require, stream_request, wait_for

KINDS = ("sync-decorated", "sync-with", "async-decorated", "async-with")


@dataclass
class Server:
    port: int
    tracker: Tracker
    spans: InMemorySpanExporter
    reader: InMemoryMetricReader


@pytest.fixture
def server() -> Iterator[Server]:
    require(installed("uvicorn") and installed("starlette"), "uvicorn and starlette (dev)")
    import uvicorn

    from tests.e2e.streaming_app import make_app

    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    gpu = SimulatedGpu(sample_period=0.02)
    gpu.set_utilization(50)
    tracker = Tracker(
        backend=gpu,
        interval=0.01,
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
    )
    port = free_port()
    config = uvicorn.Config(
        make_app(tracker), host="127.0.0.1", port=port, log_level="warning", lifespan="off"
    )
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, name="uvicorn", daemon=True)
    thread.start()
    wait_for("uvicorn to start", lambda: uv.started)
    threshold = gc.get_threshold()
    gc.set_threshold(50, 5, 5)  # frequent collections, on every thread
    yield Server(port, tracker, spans, reader)
    gc.set_threshold(*threshold)
    uv.should_exit = True
    thread.join(timeout=30)
    tracker.close()
    meter_provider.shutdown()
    tracer_provider.shutdown()


def test_every_stream_is_counted_and_no_context_error(
    server: Server, caplog: pytest.LogCaptureFixture
):
    rng = random.Random(11)
    plan = [(rng.choice(KINDS), rng.random() < 0.5) for _ in range(160)]
    done = threading.Event()

    def collect_metrics() -> None:
        while not done.is_set():
            server.reader.get_metrics_data()
            done.wait(0.005)

    collector = threading.Thread(target=collect_metrics, name="metric-reader", daemon=True)
    with caplog.at_level(logging.DEBUG), ThreadPoolExecutor(max_workers=16) as pool:
        collector.start()
        try:
            started = list(
                pool.map(
                    lambda step: stream_request(server.port, f"/stream/{step[0]}", hang_up=step[1]),
                    plan,
                )
            )
            reported = get_json(server.port, "/stats")  # collects abandoned bodies first
        finally:
            done.set()
            collector.join(timeout=10)
    assert all(started)
    for kind in KINDS:
        expected = sum(1 for k, _ in plan if k == kind)
        assert reported[kind] == {"task_count": expected, "active_tasks": 0}, kind
    assert "Failed to detach context" not in caplog.text
    assert len(server.spans.get_finished_spans()) == len(plan)
