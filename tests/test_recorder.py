"""A timeline's recording side (gputime._recorder): bounded rings, faults, fork.

What the tracker's hooks feed: rings that keep the newest and count what they
drop, from many threads at once and within the documented memory; faults
logged once, never raised into a task or under the ledger lock; a forked
child's empty start. On a FakeClock and a SimulatedGpu, with no sampler thread.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import threading
import tracemalloc
from collections.abc import Iterator

import pytest

import gputime
from gputime import Timeline, Tracker
from gputime.testing import FakeClock, SimulatedGpu
from tests.conftest import timeline_of
from tests.trace_format import validate

# --------------------------------------------------------------------------- bounds


def test_rings_keep_the_newest_and_count_what_they_dropped(gpu: SimulatedGpu, clock: FakeClock):
    timeline = Timeline(max_tasks=3, max_samples=5)
    with Tracker(backend=gpu, threaded=False, timeline=timeline) as tracker:
        assert tracker.timeline is timeline
        for n in range(5):
            with tracker.gpu_task("nmt", name=f"job {n}"):
                clock.advance(0.5)
        assert [w.name for w in timeline.tasks()] == ["job 2", "job 3", "job 4"]
        assert timeline.dropped_tasks == 2
        samples = timeline.samples()
        assert len(samples) == 5
        assert samples[-1].end == pytest.approx(2.5)
        assert timeline.dropped_samples == 15 - 5
        trace = timeline.to_trace()
        validate(trace)
        assert trace["otherData"]["dropped_tasks"] == 2
        assert trace["otherData"]["dropped_samples"] == 10


def test_threads_recording_at_once_lose_nothing():
    timeline = Timeline(max_tasks=100)
    with Tracker(backend="none", threaded=False, timeline=timeline) as tracker:

        def work(service: str) -> None:
            for _ in range(500):
                with tracker.gpu_task(service):
                    pass

        threads = [threading.Thread(target=work, args=(f"s{n}",)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(timeline.tasks()) == 100
        assert timeline.dropped_tasks == 8 * 500 - 100
        assert sum(s.task_count for s in tracker.stats().values()) == 8 * 500


def test_memory_stays_within_the_documented_bound(clock: FakeClock):
    """docs/timeline.md: about 300 bytes a task window and 140 a reading, measured."""
    gpu = SimulatedGpu(clock=clock, measure_energy=True)
    timeline = Timeline(max_tasks=2_000, max_samples=10_000)
    with Tracker(backend=gpu, threaded=False, timeline=timeline) as tracker:
        gpu.set_utilization(55)
        gpu.set_power(123.0)
        tracemalloc.start()
        try:
            for n in range(3_000):
                with tracker.gpu_task("nmt", name="translate"):
                    clock.advance(0.4 + (n % 7) / 100)
            gc.collect()
            before = tracemalloc.get_traced_memory()[0]
            timeline.clear()
            gc.collect()
            after = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
    held = before - after
    assert timeline.tasks() == []
    # Full rings, at most 350 bytes a task window and 160 a reading.
    assert 2_000 * 200 + 10_000 * 100 < held < 2_000 * 350 + 10_000 * 160, held


# --------------------------------------------------------------------------- faults and fork


class Broken:
    """A ring whose append fails."""

    def append(self, item: object) -> None:
        raise MemoryError("full")  # as good as any: the recorder must swallow it

    def __iter__(self) -> Iterator[object]:
        return iter(())

    def __len__(self) -> int:
        return 0


def test_recorder_faults_are_logged_never_raised(
    recorded: Tracker,
    gpu: SimulatedGpu,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
):
    timeline = timeline_of(recorded)
    monkeypatch.setattr(timeline._recorder, "tasks", Broken())
    monkeypatch.setattr(timeline._recorder, "samples", Broken())
    gpu.set_utilization(50)
    with caplog.at_level(logging.WARNING, logger="gputime"), recorded.gpu_task("nmt") as task:
        clock.advance(0.5)
    assert task.gpu_ms == pytest.approx(500.0)  # the job and its figures are untouched
    assert recorded.stats("nmt").task_count == 1
    faults = [r for r in caplog.records if "timeline failed" in r.getMessage()]
    assert len(faults) == 1  # once per kind: MemoryError from the sink, then the ring
    assert "MemoryError" in faults[0].getMessage()


def test_faults_at_a_task_start_and_at_export_are_logged(
    recorded: Tracker,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
):
    timeline = timeline_of(recorded)

    class Full(set):  # type: ignore[type-arg]
        def add(self, item: object) -> None:
            raise MemoryError("full")

    monkeypatch.setattr(timeline._recorder, "running", Full())
    with caplog.at_level(logging.WARNING, logger="gputime"):
        task = recorded.start_task("nmt")  # not shown running: logged, not raised
    assert timeline.tasks() == []
    monkeypatch.undo()
    timeline._recorder.task_started(task)

    def broken(*args: object) -> object:
        raise RuntimeError("figures")

    monkeypatch.setattr(recorded._ledger, "_live_figures", broken)
    with caplog.at_level(logging.WARNING, logger="gputime"):
        assert timeline.tasks() == []  # a running task whose figures fail is left out
    messages = [r.getMessage() for r in caplog.records if "timeline failed" in r.getMessage()]
    assert len(messages) == 2
    assert "MemoryError" in messages[0]
    assert "RuntimeError" in messages[1]
    monkeypatch.undo()
    task.end()


def test_an_unattached_timeline_has_nowhere_to_report():
    Timeline()._recorder.report(RuntimeError("nowhere"))  # nothing to log to, nothing raised


def test_a_sink_fault_is_reported_outside_the_ledger_lock(
    recorded: Tracker,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
):
    timeline = timeline_of(recorded)
    seen: list[bool] = []

    class Watching(Broken):
        def append(self, item: object) -> None:
            raise OSError("odd")

    class Faults:
        """The fault log the recorder reports to: notes whether the ledger lock is held."""

        def report(self, kind: str, exc: BaseException) -> None:
            seen.append(recorded._ledger.held_here())

    monkeypatch.setattr(timeline._recorder, "samples", Watching())
    monkeypatch.setattr(timeline._recorder, "faults", Faults())
    task = recorded.start_task("nmt")
    clock.advance(0.5)
    recorded.poll()  # the sink fails under the ledger lock: kept for later
    assert seen == []
    timeline.samples()
    assert seen == [False]
    task.end()


def test_a_task_whose_end_faulted_is_recorded_with_what_it_has(
    recorded: Tracker, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
):
    def failing(*args: object, **kwargs: object) -> object:
        raise RuntimeError("ledger fault")

    task = recorded.start_task("nmt")
    clock.advance(0.5)
    monkeypatch.setattr(gputime._ledger, "task_figures", failing)
    task.end()  # reported, never raised; the end listeners still run
    (window,) = timeline_of(recorded).tasks()
    assert (window.end, window.status, window.gpu_ms) == (0.5, "partial", 0.0)


def test_a_task_whose_end_never_reached_the_ledger_is_not_shown(
    recorded: Tracker, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
):
    def failing(*args: object, **kwargs: object) -> bool:
        raise RuntimeError("ledger fault")

    task = recorded.start_task("nmt")
    clock.advance(0.5)
    monkeypatch.setattr(recorded._ledger, "end", failing)
    task.end()
    assert timeline_of(recorded).tasks() == []  # it has no end to show


def test_in_a_forked_child_the_timeline_starts_empty(recorded: Tracker, clock: FakeClock):
    with recorded.gpu_task("nmt"):
        clock.advance(0.5)
    running = recorded.start_task("tts")
    recorded._after_fork_in_child()  # what the at-fork hook runs in the child
    timeline = timeline_of(recorded)
    assert timeline.tasks() == []
    assert timeline.samples() == []
    running.end()  # inherited from the parent: not the child's history
    assert timeline.tasks() == []
    with recorded.gpu_task("child"):
        clock.advance(0.5)
    assert [w.service for w in timeline.tasks()] == ["child"]
    assert timeline.samples()  # the child's channels feed it too


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX-only")
def test_a_real_fork(recorded: Tracker, clock: FakeClock):
    with recorded.gpu_task("nmt"):
        clock.advance(0.5)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child; reported through the pipe
        code = 1
        try:
            timeline = timeline_of(recorded)
            empty = timeline.tasks() == [] and timeline.samples() == []
            with recorded.gpu_task("child"):
                clock.advance(0.5)
            own = [w.service for w in timeline.tasks()] == ["child"]
            code = 0 if empty and own else 3
            os.write(write_fd, f"{empty} {own}".encode())
        finally:
            os._exit(code)
    os.close(write_fd)
    _, status = os.waitpid(pid, 0)
    report = os.read(read_fd, 100).decode()
    os.close(read_fd)
    assert os.waitstatus_to_exitcode(status) == 0, report
    assert [w.service for w in timeline_of(recorded).tasks()] == ["nmt"]


def test_unopened_tasks_are_not_recorded(recorded: Tracker, monkeypatch: pytest.MonkeyPatch):
    # A task that could not be opened (its start met a fault) has no window.
    def failing_begin(*args: object, **kwargs: object) -> int:
        raise RuntimeError("ledger fault")

    monkeypatch.setattr(recorded._ledger, "begin", failing_begin)
    task = recorded.start_task("nmt")
    assert math.isnan(task.start_time)
    assert timeline_of(recorded).tasks() == []  # running, but with no start to show
    task.end()
    assert timeline_of(recorded).tasks() == []
