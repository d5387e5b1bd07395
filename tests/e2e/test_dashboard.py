"""The Grafana dashboard (docs/grafana/gputime-fleet.json) queries what gputime exports.

Every PromQL query of the dashboard (panel targets and template variables) is
checked against a real scrape of this process exporting through
``opentelemetry-exporter-prometheus``: each metric name it uses is one the
scrape has, and each label is one the scrape has, or ``host_name``, which the
OpenTelemetry Collector adds from the resource attribute ``host.name``
(``resource_to_telemetry_conversion``, docs/fleet.md; the scrape's
``target_info`` shows the same translation). The names are taken from the
scrape, never written down here: the exporter's translation of
``gputime.gpu.busy_time`` (unit ``s``) into ``gputime_gpu_busy_time_seconds_total``
is what is being checked.

Then a real Prometheus server scrapes the process (adding ``host_name`` as the
collector would) and runs every panel query, with Grafana's variables
replaced, until each returns data.
"""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gputime import Tracker
from gputime.testing import FakeClock, SimulatedGpu
from tests.e2e.conftest import Prometheus, free_port, installed, require, wait_for

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "docs" / "grafana" / "gputime-fleet.json"

#: Labels the collector adds (docs/fleet.md): resource attributes made labels.
COLLECTOR_LABELS = {"host_name"}

#: Grafana's variables, as the test's Prometheus (scraping every 250 ms) can answer them.
VARIABLES = {
    "$__rate_interval": "5s",
    "$__range": "30s",
    "$service": ".*",
    "$host": ".*",
}

KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring"}
KEYWORDS |= {"group_left", "group_right", "inf", "nan"}


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, query) for every panel target and template variable query."""
    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    found = []

    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    for panel in panels(board["panels"]):
        for target in panel.get("targets", []):
            found.append((f"panel {panel['title']!r} {target['refId']}", target["expr"]))
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            found.append((f"variable {variable['name']}", query.get("query", query)))
    return found


QUERIES = dashboard_queries()


def names_in(query: str) -> tuple[set[str], set[str]]:
    """The metric names and the label names a PromQL query (or ``label_values``) uses."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', query)  # string values say nothing
    labels: set[str] = set()
    values = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\)\s*", text)
    if values:  # Grafana's label_values(selector, label)
        text, label = values[1], values[2]
        labels.add(label)
    for block in re.findall(r"\{([^}]*)\}", text):
        labels |= set(re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", block))
    clause = r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)"
    for names in re.findall(clause, text):
        labels |= {name.strip() for name in names.split(",") if name.strip()}
    text = re.sub(clause, " ", text)
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", text)
    text = re.sub(r"\b\d+(?:\.\d+)?(?:e[+-]?\d+)?\b", " ", text)
    metrics = {
        match[0]
        for match in re.finditer(r"[A-Za-z_:][\w:]*", text)
        if match[0] not in KEYWORDS and not re.match(r"\s*\(", text[match.end() :])
    }
    return metrics, labels


@pytest.fixture(scope="module")
def exporting() -> Iterator[str]:
    """This process exporting a workload's metrics on 127.0.0.1; its ``host:port``.

    Every instrument has data: energy (a GPU that measures it), an error type (a
    task that raised), a running task (the up-down counter at 1), and the per
    device counters (two GPUs, ``metrics_per_device=True``: the ``hw_id`` label).
    """
    require(
        installed("opentelemetry.exporter.prometheus"),
        "opentelemetry-exporter-prometheus is not installed (dev dependencies)",
    )
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.resources import Resource
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry()
    provider = MeterProvider(
        metric_readers=[PrometheusMetricReader(registry=registry)],
        resource=Resource.create({"service.name": "inference", "host.name": "gpu-host-1"}),
    )
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    clock = FakeClock()
    gpu = SimulatedGpu(2, clock=clock, measure_energy=True)
    tracker = Tracker(backend=gpu, threaded=False, meter_provider=provider, metrics_per_device=True)
    for device in (0, 1):
        gpu.set_utilization(80, device=device)
        gpu.set_power(250, device=device)
    with tracker.gpu_task("nmt"):
        clock.advance(1.0)
    failed = tracker.start_task("nmt")
    clock.advance(0.5)
    failed.end(ValueError("bad input"))
    running = tracker.start_task("tts")
    clock.advance(1.0)
    tracker.poll()
    yield f"127.0.0.1:{port}"
    running.end()
    tracker.close()
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)
    provider.shutdown()


def scrape(target: str) -> tuple[set[str], set[str], dict[str, str]]:
    """Sample names, label names, and target_info's labels of one scrape."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://{target}/metrics", timeout=10) as response:
        text = response.read().decode()
    names: set[str] = set()
    labels: set[str] = set()
    target_info: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "target_info":
                target_info = dict(sample.labels)
                continue
            names.add(sample.name)
            labels |= set(sample.labels)
    return names, labels, target_info


def test_the_dashboard_is_found_and_queried() -> None:
    assert len(QUERIES) >= 10, QUERIES
    metrics = set().union(*(names_in(query)[0] for _, query in QUERIES))
    # The parser sees metric names, not functions or keywords.
    assert "gputime_gpu_busy_time_seconds_total" in metrics
    assert not metrics & {"sum", "rate", "histogram_quantile", "label_values", "by"}


def test_the_collector_label_is_the_translated_resource_attribute(exporting: str) -> None:
    # The exporter shows the resource in target_info, translated like any attribute:
    # host.name -> host_name, which the collector puts on every series instead.
    _, _, target_info = scrape(exporting)
    assert target_info.get("host_name") == "gpu-host-1", target_info


@pytest.mark.parametrize(("where", "query"), QUERIES, ids=[w for w, _ in QUERIES])
def test_query_names_exported_metrics(where: str, query: str, exporting: str) -> None:
    names, labels, _ = scrape(exporting)
    metrics, used = names_in(query)
    assert metrics, f"{where}: no metric name found in {query!r}"
    assert metrics <= names, f"{where}: {sorted(metrics - names)} not exported; have {names}"
    unknown = used - labels - COLLECTOR_LABELS
    assert not unknown, f"{where}: labels {sorted(unknown)} not exported; have {labels}"


def test_panel_queries_return_data_in_prometheus(
    exporting: str, start_prometheus: Callable[..., Prometheus]
) -> None:
    prometheus = start_prometheus(exporting, {"host_name": "gpu-host-1"})
    panels = [(where, query) for where, query in QUERIES if where.startswith("panel")]
    for where, query in panels:
        promql = query
        for variable, value in VARIABLES.items():
            promql = promql.replace(variable, value)
        assert "$" not in promql, f"{where}: a Grafana variable the test does not know: {promql}"
        result = wait_for(f"{where} to return data", lambda q=promql: prometheus.query(q))
        # Grouped by service or host, as the legends expect: the selector matched.
        for labels in result:
            assert {"gputime_service", "host_name"} & dict(labels).keys(), (where, result)
