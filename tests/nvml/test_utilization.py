"""A device's utilisation: its sample buffer (idle claims, gaps, overruns, garbage rows)
and the rates that confirm a silent buffer or stand in for it."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from gputime._backends._base import Reading
from gputime._backends.nvml import NvmlDeviceLostError, NvmlError, NvmlUnavailableError
from gputime._backends.nvml.utilization import sample_value
from gputime.testing import FakeClock
from tests.nvml.support import START, P, at, ends, installed, is_empty, open_session, values
from tests.nvml_double import GPU_IS_LOST, UNKNOWN, FakeGpu, FakeNvml


class TestSampling:
    def test_samples_on_the_tracker_clock(self, nvml: FakeNvml, clock: FakeClock, model: str):
        session = open_session(nvml, clock)
        nvml.set_utilization(100)
        clock.advance(0.5)
        nvml.set_utilization(30)
        clock.advance(0.5)
        reading = session.read(0, START)
        assert reading.source == "samples"
        assert ends(reading) == pytest.approx([START + at(k) for k in range(1, 7)], abs=1e-6)
        assert values(reading) == [100, 100, 100, 30, 30, 30]
        assert reading.power  # energy is measured too
        assert reading.idle_until is None  # the newest sample is as new as can be
        idle = session.read(1, START)
        if model == "idle-samples":
            assert values(idle) == [0.0] * 6
            assert idle.idle_until is None
        else:
            # Nothing recorded while idle: the absence is the reading, up to
            # where a sample still on its way could reach back.
            assert idle.utilization == []
            assert idle.idle_until == pytest.approx(START + 1 - P, abs=1e-5)

    def test_only_samples_newer_than_since(self, nvml: FakeNvml, clock: FakeClock):
        session = open_session(nvml, clock)
        nvml.set_utilization(100)
        clock.advance(1)
        reading = session.read(0, START + at(4))
        assert ends(reading) == pytest.approx([START + at(5), START + at(6)], abs=1e-6)

    def test_nothing_new_is_an_empty_reading(self, clock: FakeClock):
        with installed(FakeNvml(clock, 1, period=1.0)) as double:
            double.worked_earlier()
            session = open_session(double, clock)
            assert session.sample_period == pytest.approx(1.0, abs=1e-5)
            clock.advance(0.4)
            assert is_empty(session.read(0, START), "samples")
            # Asking beyond the newest sample: the driver answers NOT_FOUND.
            assert is_empty(session.read(0, START + 0.3), "samples")
            assert double.calls["nvmlDeviceGetUtilizationRates"] == 0

    def test_garbage_rows_are_dropped_sorted_and_deduplicated(
        self, nvml: FakeNvml, clock: FakeClock, caplog: pytest.LogCaptureFixture
    ):
        caplog.set_level(logging.DEBUG, "gputime")
        session = open_session(nvml, clock)
        nvml.set_utilization(40)
        clock.advance(0.5)
        gpu = nvml.gpus[0]
        gpu.reverse_order = True
        stamp = nvml.wall_us(START + at(2))
        gpu.injected = [
            (0, 50),  # no timestamp
            (nvml.wall_us(START + at(1)) + 1, 101),  # impossible value
            (stamp, 40),  # a duplicate
            (nvml.wall_us(START + 60), 10),  # from the future
            (nvml.wall_us(START - 5), 10),  # older than asked for: not garbage, not new
        ]
        reading = session.read(0, START)
        assert ends(reading) == pytest.approx([START + at(k) for k in (1, 2, 3)], abs=1e-6)
        assert values(reading) == [40, 40, 40]
        assert "dropped 3 malformed" in caplog.text

    def test_rows_of_other_value_types(self, nvml: FakeNvml, clock: FakeClock):
        assert sample_value(0, type("V", (), {"dVal": 12.5})()) == 12.5
        assert sample_value(42, object()) is None

    def test_a_silent_buffer_is_confirmed_idle_by_the_rates_once_a_period(self, clock: FakeClock):
        gpu = FakeGpu(0, "GPU-a")
        with installed(FakeNvml(clock, [gpu])) as double:
            busy_for_a_second(double, clock, then_idle=1)
            session = open_session(double, clock)  # learns P from the buffer
            clock.advance(0.1)
            # Newest sample at 11 s, now 12.1 s: the driver recorded nothing since,
            # up to its newest tick (12 s), which the rates confirm idle.
            reading = session.read(0, START + 1.0)
            assert reading.source == "samples"
            assert reading.utilization == []
            assert reading.idle_until == pytest.approx(START + 2.0, abs=1e-5)
            assert double.calls["nvmlDeviceGetUtilizationRates"] == 1  # said 0: idle
            clock.advance(0.05)
            assert session.read(0, START + 1.0).idle_until == pytest.approx(START + 2.0, abs=1e-5)
            assert double.calls["nvmlDeviceGetUtilizationRates"] == 1  # not again so soon
            clock.advance(P)
            session.read(0, START + 1.0)
            assert double.calls["nvmlDeviceGetUtilizationRates"] == 2

    def test_a_buffer_that_records_nothing_while_busy_gives_way_to_the_rates(
        self, clock: FakeClock, caplog: pytest.LogCaptureFixture
    ):
        gpu = FakeGpu(0, "GPU-a", records_samples=False)
        with installed(FakeNvml(clock, [gpu])) as double:
            session = open_session(double, clock)
            double.set_utilization(100)
            clock.advance(0.5)
            # Silent for less than two of the longest periods: nothing to say yet
            # (a sample of a 1 s period may still be on its way).
            assert is_empty(session.read(0, START), "samples")
            assert double.calls["nvmlDeviceGetUtilizationRates"] == 0
            clock.advance(2)
            reading = session.read(0, START)
            assert reading.source == "utilization-rates"
            assert reading.idle_until is None
            # Not read: the stretch the silent buffer was taken for idle, up to
            # the last period, which the rates cover.
            assert reading.utilization == [(START + 1.5, None), (START + 2.5, 100.0)]
            assert "records no samples" in caplog.text
            clock.advance(0.5)
            assert session.read(0, START + 2.5).utilization == [(START + 3.0, 100.0)]

    def test_the_first_sample_after_an_idle_pause_starts_after_it(self, clock: FakeClock):
        gpu = FakeGpu(0, "GPU-a", sample_when_idle=False)
        with installed(FakeNvml(clock, [gpu])) as double:
            busy_for_a_second(double, clock, then_idle=1)
            session = open_session(double, clock)
            double.set_utilization(100)
            clock.advance(0.2)
            # Since 11 s there was no sample until 12 s + P: idle, not lost.
            reading = session.read(0, START + 1.0)
            assert values(reading) == [0.0, 100.0]
            assert ends(reading) == pytest.approx([START + 2.0, START + 2.0 + P], abs=1e-6)

    def test_idle_ticks_between_samples_are_idle_not_the_next_sample(self, clock: FakeClock):
        gpu = FakeGpu(0, "GPU-a")
        with installed(FakeNvml(clock, [gpu])) as double:
            double.worked_earlier()
            session = open_session(double, clock)
            double.set_utilization(100)
            clock.advance(P)
            double.set_utilization(0)
            clock.advance(3 * P)
            double.set_utilization(100)
            clock.advance(P)
            reading = session.read(0, START)
            # Sample 5 covers one period, not the three idle ones before it.
            assert values(reading) == [100.0, 0.0, 100.0]
            assert ends(reading) == pytest.approx(
                [START + at(1), START + at(4), START + at(5)], abs=1e-6
            )

    def test_an_overrun_buffer_marks_the_lost_stretch(self, clock: FakeClock):
        with overrun(clock) as (_double, session):
            reading = session.read(0, START)
            assert values(reading) == [None] + [100.0] * 40
            assert ends(reading)[0] == pytest.approx(START + at(20), abs=1e-6)

    def test_a_long_idle_stretch_is_not_an_overrun(self, clock: FakeClock):
        gpu = FakeGpu(0, "GPU-a", capacity=100)
        with installed(FakeNvml(clock, [gpu])) as double:
            double.worked_earlier(1.0, 9.0)  # 48 samples in the buffer
            session = open_session(double, clock)
            clock.advance(10)  # idle: nothing recorded
            double.set_utilization(100)
            clock.advance(P)
            # Ten seconds behind, but the buffer still reaches back: idle.
            assert values(session.read(0, START)) == [0.0, 100.0]

    def test_a_buffer_too_short_to_have_overrun_never_lost_anything(self, clock: FakeClock):
        gpu = FakeGpu(0, "GPU-a")
        with installed(FakeNvml(clock, [gpu])) as double:
            session = open_session(double, clock)  # a fresh GPU: it never held a sample
            clock.advance(10)
            double.set_utilization(100)
            clock.advance(3 * P)
            assert values(session.read(0, START)) == [0.0, 100.0, 100.0, 100.0]

    def test_overrun_check_failure_counts_the_stretch_as_lost(self, clock: FakeClock):
        with overrun(clock) as (double, session):
            real = double.functions["nvmlDeviceGetSamples"]
            fail_the_overrun_check(double, UNKNOWN, times=1)
            assert values(session.read(0, START))[0] is None
            assert double.functions["nvmlDeviceGetSamples"] is real

    def test_lost_gpu_during_the_overrun_check(self, clock: FakeClock):
        with overrun(clock) as (double, session):
            fail_the_overrun_check(double, GPU_IS_LOST)
            with pytest.raises(NvmlDeviceLostError):
                session.read(0, START)

    def test_samples_not_supported_uses_rates_and_remembers(
        self, clock: FakeClock, caplog: pytest.LogCaptureFixture
    ):
        caplog.set_level(logging.INFO, "gputime")
        gpu = FakeGpu(0, "GPU-a", samples_supported=False)
        with installed(FakeNvml(clock, [gpu])) as double:
            session = open_session(double, clock)
            double.set_utilization(100)
            clock.advance(0.5)
            for _ in range(3):
                reading = session.read(0, START)
                assert reading.source == "utilization-rates"
                assert reading.utilization == [(START + 0.5, 100.0)]
            assert double.calls["nvmlDeviceGetSamples"] == 1  # the probe at open only

    def test_samples_becoming_unsupported_at_read_time(
        self, nvml: FakeNvml, clock: FakeClock, caplog: pytest.LogCaptureFixture
    ):
        caplog.set_level(logging.INFO, "gputime")
        session = open_session(nvml, clock)
        nvml.gpus[0].samples_supported = False
        clock.advance(0.5)
        assert session.read(0, START).source == "utilization-rates"
        assert "no utilisation sample buffer" in caplog.text

    def test_rates_with_an_impossible_value_fail_the_read(self, clock: FakeClock):
        gpu = FakeGpu(0, "GPU-a", samples_supported=False)
        with installed(FakeNvml(clock, [gpu])) as double:
            session = open_session(double, clock)
            double.gpus[0].util.set(START, 250)
            clock.advance(0.5)
            with pytest.raises(NvmlError, match="250%"):
                session.read(0, START)

    def test_no_utilization_source_at_all(self, clock: FakeClock, caplog: pytest.LogCaptureFixture):
        gpus = [
            FakeGpu(0, "GPU-a", samples_supported=False, rates_supported=False),
            FakeGpu(1, "GPU-b", samples_supported=False),
        ]
        with installed(FakeNvml(clock, gpus)) as double:
            session = open_session(double, clock)
            assert [d.details["utilization"] for d in session.devices] == [False, True]
            assert "neither utilisation samples nor utilisation rates" in caplog.text
            with pytest.raises(NvmlUnavailableError, match="not supported"):
                session.read(0, START)
            # GPU 1 loses its rates later: it becomes unavailable too.
            double.gpus[1].rates_supported = False
            with pytest.raises(NvmlUnavailableError, match="neither"):
                session.read(1, START)
            assert session.devices[1].details["utilization"] is False
            assert not open_session(double, clock, [0]).measures_utilization

    def test_idle_claims_need_no_rates(self, clock: FakeClock):
        gpu = FakeGpu(0, "GPU-a", rates_supported=False)
        with installed(FakeNvml(clock, [gpu])) as double:
            busy_for_a_second(double, clock, then_idle=2)
            session = open_session(double, clock)
            reading = session.read(0, START + 1.0)
            assert reading.source == "samples"
            assert reading.idle_until == pytest.approx(START + 3 - P, abs=1e-5)
            clock.advance(1)
            assert session.read(0, START + 1.0).idle_until == pytest.approx(START + 4 - P)
            assert double.calls["nvmlDeviceGetUtilizationRates"] == 1  # remembered

    def test_unknown_period_waits_a_full_second_before_calling_the_driver_idle(
        self, clock: FakeClock
    ):
        gpu = FakeGpu(0, "GPU-a")
        with installed(FakeNvml(clock, [gpu])) as double:
            session = open_session(double, clock)  # empty buffer: period unknown
            clock.advance(1.5)
            reading = session.read(0, START)
            # A sample of a 1 s period could still be on its way: idle until then.
            assert reading.idle_until == pytest.approx(START + 1.5 - 1.0 - 0.02)
            assert double.calls["nvmlDeviceGetUtilizationRates"] == 0
            clock.advance(0.6)  # silent for over two of the longest periods
            assert session.read(0, START).idle_until == pytest.approx(START + 2.1 - 1.02)
            assert double.calls["nvmlDeviceGetUtilizationRates"] == 1

    def test_concurrent_reads_are_consistent(self, nvml: FakeNvml, clock: FakeClock):
        session = open_session(nvml, clock)
        nvml.set_utilization(70)
        nvml.set_utilization(70, device=1)
        clock.advance(1)
        results: list[Reading] = []
        threads = [
            threading.Thread(target=lambda d=i % 2: results.append(session.read(d, START)))
            for i in range(16)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert len(results) == 16
        assert all(len(r.utilization) == 6 for r in results)


def busy_for_a_second(double: FakeNvml, clock: FakeClock, *, then_idle: float) -> None:
    """The GPU busy for a second, then idle for ``then_idle`` seconds."""
    double.set_utilization(100)
    clock.advance(1)
    double.set_utilization(0)
    clock.advance(then_idle)


@contextmanager
def overrun(clock: FakeClock) -> Iterator[tuple[FakeNvml, Any]]:
    """A session behind by 60 samples of a GPU whose driver keeps 40."""
    gpu = FakeGpu(0, "GPU-a", capacity=40)
    with installed(FakeNvml(clock, [gpu])) as double:
        double.worked_earlier()
        session = open_session(double, clock)
        double.set_utilization(100)
        clock.advance(10)  # 60 samples; the driver keeps 40
        yield double, session


def fail_the_overrun_check(double: FakeNvml, code: int, times: int | None = None) -> None:
    """Make the read's whole-buffer check answer ``code`` (``times`` calls, or always)."""
    calls = 0

    def third_call_fails(name: str) -> None:
        nonlocal calls
        if name == "nvmlDeviceGetSamples":
            calls += 1
            if calls == 3:  # size + fill of the read, then the whole-buffer check
                double.fail("nvmlDeviceGetSamples", code, times=times)

    double.before_call = third_call_fails
