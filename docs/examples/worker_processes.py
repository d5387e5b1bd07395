"""Several worker processes, as gunicorn or ``uvicorn --workers`` run them.

Every worker is a process of its own, with its own default tracker, its own
``gputime.stats()`` and its own metric series: a service's figure for the whole
server is the sum over the workers (docs/recipes/workers.md).

This demo forks three workers (gunicorn forks its workers too). Each one does
what a gunicorn ``post_fork`` hook does: sets up the OpenTelemetry SDK with a
resource naming the worker, then gputime; then it handles a few requests and
reports what it measured and what it exported. The parent adds them up.

The workers here each drive a simulated GPU of their own; on a real machine they
share the GPU, which is where ``attribution`` matters (see the recipe page).
"""

from __future__ import annotations

import multiprocessing
import os
import time
from multiprocessing.queues import Queue

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource

import gputime
from gputime import gpu_task
from gputime.testing import SimulatedGpu

WORKERS = 3
REQUESTS = {0: 2, 1: 3, 2: 4}  # requests each worker happens to get
MODEL_S = 0.05  # GPU time of one request

GPU: SimulatedGpu | None = None  # the worker's simulated GPU


def post_fork(worker: int) -> InMemoryMetricReader:
    """Per worker, after the fork: the SDK first, then gputime on top of it."""
    global GPU
    reader = InMemoryMetricReader()  # in production: an OTLP or Prometheus reader
    provider = MeterProvider(
        metric_readers=[reader],
        # Distinct per worker, or the workers' series collide where they meet.
        resource=Resource.create(
            {"service.name": "inference", "service.instance.id": f"w{worker}"}
        ),
    )
    GPU = SimulatedGpu()
    # On a GPU machine: gputime.configure(meter_provider=provider, attribution="process").
    gputime.configure(backend=GPU, meter_provider=provider)
    return reader


@gpu_task("nmt")
def handle_request() -> None:
    """Stand-in for a request handler whose model keeps the GPU busy."""
    assert GPU is not None
    GPU.set_utilization(100)
    time.sleep(MODEL_S)
    GPU.set_utilization(0)


def settle() -> None:
    """Wait for the service totals to take the last task's end.

    They take the driver's samples only, so they grow until the sample covering
    the end is out (one sample period later) and read (the sampler's next tick,
    or this poll). A server exporting all along needs none of this.
    """
    assert GPU is not None
    time.sleep(2 * GPU.sample_period)
    gputime.get_tracker().poll()


def exported_busy_seconds(reader: InMemoryMetricReader) -> float:
    """What this worker exports as gputime.gpu.busy_time for nmt (Prometheus:
    gputime_gpu_busy_time_seconds_total{gputime_service="nmt"})."""
    data = reader.get_metrics_data()
    for resource_metrics in data.resource_metrics if data else []:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                if metric.name == "gputime.gpu.busy_time":
                    for point in metric.data.data_points:
                        if point.attributes.get("gputime.service") == "nmt":
                            return float(point.value)
    return 0.0


def worker_main(worker: int, results: Queue[tuple[int, int, int, float, float]]) -> None:
    reader = post_fork(worker)
    for _ in range(REQUESTS[worker]):
        handle_request()
    settle()
    nmt = gputime.stats("nmt")
    results.put((worker, os.getpid(), nmt.task_count, nmt.gpu_ms, exported_busy_seconds(reader)))


def main() -> None:
    context = multiprocessing.get_context("fork")
    results: Queue[tuple[int, int, int, float, float]] = context.Queue()
    workers = [context.Process(target=worker_main, args=(w, results)) for w in range(WORKERS)]
    for process in workers:
        process.start()
    rows = sorted(results.get(timeout=60) for _ in workers)
    for process in workers:
        process.join(timeout=30)
    print("worker  pid       nmt tasks  stats() GPU ms  exported busy_time (s)")
    for worker, pid, tasks, gpu_ms, exported in rows:
        print(f"w{worker}      {pid:<8}  {tasks:9}  {gpu_ms:14.1f}  {exported:22.3f}")
    total_tasks = sum(row[2] for row in rows)
    total_ms = sum(row[3] for row in rows)
    print(f"server  (sum)     {total_tasks:9}  {total_ms:14.1f}  {total_ms / 1000:22.3f}")


if __name__ == "__main__":
    main()
