"""Per-device figures: ``TaskHandle.devices``, ``ServiceStats.devices``, ``DeviceFigures``."""

from __future__ import annotations

import pytest

from gputime import DeviceFigures, ServiceStats, Tracker
from gputime._backends.nvml import NvmlBackend
from gputime.testing import FakeClock, SimulatedGpu
from tests.nvml.support import START, installed
from tests.nvml_double import FakeGpu, FakeNvml
from tests.otel_sdk import Sdk

P = 1 / 6


def sum_of(devices: dict[str, DeviceFigures], field: str) -> float:
    return sum(getattr(figures, field) or 0.0 for figures in devices.values())


@pytest.fixture
def two(clock: FakeClock) -> SimulatedGpu:
    gpu = SimulatedGpu(2, clock=clock, measure_energy=True)
    gpu.set_utilization(100, device=0)
    gpu.set_utilization(50, device=1)
    gpu.set_power(300, device=0)
    gpu.set_power(100, device=1)
    return gpu


@pytest.fixture
def tracker2(two: SimulatedGpu) -> Tracker:
    return Tracker(backend=two, threaded=False)


def test_each_device_has_its_own_figures_and_the_totals_are_their_sums(
    tracker2: Tracker, clock: FakeClock
):
    with tracker2.gpu_task("nmt") as task:
        clock.advance(1.0)
    clock.advance(P)
    tracker2.poll()
    devices = task.devices
    assert list(devices) == ["SIM-0", "SIM-1"]  # the tracker's device order
    first, second = devices["SIM-0"], devices["SIM-1"]
    assert (first.gpu_ms, first.gpu_util_ms) == (pytest.approx(1000.0), pytest.approx(1000.0))
    assert (second.gpu_ms, second.gpu_util_ms) == (pytest.approx(1000.0), pytest.approx(500.0))
    assert first.energy_mj == pytest.approx(300_000.0)
    assert second.energy_mj == pytest.approx(100_000.0)
    assert {f.status for f in devices.values()} == {"ok"}
    assert {f.coverage for f in devices.values()} == {1.0}
    assert task.gpu_ms == pytest.approx(sum_of(devices, "gpu_ms"))
    assert task.gpu_util_ms == pytest.approx(sum_of(devices, "gpu_util_ms"))
    assert task.energy_mj == pytest.approx(sum_of(devices, "energy_mj"))

    stats = tracker2.stats("nmt")
    assert list(stats.devices) == ["SIM-0", "SIM-1"]
    assert stats.devices["SIM-1"].gpu_util_ms == pytest.approx(500.0)
    assert stats.gpu_ms == pytest.approx(sum_of(stats.devices, "gpu_ms"))
    assert stats.energy_mj == pytest.approx(sum_of(stats.devices, "energy_mj"))


def test_live_figures_per_device_while_the_task_runs(tracker2: Tracker, clock: FakeClock):
    with tracker2.gpu_task("nmt") as task:
        clock.advance(3 * P)
        tracker2.poll()
        live = task.devices
        assert live["SIM-0"].gpu_ms == pytest.approx(500.0)
        assert live["SIM-1"].gpu_util_ms == pytest.approx(250.0)
        clock.advance(3 * P)
    assert task.devices["SIM-0"].gpu_ms == pytest.approx(1000.0)


def test_a_failed_read_of_one_device_makes_only_that_device_partial(
    tracker2: Tracker, two: SimulatedGpu, clock: FakeClock
):
    with tracker2.gpu_task("nmt") as task:
        clock.advance(0.5)
        two.fail_reads(1, device=1)
        tracker2.poll()
        clock.advance(0.5)
    devices = task.devices
    assert devices["SIM-0"].status == "ok"
    assert devices["SIM-1"].status == "partial"
    assert task.status == "partial"  # the total is as bad as its worst device
    stats = tracker2.stats("nmt")
    assert (stats.devices["SIM-0"].status, stats.devices["SIM-1"].status) == ("ok", "partial")
    assert stats.status == "partial"


def test_a_device_failing_at_the_moment_reads_unread_time_on_that_device_only(
    tracker2: Tracker, two: SimulatedGpu, clock: FakeClock
):
    with tracker2.gpu_task("nmt") as task:
        clock.advance(0.5)
        tracker2.poll()
        two.fail_reads(device=0)
        clock.advance(0.5)
        tracker2.poll()
        live = task.devices
        assert live["SIM-0"].coverage == pytest.approx(0.5)
        assert live["SIM-1"].coverage == pytest.approx(1.0)
        assert task.coverage == pytest.approx(0.75)
        assert tracker2.stats("nmt").devices["SIM-0"].coverage == pytest.approx(0.5)
        two.fail_reads(0)


def test_one_device_reads_the_totals(tracker: Tracker, gpu: SimulatedGpu, clock: FakeClock):
    gpu.set_utilization(40)
    with tracker.gpu_task("nmt") as task:
        clock.advance(1.0)
    (only,) = task.devices.values()
    assert list(task.devices) == ["SIM-0"]
    assert (only.gpu_ms, only.gpu_util_ms, only.energy_mj, only.status, only.coverage) == tuple(
        task.figures
    )
    stats = tracker.stats("nmt")
    assert stats.devices["SIM-0"].gpu_util_ms == stats.gpu_util_ms


def test_no_device_no_entries(clock: FakeClock):
    with Tracker(backend="none", clock=clock) as tracker:
        with tracker.gpu_task("nmt") as task:
            clock.advance(1.0)
        assert task.devices == {}
        assert tracker.stats("nmt").devices == {}
        assert tracker.stats("unseen").devices == {}


def test_a_service_never_seen_has_zeros_on_every_device(tracker2: Tracker):
    stats = tracker2.stats("unseen")
    assert stats.devices == {
        "SIM-0": DeviceFigures(0.0, 0.0, 0.0, "ok", 1.0),
        "SIM-1": DeviceFigures(0.0, 0.0, 0.0, "ok", 1.0),
    }


def test_reset_zeroes_every_device(tracker2: Tracker, clock: FakeClock):
    with tracker2.gpu_task("nmt"):
        clock.advance(1.0)
    clock.advance(P)
    tracker2.poll()
    tracker2.reset("nmt")
    assert sum_of(tracker2.stats("nmt").devices, "gpu_ms") == 0.0


def test_split_attribution_divides_each_device(two: SimulatedGpu, clock: FakeClock):
    with Tracker(backend=two, threaded=False, attribution="split") as tracker:
        with tracker.gpu_task("a") as a, tracker.gpu_task("b"):
            clock.advance(1.0)
        clock.advance(P)
        tracker.poll()
        assert a.devices["SIM-0"].gpu_ms == pytest.approx(500.0)
        assert a.devices["SIM-1"].gpu_util_ms == pytest.approx(250.0)
        assert tracker.stats("b").devices["SIM-0"].gpu_ms == pytest.approx(500.0)


def test_service_stats_stay_hashable_and_comparable(tracker2: Tracker):
    stats = tracker2.stats("unseen")
    assert isinstance(stats, ServiceStats)
    assert hash(stats) == hash(tracker2.stats("unseen"))
    assert stats == tracker2.stats("unseen")


def test_a_mig_device_reads_unavailable_beside_a_measured_one():
    clock = FakeClock(START)
    gpus = [FakeGpu(0, "GPU-a"), FakeGpu(1, "GPU-m", mig=True, mig_instances=("MIG-1",))]
    with installed(FakeNvml(clock, gpus)) as double:
        backend = NvmlBackend(**double.backend_clocks())
        with Tracker(backend=backend, clock=clock, threaded=False) as tracker:
            double.set_utilization(100, device=0)
            with tracker.gpu_task("nmt") as task:
                clock.advance(1.0)
                tracker.poll()
                clock.advance(1.0)
            devices = task.devices
            assert list(devices) == ["GPU-a", "GPU-m"]
            assert devices["GPU-m"] == DeviceFigures(0.0, 0.0, None, "unavailable", 0.0)
            measured = devices["GPU-a"]
            assert measured.gpu_ms == pytest.approx(2000.0, abs=0.01)
            assert (measured.status, measured.coverage) == ("ok", 1.0)
            # The totals: partial, half the devices read.
            assert (task.status, task.coverage) == ("partial", pytest.approx(0.5))
            clock.advance(P)
            tracker.poll()
            stats = tracker.stats("nmt")
            assert stats.devices["GPU-m"].status == "unavailable"
            assert stats.devices["GPU-a"].status == "ok"


# -- spans and metrics -------------------------------------------------------------------


def test_spans_carry_the_devices_a_task_kept_busy(sdk: Sdk, clock: FakeClock):
    gpu = SimulatedGpu(3, clock=clock, measure_energy=True)
    gpu.set_utilization(100, device=0)
    gpu.set_utilization(50, device=2)  # device 1 stays idle
    gpu.set_power(200, device=0)
    with Tracker(backend=gpu, threaded=False, tracer_provider=sdk.tracer_provider) as tracker:
        with tracker.gpu_task("nmt"):
            clock.advance(1.0)
        with tracker.gpu_task("idle", span=True):
            gpu.set_utilization(0, device=0)
            gpu.set_utilization(0, device=2)
            clock.advance(1.0)
    attrs = sdk.span("gpu_task nmt").attributes
    assert attrs is not None
    assert attrs["gputime.gpu.ids"] == ("SIM-0", "SIM-1", "SIM-2")
    assert attrs["gputime.gpu.devices.ids"] == ("SIM-0", "SIM-2")  # only the busy ones
    assert attrs["gputime.gpu.devices.busy_ms"] == pytest.approx((1000.0, 1000.0))
    assert attrs["gputime.gpu.devices.util_ms"] == pytest.approx((1000.0, 500.0))
    assert attrs["gputime.gpu.devices.energy_mj"] == pytest.approx((200_000.0, 0.0))
    assert attrs["gputime.gpu.devices.status"] == ("ok", "ok")
    idle = sdk.span("gpu_task idle").attributes
    assert idle is not None
    assert not any(name.startswith("gputime.gpu.devices.") for name in idle)


def test_a_one_device_span_has_no_device_arrays(traced: Tracker, sdk: Sdk, busy, clock):
    with traced.gpu_task("nmt"):
        clock.advance(1.0)
    attrs = sdk.span("gpu_task nmt").attributes
    assert attrs is not None
    assert attrs["gputime.gpu.busy_ms"] == pytest.approx(1000.0)
    assert not any(name.startswith("gputime.gpu.devices.") for name in attrs)


def test_metrics_per_device_carry_hw_id(sdk: Sdk, two: SimulatedGpu, clock: FakeClock):
    with Tracker(
        backend=two,
        threaded=False,
        meter_provider=sdk.meter_provider,
        metrics_per_device=True,
    ) as tracker:
        with tracker.gpu_task("nmt"):
            clock.advance(1.0)
        clock.advance(P)
        tracker.poll()
        busy_points = sdk.points("gputime.gpu.busy_time")
        util_points = sdk.points("gputime.gpu.util_time")
        energy_points = sdk.points("gputime.gpu.energy")
        key0 = (("gputime.service", "nmt"), ("hw.id", "SIM-0"))
        key1 = (("gputime.service", "nmt"), ("hw.id", "SIM-1"))
        assert set(busy_points) == {key0, key1}
        assert busy_points[key0].value == pytest.approx(1.0)
        assert util_points[key1].value == pytest.approx(0.5)
        assert energy_points[key0].value == pytest.approx(300.0)
        # Running tasks are the service's, not a device's.
        assert set(sdk.points("gputime.task.active")) == {(("gputime.service", "nmt"),)}
        # A reset carries per device: the counters go on from where they were.
        tracker.reset("nmt")
        with tracker.gpu_task("nmt"):
            clock.advance(1.0)
        clock.advance(P)
        tracker.poll()
        assert sdk.points("gputime.gpu.busy_time")[key1].value == pytest.approx(2.0)


def test_metrics_are_summed_over_devices_by_default(sdk: Sdk, two: SimulatedGpu, clock):
    with Tracker(backend=two, threaded=False, meter_provider=sdk.meter_provider) as tracker:
        with tracker.gpu_task("nmt"):
            clock.advance(1.0)
        clock.advance(P)
        tracker.poll()
        assert sdk.value("gputime.gpu.busy_time") == pytest.approx(2.0)
        assert sdk.value("gputime.gpu.util_time") == pytest.approx(1.5)


def test_metrics_per_device_without_devices_fall_back_to_the_totals(sdk: Sdk, clock):
    with Tracker(
        backend="none", clock=clock, meter_provider=sdk.meter_provider, metrics_per_device=True
    ) as tracker:
        with tracker.gpu_task("nmt"):
            clock.advance(1.0)
        assert sdk.value("gputime.gpu.busy_time") == 0.0
