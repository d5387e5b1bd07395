"""A Starlette app whose endpoints stream from measured generators, as users write them.

Used in-process by ``test_streaming.py`` and as a separate uvicorn server by
``test_soak.py`` (``python -m tests.e2e.streaming_app --port N``). Each body is a
generator that a client may abandon mid-stream; it is kept inside a reference
cycle, so only the cyclic garbage collector frees it, as happens in real
servers through exception tracebacks.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
from collections.abc import AsyncIterator, Iterator

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from gputime import Tracker
from gputime.testing import SimulatedGpu

#: Chunks per streamed response, and the pause before each.
CHUNKS = 8
PAUSE_S = 0.002

#: Services, one per kind of streaming body (and one for a plain handler).
SERVICES = ("sync-decorated", "sync-with", "async-decorated", "async-with", "compute")


def make_app(tracker: Tracker) -> Starlette:
    """The app, measuring on ``tracker``."""

    @tracker.gpu_task("sync-decorated")
    def sync_decorated(cycle: list[object]) -> Iterator[bytes]:
        for i in range(CHUNKS):
            time.sleep(PAUSE_S)
            yield b"chunk %d\n" % i

    def sync_with(cycle: list[object]) -> Iterator[bytes]:
        with tracker.gpu_task("sync-with"):
            for i in range(CHUNKS):
                time.sleep(PAUSE_S)
                yield b"chunk %d\n" % i

    @tracker.gpu_task("async-decorated")
    async def async_decorated(cycle: list[object]) -> AsyncIterator[bytes]:
        for i in range(CHUNKS):
            await asyncio.sleep(PAUSE_S)
            yield b"chunk %d\n" % i

    async def async_with(cycle: list[object]) -> AsyncIterator[bytes]:
        async with tracker.gpu_task("async-with"):
            for i in range(CHUNKS):
                await asyncio.sleep(PAUSE_S)
                yield b"chunk %d\n" % i

    bodies = {
        "sync-decorated": sync_decorated,
        "sync-with": sync_with,
        "async-decorated": async_decorated,
        "async-with": async_with,
    }

    async def stream(request: Request) -> Response:
        kind = request.path_params["kind"]
        cycle: list[object] = []
        body = bodies[kind](cycle)
        cycle.append(body)  # body -> its frame -> cycle -> body
        return StreamingResponse(body, media_type="text/plain")

    @tracker.gpu_task("compute")
    async def compute(request: Request) -> Response:
        await asyncio.sleep(PAUSE_S)
        return JSONResponse({"ok": True})

    async def stats(request: Request) -> Response:
        # Abandoned bodies are closed by the collector; async ones then by a
        # task the event loop runs: give those a moment.
        for _ in range(200):
            gc.collect()
            await asyncio.sleep(0.01)
            if all(s.active_tasks == 0 for s in tracker.stats().values()):
                break
        return JSONResponse(
            {
                name: {"task_count": s.task_count, "active_tasks": s.active_tasks}
                for name, s in tracker.stats().items()
            }
        )

    return Starlette(
        routes=[
            Route("/stream/{kind}", stream),
            Route("/compute", compute),
            Route("/stats", stats),
        ]
    )


class DropExporter(MetricExporter):
    """A metric exporter that drops what it is given: the collection is what matters."""

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: object
    ) -> MetricExportResult:
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: object) -> None:
        pass


def _serve() -> None:
    """The soak test's server: an SDK as applications set one up, collections often."""
    import uvicorn

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(InMemorySpanExporter()))
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(
        MeterProvider(
            metric_readers=[
                PeriodicExportingMetricReader(DropExporter(), export_interval_millis=50)
            ]
        )
    )
    gpu = SimulatedGpu(sample_period=0.02)
    gpu.set_utilization(60)
    tracker = Tracker(backend=gpu, interval=0.01)
    # Frequent collections: the collector runs inside whatever holds a lock.
    gc.set_threshold(50, 5, 5)
    uvicorn.run(make_app(tracker), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    _serve()
