"""Metrics through the OpenTelemetry SDK, name for name (docs/opentelemetry.md).

Per-service counters (their reset carries: tests/test_member.py), one snapshot
per export, the duration histogram (its bucket advice across API releases:
tests/test_providers.py), providers shared by trackers, the service cap, and a
forked child's fresh start.
"""

from __future__ import annotations

import gc
import logging
import weakref
from typing import Any

import pytest
from opentelemetry import metrics as otel_metrics
from opentelemetry.sdk.metrics.export import HistogramDataPoint

import gputime
from gputime import Tracker, _metrics
from gputime._backends import Reading
from gputime._backends._base import DeviceInfo
from gputime.testing import FakeClock, SimulatedGpu
from tests.otel_sdk import (
    MyError,
    P,
    Sdk,
)


class TestMetrics:
    def test_names_units_and_scope(self, traced: Tracker, sdk: Sdk, clock: FakeClock, busy):
        with traced.gpu_task("nmt"):
            clock.advance(6 * P)
        metrics = sdk.metrics()
        units = {name: metric.unit for name, (_, metric) in metrics.items()}
        assert units == {
            "gputime.gpu.busy_time": "s",
            "gputime.gpu.util_time": "s",
            "gputime.task.duration": "s",
            "gputime.task.active": "{task}",
        }  # no gputime.gpu.energy: the simulated GPU measures none
        for scope, _ in metrics.values():
            assert scope.name == "gputime"
            assert scope.version == gputime.__version__
        _, busy_time = metrics["gputime.gpu.busy_time"]
        assert busy_time.data.is_monotonic
        _, active = metrics["gputime.task.active"]
        assert not active.data.is_monotonic

    def test_counters_are_the_service_totals_in_seconds(
        self, traced: Tracker, sdk: Sdk, gpu: SimulatedGpu, clock: FakeClock
    ):
        with traced.gpu_task("nmt"):
            gpu.set_utilization(50)
            clock.advance(6 * P)
        clock.advance(P)
        traced.poll()  # the sample covering the end arrives (the settle)
        stats = traced.stats("nmt")
        assert sdk.value("gputime.gpu.busy_time") == pytest.approx(stats.gpu_ms / 1000)
        assert sdk.value("gputime.gpu.busy_time") == pytest.approx(1.0)
        assert sdk.value("gputime.gpu.util_time") == pytest.approx(0.5)
        assert sdk.value("gputime.task.active") == 0

    def test_long_task_shows_before_it_ends_and_overlap_counts_once(
        self, traced: Tracker, sdk: Sdk, clock: FakeClock, busy
    ):
        with traced.gpu_task("nmt"):
            with traced.gpu_task("nmt"):
                clock.advance(6 * P)
                traced.poll()
                assert sdk.value("gputime.task.active") == 2
                assert sdk.value("gputime.gpu.busy_time") == pytest.approx(1.0)
            clock.advance(6 * P)
            traced.poll()
            assert sdk.value("gputime.task.active") == 1
            assert sdk.value("gputime.gpu.busy_time") == pytest.approx(2.0)
        assert sdk.value("gputime.task.active") == 0

    def test_duration_histogram(self, traced: Tracker, sdk: Sdk, clock: FakeClock):
        with traced.gpu_task("nmt"):
            clock.advance(0.25)

        @traced.gpu_task("nmt")
        def fail() -> None:
            clock.advance(2.0)
            raise MyError

        with pytest.raises(MyError):
            fail()
        points = sdk.points("gputime.task.duration")
        ok = points[(("gputime.service", "nmt"),)]
        failed = points[
            (("error.type", f"{MyError.__module__}.MyError"), ("gputime.service", "nmt"))
        ]
        assert isinstance(ok, HistogramDataPoint)
        assert (ok.count, ok.sum) == (1, pytest.approx(0.25))
        assert (failed.count, failed.sum) == (1, pytest.approx(2.0))
        # Its buckets, and what happens where the API cannot advise them:
        # tests/test_providers.py.

    def test_services_are_separate_series(self, traced: Tracker, sdk: Sdk, clock, busy):
        with traced.gpu_task("nmt"):
            clock.advance(6 * P)
        with traced.gpu_task("tts"):
            clock.advance(3 * P)
        clock.advance(P)
        traced.poll()
        assert sdk.value("gputime.gpu.busy_time", "nmt") == pytest.approx(1.0)
        assert sdk.value("gputime.gpu.busy_time", "tts") == pytest.approx(0.5)

    def test_energy_where_the_backend_measures_it(self, sdk: Sdk, clock: FakeClock):
        backend = PoweredGpu(clock, watts=200.0)
        with Tracker(
            backend=backend,
            threaded=False,
            tracer_provider=sdk.tracer_provider,
            meter_provider=sdk.meter_provider,
        ) as tracker:
            with tracker.gpu_task("nmt") as task:
                backend.gpu.set_utilization(100)
                clock.advance(6 * P)
            clock.advance(P)
            tracker.poll()
            assert task.energy_mj == pytest.approx(200_000.0)
            attrs = sdk.span("gpu_task nmt").attributes or {}
            assert attrs["gputime.gpu.energy_mj"] == pytest.approx(200_000.0)
            _, energy = sdk.metrics()["gputime.gpu.energy"]
            assert energy.unit == "J"
            assert sdk.value("gputime.gpu.energy") == pytest.approx(200.0)


class PoweredGpu:
    """A simulated GPU that also reports a constant power draw (milliwatts)."""

    name = "powered"

    def __init__(self, clock: FakeClock, watts: float) -> None:
        self.gpu = SimulatedGpu(clock=clock)
        self.clock = clock
        self.milliwatts = watts * 1000.0

    def open(self, *, clock: Any, devices: Any, attribution: Any) -> _PoweredSession:
        inner = self.gpu.open(clock=clock, devices=devices, attribution="device")
        return _PoweredSession(self, inner)


class _PoweredSession:
    def __init__(self, backend: PoweredGpu, inner: Any) -> None:
        self._backend = backend
        self._inner = inner
        self.devices: tuple[DeviceInfo, ...] = tuple(inner.devices)
        self.measures_utilization = True
        self.measures_energy = True
        self.sample_period = inner.sample_period

    def read(self, device: int, since: float) -> Reading:
        reading = self._inner.read(device, since)
        power = [(end, self._backend.milliwatts) for end, _ in reading.utilization]
        return Reading(utilization=reading.utilization, power=power)

    def close(self) -> None:
        pass

    def after_fork(self) -> None:
        pass


class TestSharedProvider:
    def test_trackers_on_one_provider_add_up(self, sdk: Sdk, clock: FakeClock):
        gpu = SimulatedGpu(clock=clock)
        gpu.set_utilization(100)
        kwargs: dict[str, Any] = {
            "backend": gpu,
            "threaded": False,
            "meter_provider": sdk.meter_provider,
        }
        with Tracker(**kwargs) as first, Tracker(**kwargs) as second:
            with first.gpu_task("nmt"):
                clock.advance(6 * P)
            with second.gpu_task("nmt"):
                clock.advance(3 * P)
            clock.advance(P)
            first.poll()
            second.poll()
            assert sdk.value("gputime.gpu.busy_time") == pytest.approx(1.5)
            with first.gpu_task("nmt"), second.gpu_task("nmt"):
                assert sdk.value("gputime.task.active") == 2

    def test_a_collected_tracker_leaves_its_counts(self, sdk: Sdk, clock: FakeClock):
        gpu = SimulatedGpu(clock=clock)
        gpu.set_utilization(100)
        tracker = Tracker(backend=gpu, threaded=False, meter_provider=sdk.meter_provider)
        with tracker.gpu_task("nmt"):
            clock.advance(6 * P)
        clock.advance(P)
        tracker.poll()
        assert sdk.value("gputime.gpu.busy_time") == pytest.approx(1.0)
        tracker.close()
        del tracker
        gc.collect()
        assert sdk.value("gputime.gpu.busy_time") == pytest.approx(1.0)
        assert sdk.value("gputime.gpu.busy_time") == pytest.approx(1.0)
        with Tracker(backend=gpu, threaded=False, meter_provider=sdk.meter_provider) as again:
            with again.gpu_task("nmt"):
                clock.advance(3 * P)
            clock.advance(P)
            again.poll()
            assert sdk.value("gputime.gpu.busy_time") == pytest.approx(1.5)

    def test_a_reused_id_keeps_the_counts_of_the_collected_tracker(
        self, sdk: Sdk, gpu: SimulatedGpu
    ):
        class Gone:
            pass

        gone = Gone()
        dead = weakref.ref(gone)
        del gone
        with Tracker(backend=gpu, threaded=False, meter_provider=sdk.meter_provider) as tracker:
            metric_set = tracker._member.metric_set
            assert metric_set is not None
            # A collected tracker that had counted 1 s, whose id the new one got
            # before any collection noticed it was gone.
            member = tracker._member
            assert member is not None
            key = id(member)
            metric_set._members[key] = (dead, {("nmt", None): [1.0, 0.5, -1.0]})  # type: ignore[dict-item]
            metric_set.join(member)
            with tracker.gpu_task("nmt"):
                pass
            assert sdk.value("gputime.gpu.busy_time") == pytest.approx(1.0)
            assert sdk.value("gputime.gpu.util_time") == pytest.approx(0.5)

    def test_an_explicit_proxy_provider_counts_as_the_global_one(
        self, fresh_globals: None, gpu: SimulatedGpu
    ):
        proxy = otel_metrics.get_meter_provider()
        with Tracker(backend=gpu, threaded=False, meter_provider=proxy) as tracker:
            assert tracker._emitter._metrics_pending
            assert tracker._emitter.histogram is None


class TestCardinality:
    def test_services_past_the_cap_share_the_overflow_series(
        self,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
        sdk: Sdk,
        clock: FakeClock,
    ):
        monkeypatch.setenv(_metrics.MAX_SERVICES_ENV, "2")
        gpu = SimulatedGpu(clock=clock)
        gpu.set_utilization(100)
        with Tracker(
            backend=gpu,
            threaded=False,
            tracer_provider=sdk.tracer_provider,
            meter_provider=sdk.meter_provider,
        ) as tracker:
            with caplog.at_level(logging.WARNING, logger="gputime"):
                for service in ("a", "b", "c", "d", "e"):
                    with tracker.gpu_task(service):
                        clock.advance(3 * P)
            clock.advance(P)
            tracker.poll()
            # One collection: SDKs before 1.23 report a cumulative histogram
            # only at the first collection after a recording.
            metrics = sdk.metrics()
            busy = sdk.points("gputime.gpu.busy_time", metrics)
            overflow = (("gputime.service", "_overflow"), ("otel.metric.overflow", True))
            assert set(busy) == {(("gputime.service", "a"),), (("gputime.service", "b"),), overflow}
            assert busy[overflow].value == pytest.approx(1.5)
            assert sdk.points("gputime.task.duration", metrics)[overflow].count == 3
            assert sdk.points("gputime.task.active", metrics)[overflow].value == 0
        warnings = [r for r in caplog.records if "service names" in r.getMessage()]
        assert len(warnings) == 1
        assert "'c'" in warnings[0].getMessage()
        # Spans keep the real names.
        assert {(s.attributes or {})["gputime.service"] for s in sdk.spans()} == set("abcde")

    @pytest.mark.parametrize("raw", ["0", "many"])
    def test_a_bad_cap_falls_back_to_the_default(
        self, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, raw: str
    ):
        monkeypatch.setenv(_metrics.MAX_SERVICES_ENV, raw)
        with caplog.at_level(logging.WARNING, logger="gputime"):
            assert _metrics._max_services() == _metrics.MAX_SERVICES
        assert _metrics.MAX_SERVICES_ENV in caplog.text


# -- faults never reach user code -------------------------------------------------------------


class TestFork:
    def test_child_starts_from_zero(self, traced: Tracker, sdk: Sdk, clock: FakeClock, busy):
        with traced.gpu_task("nmt"):
            clock.advance(6 * P)
        clock.advance(P)
        traced.poll()
        assert sdk.value("gputime.gpu.busy_time") == pytest.approx(1.0)
        # What the at-fork hooks run in a child, run here on this state.
        traced._after_fork_in_child()
        _metrics._after_fork_in_child()
        assert traced._member._carry == {}
        with traced.gpu_task("nmt"):
            clock.advance(3 * P)
        clock.advance(P)
        traced.poll()
        assert sdk.value("gputime.gpu.busy_time") == pytest.approx(0.5)


class TestOneSnapshotPerExport:
    def test_the_four_instruments_report_one_snapshot(
        self, traced: Tracker, sdk: Sdk, clock: FakeClock, busy: SimulatedGpu
    ):
        member = traced._member
        assert member is not None
        reads: list[int] = []
        totals = member._totals

        def counted() -> Any:
            reads.append(1)
            return totals()

        member._totals = counted  # type: ignore[method-assign]
        with traced.gpu_task("nmt"):
            clock.advance(6 * P)
        clock.advance(P)
        traced.poll()
        metrics = sdk.metrics()  # one export: busy, util, energy and active time
        assert len(reads) == 1
        assert sdk.points("gputime.gpu.busy_time", metrics)
        assert sdk.points("gputime.task.active", metrics)
        sdk.metrics()
        assert len(reads) == 2  # the next export takes its own
