"""The driver's sample period, learned per device from its timestamps and bounded until certain."""

from __future__ import annotations

import pytest

from gputime.testing import FakeClock
from tests.nvml.support import START, P, at, ends, installed, open_session, values
from tests.nvml_double import FakeGpu, FakeNvml


class TestSamplePeriod:
    def test_period_is_estimated_per_device_and_the_longest_reported(self, clock: FakeClock):
        gpus = [FakeGpu(0, "GPU-a", period=1 / 6), FakeGpu(1, "GPU-b", period=1.0)]
        with installed(FakeNvml(clock, gpus)) as double:
            double.worked_earlier()
            assert open_session(double, clock).sample_period == pytest.approx(1.0, abs=1e-5)
            assert open_session(double, clock, [0]).sample_period == pytest.approx(1 / 6, abs=1e-5)

    def test_period_defaults_to_one_sixth_before_any_sample(self, clock: FakeClock):
        gpu = FakeGpu(0, "GPU-a", period=0.5, sample_when_idle=False)
        with installed(FakeNvml(clock, [gpu])) as double:
            session = open_session(double, clock)
            assert session.sample_period == pytest.approx(1 / 6, abs=1e-5)
            double.set_utilization(100)
            clock.advance(2)
            session.read(0, START)
            assert session.sample_period == pytest.approx(0.5, abs=1e-5)

    def test_an_unconfirmed_period_is_bounded_from_both_sides(self, clock: FakeClock):
        gpu = FakeGpu(0, "GPU-a", period=1 / 6)
        with installed(FakeNvml(clock, [gpu])) as double:
            session = open_session(double, clock)
            for _ in range(2):  # busy for one tick, then idle for one tick
                double.set_utilization(100)
                clock.advance(P)
                double.set_utilization(0)
                clock.advance(P)
            reading = session.read(0, START)
            # Two samples 2P apart: the period may be 2P or P. A sample reaches
            # back no further than P...
            assert values(reading) == [100.0, 0.0, 100.0]
            assert ends(reading) == pytest.approx(
                [START + at(1), START + at(2), START + at(3)], abs=1e-5
            )
            assert session.sample_period == pytest.approx(P, abs=1e-5)
            # ... and a claim waits for a sample of a 2P period.
            clock.advance(3 * P)
            claim = session.read(0, START + at(3)).idle_until
            assert claim == pytest.approx(START + 7 * P - 2 * P - 0.02, abs=1e-5)
