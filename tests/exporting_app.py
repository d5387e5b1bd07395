"""A process that exports gputime's metrics as users deploy it, for ``gputime watch`` tests.

OpenTelemetry SDK -> ``opentelemetry-exporter-prometheus`` -> ``prometheus_client``'s
HTTP server on 127.0.0.1 (a free port, printed as ``port N``). The tasks run on a
``SimulatedGpu`` driven by a ``FakeClock``, so the exported figures are exact:

- ``nmt``: two tasks at 100 %: 1 s and 0.25 s (1250 GPU ms, 1250 util ms);
- ``tts``: one task at 50 %, still running, 2 s so far (2000 GPU ms, 1000 util ms).

Then it reads commands on stdin, one per line, and answers ``ok`` to each:
``advance S`` (the clock moves S seconds, the sampler reads), ``reset`` (every
service's figures go back to zero). It exits at the end of its input.
"""

from __future__ import annotations

import sys

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import CollectorRegistry, start_http_server

from gputime import Tracker
from gputime.testing import FakeClock, SimulatedGpu

P = 1 / 6


def main() -> None:
    registry = CollectorRegistry()
    reader = PrometheusMetricReader(registry=registry)
    provider = MeterProvider(metric_readers=[reader])
    server, _thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    clock = FakeClock()
    gpu = SimulatedGpu(clock=clock)
    with Tracker(backend=gpu, threaded=False, meter_provider=provider) as tracker:
        gpu.set_utilization(100)
        with tracker.gpu_task("nmt"):
            clock.advance(6 * P)
        with tracker.gpu_task("nmt"):
            clock.advance(0.25)
        clock.advance(0.25)  # tts starts on a driver sample's boundary (9 P)
        gpu.set_utilization(50)
        running = tracker.gpu_task("tts")
        running.__enter__()
        clock.advance(12 * P)
        tracker.poll()
        print(f"port {server.server_port}", flush=True)
        for line in sys.stdin:
            command = line.split()
            if command[:1] == ["advance"]:
                clock.advance(float(command[1]))
                tracker.poll()
            elif command == ["reset"]:
                tracker.reset()
            print("ok", flush=True)
        running.__exit__(None, None, None)
    server.shutdown()
    provider.shutdown()


if __name__ == "__main__":
    main()
