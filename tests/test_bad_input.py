"""Spec section 5: bad input gets a clear error; faults never reach user code."""

from __future__ import annotations

import logging
import math

import pytest

import gputime
from gputime import Tracker, _faults, gpu_task
from gputime._backends import NoGpu, Reading, resolve_backend
from gputime.testing import FakeClock, SimulatedGpu


class TestGpuTaskArguments:
    @pytest.mark.parametrize("service", [None, 3, b"nmt", ["nmt"]])
    def test_non_string_service_is_a_type_error(self, service: object):
        with pytest.raises(TypeError, match="service must be a string"):
            gpu_task(service)  # type: ignore[arg-type]

    @pytest.mark.parametrize("service", ["", " ", "\t\n"])
    def test_empty_or_blank_service_is_a_value_error(self, service: str):
        with pytest.raises(ValueError, match="must not be empty or blank"):
            gpu_task(service)

    def test_stats_and_reset_check_the_service_too(self, tracker: Tracker):
        with pytest.raises(TypeError):
            tracker.stats(3)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="blank"):
            tracker.reset(" ")

    @pytest.mark.parametrize(
        "attributes",
        [{"k": object()}, {"k": [1, "a"]}, {"k": {"nested": 1}}, {3: "v"}, {"": 1}, ["k"]],
    )
    def test_attributes_of_types_otel_cannot_carry(self, attributes: object):
        with pytest.raises(TypeError, match="attribute"):
            gpu_task("nmt", attributes=attributes)  # type: ignore[arg-type]

    def test_valid_attributes_are_kept(self):
        task = gpu_task("nmt", attributes={"model": "m2m", "beam": 4, "ids": [1, 2], "x": 0.5})
        assert task.attributes == {"model": "m2m", "beam": 4, "ids": (1, 2), "x": 0.5}

    def test_name_and_tracker_types(self):
        with pytest.raises(TypeError, match="name"):
            gpu_task("nmt", name=5)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="tracker"):
            gpu_task("nmt", tracker="default")  # type: ignore[arg-type]

    def test_decorating_a_non_callable(self):
        with pytest.raises(TypeError, match="decorates functions"):
            gpu_task("nmt")(42)  # type: ignore[call-overload]


class TestTrackerArguments:
    @pytest.mark.parametrize("interval", [0, -1, math.inf, math.nan, "0.5", True, None])
    def test_interval(self, interval: object):
        with pytest.raises(ValueError, match=r"interval="):
            Tracker(backend="none", interval=interval)  # type: ignore[arg-type]

    @pytest.mark.parametrize("threshold", [-0.1, 100, 150, math.nan, "5"])
    def test_threshold(self, threshold: object):
        with pytest.raises(ValueError, match=r"threshold="):
            Tracker(backend="none", threshold=threshold)  # type: ignore[arg-type]

    def test_threshold_bounds_are_half_open(self):
        Tracker(backend="none", threshold=0).close()
        Tracker(backend="none", threshold=99.9).close()

    def test_unknown_attribution(self):
        with pytest.raises(ValueError, match=r"attribution='fair'"):
            Tracker(backend="none", attribution="fair")  # type: ignore[arg-type]

    def test_unknown_backend_name(self):
        with pytest.raises(ValueError, match=r"backend='cuda'"):
            Tracker(backend="cuda")

    def test_not_a_backend(self):
        with pytest.raises(ValueError, match="not a backend"):
            Tracker(backend=42)  # type: ignore[arg-type]

    @pytest.mark.parametrize("devices", [[5], ["SIM-9"], ["GPU-123"], [True]])
    def test_a_device_that_does_not_exist(self, devices: list[object]):
        gpu = SimulatedGpu(devices=2)
        with pytest.raises(ValueError, match="devices"):
            Tracker(backend=gpu, devices=devices)  # type: ignore[arg-type]

    def test_a_device_named_twice(self):
        with pytest.raises(ValueError, match="twice"):
            Tracker(backend=SimulatedGpu(devices=2), devices=[0, "SIM-0"])

    def test_devices_must_be_a_list(self):
        with pytest.raises(ValueError, match="devices="):
            Tracker(backend=SimulatedGpu(), devices="SIM-0")  # type: ignore[arg-type]

    def test_devices_on_the_none_backend(self):
        with pytest.raises(ValueError, match="devices"):
            Tracker(backend="none", devices=[0])

    def test_process_attribution_needs_a_backend_that_can(self):
        with pytest.raises(ValueError, match="attribution='process'"):
            Tracker(backend=SimulatedGpu(), attribution="process")

    def test_clock_must_be_callable(self):
        with pytest.raises(ValueError, match="clock="):
            Tracker(backend="none", clock=3.0)  # type: ignore[arg-type]

    def test_tracker_and_simulated_gpu_must_share_a_clock(self):
        with pytest.raises(ValueError, match="share one clock"):
            Tracker(backend=SimulatedGpu(clock=FakeClock()), clock=FakeClock())

    def test_tracker_takes_the_simulated_gpu_clock(self):
        clock = FakeClock(5.0)
        with Tracker(backend=SimulatedGpu(clock=clock)) as tracker:
            assert tracker.clock is clock


class TestSimulatedGpuArguments:
    @pytest.mark.parametrize("kwargs", [{"devices": 0}, {"devices": 1.5}, {"devices": True}])
    def test_devices(self, kwargs: dict[str, object]):
        with pytest.raises(ValueError, match="devices="):
            SimulatedGpu(**kwargs)  # type: ignore[arg-type]

    @pytest.mark.parametrize("period", [0, -1, math.inf, "1"])
    def test_sample_period(self, period: object):
        with pytest.raises(ValueError, match="sample_period="):
            SimulatedGpu(sample_period=period)  # type: ignore[arg-type]

    def test_buffer_samples(self):
        with pytest.raises(ValueError, match="buffer_samples="):
            SimulatedGpu(buffer_samples=0)

    @pytest.mark.parametrize("percent", [-1, 101, "50", None])
    def test_set_utilization_range(self, percent: object):
        with pytest.raises(ValueError, match="percent="):
            SimulatedGpu().set_utilization(percent)  # type: ignore[arg-type]

    def test_set_utilization_device(self):
        with pytest.raises(ValueError, match="device="):
            SimulatedGpu().set_utilization(50, device=1)

    @pytest.mark.parametrize("times", [-1, 1.5, True])
    def test_fail_reads_times(self, times: object):
        with pytest.raises(ValueError, match="times="):
            SimulatedGpu().fail_reads(times)  # type: ignore[arg-type]


class TestFakeClock:
    def test_advance_only_forward(self):
        clock = FakeClock(1.0)
        assert clock.advance(0.5) == 1.5
        assert clock() == 1.5
        for bad in (-1, math.nan, math.inf, "1"):
            with pytest.raises(ValueError, match="seconds="):
                clock.advance(bad)  # type: ignore[arg-type]
        assert repr(clock) == "FakeClock(1.5)"

    def test_start(self):
        with pytest.raises(ValueError, match="start="):
            FakeClock(math.nan)


class TestNoGpu:
    def test_none_backend_counts_tasks_with_unavailable_figures(self):
        with Tracker(backend="none", threaded=False) as tracker:
            with tracker.gpu_task("nmt") as task:
                pass
            assert task.gpu_ms == 0
            assert task.status == "unavailable"
            assert task.coverage == 0.0
            stats = tracker.stats("nmt")
            assert (stats.task_count, stats.gpu_ms, stats.status) == (1, 0.0, "unavailable")
            assert tracker.stats("unseen").status == "unavailable"
            assert tracker.device_ids == ()
            assert not tracker.sampler_running

    def test_auto_falls_back_to_none_with_one_warning(self, caplog, monkeypatch):

        monkeypatch.setattr(_faults, "PROCESS", _faults.OnceLog())
        # No NVIDIA driver on this machine: NVML fails to load, for real.
        caplog.set_level(logging.WARNING, logger="gputime")
        first = resolve_backend("auto")
        second = resolve_backend("auto")
        if first.name == "nvml":  # pragma: no cover - only on a machine with a GPU
            pytest.skip("an NVIDIA driver is present: auto resolves to NVML")
        assert isinstance(first, NoGpu)
        assert isinstance(second, NoGpu)
        warnings = [r for r in caplog.records if r.name == "gputime"]
        assert len(warnings) == 1
        assert "status 'unavailable'" in warnings[0].getMessage()

    def test_nvml_without_a_driver_raises_saying_what_is_missing(self):
        if resolve_backend("auto").name == "nvml":  # pragma: no cover - only with a GPU
            pytest.skip("an NVIDIA driver is present")
        with pytest.raises(gputime.BackendUnavailable, match="NVML"):
            Tracker(backend="nvml")


class TestFaultsNeverReachUserCode:
    def test_a_backend_raising_anything_is_a_failed_read(self, clock: FakeClock, caplog):
        class Flaky:
            name = "flaky"

            def open(self, *, clock, devices, attribution):  # type: ignore[no-untyped-def]
                return self

            devices = (gputime._backends.DeviceInfo("F-0", "flaky", 0),)
            measures_utilization = True
            measures_energy = False
            sample_period = 0.1

            def read(self, device: int, since: float) -> Reading:
                raise OSError("driver went away")

            def close(self) -> None:
                raise OSError("close failed too")

            def after_fork(self) -> None:
                pass

        tracker = Tracker(backend=Flaky(), clock=clock, threaded=False)
        for _ in range(3):
            with tracker.gpu_task("nmt") as task:
                clock.advance(1)
                tracker.poll()
        assert task.status == "partial"
        assert tracker.stats("nmt").task_count == 3
        tracker.close()
        tracker.close()  # idempotent
        messages = [r.getMessage() for r in caplog.records if r.name == "gputime"]
        assert sum("read failed" in m for m in messages) == 1
        assert sum("close failed" in m for m in messages) == 1

    def test_a_clock_that_raises_is_logged_not_propagated(self, caplog):
        class BrokenClock:
            def __init__(self) -> None:
                self.calls = 0

            def __call__(self) -> float:
                self.calls += 1
                if self.calls > 1:
                    raise OSError("clock source gone")
                return 0.0

        tracker = Tracker(backend=SimulatedGpu(clock=BrokenClock()), threaded=False)
        with tracker.gpu_task("nmt") as first:  # starts; the clock fails at its end
            pass
        # The task still ended, at the ledger's newest known instant.
        assert not first.running
        stats = tracker.stats("nmt")
        assert (stats.task_count, stats.active_tasks) == (1, 0)
        with tracker.gpu_task("nmt") as second:  # the clock fails at its start
            assert second.status == "partial"
            assert second.duration == 0.0
        assert not second.running
        assert second.gpu_ms == 0.0
        assert tracker.stats("nmt").active_tasks == 0
        assert not tracker._ledger.wants_reading()  # nothing left open
        messages = [r.getMessage() for r in caplog.records if r.name == "gputime"]
        assert any("task start failed" in m for m in messages)
        assert any("clock failed" in m for m in messages)

    def test_task_ending_after_its_tracker_closed(self, clock: FakeClock):
        gpu = SimulatedGpu(clock=clock)
        tracker = Tracker(backend=gpu, threaded=False)
        gpu.set_utilization(100)
        with tracker.gpu_task("nmt") as task:
            clock.advance(1)
            tracker.close()
        assert task.status == "partial"
        assert tracker.stats("nmt").task_count == 1
        assert "closed" in repr(tracker)
