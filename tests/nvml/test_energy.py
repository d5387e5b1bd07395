"""Energy: mean power from the counter's deltas, between the counter's own steps."""

from __future__ import annotations

import math

import pytest

from gputime.testing import FakeClock
from tests.nvml.support import START, installed, open_session
from tests.nvml_double import UNKNOWN, FakeGpu, FakeNvml


class TestEnergyCounterSteps:
    """The counter moves in steps; calibration learns when, so energy lands in its own stretch."""

    def test_calibration_learns_the_steps_and_reads_count_as_of_the_last_one(
        self, clock: FakeClock
    ):
        gpu = FakeGpu(0, "GPU-a", energy_update=0.1, energy_phase=0.037)
        with installed(FakeNvml(clock, [gpu])) as double:
            session = open_session(double, clock)
            assert session.calibration_due(clock())
            session.calibrate(sleep=clock.advance)
            assert not session.calibration_due(clock())
            assert session.calibration_due(clock() + 60.0)
            # A few hundred ms of reads every 2 ms, in the sampler thread only.
            assert 50 <= double.calls["nvmlDeviceGetTotalEnergyConsumption"] <= 200
            ((first, _),) = session.read(0, START).power
            double.set_power(700.0)
            clock.advance(0.55)
            ((end, power),) = session.read(0, START).power
            # Each read counts as of the counter's newest step, so a power
            # sample is exactly the energy between two steps.
            step = 0.037 + math.floor((clock() - 0.037) / 0.1 + 1e-9) * 0.1
            assert end == pytest.approx(step, abs=1e-6)
            assert end < clock()
            energy = double.energy_mj(at=end) - double.energy_mj(at=first)
            assert power * (end - first) == pytest.approx(energy, rel=1e-6)

    @pytest.mark.parametrize("update", [0.001, None], ids=["fine", "irregular"])
    def test_fine_or_irregular_counters_are_read_as_they_are(
        self, clock: FakeClock, update: float | None
    ):
        gpu = FakeGpu(0, "GPU-a", energy_update=update or 0.1)
        with installed(FakeNvml(clock, [gpu])) as double:
            session = open_session(double, clock)
            steps = iter([0.002, 0.002, 0.002, 0.05, 0.002, 0.002, 0.002])

            def irregular(seconds: float) -> None:
                # The counter steps 100 ms apart, then 50 ms after (a skipped beat).
                clock.advance(next(steps, seconds) if update is None else seconds)

            gpu.energy_update = update or 0.1
            session.calibrate(sleep=clock.advance if update else irregular)
            double.set_power(300.0)
            clock.advance(0.5)
            ((end, _power),) = session.read(0, START).power
            if update:
                assert end == clock()  # no correction: the steps are finer than it
            assert not session.calibration_due(clock())

    def test_a_failing_counter_calibrates_nothing(
        self, clock: FakeClock, caplog: pytest.LogCaptureFixture
    ):
        gpu = FakeGpu(0, "GPU-a")
        with installed(FakeNvml(clock, [gpu])) as double:
            session = open_session(double, clock)
            double.fail("nvmlDeviceGetTotalEnergyConsumption", UNKNOWN, times=1)
            session.calibrate(sleep=clock.advance)
            assert "nvmlDeviceGetTotalEnergyConsumption" in caplog.text
            clock.advance(0.5)
            ((end, _power),) = session.read(0, START).power
            assert end == clock()

    def test_a_closed_session_does_not_calibrate(self, nvml: FakeNvml, clock: FakeClock):
        session = open_session(nvml, clock)
        session.close()
        calls = nvml.calls["nvmlDeviceGetTotalEnergyConsumption"]
        session.calibrate(sleep=clock.advance)
        assert nvml.calls["nvmlDeviceGetTotalEnergyConsumption"] == calls


class TestEnergy:
    def test_mean_power_from_counter_deltas(self, nvml: FakeNvml, clock: FakeClock):
        session = open_session(nvml, clock)
        nvml.set_power(250.0)
        clock.advance(0.5)
        assert session.read(0, START).power == [(START + 0.5, pytest.approx(250_000.0))]
        nvml.set_power(100.0)
        clock.advance(1.0)
        assert session.read(0, START).power == [(START + 1.5, pytest.approx(100_000.0))]

    def test_a_stretch_shorter_than_the_counter_update_is_deferred_not_zero(
        self, nvml: FakeNvml, clock: FakeClock
    ):
        session = open_session(nvml, clock)
        clock.advance(0.5)
        session.read(0, START)
        before = nvml.energy_mj()
        clock.advance(0.05)  # the counter has not moved since the last read
        assert session.read(0, START).power == []
        clock.advance(0.1)
        # The next read covers the deferred stretch too: the counter's 100 ms
        # steps shift energy between reads, but the deltas add up exactly.
        delta = nvml.energy_mj() - before
        assert delta == 6000
        assert session.read(0, START).power == [(START + 0.65, pytest.approx(delta / 0.15))]

    def test_a_stuck_counter_reads_as_missing(self, nvml: FakeNvml, clock: FakeClock):
        session = open_session(nvml, clock)
        nvml.gpus[0].power.set(START, 0.0)  # the counter no longer moves
        clock.advance(1.5)
        assert session.read(0, START).power == [(START + 1.5, None)]

    def test_a_counter_that_goes_back_reads_as_missing(self, nvml: FakeNvml, clock: FakeClock):
        session = open_session(nvml, clock)
        nvml.gpus[0].energy_base_mj = 0  # the driver was reloaded
        clock.advance(0.5)
        assert session.read(0, START).power == [(START + 0.5, None)]
        clock.advance(0.5)
        assert session.read(0, START).power == [(START + 1.0, pytest.approx(60_000.0))]

    def test_unsupported_energy_is_absent_never_zero(self, clock: FakeClock):
        gpus = [FakeGpu(0, "GPU-a"), FakeGpu(1, "GPU-b", energy_supported=False)]
        with installed(FakeNvml(clock, gpus)) as double:
            assert open_session(double, clock, [0]).measures_energy
            session = open_session(double, clock)
            assert not session.measures_energy
            calls = double.calls["nvmlDeviceGetTotalEnergyConsumption"]
            clock.advance(1)
            assert session.read(0, START).power == ()
            assert double.calls["nvmlDeviceGetTotalEnergyConsumption"] == calls

    def test_a_failed_counter_read_is_recovered_by_the_next(
        self, nvml: FakeNvml, clock: FakeClock, caplog: pytest.LogCaptureFixture
    ):
        session = open_session(nvml, clock)
        nvml.set_utilization(100)
        nvml.fail("nvmlDeviceGetTotalEnergyConsumption", UNKNOWN, times=2)
        clock.advance(0.5)
        reading = session.read(0, START)
        assert reading.power == []
        assert len(reading.utilization) == 3  # utilisation still counts
        session.read(0, START)
        assert caplog.text.count("nvmlDeviceGetTotalEnergyConsumption") == 1
        clock.advance(0.5)
        assert session.read(0, START).power == [(START + 1.0, pytest.approx(60_000.0))]

    def test_without_a_baseline_the_first_read_sets_one(self, nvml: FakeNvml, clock: FakeClock):
        nvml.fail("nvmlDeviceGetTotalEnergyConsumption", UNKNOWN, times=2)  # the open probes
        session = open_session(nvml, clock)
        assert session.measures_energy
        clock.advance(0.5)
        assert session.read(0, START).power == []
        clock.advance(0.5)
        assert session.read(0, START).power == [(START + 1.0, pytest.approx(60_000.0))]

    def test_the_clock_not_moving_between_reads(self, nvml: FakeNvml, clock: FakeClock):
        session = open_session(nvml, clock)
        assert session.read(0, START).power == []
