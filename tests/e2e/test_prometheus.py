"""gputime's metrics scraped by a real Prometheus server, read back through its query API.

The path under test is the one users deploy: OpenTelemetry SDK ->
``opentelemetry-exporter-prometheus`` (an HTTP endpoint on loopback) ->
Prometheus scraping it -> PromQL. The figures come from the simulated GPU on a
fake clock, so the values Prometheus stores are exact.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from gputime import Tracker
from gputime.testing import FakeClock, SimulatedGpu
from tests.e2e.conftest import Prometheus, free_port, installed, require, wait_for

P = 1 / 6


@pytest.fixture
def exporter() -> Iterator[tuple[Any, str]]:
    """A meter provider exporting to a Prometheus endpoint on 127.0.0.1; its address."""
    require(
        installed("opentelemetry.exporter.prometheus"),
        "opentelemetry-exporter-prometheus is not installed (dev dependencies)",
    )
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.resources import Resource
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry()
    try:
        reader = PrometheusMetricReader(registry=registry)
    except TypeError:  # an exporter older than its registry argument: the global one
        from prometheus_client import REGISTRY

        registry = REGISTRY
        reader = PrometheusMetricReader()
    provider = MeterProvider(
        metric_readers=[reader], resource=Resource.create({"service.name": "gputime-e2e"})
    )
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    yield provider, f"127.0.0.1:{port}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)
    provider.shutdown()  # also unregisters the reader's collector from the registry


def _by_service(result: dict[tuple[tuple[str, str], ...], float]) -> dict[str, float]:
    return {dict(labels)["gputime_service"]: value for labels, value in result.items()}


def busy_in(prometheus: Prometheus) -> dict[str, float]:
    return _by_service(prometheus.query("gputime_gpu_busy_time_seconds_total"))


def test_prometheus_scrapes_gputime_metrics(
    exporter: tuple[Any, str], start_prometheus: Callable[[str], Prometheus]
) -> None:
    meter_provider, target = exporter
    prometheus = start_prometheus(target)
    clock = FakeClock()
    gpu = SimulatedGpu(clock=clock)
    with Tracker(backend=gpu, threaded=False, meter_provider=meter_provider) as tracker:
        gpu.set_utilization(100)
        with tracker.gpu_task("nmt"):
            clock.advance(6 * P)
        with tracker.gpu_task("nmt"):
            clock.advance(0.25)
        with pytest.raises(ValueError, match="bad input"), tracker.gpu_task("nmt"):
            raise ValueError("bad input")
        gpu.set_utilization(50)
        with tracker.gpu_task("tts"):
            # A long task: its GPU time shows in Prometheus before it ends.
            clock.advance(12 * P)
            tracker.poll()
            so_far = tracker.stats("tts").gpu_ms / 1000
            assert so_far > 1.5
            wait_for(
                "the running task's GPU time in Prometheus",
                lambda: busy_in(prometheus).get("tts") == pytest.approx(so_far),
            )
            active = prometheus.query('gputime_task_active{gputime_service="tts"}')
            assert list(active.values()) == [1.0]
        clock.advance(P)
        tracker.poll()  # the sample covering the end arrives

        stats = tracker.stats()
        expected = {name: pytest.approx(s.gpu_ms / 1000) for name, s in stats.items()}
        assert expected == {"nmt": pytest.approx(1.25), "tts": pytest.approx(2.0)}
        wait_for("the final totals in Prometheus", lambda: busy_in(prometheus) == expected)
        util = _by_service(prometheus.query("gputime_gpu_util_time_seconds_total"))
        assert util == {name: pytest.approx(s.gpu_util_ms / 1000) for name, s in stats.items()}
        assert _by_service(prometheus.query("gputime_task_active")) == {"nmt": 0.0, "tts": 0.0}

        counts = prometheus.query("gputime_task_duration_seconds_count")
        by_labels = {
            (dict(labels)["gputime_service"], dict(labels).get("error_type")): value
            for labels, value in counts.items()
        }
        assert by_labels == {("nmt", None): 2.0, ("nmt", "ValueError"): 1.0, ("tts", None): 1.0}
        # The bucket boundaries are gputime's, in seconds.
        buckets = prometheus.query(
            'gputime_task_duration_seconds_bucket{gputime_service="nmt",error_type=""}'
        )
        les = {dict(labels)["le"]: value for labels, value in buckets.items()}
        assert les["0.25"] == 1.0  # the 0.25 s task
        assert les["1.0"] == 2.0  # and the 1 s one
        assert les["600.0"] == 2.0
        assert les["+Inf"] == 2.0
        # The resource identifies the process (see docs: aggregating processes and hosts).
        info = prometheus.query("target_info")
        assert [dict(labels)["service_name"] for labels in info] == ["gputime-e2e"]
