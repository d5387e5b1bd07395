"""Spec section 2, rule by rule, with exact figures from the driver model.

Every test runs on a FakeClock with a SimulatedGpu (sample period P = 1/6 s)
and a tracker without a thread: only ``poll()`` and task exits read.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest

from gputime import Tracker
from gputime._backends import Attribution, Clock, DeviceSelector, Reading, Session
from gputime.testing import FakeClock, SimulatedGpu
from tests.conftest import P


class SlowReads:
    """A SimulatedGpu whose reads take ``latency`` seconds of the fake clock."""

    name = "slow"

    def __init__(self, gpu: SimulatedGpu, clock: FakeClock, latency: float) -> None:
        self.gpu, self.clock, self.latency = gpu, clock, latency

    def open(
        self, *, clock: Clock, devices: Sequence[DeviceSelector] | None, attribution: Attribution
    ) -> Session:
        session = self.gpu.open(clock=clock, devices=devices, attribution=attribution)
        original = session.read

        def read(device: int, since: float) -> Reading:
            self.clock.advance(self.latency)
            return original(device, since)

        session.read = read  # type: ignore[method-assign]
        return session


def run_task(tracker: Tracker, clock: FakeClock, service: str, seconds: float) -> float:
    with tracker.gpu_task(service) as task:
        clock.advance(seconds)
    return task.gpu_ms


class TestOnlyDuringTasks:
    """Rule 1: the sampler reads only while tasks run (plus the settle)."""

    def test_no_reads_before_any_task(self, tracker: Tracker, gpu: SimulatedGpu, clock: FakeClock):
        gpu.set_utilization(100)
        clock.advance(5)
        tracker.poll()
        assert gpu.reads == 0
        assert tracker.stats() == {}

    def test_busy_time_outside_windows_is_not_counted(
        self, tracker: Tracker, gpu: SimulatedGpu, clock: FakeClock
    ):
        gpu.set_utilization(100)
        clock.advance(1.0)
        assert run_task(tracker, clock, "nmt", 1.0) == pytest.approx(1000.0)
        clock.advance(3.0)
        tracker.poll()
        assert tracker.stats("nmt").gpu_ms == pytest.approx(1000.0)

    def test_no_reads_once_settled(self, tracker: Tracker, gpu: SimulatedGpu, clock: FakeClock):
        gpu.set_utilization(100)
        run_task(tracker, clock, "nmt", 1.0)
        clock.advance(P)
        tracker.poll()  # collects the sample covering the end
        reads = gpu.reads
        clock.advance(10)
        tracker.poll()
        assert gpu.reads == reads

    def test_poll_reads_while_a_task_runs(
        self, tracker: Tracker, gpu: SimulatedGpu, clock: FakeClock
    ):
        with tracker.gpu_task("nmt"):
            clock.advance(1)
            tracker.poll()
            assert gpu.reads == 1


class TestOnlyWhileBusy:
    """Rule 2: busy means a sample above the threshold."""

    def test_aligned_busy_stretch(self, tracker: Tracker, gpu: SimulatedGpu, clock: FakeClock):
        with tracker.gpu_task("nmt") as task:
            clock.advance(3 * P)
            gpu.set_utilization(50)
            clock.advance(6 * P)
            gpu.set_utilization(0)
            clock.advance(3 * P)
        assert task.gpu_ms == pytest.approx(1000.0)
        assert task.gpu_util_ms == pytest.approx(500.0)

    def test_partial_samples_count_whole_for_busy_and_weighted_for_util(
        self, tracker: Tracker, gpu: SimulatedGpu, clock: FakeClock
    ):
        # 100 % from 0.55 s to 1.45 s: samples 4 and 9 read 70 %, 5..8 read 100 %.
        with tracker.gpu_task("nmt") as task:
            clock.advance(0.55)
            gpu.set_utilization(100)
            clock.advance(0.9)
            gpu.set_utilization(0)
            clock.advance(0.55)
        assert gpu.sample(4) == 70
        assert gpu.sample(9) == 70
        assert task.gpu_ms == pytest.approx(6 * P * 1000)
        assert task.gpu_util_ms == pytest.approx((0.7 + 4 + 0.7) * P * 1000)

    def test_threshold_makes_low_samples_idle_for_both_figures(self, gpu: SimulatedGpu, clock):
        tracker = Tracker(backend=gpu, threaded=False, threshold=75)
        with tracker.gpu_task("nmt") as task:
            clock.advance(0.55)
            gpu.set_utilization(100)
            clock.advance(0.9)
            gpu.set_utilization(0)
            clock.advance(0.55)
        assert task.gpu_ms == pytest.approx(4 * P * 1000)
        assert task.gpu_util_ms == pytest.approx(4 * P * 1000)

    def test_two_busy_devices_count_twice(self, clock: FakeClock):
        gpu = SimulatedGpu(devices=2, clock=clock)
        tracker = Tracker(backend=gpu, threaded=False)
        gpu.set_utilization(100, device=0)
        gpu.set_utilization(40, device=1)
        with tracker.gpu_task("nmt") as task:
            clock.advance(1.0)
        assert task.gpu_ms == pytest.approx(2000.0)
        assert task.gpu_util_ms == pytest.approx(1400.0)
        assert tracker.device_ids == ("SIM-0", "SIM-1")

    def test_devices_selects_which_are_tracked(self, clock: FakeClock):
        gpu = SimulatedGpu(devices=3, clock=clock)
        tracker = Tracker(backend=gpu, threaded=False, devices=[2, "SIM-0"])
        gpu.set_utilization(100, device=1)
        gpu.set_utilization(100, device=2)
        with tracker.gpu_task("nmt") as task:
            clock.advance(1.0)
        assert task.gpu_ms == pytest.approx(1000.0)
        assert tracker.device_ids == ("SIM-2", "SIM-0")


class TestWindows:
    """Exact windows, the tail after the newest sample, and the settle."""

    def test_unaligned_task_takes_the_newest_sample_over_its_tail(
        self, tracker: Tracker, gpu: SimulatedGpu, clock: FakeClock
    ):
        gpu.set_utilization(100)
        clock.advance(1.05)
        with tracker.gpu_task("nmt") as task:
            clock.advance(0.9)
        assert task.gpu_ms == pytest.approx(900.0)
        assert task.status == "ok"
        assert task.coverage == 1.0

    def test_an_exit_just_after_the_first_sample_ever_reads_it(
        self, tracker: Tracker, gpu: SimulatedGpu, clock: FakeClock
    ):
        # Before any sample was seen, nothing places the driver's grid: a read
        # that found nothing says nothing of when the first sample comes.
        gpu.set_utilization(100)
        clock.advance(0.05)
        run_task(tracker, clock, "nmt", 0.05)  # its exit finds no sample yet
        clock.advance(0.05)
        with tracker.gpu_task("nmt") as task:  # sample 1 (at P) is out before it ends
            clock.advance(0.05)
        assert task.gpu_ms == pytest.approx(50.0)
        assert task.status == "ok"

    def test_service_total_uses_real_samples_and_grows_when_the_end_is_covered(
        self, tracker: Tracker, gpu: SimulatedGpu, clock: FakeClock
    ):
        gpu.set_utilization(100)
        clock.advance(1.05)
        run_task(tracker, clock, "nmt", 0.9)  # ends at 1.95; newest sample ends at 11 P
        assert tracker.stats("nmt").gpu_ms == pytest.approx((11 * P - 1.05) * 1000)
        clock.advance(0.05)  # sample 12 (2.0 s) now visible
        tracker.poll()
        assert tracker.stats("nmt").gpu_ms == pytest.approx(900.0)

    def test_task_figure_is_final_at_exit(
        self, tracker: Tracker, gpu: SimulatedGpu, clock: FakeClock
    ):
        gpu.set_utilization(100)
        clock.advance(1.05)
        with tracker.gpu_task("nmt") as task:
            clock.advance(0.9)
        gpu.set_utilization(0)
        clock.advance(1)
        tracker.poll()
        assert task.gpu_ms == pytest.approx(900.0)

    def test_short_task_inside_one_sample_takes_the_previous_value(
        self, tracker: Tracker, gpu: SimulatedGpu, clock: FakeClock
    ):
        gpu.set_utilization(60)
        clock.advance(2.0)
        with tracker.gpu_task("nmt") as task:
            clock.advance(0.05)
        assert task.gpu_ms == pytest.approx(50.0)
        assert task.gpu_util_ms == pytest.approx(30.0)

    def test_tail_after_idle_takes_the_newest_visible_sample(
        self, tracker: Tracker, gpu: SimulatedGpu, clock: FakeClock
    ):
        # Found by benchmarks/accuracy.py: after a settled idle spell the read
        # must return the samples between the newest one read and the new start.
        gpu.set_utilization(50)
        clock.advance(1.0)
        with tracker.gpu_task("a"):
            clock.advance(0.05)
        clock.advance(0.15)
        tracker.poll()  # t = 1.2: reads sample 7 (ends 7 P); settled
        gpu.set_utilization(100)
        clock.advance(0.15)  # t = 1.35: sample 8 (90 %) is visible
        with tracker.gpu_task("b") as task:
            clock.advance(0.10)  # ends before sample 9
        assert gpu.sample(8) == 90
        assert task.gpu_util_ms == pytest.approx(90.0)

    def test_exit_exactly_on_a_sample_boundary_takes_that_sample(
        self, tracker: Tracker, gpu: SimulatedGpu, clock: FakeClock
    ):
        # Six steps of P land a hair below 7 P in floats; the driver model
        # shows sample 7 there, so the exit must read it, not skip the read.
        with tracker.gpu_task("nmt") as task:
            for _ in range(6):
                clock.advance(P)
            tracker.poll()
            gpu.set_utilization(100)
            clock.advance(P)
        assert task.gpu_ms == pytest.approx(P * 1000)

    def test_exit_read_latency_does_not_extend_the_service_window(self, clock: FakeClock):
        gpu = SlowReads(SimulatedGpu(clock=clock), clock, latency=0.01)
        tracker = Tracker(backend=gpu, threaded=False)
        gpu.gpu.set_utilization(100)
        with tracker.gpu_task("nmt") as task:
            clock.advance(0.99)  # the exit read then ends at 1.0, when sample 6 appears
        clock.advance(1)
        tracker.poll()
        assert task.gpu_ms == pytest.approx(990.0)
        assert tracker.stats("nmt").gpu_ms == pytest.approx(990.0)

    def test_running_task_shows_real_samples_so_far(
        self, tracker: Tracker, gpu: SimulatedGpu, clock: FakeClock
    ):
        gpu.set_utilization(100)
        with tracker.gpu_task("nmt") as task:
            clock.advance(1.1)
            tracker.poll()
            assert task.running
            assert task.gpu_ms == pytest.approx(1000.0)
            assert task.status == "ok"
            clock.advance(0.9)
        assert not task.running
        assert task.gpu_ms == pytest.approx(2000.0)
        assert task.duration == pytest.approx(2.0)


class DuringRead:
    """Runs ``action`` inside the next device read: another thread's work that
    takes the ledger lock while a task's exit read is in flight."""

    def __init__(self, tracker: Tracker) -> None:
        session = tracker._reader.session
        self.tracker, self._read, self.actions = tracker, session.read, []
        session.read = self.read  # type: ignore[method-assign]

    def read(self, device: int, since: float) -> Reading:
        if self.actions:
            self.actions.pop()()
        return self._read(device, since)

    def end_with_read(self, handle: object) -> None:
        self.tracker._ledger.channels.fresh_until = -math.inf  # make this exit read
        self.tracker._end_task(handle, None)  # type: ignore[arg-type]


class TestEventsDuringAnExitRead:
    """Events another thread applies while a task's exit read is in flight."""

    def test_another_task_of_the_service_ends_meanwhile(self, tracker, gpu, clock):
        hook = DuringRead(tracker)
        gpu.set_utilization(100)
        first = tracker.gpu_task("s").__enter__()
        clock.advance(0.05)
        second = tracker.gpu_task("s").__enter__()
        clock.advance(0.5)

        def second_ends() -> None:
            clock.advance(0.01)  # the read's latency
            tracker._end_task(second, None)

        hook.actions.append(second_ends)
        hook.end_with_read(first)
        clock.advance(1)
        tracker.poll()
        assert first.end_time >= second.end_time  # events keep one order
        window = max(first.end_time, second.end_time) - first.start_time
        assert tracker.stats("s").gpu_ms == pytest.approx(1000 * window)

    def test_another_task_of_the_service_begins_meanwhile(self, tracker, gpu, clock):
        hook = DuringRead(tracker)
        gpu.set_utilization(100)
        first = tracker.gpu_task("s").__enter__()
        clock.advance(0.55)
        later: list[object] = []

        def another_begins() -> None:
            clock.advance(0.01)
            later.append(tracker.gpu_task("s").__enter__())

        hook.actions.append(another_begins)
        hook.end_with_read(first)
        # The service window is the union of its tasks' windows: no gap where
        # the ledger saw the service active.
        assert first.end_time >= later[0].start_time  # type: ignore[attr-defined]
        clock.advance(0.2)
        tracker._end_task(later[0], None)  # type: ignore[arg-type]
        clock.advance(1)
        tracker.poll()
        assert tracker.stats("s").gpu_ms == pytest.approx(1000 * (clock() - 1 - first.start_time))

    def test_the_last_close_is_the_latest_end(self, clock):
        clock.advance(10 * P - 0.005)
        gpu = SimulatedGpu(clock=clock)
        tracker = Tracker(backend=gpu, threaded=False)
        hook = DuringRead(tracker)
        gpu.set_utilization(100)
        b = tracker.gpu_task("b").__enter__()
        a = tracker.gpu_task("a").__enter__()
        clock.advance(P)

        def a_ends() -> None:
            clock.advance(0.010)
            tracker._end_task(a, None)

        hook.actions.append(a_ends)
        hook.end_with_read(b)
        clock.advance(P)
        tracker.poll()  # the settle read
        clock.advance(1)
        with tracker.gpu_task("c"):  # the next task after idle moves the horizon on
            clock.advance(0.1)
        clock.advance(1)
        tracker.poll()
        assert tracker.stats("a").gpu_ms == pytest.approx(1000 * (a.end_time - a.start_time))

    def test_split_share_frozen_in_a_tail_matches_the_windows(self, clock):
        gpu = SimulatedGpu(clock=clock)
        tracker = Tracker(backend=gpu, threaded=False, attribution="split")
        hook = DuringRead(tracker)
        clock.advance(9.0)
        gpu.set_utilization(100)
        clock.advance(1.0)
        a1 = tracker.gpu_task("a").__enter__()
        b = tracker.gpu_task("b").__enter__()
        clock.advance(0.01)
        tracker.poll()
        clock.advance(0.02)
        a2 = tracker.gpu_task("a").__enter__()
        clock.advance(0.05)

        def a2_ends() -> None:
            clock.advance(0.05)
            tracker._end_task(a2, None)

        hook.actions.append(a2_ends)
        hook.end_with_read(b)
        clock.advance(1.0)
        tracker._end_task(a1, None)
        # b's end moved up to a2's: a and b shared the device over all of a2's window.
        assert b.end_time == a2.end_time
        assert a2.gpu_ms == pytest.approx(1000 * (a2.end_time - a2.start_time) / 2)


class TestIndependence:
    """Rule 3 and the attributions."""

    def overlap(self, tracker: Tracker, clock: FakeClock) -> tuple[float, float]:
        a = tracker.gpu_task("a").__enter__()
        clock.advance(1.0)
        b = tracker.gpu_task("b").__enter__()
        clock.advance(1.0)
        a.tracker._end_task(a, None)
        clock.advance(1.0)
        b.tracker._end_task(b, None)
        clock.advance(1.0)
        tracker.poll()
        return a.gpu_ms, b.gpu_ms

    def test_device_attribution_credits_every_active_service(self, gpu, clock):
        tracker = Tracker(backend=gpu, threaded=False)
        gpu.set_utilization(100)
        assert self.overlap(tracker, clock) == (pytest.approx(2000.0), pytest.approx(2000.0))
        stats = tracker.stats()
        assert stats["a"].gpu_ms == pytest.approx(2000.0)
        assert stats["b"].gpu_ms == pytest.approx(2000.0)

    def test_split_attribution_adds_up_to_the_device(self, gpu, clock):
        tracker = Tracker(backend=gpu, threaded=False, attribution="split")
        gpu.set_utilization(100)
        assert self.overlap(tracker, clock) == (pytest.approx(1500.0), pytest.approx(1500.0))
        stats = tracker.stats()
        assert stats["a"].gpu_ms + stats["b"].gpu_ms == pytest.approx(3000.0)
        assert stats["a"].gpu_util_ms == pytest.approx(1500.0)

    def test_split_with_unaligned_edges(self, gpu, clock):
        tracker = Tracker(backend=gpu, threaded=False, attribution="split")
        gpu.set_utilization(100)
        clock.advance(0.05)
        with tracker.gpu_task("a") as a:
            clock.advance(0.3)
            with tracker.gpu_task("b") as b:
                clock.advance(0.2)
            clock.advance(0.25)
        clock.advance(1)
        tracker.poll()
        assert a.gpu_ms == pytest.approx(550 + 100)
        assert b.gpu_ms == pytest.approx(100)
        stats = tracker.stats()
        assert stats["a"].gpu_ms + stats["b"].gpu_ms == pytest.approx(750)

    def test_one_service_reset_leaves_the_other(self, tracker, gpu, clock):
        gpu.set_utilization(100)
        run_task(tracker, clock, "a", 1.0)
        run_task(tracker, clock, "b", 1.0)
        tracker.reset("a")
        assert tracker.stats("a").gpu_ms == 0
        assert tracker.stats("a").task_count == 0
        assert tracker.stats("b").gpu_ms > 0
        assert tracker.stats("b").task_count == 1


class TestMonotonic:
    """Rule 4: a service total never decreases between resets."""

    def test_reads_during_a_task_only_grow(self, tracker, gpu, clock):
        seen = []
        with tracker.gpu_task("nmt"):
            for percent in (100, 0, 30, 0, 100, 0):
                gpu.set_utilization(percent)
                clock.advance(0.37)
                tracker.poll()
                seen.append(tracker.stats("nmt").gpu_ms)
        clock.advance(1)
        tracker.poll()
        seen.append(tracker.stats("nmt").gpu_ms)
        assert seen == sorted(seen)
        assert seen[0] > 0
        assert seen[-1] > seen[0]


class TestFailedReadings:
    """Rule 5: a failed reading counts nothing for its time and is reported."""

    def test_a_failed_read_leaves_services_that_needed_nothing_ok(self, tracker, gpu, clock):
        gpu.set_utilization(100)
        run_task(tracker, clock, "a", 1.0)  # its exit read covered its end: settled
        clock.advance(5)
        gpu.fail_reads(1)
        run_task(tracker, clock, "b", 1.0)  # b's exit read fails
        assert tracker.stats("b").status == "partial"
        assert tracker.stats("a").status == "ok"

    def test_recovered_samples_count_but_the_status_stays_partial(self, tracker, gpu, clock):
        gpu.set_utilization(100)
        with tracker.gpu_task("nmt") as task:
            clock.advance(0.5)
            gpu.fail_reads(1)
            tracker.poll()
            clock.advance(0.5)
        assert task.gpu_ms == pytest.approx(1000.0)
        assert task.status == "partial"
        assert task.coverage == 1.0
        assert tracker.stats("nmt").status == "partial"

    def test_failed_exit_read_guesses_no_tail(self, tracker, gpu, clock):
        gpu.set_utilization(100)
        with tracker.gpu_task("nmt") as task:
            clock.advance(0.5)
            tracker.poll()
            clock.advance(0.45)
            gpu.fail_reads(1)
        assert task.gpu_ms == pytest.approx(500.0)
        assert task.status == "partial"
        assert task.coverage == pytest.approx(0.5 / 0.95)

    def test_lost_samples_count_nothing(self, clock):
        gpu = SimulatedGpu(clock=clock, buffer_samples=4)
        tracker = Tracker(backend=gpu, threaded=False)
        gpu.set_utilization(100)
        with tracker.gpu_task("nmt") as task:
            clock.advance(0.5)
            tracker.poll()  # samples 1..3
            gpu.fail_reads(None)
            clock.advance(1.5)
            tracker.poll()
            gpu.fail_reads(0)
        # Exit at 2.0 s: the buffer holds samples 9..12; 4..8 were lost.
        assert task.gpu_ms == pytest.approx(500 + 4 * P * 1000)
        assert task.coverage == pytest.approx((0.5 + 4 * P) / 2)
        assert task.status == "partial"
        stats = tracker.stats("nmt")
        assert stats.gpu_ms == pytest.approx(500 + 4 * P * 1000)
        assert stats.coverage == pytest.approx((0.5 + 4 * P) / 2)
        assert stats.status == "partial"

    def test_every_read_failing_gives_zero_and_partial(self, tracker, gpu, clock):
        gpu.set_utilization(100)
        gpu.fail_reads()
        with tracker.gpu_task("nmt") as task:
            clock.advance(1.0)
            tracker.poll()
        assert task.gpu_ms == 0
        assert task.status == "partial"
        assert task.coverage == 0.0

    def test_coverage_says_what_was_read_while_the_failure_lasts(self, tracker, gpu, clock):
        # A GPU that stops answering (fallen off the bus): every read fails.
        gpu.set_utilization(100)
        with tracker.gpu_task("nmt") as task:
            clock.advance(0.5)
            tracker.poll()  # read: samples up to 0.5 s
            gpu.fail_reads()
            clock.advance(0.5)
            tracker.poll()  # fails: nothing is known after 0.5 s
            assert task.coverage == pytest.approx(0.5)
            assert task.status == "partial"
            assert tracker.stats("nmt").coverage == pytest.approx(0.5)
            clock.advance(1.0)
            assert task.coverage == pytest.approx(0.25)  # and it shrinks as time goes on
        assert task.coverage == pytest.approx(0.25)
        stats = tracker.stats("nmt")
        assert (stats.coverage, stats.status) == (pytest.approx(0.25), "partial")
        clock.advance(5)  # the window is closed: its coverage no longer moves
        assert tracker.stats("nmt").coverage == pytest.approx(0.25)
        gpu.fail_reads(0)
        tracker.poll()  # the driver answers again; the ring buffer still had the samples
        assert tracker.stats("nmt").coverage == pytest.approx(1.0)
        assert tracker.stats("nmt").status == "partial"  # even if recovered later

    def test_coverage_of_a_service_whose_every_read_failed(self, tracker, gpu, clock):
        gpu.fail_reads()
        with tracker.gpu_task("nmt") as task:
            clock.advance(1.0)
            tracker.poll()
            assert task.coverage == 0.0
            assert tracker.stats("nmt").coverage == 0.0
        assert tracker.stats("nmt").coverage == 0.0

    def test_a_reset_forgets_a_failure_from_before_it(self, tracker, gpu, clock):
        gpu.set_utilization(100)
        run_task(tracker, clock, "nmt", 0.05)  # its settle read is still due
        tracker.reset("nmt")
        gpu.fail_reads(1)
        clock.advance(P)
        tracker.poll()  # the settle read fails: it covers only time before the reset
        stats = tracker.stats("nmt")
        assert (stats.status, stats.coverage) == ("ok", 1.0)

    def test_no_tail_is_guessed_while_the_device_is_failing(self, tracker, gpu, clock):
        gpu.set_utilization(100)
        run_task(tracker, clock, "a", 1.0)  # its exit read at 2.0 brings sample 12
        gpu.fail_reads()  # the GPU stops answering
        with tracker.gpu_task("b"):
            clock.advance(0.1)
            tracker.poll()  # fails at 2.1
        with tracker.gpu_task("c") as task:  # no sample is due before 2.1667: no exit read
            clock.advance(0.05)
            assert (task.status, task.coverage) == ("partial", 0.0)
        assert (task.gpu_ms, task.status, task.coverage) == (0.0, "partial", 0.0)

    def test_status_worst_since_reset(self, tracker, gpu, clock):
        gpu.fail_reads(1)
        run_task(tracker, clock, "nmt", 0.5)
        assert tracker.stats("nmt").status == "partial"
        run_task(tracker, clock, "nmt", 0.5)
        assert tracker.stats("nmt").status == "partial"
        tracker.reset("nmt")
        run_task(tracker, clock, "nmt", 0.5)
        assert tracker.stats("nmt").status == "ok"


class TestConcurrentTasks:
    """Rule 6: a service window lasts until its last running task ends."""

    def test_overlapping_tasks_count_shared_time_once_for_the_service(self, tracker, gpu, clock):
        gpu.set_utilization(100)
        first = tracker.gpu_task("nmt").__enter__()
        clock.advance(0.5)
        second = tracker.gpu_task("nmt").__enter__()
        assert tracker.stats("nmt").active_tasks == 2
        assert second.concurrency == 2
        clock.advance(0.5)
        tracker._end_task(first, None)
        clock.advance(1.0)
        tracker._end_task(second, None)
        clock.advance(1.0)
        tracker.poll()
        assert first.gpu_ms == pytest.approx(1000.0)
        assert second.gpu_ms == pytest.approx(1500.0)
        stats = tracker.stats("nmt")
        assert stats.gpu_ms == pytest.approx(2000.0)
        assert stats.task_count == 2
        assert stats.active_tasks == 0


class TestReset:
    """Rules 7 and 10."""

    def test_reset_all(self, tracker, gpu, clock):
        gpu.set_utilization(100)
        run_task(tracker, clock, "a", 1.0)
        run_task(tracker, clock, "b", 1.0)
        tracker.reset()
        assert all(s.gpu_ms == 0 and s.task_count == 0 for s in tracker.stats().values())

    def test_reset_while_running_counts_from_the_reset_on(self, tracker, gpu, clock):
        gpu.set_utilization(100)
        with tracker.gpu_task("nmt") as task:
            clock.advance(1.05)
            tracker.poll()
            tracker.reset("nmt")
            assert tracker.stats("nmt").active_tasks == 1
            assert tracker.stats("nmt").gpu_ms == 0
            clock.advance(0.95)
        clock.advance(1)
        tracker.poll()
        assert task.gpu_ms == pytest.approx(2000.0)
        stats = tracker.stats("nmt")
        assert stats.gpu_ms == pytest.approx(950.0)
        assert stats.task_count == 1

    def test_reset_inside_a_sample_counts_only_its_later_part(self, tracker, gpu, clock):
        gpu.set_utilization(100)
        with tracker.gpu_task("nmt"):
            clock.advance(1.05)
            tracker.reset("nmt")  # sample 7 covers (1.0, 1.1667]: 0.1167 s after the reset
            clock.advance(0.1167 - 0.0001)
            tracker.poll()
            assert tracker.stats("nmt").gpu_ms == pytest.approx(0.0)
            clock.advance(0.0001 + 2 * P)
            tracker.poll()
            assert tracker.stats("nmt").gpu_ms == pytest.approx((9 * P - 1.05) * 1000)
        clock.advance(1)
        tracker.poll()
        assert tracker.stats("nmt").task_count == 1

    def test_reset_after_the_window_closed_before_it_settled(self, tracker, gpu, clock):
        gpu.set_utilization(100)
        clock.advance(0.05)
        run_task(tracker, clock, "nmt", 1.0)  # ends at 1.05; sample 7 (to 1.1667) not out
        tracker.reset("nmt")
        clock.advance(1)
        tracker.poll()
        assert tracker.stats("nmt").gpu_ms == 0.0  # nothing of nmt's window is after the reset
        run_task(tracker, clock, "nmt", 0.5)
        clock.advance(1)
        tracker.poll()
        assert tracker.stats("nmt").gpu_ms == pytest.approx(500.0)

    def test_reset_twice_before_the_covering_sample(self, tracker, gpu, clock):
        gpu.set_utilization(100)
        with tracker.gpu_task("nmt"):
            clock.advance(1.05)
            tracker.reset("nmt")
            clock.advance(0.05)
            tracker.reset("nmt")  # at 1.1: only the 1.1 .. end stretch counts
            clock.advance(0.4)
        clock.advance(1)
        tracker.poll()
        assert tracker.stats("nmt").gpu_ms == pytest.approx(400.0)

    def test_never_seen_service_reads_zeros(self, tracker):
        stats = tracker.stats("never")
        assert (stats.service, stats.task_count, stats.gpu_ms, stats.status) == (
            "never",
            0,
            0.0,
            "ok",
        )


class TestCounts:
    """Rule 8: ended tasks are counted however they ended."""

    def test_raised_and_returned_tasks_count(self, tracker, clock):
        @tracker.gpu_task("nmt")
        def job(fail: bool) -> str:
            clock.advance(0.1)
            if fail:
                raise KeyError("boom")
            return "ok"

        assert job(False) == "ok"
        with pytest.raises(KeyError):
            job(True)
        assert tracker.stats("nmt").task_count == 2
        assert tracker.stats("nmt").active_tasks == 0


class TestListeners:
    """Rule 9: task start and end listeners."""

    def test_listeners_see_the_handle(self, tracker, gpu, clock):
        events = []

        @tracker.on_task_start
        def started(task):
            events.append(("start", task.service, task.running))

        @tracker.on_task_end
        def ended(task):
            events.append(("end", task.service, task.gpu_ms))

        gpu.set_utilization(100)
        run_task(tracker, clock, "tts", 1.0)
        assert events == [("start", "tts", True), ("end", "tts", pytest.approx(1000.0))]

    def test_a_raising_listener_is_logged_not_propagated(self, tracker, clock, caplog):
        def broken(task):
            raise RuntimeError("listener bug")

        tracker.on_task_start(broken)
        tracker.on_task_end(broken)
        for _ in range(3):
            run_task(tracker, clock, "tts", 0.1)
        assert tracker.stats("tts").task_count == 3
        messages = [r.getMessage() for r in caplog.records if r.name == "gputime"]
        assert len(messages) == 2  # once per kind
        assert all("listener bug" in m for m in messages)

    def test_listener_must_be_callable(self, tracker):
        with pytest.raises(TypeError):
            tracker.on_task_start(42)  # type: ignore[arg-type]
