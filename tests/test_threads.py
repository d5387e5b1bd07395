"""Real threads, asyncio tasks, the sampler thread, fork and interpreter exit.

These use the real monotonic clock, with bounded waits; figures depend on
timing, so they check counts (exact), invariants and the sampler's life cycle.
"""

from __future__ import annotations

import asyncio
import gc
import os
import random
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from collections.abc import Callable

import pytest

import gputime
from gputime import Tracker
from gputime.testing import SimulatedGpu

WAIT_S = 10.0


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT_S) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


def sampler_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("gputime-sampler")]


@pytest.fixture
def live_gpu() -> SimulatedGpu:
    gpu = SimulatedGpu(sample_period=0.02)
    gpu.set_utilization(100)
    return gpu


@pytest.fixture
def live(live_gpu: SimulatedGpu):
    with Tracker(backend=live_gpu, interval=0.01) as tracker:
        yield tracker


class TestManyThreads:
    def test_counts_are_exact_and_totals_monotonic(self, live: Tracker):
        services = ("nmt", "tts", "yourtts")
        per_thread = 60
        errors: list[BaseException] = []
        stop_reader = threading.Event()
        seen: dict[str, list[float]] = {s: [] for s in services}

        def reader() -> None:
            while not stop_reader.is_set():
                stats = live.stats()
                for service, s in stats.items():
                    seen[service].append(s.gpu_ms)
                time.sleep(0.001)

        def worker(seed: int) -> None:
            rng = random.Random(seed)
            for _ in range(per_thread):
                service = rng.choice(services)
                try:
                    with live.gpu_task(service):
                        time.sleep(rng.uniform(0, 0.002))
                        if rng.random() < 0.2:
                            raise LookupError("job failed")
                except LookupError:
                    pass
                except BaseException as exc:  # pragma: no cover - reported below
                    errors.append(exc)

        reader_thread = threading.Thread(target=reader)
        reader_thread.start()
        workers = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
        for t in workers:
            t.start()
        for t in workers:
            t.join(WAIT_S * 3)
        stop_reader.set()
        reader_thread.join(WAIT_S)
        assert not errors
        stats = live.stats()
        assert sum(s.task_count for s in stats.values()) == 16 * per_thread
        assert all(s.active_tasks == 0 for s in stats.values())
        for values in seen.values():
            assert values == sorted(values)
        assert len(sampler_threads()) >= 1

    def test_one_decorated_function_in_many_threads(self, live: Tracker):
        @live.gpu_task("nmt")
        def job(x: int) -> int:
            time.sleep(0.001)
            return x * 2

        results: list[int] = []
        lock = threading.Lock()

        def run(base: int) -> None:
            for i in range(25):
                value = job(base + i)
                with lock:
                    results.append(value)

        threads = [threading.Thread(target=run, args=(i * 100,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT_S)
        assert sorted(results) == sorted(2 * (i * 100 + j) for i in range(8) for j in range(25))
        assert live.stats("nmt").task_count == 200


class TestAsyncio:
    def test_many_tasks_with_errors_and_cancellations(self, live: Tracker):
        @live.gpu_task("tts")
        async def synth(i: int) -> int:
            await asyncio.sleep(0.001 * (i % 5))
            if i % 7 == 0:
                raise ValueError(i)
            if i % 11 == 0:
                await asyncio.sleep(60)
            return i

        async def main() -> tuple[int, int, int]:
            jobs = [asyncio.create_task(synth(i)) for i in range(500)]
            await asyncio.sleep(0.05)
            for i, job in enumerate(jobs):
                if i % 11 == 0 and i % 7 != 0:
                    job.cancel()
            results = await asyncio.gather(*jobs, return_exceptions=True)
            ok = sum(isinstance(r, int) for r in results)
            failed = sum(isinstance(r, ValueError) for r in results)
            cancelled = sum(isinstance(r, asyncio.CancelledError) for r in results)
            return ok, failed, cancelled

        ok, failed, cancelled = asyncio.run(main())
        assert failed == len([i for i in range(500) if i % 7 == 0])
        assert cancelled == len([i for i in range(500) if i % 11 == 0 and i % 7 != 0])
        assert ok + failed + cancelled == 500
        stats = live.stats("tts")
        assert (stats.task_count, stats.active_tasks) == (500, 0)

    def test_two_services_on_one_loop(self, live: Tracker):
        async def one(service: str) -> None:
            async with live.gpu_task(service):
                await asyncio.sleep(0.002)

        async def main() -> None:
            await asyncio.gather(*(one(("a", "b")[i % 2]) for i in range(100)))

        asyncio.run(main())
        assert live.stats("a").task_count == 50
        assert live.stats("b").task_count == 50


class TestSampler:
    def test_started_lazily_parked_when_idle_and_one_thread_only(self, live_gpu: SimulatedGpu):
        before = len(sampler_threads())
        with Tracker(backend=live_gpu, interval=0.01) as tracker:
            assert len(sampler_threads()) == before  # no task yet: no thread
            assert not tracker.sampler_running
            for _ in range(3):
                with tracker.gpu_task("nmt") as task:
                    assert wait_until(lambda: tracker.sampler_running)
                    reads = live_gpu.reads
                    assert wait_until(lambda reads=reads: live_gpu.reads > reads + 2)
                # After the last task: one more sample period at most, then parked.
                assert wait_until(lambda: not tracker.sampler_running)
                parked_reads = live_gpu.reads
                time.sleep(0.1)
                assert live_gpu.reads == parked_reads
                assert task.status == "ok"
            assert len(sampler_threads()) == before + 1
            assert tracker.stats("nmt").gpu_ms > 0
        assert wait_until(lambda: len(sampler_threads()) == before)

    def test_settle_read_completes_the_service_total(self, live_gpu: SimulatedGpu):
        with Tracker(backend=live_gpu, interval=1.0) as tracker:
            with tracker.gpu_task("nmt") as task:
                time.sleep(0.05)
            assert wait_until(lambda: not tracker.sampler_running)
            # The settle read collected the sample covering the end: the service
            # total equals the task's figure up to the driver's rounding.
            assert tracker.stats("nmt").gpu_ms == pytest.approx(task.gpu_ms, abs=1.0)

    def test_settle_read_comes_at_the_next_tick_and_completes_the_window(self):
        # The last end does not wake the sampler (no cross-thread wake per
        # request): the settle read comes at its next tick, and at least one
        # sample period after the end.
        gpu = SimulatedGpu(sample_period=0.05)
        gpu.set_utilization(100)
        with Tracker(backend=gpu, interval=0.5) as tracker:
            with tracker.gpu_task("nmt") as task:
                time.sleep(0.02)
            assert wait_until(lambda: not tracker.sampler_running)
            assert tracker._sampler is not None
            assert tracker._sampler.wakes == 1  # the first task's start, nothing else
            # The settle read collected the sample covering the end: the whole
            # window (at 100 %) is in the service total.
            assert tracker.stats("nmt").gpu_ms == pytest.approx(1000 * task.duration, abs=0.5)

    def test_back_to_back_tasks_wake_the_sampler_once(self, live_gpu: SimulatedGpu):
        with Tracker(backend=live_gpu, interval=0.05) as tracker:
            sampler = tracker._sampler
            assert sampler is not None
            for i in range(2000):
                with tracker.gpu_task("nmt"):
                    if i % 100 == 0:
                        time.sleep(0.01)  # the sampler ticks meanwhile, and reads
            assert sampler.wakes == 1
            assert live_gpu.reads > 0
            # Idle now: it settles, lingers one interval without reading, parks.
            assert wait_until(lambda: sampler.parked)
            parked_reads = live_gpu.reads
            for _ in range(3):
                with tracker.gpu_task("nmt"):
                    pass
            assert sampler.wakes == 2  # woken from parked once, not per task
            assert wait_until(lambda: sampler.parked)
            assert live_gpu.reads > parked_reads  # the settle read of the new tasks
            assert tracker.stats("nmt").task_count == 2003

    def test_no_device_no_sampler_thread(self):
        before = len(sampler_threads())
        with Tracker(backend="none") as tracker:
            for _ in range(100):
                with tracker.gpu_task("nmt"):
                    pass
            assert tracker._sampler is None
            assert len(sampler_threads()) == before
            assert not tracker.sampler_running
            assert tracker.stats("nmt").task_count == 100

    def test_a_dropped_tracker_is_collected_and_its_thread_ends(self, live_gpu: SimulatedGpu):
        before = len(sampler_threads())
        tracker = Tracker(backend=live_gpu, interval=0.01)
        with tracker.gpu_task("nmt"):
            time.sleep(0.02)
        ref = weakref.ref(tracker)
        del tracker
        gc.collect()
        assert ref() is None
        assert wait_until(lambda: len(sampler_threads()) == before)

    @pytest.mark.parametrize("timeline", [False, True], ids=["", "timeline"])
    @pytest.mark.parametrize("sdk", [False, True], ids=["no-sdk", "sdk"])
    def test_a_dropped_tracker_is_freed_by_reference_counting_alone(
        self, sdk: bool, timeline: bool
    ):
        # No reference cycle through the tracker: not through its emitter, its
        # metrics, its ledger's pending marks (a task whose start sample has
        # not come yet), its sampler thread, its listeners or its timeline.
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider

        providers: dict[str, object] = {}
        if sdk:
            providers = {
                "tracer_provider": TracerProvider(),
                "meter_provider": MeterProvider(metric_readers=[InMemoryMetricReader()]),
            }
        before = len(sampler_threads())
        gpu = SimulatedGpu()
        gc.disable()
        try:
            tracker = Tracker(backend=gpu, interval=0.01, timeline=timeline, **providers)  # type: ignore[arg-type]
            tracker.on_task_end(lambda task: None)
            gpu.set_utilization(50)
            with tracker.gpu_task("nmt"):
                pass  # its exit reads, and no sample covers its start yet
            ref = weakref.ref(tracker)
            del tracker
            assert ref() is None
            assert wait_until(lambda: len(sampler_threads()) == before)
        finally:
            gc.enable()

    def test_sampler_survives_a_fault_outside_the_reads(self, caplog):
        class Flaky(SimulatedGpu):
            def open(self, **kwargs):  # type: ignore[no-untyped-def, override]
                session = super().open(**kwargs)
                outer = self

                class FlakySession(type(session)):  # type: ignore[misc]
                    @property
                    def sample_period(self) -> float:
                        outer.period_reads += 1
                        if outer.period_reads in (3, 4):
                            raise RuntimeError("driver hiccup")
                        return 0.02

                    @sample_period.setter
                    def sample_period(self, value: float) -> None:
                        pass

                session.__class__ = FlakySession
                return session

        gpu = Flaky(sample_period=0.02)
        gpu.period_reads = 0  # type: ignore[attr-defined]
        with Tracker(backend=gpu, interval=0.01) as tracker, tracker.gpu_task("nmt"):
            assert wait_until(lambda: gpu.reads > 5)  # ticks went on after the faults
        assert any("driver hiccup" in r.getMessage() for r in caplog.records)

    def test_threaded_false_runs_no_thread(self, live_gpu: SimulatedGpu):
        before = len(sampler_threads())
        with Tracker(backend=live_gpu, threaded=False) as tracker:
            with tracker.gpu_task("nmt"):
                time.sleep(0.05)
            assert len(sampler_threads()) == before
            assert not tracker.sampler_running

    def test_close_stops_the_thread_while_a_task_runs(self, live_gpu: SimulatedGpu):
        tracker = Tracker(backend=live_gpu, interval=0.01)
        with tracker.gpu_task("nmt") as task:
            assert wait_until(lambda: tracker.sampler_running)
            thread = sampler_threads()[-1]
            tracker.close()
            assert not thread.is_alive()
            assert not tracker.sampler_running
        assert task.status == "partial"
        assert tracker.stats("nmt").task_count == 1

    def test_configure_replaces_a_tracker_whose_sampler_runs(self, live_gpu: SimulatedGpu):
        old = gputime.configure(backend=live_gpu, interval=0.01)
        with gputime.gpu_task("nmt") as task:
            assert wait_until(lambda: old.sampler_running)
            new = gputime.configure(backend=live_gpu, interval=0.01)
            assert old.closed
            assert not old.sampler_running
            with gputime.gpu_task("nmt"):
                assert wait_until(lambda: new.sampler_running)
        assert task.tracker is old
        assert old.stats("nmt").task_count == 1
        assert new.stats("nmt").task_count == 1
        assert gputime.get_tracker() is new


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX-only")
def test_fork_child_starts_clean(live: Tracker, live_gpu: SimulatedGpu):
    with live.gpu_task("nmt"):
        time.sleep(0.03)
    task = live.gpu_task("tts").__enter__()  # running across the fork
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child; reported through the pipe
        code = 1
        try:
            fresh = live.stats() == {}
            with live.gpu_task("child"):
                time.sleep(0.05)
            counted = live.stats("child").task_count == 1
            thread = any(t.name.startswith("gputime-sampler") for t in threading.enumerate())
            live._end_task(task, None)  # inherited: ignored, must not raise
            inherited_ignored = "tts" not in live.stats()
            code = 0 if (fresh and counted and thread and inherited_ignored) else 3
            os.write(write_fd, f"{fresh} {counted} {thread} {inherited_ignored}".encode())
        finally:
            os._exit(code)
    os.close(write_fd)
    _, status = os.waitpid(pid, 0)
    report = os.read(read_fd, 200).decode()
    os.close(read_fd)
    live._end_task(task, None)
    assert os.waitstatus_to_exitcode(status) == 0, report
    assert live.stats("nmt").task_count == 1
    assert live.stats("tts").task_count == 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX-only")
def test_fork_while_another_thread_creates_the_default_tracker():
    script = textwrap.dedent(
        """
        import os, signal, threading, time
        import gputime
        from gputime import _tracker
        from gputime.testing import SimulatedGpu

        real = _tracker.Tracker
        def slow_tracker(*args, **kwargs):  # a slow nvmlInit, in another thread
            time.sleep(1.0)
            return real(backend=SimulatedGpu(), threaded=False)
        _tracker.Tracker = slow_tracker
        threading.Thread(target=gputime.get_tracker).start()
        time.sleep(0.2)
        pid = os.fork()
        if pid == 0:
            signal.alarm(20)
            with gputime.gpu_task("nmt"):
                pass
            os._exit(0 if gputime.stats("nmt").task_count == 1 else 3)
        _, status = os.waitpid(pid, 0)
        print("child", os.waitstatus_to_exitcode(status), flush=True)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert "child 0" in result.stdout, result.stderr


def test_interpreter_exits_with_a_task_still_running():
    script = textwrap.dedent(
        """
        import threading, time
        from gputime import Tracker
        from gputime.testing import SimulatedGpu

        tracker = Tracker(backend=SimulatedGpu(), interval=0.01)

        def job():
            with tracker.gpu_task("nmt"):
                time.sleep(3600)

        threading.Thread(target=job, daemon=True).start()
        time.sleep(0.1)
        assert tracker.sampler_running
        print("exiting", flush=True)
        """
    )
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "exiting" in result.stdout
    assert time.monotonic() - started < 30


@pytest.mark.parametrize("hold_s", [0.001, 0.2], ids=["yields", "then-blocks"])
def test_a_contended_ledger_lock_is_taken_once_the_holder_lets_go(hold_s: float):
    from gputime._ledger import _acquire_contended

    lock = threading.RLock()
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with lock:
            held.set()
            release.wait(WAIT_S)

    thread = threading.Thread(target=holder, daemon=True)
    thread.start()
    assert held.wait(WAIT_S)
    threading.Timer(hold_s, release.set).start()
    _acquire_contended(lock)  # yields the GIL, then blocks, until the holder lets go
    try:
        assert release.is_set()
        assert lock._is_owned()  # type: ignore[attr-defined]
    finally:
        lock.release()
    thread.join(WAIT_S)
