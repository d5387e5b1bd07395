"""OpenTelemetry across API releases, from the declared floor to the newest.

gputime depends on ``opentelemetry-api`` with no upper bound. Two things differ
between releases, and both are tested here on whatever release is installed
(CI runs this file at the newest release and at the floor,
``.ci/constraints-floor.txt``):

- The fast "has an SDK been installed" check reads the API's private module
  globals. A release without them must lose speed, never spans or metrics: the
  tests below hide them from gputime and check that tracing and metrics, on the
  global and on explicit providers, still work through the public getters; and
  one test says when the installed release no longer has them.
- Histogram bucket advice (``explicit_bucket_boundaries_advisory``) exists from
  opentelemetry-api/sdk 1.30. Below that, gputime warns once and the View in
  ``docs/compatibility.md`` gives the buckets back.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import sys
import types
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from opentelemetry import metrics as otel_metrics
from opentelemetry import trace as otel_trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.version import __version__ as api_version

from gputime import Tracker, _faults, _histogram, _metrics, _providers
from gputime.testing import FakeClock, SimulatedGpu
from tests.otel_sdk import Sdk

P = 1 / 6
NMT = (("gputime.service", "nmt"),)

#: Whether this API release lets an instrument advise its histogram buckets (1.30 and later).
ADVISORY = "explicit_bucket_boundaries_advisory" in (
    inspect.signature(otel_metrics.Meter.create_histogram).parameters
)

try:
    metrics_internal: Any = importlib.import_module("opentelemetry.metrics._internal")
except ImportError:  # pragma: no cover - an API release without the module
    metrics_internal = None

#: The private names gputime's fast path reads: (module, name).
PRIVATE_NAMES = (
    (otel_trace, "_TRACER_PROVIDER"),
    (metrics_internal, "_METER_PROVIDER"),
    (metrics_internal, "_PROXY_METER_PROVIDER"),
)


@pytest.fixture
def sdk() -> Iterator[Sdk]:
    setup = Sdk()
    yield setup
    setup.close()


@dataclass
class GetterCalls:
    """How often gputime asked the API's public getters for the global providers."""

    tracer: int = 0
    meter: int = 0


def _counting(calls: GetterCalls, kind: str, getter: Callable[[], Any]) -> Callable[[], Any]:
    def counted() -> Any:
        setattr(calls, kind, getattr(calls, kind) + 1)
        return getter()

    return counted


def _without(module: types.ModuleType, *names: str) -> types.ModuleType:
    """A copy of ``module`` without ``names``: an API release that renamed them.

    The copy's functions and classes are the module's own (they go on using its
    real globals), so the API behaves exactly as before; only gputime, reading
    the private names from the copy, finds them missing.
    """
    copy = types.ModuleType(module.__name__, module.__doc__)
    copy.__dict__.update(module.__dict__)
    for name in names:
        delattr(copy, name)
    return copy


def _reload_metrics_api_without_internal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Load gputime's metrics API again where ``opentelemetry.metrics._internal`` is gone."""
    _providers.load_metrics()
    for name in ("metrics_api", "metrics_internal"):
        monkeypatch.setattr(_providers, name, getattr(_providers, name))  # restored after
    monkeypatch.setattr(_providers, "metrics_api", None)
    monkeypatch.delattr(otel_metrics, "_internal")
    monkeypatch.setitem(sys.modules, "opentelemetry.metrics._internal", None)  # ImportError
    _providers.load_metrics()


@pytest.fixture(params=["names renamed", "module gone"])
def public_api_only(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, fresh_globals: None
) -> GetterCalls:
    """gputime on an API without the private names its fast path reads.

    Tracing: ``opentelemetry.trace`` without ``_TRACER_PROVIDER``. Metrics: the
    private ``_internal`` module without ``_METER_PROVIDER`` and
    ``_PROXY_METER_PROVIDER``, or the module not importable at all.
    """
    calls = GetterCalls()
    trace_view = _without(otel_trace, "_TRACER_PROVIDER")
    trace_view.get_tracer_provider = _counting(  # type: ignore[attr-defined]
        calls, "tracer", otel_trace.get_tracer_provider
    )
    monkeypatch.setattr(_providers, "trace_api", trace_view)
    if request.param == "module gone":
        _reload_metrics_api_without_internal(monkeypatch)
        assert _providers.metrics_internal is None
    else:
        _providers.load_metrics()
        hidden = _without(metrics_internal, "_METER_PROVIDER", "_PROXY_METER_PROVIDER")
        monkeypatch.setattr(_providers, "metrics_internal", hidden)
    monkeypatch.setattr(
        otel_metrics,
        "get_meter_provider",
        _counting(calls, "meter", otel_metrics.get_meter_provider),
    )
    # Metric sets of the global provider are keyed by the API's proxy where
    # gputime can see it; here they share one key, so start from an empty registry.
    monkeypatch.setattr(_metrics, "_registry", weakref.WeakKeyDictionary())
    return calls


def _run(tracker: Tracker, gpu: SimulatedGpu, clock: FakeClock) -> None:
    """One second of a fully busy task of ``nmt``, then the settle read."""
    gpu.set_utilization(100)
    with tracker.gpu_task("nmt"):
        clock.advance(6 * P)
    clock.advance(P)
    tracker.poll()


def _check_exported(sdk: Sdk, tasks: int = 1) -> None:
    spans = sdk.spans()
    assert [s.name for s in spans] == ["gpu_task nmt"] * tasks
    assert (spans[-1].attributes or {})["gputime.gpu.busy_ms"] == pytest.approx(1000.0)
    metrics = sdk.metrics()
    assert sdk.points("gputime.task.duration", metrics)[NMT].count == tasks
    busy = sdk.points("gputime.gpu.busy_time", metrics)[NMT].value
    assert busy == pytest.approx(1.0 * tasks)


class TestWithoutThePrivateNames:
    def test_a_global_sdk_installed_after_the_tracker(
        self, public_api_only: GetterCalls, sdk: Sdk, gpu: SimulatedGpu, clock: FakeClock
    ):
        with Tracker(backend=gpu, threaded=False) as tracker:
            with tracker.gpu_task("nmt") as task:
                assert task._otel is None  # nobody listens yet
            assert tracker._emitter._tracer is None
            assert tracker._emitter.histogram is None
            # The public getters decided, on each task.
            assert public_api_only.tracer >= 1
            assert public_api_only.meter >= 1
            otel_trace.set_tracer_provider(sdk.tracer_provider)
            otel_metrics.set_meter_provider(sdk.meter_provider)  # type: ignore[arg-type]
            _run(tracker, gpu, clock)
            assert tracker._emitter._tracer is not None
            assert tracker._emitter.histogram is not None
        _check_exported(sdk)

    def test_a_global_sdk_installed_before_the_tracker(
        self, public_api_only: GetterCalls, sdk: Sdk, gpu: SimulatedGpu, clock: FakeClock
    ):
        otel_trace.set_tracer_provider(sdk.tracer_provider)
        otel_metrics.set_meter_provider(sdk.meter_provider)  # type: ignore[arg-type]
        with Tracker(backend=gpu, threaded=False) as first:
            _run(first, gpu, clock)
        # A second tracker on the global provider shares its instruments.
        with Tracker(backend=gpu, threaded=False, meter_provider=sdk.meter_provider) as second:
            _run(second, gpu, clock)
        _check_exported(sdk, tasks=2)

    def test_explicit_providers(
        self, public_api_only: GetterCalls, sdk: Sdk, gpu: SimulatedGpu, clock: FakeClock
    ):
        with Tracker(
            backend=gpu,
            threaded=False,
            tracer_provider=sdk.tracer_provider,
            meter_provider=sdk.meter_provider,
        ) as tracker:
            _run(tracker, gpu, clock)
        _check_exported(sdk)

    def test_the_global_proxy_passed_explicitly(
        self, public_api_only: GetterCalls, sdk: Sdk, gpu: SimulatedGpu, clock: FakeClock
    ):
        # The API's proxies, handed over before any SDK: they count as the globals.
        with Tracker(
            backend=gpu,
            threaded=False,
            tracer_provider=otel_trace.get_tracer_provider(),
            meter_provider=otel_metrics.get_meter_provider(),
        ) as tracker:
            otel_trace.set_tracer_provider(sdk.tracer_provider)
            otel_metrics.set_meter_provider(sdk.meter_provider)  # type: ignore[arg-type]
            _run(tracker, gpu, clock)
        _check_exported(sdk)

    def test_no_sdk_no_span_and_the_figures_still_count(
        self, public_api_only: GetterCalls, gpu: SimulatedGpu, clock: FakeClock
    ):
        with Tracker(backend=gpu, threaded=False) as tracker:
            _run(tracker, gpu, clock)
            _run(tracker, gpu, clock)
            assert tracker._emitter._tracer is None
            assert tracker.stats("nmt").task_count == 2
            assert tracker.stats("nmt").gpu_ms == pytest.approx(2000.0)


def test_this_api_has_the_private_names_of_the_fast_path():
    """Says when an API release dropped them (gputime still works: see above)."""
    missing = [name for module, name in PRIVATE_NAMES if not hasattr(module, name)]
    assert not missing, (
        f"opentelemetry-api {api_version} has no {missing}: gputime works through the "
        "public getters (TestWithoutThePrivateNames) but calls one on every task while "
        "no SDK is installed; point the fast path in gputime/_providers.py at the new names"
    )


def test_with_them_a_task_asks_no_getter(
    fresh_globals: None, monkeypatch: pytest.MonkeyPatch, gpu: SimulatedGpu
):
    calls = GetterCalls()
    monkeypatch.setattr(
        otel_trace,
        "get_tracer_provider",
        _counting(calls, "tracer", otel_trace.get_tracer_provider),
    )
    _providers.load_metrics()
    monkeypatch.setattr(
        otel_metrics,
        "get_meter_provider",
        _counting(calls, "meter", otel_metrics.get_meter_provider),
    )
    with Tracker(backend=gpu, threaded=False) as tracker:
        before = GetterCalls(calls.tracer, calls.meter)  # construction may ask once
        for _ in range(3):
            with tracker.gpu_task("nmt"):
                pass
    assert calls == before  # no getter call per task: the module globals answered


def test_the_metrics_api_loads_without_its_private_module(monkeypatch: pytest.MonkeyPatch):
    _reload_metrics_api_without_internal(monkeypatch)
    assert _providers.metrics_api is otel_metrics
    assert _providers.metrics_internal is None
    assert _providers.load_metrics().NoOpMeter is otel_metrics.NoOpMeter


# -- histogram buckets -----------------------------------------------------------------------


class _MeterWithoutAdvice:
    """A meter of opentelemetry-sdk < 1.30: its histograms take no bucket advice."""

    def __init__(self, meter: Any) -> None:
        self._meter = meter

    def create_histogram(self, name: str, unit: str = "", description: str = "") -> Any:
        return self._meter.create_histogram(name, unit=unit, description=description)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._meter, name)


class _ProviderWithoutAdvice:
    def __init__(self, provider: MeterProvider) -> None:
        self._provider = provider

    def get_meter(self, *args: Any, **kwargs: Any) -> _MeterWithoutAdvice:
        return _MeterWithoutAdvice(self._provider.get_meter(*args, **kwargs))


def _duration_bounds(reader: InMemoryMetricReader) -> tuple[float, ...]:
    data = reader.get_metrics_data()
    assert data is not None
    for resource_metrics in data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                if metric.name == "gputime.task.duration":
                    (point,) = metric.data.data_points
                    return tuple(point.explicit_bounds)
    raise AssertionError("no gputime.task.duration")


def _record_one_task(provider: Any, clock: FakeClock) -> None:
    tracker = Tracker(backend="none", threaded=False, clock=clock, meter_provider=provider)
    with tracker, tracker.gpu_task("nmt"):
        clock.advance(0.25)


@pytest.fixture
def unwarned(monkeypatch: pytest.MonkeyPatch) -> None:
    """The once-per-process warning about missing bucket advice not yet given."""
    monkeypatch.setattr(_faults, "PROCESS", _faults.OnceLog())


def _advice_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "bucket advice" in r.getMessage()]


@pytest.mark.skipif(not ADVISORY, reason=f"opentelemetry-api {api_version} < 1.30: no advice")
def test_the_buckets_are_advised(
    unwarned: None, clock: FakeClock, caplog: pytest.LogCaptureFixture
):
    reader = InMemoryMetricReader()
    with caplog.at_level(logging.WARNING, logger="gputime"):
        _record_one_task(MeterProvider(metric_readers=[reader]), clock)
    assert _duration_bounds(reader) == _histogram.DURATION_BUCKETS
    assert _advice_warnings(caplog) == []


def test_a_meter_without_advice_warns_once(
    unwarned: None, clock: FakeClock, caplog: pytest.LogCaptureFixture
):
    reader = InMemoryMetricReader()
    provider = _ProviderWithoutAdvice(MeterProvider(metric_readers=[reader]))
    with caplog.at_level(logging.WARNING, logger="gputime"):
        _record_one_task(provider, clock)
        _record_one_task(provider, clock)
        _record_one_task(_ProviderWithoutAdvice(MeterProvider()), clock)
    (warning,) = _advice_warnings(caplog)
    assert "docs/compatibility.md" in warning
    # The SDK's default buckets: what the warning is about.
    assert _duration_bounds(reader)[:3] == (0.0, 5.0, 10.0)


def test_the_documented_view_gives_the_buckets_back(
    unwarned: None, clock: FakeClock, caplog: pytest.LogCaptureFixture
):
    # docs/compatibility.md, "Histogram buckets before OpenTelemetry 1.30".
    gputime_buckets = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
    gputime_buckets += (10, 30, 60, 120, 300, 600)
    view = View(
        instrument_name="gputime.task.duration",
        aggregation=ExplicitBucketHistogramAggregation(gputime_buckets),
    )
    reader = InMemoryMetricReader()
    provider = _ProviderWithoutAdvice(MeterProvider(metric_readers=[reader], views=[view]))
    _record_one_task(provider, clock)
    assert _duration_bounds(reader) == _histogram.DURATION_BUCKETS


def test_a_global_sdk_warns_exactly_where_the_api_takes_no_advice(
    unwarned: None,
    fresh_globals: None,
    sdk: Sdk,
    gpu: SimulatedGpu,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
):
    with caplog.at_level(logging.WARNING, logger="gputime"):
        with Tracker(backend=gpu, threaded=False) as tracker:
            otel_metrics.set_meter_provider(sdk.meter_provider)  # type: ignore[arg-type]
            _run(tracker, gpu, clock)
        with Tracker(backend=gpu, threaded=False) as tracker:  # the SDK already there
            _run(tracker, gpu, clock)
    assert len(_advice_warnings(caplog)) == (0 if ADVISORY else 1)
    assert sdk.points("gputime.task.duration")[NMT].count == 2
