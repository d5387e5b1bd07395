"""Driver timestamps onto the tracker's clock: steps of the wall clock followed, jitter not."""

from __future__ import annotations

import pytest

from gputime._backends.nvml.clocks import ClockMap
from gputime.testing import FakeClock
from tests.nvml.support import START, ends, open_session, values
from tests.nvml_double import FakeNvml


class TestClockMapping:
    def test_wall_clock_step_is_followed(self, nvml: FakeNvml, clock: FakeClock):
        session = open_session(nvml, clock)
        nvml.set_utilization(100)
        clock.advance(1)
        session.read(0, START)
        nvml.step_wall_clock(-3600)  # NTP steps the wall clock back an hour
        clock.advance(1)
        reading = session.read(0, START + 1)
        # The samples stamped after the step still land at their tracker times.
        assert ends(reading)[-1] == pytest.approx(START + 2, abs=1e-6)
        assert values(reading)[-1] == 100.0

    def test_small_clock_jitter_keeps_the_mapping(self, nvml: FakeNvml, clock: FakeClock):
        session = open_session(nvml, clock)
        clock.advance(1)
        nvml.step_wall_clock(0.0005)  # within the tolerance: one sample, one tracker time
        first = session.read(0, START)
        clock.advance(1.1)
        second = session.read(0, START)
        assert ends(first) == ends(second)[: len(ends(first))]

    def test_mapping_takes_the_tightest_of_several_readings(self, nvml: FakeNvml):
        ticks = iter([0.0, 5.0, 1.0, 1.0001, 2.0, 2.5, 3.0, 3.2, 4.0, 4.3])
        walls = iter([10_000_000_000, 11_000_000_000, 12_000_000_000, 13_000_000_000, 14_0])
        mapping = ClockMap(lambda: next(ticks), lambda: next(walls))
        assert mapping.uncertainty == pytest.approx(0.00005)
        assert mapping.to_tracker(11_000_000) == pytest.approx(1.00005)
        assert mapping.to_raw_us(1.00005) == 11_000_000
