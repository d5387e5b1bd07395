"""Ledger internals: energy, bounded memory, split with many services, fork reset."""

from __future__ import annotations

import random
import threading

import pytest

from gputime import Tracker
from gputime.testing import FakeClock, SimulatedGpu
from tests.conftest import P


class TestEnergy:
    def test_energy_is_integrated_over_exact_windows(self, clock: FakeClock):
        gpu = SimulatedGpu(clock=clock, measure_energy=True)
        tracker = Tracker(backend=gpu, threaded=False)
        gpu.set_power(200)
        clock.advance(0.05)
        with tracker.gpu_task("nmt") as task:
            clock.advance(0.5)
            gpu.set_power(100)
            clock.advance(0.5)
        assert task.energy_mj == pytest.approx(150_000.0)
        clock.advance(1)
        tracker.poll()
        assert tracker.stats("nmt").energy_mj == pytest.approx(150_000.0)

    def test_energy_split_between_services(self, clock: FakeClock):
        gpu = SimulatedGpu(clock=clock, measure_energy=True)
        tracker = Tracker(backend=gpu, threaded=False, attribution="split")
        gpu.set_power(300)
        with tracker.gpu_task("a") as a, tracker.gpu_task("b") as b:
            clock.advance(1.0)
        clock.advance(1)
        tracker.poll()
        assert a.energy_mj == pytest.approx(150_000.0)
        assert b.energy_mj == pytest.approx(150_000.0)
        stats = tracker.stats()
        assert stats["a"].energy_mj + stats["b"].energy_mj == pytest.approx(300_000.0)

    def test_lost_energy_counts_nothing_and_is_partial(self, clock: FakeClock):
        gpu = SimulatedGpu(clock=clock, measure_energy=True, buffer_samples=2)
        tracker = Tracker(backend=gpu, threaded=False)
        gpu.set_power(100)
        with tracker.gpu_task("nmt") as task:
            clock.advance(1.0)
        assert task.energy_mj == pytest.approx(100 * 2 * P * 1000)
        assert task.status == "partial"
        assert tracker.stats("nmt").status == "partial"

    def test_backends_without_energy_report_none(self, tracker: Tracker, clock: FakeClock):
        with tracker.gpu_task("nmt") as task:
            clock.advance(0.1)
        assert task.energy_mj is None
        assert tracker.stats("nmt").energy_mj is None
        assert tracker.stats("unseen").energy_mj is None

    def test_unseen_service_with_energy_reads_zero(self, clock: FakeClock):
        tracker = Tracker(backend=SimulatedGpu(clock=clock, measure_energy=True), threaded=False)
        assert tracker.stats("unseen").energy_mj == 0.0

    def test_set_power_checks_its_input(self):
        gpu = SimulatedGpu(measure_energy=True)
        with pytest.raises(ValueError, match="watts="):
            gpu.set_power(-1)
        with pytest.raises(ValueError, match="device="):
            gpu.set_power(10, device=3)


class TestSplit:
    def test_three_services_joining_and_leaving(self, clock: FakeClock):
        gpu = SimulatedGpu(clock=clock)
        tracker = Tracker(backend=gpu, threaded=False, attribution="split")
        gpu.set_utilization(100)
        a = tracker.gpu_task("a").__enter__()  # 0..3
        clock.advance(1)
        b = tracker.gpu_task("b").__enter__()  # 1..3
        clock.advance(1)
        c = tracker.gpu_task("c").__enter__()  # 2..4
        clock.advance(1)
        tracker._end_task(a, None)
        tracker._end_task(b, None)
        clock.advance(1)
        tracker._end_task(c, None)
        clock.advance(1)
        tracker.poll()
        # 0..1: a alone; 1..2: a, b; 2..3: a, b, c; 3..4: c alone.
        assert a.gpu_ms == pytest.approx(1000 + 500 + 1000 / 3)
        assert b.gpu_ms == pytest.approx(500 + 1000 / 3)
        assert c.gpu_ms == pytest.approx(1000 / 3 + 1000)
        stats = tracker.stats()
        assert sum(s.gpu_ms for s in stats.values()) == pytest.approx(4000.0)

    def test_split_among_services_not_tasks(self, clock: FakeClock):
        gpu = SimulatedGpu(clock=clock)
        tracker = Tracker(backend=gpu, threaded=False, attribution="split")
        gpu.set_utilization(100)
        with tracker.gpu_task("a"), tracker.gpu_task("a"), tracker.gpu_task("b"):
            clock.advance(1.0)
        clock.advance(1)
        tracker.poll()
        assert tracker.stats("a").gpu_ms == pytest.approx(500.0)
        assert tracker.stats("b").gpu_ms == pytest.approx(500.0)


class TestBoundedMemory:
    def test_memory_stays_flat_while_a_long_task_runs(self, clock: FakeClock):
        gpu = SimulatedGpu(clock=clock)
        tracker = Tracker(backend=gpu, threaded=False, attribution="split")
        ledger = tracker._ledger
        rng = random.Random(3)
        long_task = tracker.gpu_task("long").__enter__()
        largest = 0
        for step in range(3000):
            gpu.set_utilization(rng.choice((0, 40, 100)))
            with tracker.gpu_task(f"svc{step % 5}"):
                clock.advance(rng.uniform(0.01, 0.2))
            clock.advance(rng.uniform(0, 0.1))
            if step % 5 == 0:
                tracker.poll()
            sizes = [len(c.pending) for c in ledger.channels.util]
            sizes += [len(s.bp_t) for s in ledger._services.values()]
            largest = max(largest, *sizes)
        assert largest < 200  # however long "long" has been running
        assert long_task.running
        assert long_task.gpu_ms > 0
        tracker._end_task(long_task, None)
        total = sum(s.task_count for s in tracker.stats().values())
        assert total == 3001
        clock.advance(1)
        tracker.poll()
        assert ledger._tracking == set()
        assert all(not c.pending for c in ledger.channels.util)

    def test_long_task_figure_survives_pruning(self, clock: FakeClock):
        gpu = SimulatedGpu(clock=clock)
        tracker = Tracker(backend=gpu, threaded=False)
        gpu.set_utilization(100)
        with tracker.gpu_task("long") as task:
            for _ in range(600):
                clock.advance(0.5)
                tracker.poll()
                with tracker.gpu_task("short"):
                    clock.advance(0.01)
        assert task.gpu_ms == pytest.approx(306_000.0)


class TestTailOnlyEnd:
    """A task end with no exit read and no sample since its start (most ends).

    The ledger figures it from the tail alone (``Ledger._end_locked``); these
    are the histories where that shortcut must not be taken.
    """

    @pytest.fixture
    def warm(self, tracker: Tracker, gpu: SimulatedGpu, clock: FakeClock) -> Tracker:
        """Busy from 0; at 0.3 the newest sample read is the one at P (next: 2P)."""
        gpu.set_utilization(100)
        with tracker.gpu_task("warm"):
            clock.advance(0.3)
        assert tracker._ledger.fresh_until > 0.32  # the ends below make no read
        return tracker

    @pytest.mark.parametrize("utilization", [0, 30, 77, 100])
    def test_its_figures_are_the_general_ones_to_the_last_bit(self, utilization):
        def ends(general: bool) -> list[object]:
            clock = FakeClock()
            gpu = SimulatedGpu(clock=clock)
            with Tracker(backend=gpu, threaded=False) as tracker:
                if general:
                    tracker._ledger._sole = None  # every end takes task_figures
                gpu.set_utilization(utilization)
                with tracker.gpu_task("warm"):
                    clock.advance(0.34)
                reads, figures = gpu.reads, []
                for gap, length in ((0.06, 0.03), (0.01, 0.0), (0.0, 0.0123), (0.001, 0.001)):
                    clock.advance(gap)
                    with tracker.gpu_task("a") as task:
                        clock.advance(length)
                    figures.append(task._final)
                assert gpu.reads == reads  # no exit read: the tail-only end where it may
            return figures

        assert ends(general=False) == ends(general=True)

    def test_a_failure_during_the_task_makes_it_partial(self, warm, gpu, clock):
        task = warm.gpu_task("a").__enter__()
        gpu.fail_reads(1)
        warm.poll()  # fails
        warm.poll()  # succeeds, with no sample newer than the task's start
        clock.advance(0.02)
        reads = gpu.reads
        warm._end_task(task, None)
        assert gpu.reads == reads  # no exit read
        assert task.status == "partial"
        assert task.gpu_ms == pytest.approx(20.0)  # the tail: the device is read again

    def test_a_task_begun_while_reads_fail_takes_no_tail(self, warm, gpu, clock):
        gpu.fail_reads()
        warm.poll()
        clock.advance(0.01)
        with warm.gpu_task("a") as task:
            clock.advance(0.01)
        assert (task.gpu_ms, task.status, task.coverage) == (0.0, "partial", 0.0)

    def test_a_task_after_recovery_takes_the_tail(self, warm, gpu, clock):
        gpu.fail_reads(1)
        warm.poll()
        warm.poll()
        clock.advance(0.01)
        with warm.gpu_task("a") as task:
            clock.advance(0.01)
        assert (task.gpu_ms, task.status, task.coverage) == (pytest.approx(10.0), "ok", 1.0)


class TestSettle:
    def test_settle_done_clears_only_the_deadline_it_was_read_for(self, tracker, clock):
        ledger = tracker._ledger
        with tracker.gpu_task("a"):
            clock.advance(0.1)
        first = ledger.settle_deadline
        assert first is not None
        with tracker.gpu_task("b"):  # began and ended during the sampler's wait
            clock.advance(0.1)
        second = ledger.settle_deadline
        assert second is not None
        assert second > first
        clock.advance(second - clock())
        tracker.poll()  # the sampler's read, due at the first deadline, made late
        ledger.settle_done(first)
        assert ledger.settle_deadline == second  # b's tail still needs its read
        ledger.settle_done(second)
        assert ledger.settle_deadline is None

    def test_an_unsettled_window_is_read_again_a_period_later(self, tracker, clock):
        ledger = tracker._ledger
        with tracker.gpu_task("a"):
            clock.advance(0.1)
        deadline = ledger.settle_deadline
        assert deadline is not None
        tracker.poll()  # too early: the sample covering the end is not out yet
        ledger.settle_done(deadline)
        retry = ledger.settle_deadline
        assert retry == pytest.approx(clock() + ledger.sample_period)
        clock.advance(retry - clock())
        tracker.poll()
        ledger.settle_done(retry)
        assert ledger.settle_deadline is None

    def test_the_settle_gives_up_while_reads_fail(self, tracker, gpu, clock):
        ledger = tracker._ledger
        with tracker.gpu_task("a"):
            clock.advance(0.1)
        gpu.fail_reads()
        for _ in range(40):
            deadline = ledger.settle_deadline
            if deadline is None:
                break
            clock.advance(max(0.0, deadline - clock()))
            tracker.poll()
            ledger.settle_done(deadline)
        assert ledger.settle_deadline is None
        assert clock() <= 0.1 + 3.0 + ledger.sample_period + 1e-9
        assert tracker.stats("a").status == "partial"


class TestLifecycle:
    def test_clear_after_fork_starts_at_zero(self, tracker: Tracker, gpu, clock):
        gpu.set_utilization(100)
        inherited = tracker.gpu_task("nmt").__enter__()
        clock.advance(1)
        tracker.poll()
        tracker._after_fork_in_child()  # what the fork hook runs in the child
        assert tracker.stats() == {}
        assert inherited.status == "partial"  # the child has no figures for it
        tracker._end_task(inherited, None)
        assert tracker.stats() == {}
        with tracker.gpu_task("nmt") as task:
            clock.advance(1)
        assert task.gpu_ms == pytest.approx(1000.0)
        assert tracker.stats("nmt").task_count == 1

    def test_an_inherited_task_ends_without_reading(self, tracker: Tracker, gpu, clock):
        inherited = tracker.gpu_task("nmt").__enter__()
        clock.advance(1)
        tracker._after_fork_in_child()
        reads = gpu.reads
        tracker._end_task(inherited, None)
        assert gpu.reads == reads
        assert not inherited.running
        assert inherited.status == "partial"

    def test_resets_in_a_row_keep_pending_marks_few(self, tracker: Tracker, clock):
        with tracker.gpu_task("nmt"):
            for _ in range(5000):
                tracker.reset("nmt")
            assert max(len(c.pending) for c in tracker._ledger.channels.util) < 200

    def test_ending_a_task_twice_counts_once(self, tracker: Tracker, clock):
        task = tracker.gpu_task("nmt").__enter__()
        tracker._end_task(task, None)
        tracker._end_task(task, None)
        assert tracker.stats("nmt").task_count == 1

    def test_poll_after_close_reads_nothing(self, gpu: SimulatedGpu, clock):
        tracker = Tracker(backend=gpu, threaded=False)
        with tracker.gpu_task("nmt"):
            tracker.close()
            tracker.poll()
        assert gpu.reads == 0


class TestNoDevice:
    """A tracker that reads no device ends tasks on a path of its own (Ledger.end_unmeasured)."""

    @pytest.fixture
    def none_tracker(self, clock: FakeClock) -> Tracker:
        return Tracker(backend="none", clock=clock)

    def test_ending_twice_counts_once(self, none_tracker: Tracker, clock: FakeClock):
        task = none_tracker.start_task("nmt")
        clock.advance(0.5)
        task.end()
        clock.advance(0.5)
        task.end()
        assert none_tracker.stats("nmt").task_count == 1
        assert task.duration == pytest.approx(0.5)
        assert task.status == "unavailable"

    def test_a_task_begun_before_a_fork_is_not_the_childs(
        self, none_tracker: Tracker, clock: FakeClock
    ):
        inherited = none_tracker.start_task("nmt")
        none_tracker._after_fork_in_child()  # what the fork hook runs in the child
        inherited.end()
        assert not inherited.running
        assert none_tracker.stats() == {}

    def test_a_recorded_end_is_applied_before_the_next_end(
        self, none_tracker: Tracker, clock: FakeClock
    ):
        collected = none_tracker.start_task("a")
        later = none_tracker.start_task("b")
        clock.advance(1)
        none_tracker._defer_end(collected, None)  # what an end inside a collection does
        clock.advance(1)
        later.end()
        assert collected.end_time == pytest.approx(1.0)
        assert later.end_time == pytest.approx(2.0)
        assert none_tracker.stats("a").task_count == none_tracker.stats("b").task_count == 1

    def test_an_end_that_finds_the_lock_held_waits_for_it(self, none_tracker: Tracker):
        task = none_tracker.start_task("nmt")
        held, done = threading.Event(), threading.Event()

        def hold() -> None:
            with none_tracker._ledger._lock:
                held.set()
                done.wait(0.2)  # released by the timeout: the end is already waiting

        holder = threading.Thread(target=hold)
        holder.start()
        assert held.wait(5)
        task.end()  # yields the GIL, then blocks until the holder lets go
        holder.join(5)
        assert not task.running
        assert none_tracker.stats("nmt").task_count == 1
