"""Task ends that run from the garbage collector, and spans left in other contexts.

A generator abandoned inside a reference cycle is closed by the cyclic
collector, at any allocation, on whatever thread allocates, while that thread
holds whatever locks it holds. These tests make the collector run at a chosen
moment (a clock that collects under the ledger lock, a lock held around
``gc.collect()``) and wait for the outcome in a bounded way, so a deadlock fails
the test instead of hanging the run.
"""

from __future__ import annotations

import contextvars
import gc
import logging
import random
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace as otel_trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gputime import TaskHandle, Tracker
from gputime.testing import FakeClock, SimulatedGpu

#: Upper bound on any wait for a task end that must not block.
WAIT_S = 10.0


class CollectingClock:
    """A fake clock that runs the collector, once armed, from inside its caller.

    The ledger reads the clock under its lock, so arming it makes a collection
    run while that lock is held: what an allocation under the lock does in a
    real process, at a moment the test chooses.
    """

    def __init__(self) -> None:
        self.clock = FakeClock()
        self.armed: Callable[[], object] | None = None

    def arm(self, action: Callable[[], object] = gc.collect) -> None:
        self.armed = action

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    def __call__(self) -> float:
        action, self.armed = self.armed, None
        if action is not None:
            action()
        return self.clock()


@pytest.fixture(autouse=True)
def _collector_only_when_asked() -> Iterator[None]:
    """Automatic collections would collect the test's garbage at a moment it did not choose."""
    was_enabled = gc.isenabled()
    gc.disable()
    gc.collect()
    yield
    if was_enabled:
        gc.enable()


def bounded(action: Callable[[], object], timeout: float = WAIT_S) -> None:
    """Run ``action`` on a daemon thread; fail if it has not returned in ``timeout`` s."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            action()
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=run, name="bounded", daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"deadlock: still blocked after {timeout} s"
    if failure:
        raise failure[0]


def drop_in_cycle(obj: object) -> None:
    """Leave ``obj`` reachable only from a reference cycle (only the collector frees it)."""
    box: list[object] = [obj]
    box.append(box)


def abandon_in_cycle(gen: Iterator[Any]) -> None:
    """Step ``gen`` once, then leave it only inside a reference cycle, suspended.

    Pass the generator straight from its call, so no other reference remains.
    """
    next(gen)
    drop_in_cycle(gen)


def streaming(tracker: Tracker, service: str = "stream") -> Iterator[int]:
    with tracker.gpu_task(service):
        yield 1
        yield 2


@pytest.fixture
def cclock() -> CollectingClock:
    return CollectingClock()


@pytest.fixture
def cgpu(cclock: CollectingClock) -> SimulatedGpu:
    gpu = SimulatedGpu(clock=cclock)
    gpu.set_utilization(100)
    return gpu


@pytest.fixture
def ended() -> list[TaskHandle]:
    return []


@pytest.fixture
def ctracker(cgpu: SimulatedGpu, ended: list[TaskHandle]) -> Iterator[Tracker]:
    with Tracker(backend=cgpu, threaded=False) as tracker:
        tracker.on_task_end(ended.append)
        yield tracker


class TestCollectorUnderTheLedgerLock:
    def test_a_with_block_in_a_collected_generator_ends_without_deadlock(
        self, ctracker: Tracker, cclock: CollectingClock, ended: list[TaskHandle]
    ):
        abandon_in_cycle(streaming(ctracker))
        cclock.advance(0.5)
        ctracker.poll()  # recorded ends make no exit read: the newest sample is known
        cclock.arm()  # the next begin collects the generator while it holds the lock

        def other_task() -> None:
            with ctracker.gpu_task("other"):
                pass

        bounded(other_task)
        stats = ctracker.stats()
        assert stats["stream"].task_count == 1
        assert stats["stream"].active_tasks == 0
        assert stats["other"].task_count == 1
        (stream,) = [h for h in ended if h.service == "stream"]
        assert stream.end_time == 0.5
        assert stream.gpu_ms == pytest.approx(500.0)
        assert stream.status == "ok"

    def test_a_decorated_generator_collected_under_the_lock(
        self, ctracker: Tracker, cclock: CollectingClock, ended: list[TaskHandle]
    ):
        @ctracker.gpu_task("tokens")
        def tokens() -> Iterator[int]:
            yield 1
            yield 2

        abandon_in_cycle(tokens())
        cclock.advance(1 / 3)
        ctracker.poll()  # recorded ends make no exit read: the newest sample is known
        cclock.arm()
        bounded(lambda: ctracker.reset("nobody"))  # reset reads the clock under the lock
        assert ctracker.stats("tokens").task_count == 1
        (task,) = ended
        assert task.gpu_ms == pytest.approx(1000 / 3)
        assert task.error is None  # closed early is not an error

    def test_a_finaliser_run_by_a_reference_dropped_under_the_lock(
        self, ctracker: Tracker, cclock: CollectingClock, ended: list[TaskHandle]
    ):
        # Not the collector: the last reference to a suspended generator goes
        # while the ledger lock is held, and its close runs right there.
        holder = [streaming(ctracker)]
        next(holder[0])
        cclock.advance(0.5)
        ctracker.poll()  # recorded ends make no exit read: the newest sample is known
        cclock.arm(holder.clear)
        bounded(lambda: ctracker.reset("nobody"))
        assert not ended  # recorded, not finished: this thread holds the lock
        assert ctracker.stats("stream").task_count == 1
        assert ended[0].gpu_ms == pytest.approx(500.0)

    def test_a_task_started_by_a_finaliser_under_the_lock(
        self, ctracker: Tracker, cclock: CollectingClock
    ):
        @ctracker.gpu_task("cleanup")
        def cleanup() -> None:
            pass

        def stream() -> Iterator[int]:
            try:
                yield 1
            finally:
                cleanup()

        abandon_in_cycle(stream())
        cclock.arm()
        bounded(lambda: ctracker.reset("nobody"))
        # It could not be opened (this thread held the lock): figures partial, no count.
        assert ctracker.stats("cleanup").task_count == 0
        assert ctracker.stats("cleanup").active_tasks == 0

    def test_a_task_started_by_a_finaliser_elsewhere_is_counted(
        self, ctracker: Tracker, ended: list[TaskHandle]
    ):
        @ctracker.gpu_task("cleanup")
        def cleanup() -> None:
            pass

        def stream() -> Iterator[int]:
            try:
                with ctracker.gpu_task("stream"):
                    yield 1
            finally:
                cleanup()  # starts while the stream's end waits to be finished

        abandon_in_cycle(stream())
        bounded(gc.collect)
        assert not ended
        assert ctracker.stats("cleanup").task_count == 1
        assert ctracker.stats("stream").task_count == 1
        assert [h.service for h in ended] == ["stream", "cleanup"]

    def test_a_clock_that_fails_inside_the_collection(self):
        from gputime import _gcsafe

        clock = FakeClock()

        def fragile() -> float:
            if _gcsafe.in_collection():
                raise OSError("clock unavailable here")
            return clock()

        gpu = SimulatedGpu(clock=fragile)
        tracker = Tracker(backend=gpu, threaded=False)

        @tracker.gpu_task("cleanup")
        def cleanup() -> None:
            pass

        def stream() -> Iterator[int]:
            try:
                with tracker.gpu_task("stream"):
                    yield 1
            finally:
                cleanup()

        gen = stream()
        next(gen)
        clock.advance(0.5)
        drop_in_cycle(gen)
        del gen
        bounded(gc.collect)
        stream_stats = tracker.stats("stream")
        assert (stream_stats.task_count, stream_stats.active_tasks) == (1, 0)
        # Could not even be opened (its start read the failing clock): not counted.
        assert tracker.stats("cleanup").task_count == 0
        tracker.close()


class TestCollectorWhileMetricsAreCollected:
    def test_varied_thresholds_while_a_reader_collects(self, cgpu: SimulatedGpu):
        # The reported stack: metric reader collect -> observable callback ->
        # ledger (holds the lock, allocates) -> collection -> generator close
        # -> task end. Automatic collections at varied thresholds, for a few
        # hundred rounds, with the collector free to run anywhere.
        reader = InMemoryMetricReader()
        provider = MeterProvider(metric_readers=[reader])
        rounds = 300

        def run() -> None:
            with Tracker(backend=cgpu, threaded=False, meter_provider=provider) as tracker:
                rng = random.Random(7)
                for _ in range(rounds):
                    abandon_in_cycle(streaming(tracker))
                    gc.set_threshold(rng.randint(1, 40))
                    gc.enable()
                    try:
                        reader.get_metrics_data()
                        tracker.stats()
                    finally:
                        gc.disable()
                gc.collect()
                assert tracker.stats("stream").task_count == rounds
                assert tracker.stats("stream").active_tasks == 0

        threshold = gc.get_threshold()
        try:
            bounded(run, timeout=60.0)
        finally:
            gc.set_threshold(*threshold)
            provider.shutdown()


class _LockedHistogram:
    """A histogram whose ``record`` takes a lock, as an SDK's aggregation does."""

    def __init__(self, inner: Any, lock: threading.Lock) -> None:
        self._inner = inner
        self._lock = lock

    def record(self, amount: float, attributes: Any = None, context: Any = None) -> None:
        with self._lock:
            self._inner.record(amount, attributes)


class _LockedMeter:
    def __init__(self, inner: Any, lock: threading.Lock) -> None:
        self._inner = inner
        self._lock = lock

    def create_histogram(self, *args: Any, **kwargs: Any) -> _LockedHistogram:
        return _LockedHistogram(self._inner.create_histogram(*args, **kwargs), self._lock)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _LockedMeterProvider:
    def __init__(self, inner: MeterProvider, lock: threading.Lock) -> None:
        self._inner = inner
        self._lock = lock

    def get_meter(self, *args: Any, **kwargs: Any) -> _LockedMeter:
        return _LockedMeter(self._inner.get_meter(*args, **kwargs), self._lock)


class TestCollectorWhileAnSdkHoldsItsLock:
    def test_the_histogram_is_recorded_later_not_waited_for(self, cgpu: SimulatedGpu):
        sdk_lock = threading.Lock()
        reader = InMemoryMetricReader()
        inner = MeterProvider(metric_readers=[reader])
        provider = _LockedMeterProvider(inner, sdk_lock)
        tracker = Tracker(backend=cgpu, threaded=False, meter_provider=provider)  # type: ignore[arg-type]
        abandon_in_cycle(streaming(tracker))

        def collect_while_the_sdk_holds_its_lock() -> None:
            with sdk_lock:
                gc.collect()

        bounded(collect_while_the_sdk_holds_its_lock)
        with tracker.gpu_task("stream"):  # an ordinary event finishes the recorded end
            pass
        data = reader.get_metrics_data()
        points = [
            point
            for rm in data.resource_metrics
            for sm in rm.scope_metrics
            for metric in sm.metrics
            if metric.name == "gputime.task.duration"
            for point in metric.data.data_points
        ]
        assert sum(point.count for point in points) == 2
        tracker.close()
        inner.shutdown()


class ContextVarWatch:
    """Records every ``ContextVar.set`` / ``reset`` this thread makes inside a collection."""

    def __init__(self) -> None:
        self.in_collection = False
        self.calls: list[str] = []

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        self.in_collection = phase == "start"

    def _profile(self, frame: object, event: str, arg: Any) -> None:
        if not self.in_collection or event != "c_call":
            return
        owner = getattr(arg, "__objclass__", None) or type(getattr(arg, "__self__", None))
        if owner is contextvars.ContextVar and arg.__name__ in ("set", "reset"):
            self.calls.append(arg.__name__)

    def __enter__(self) -> ContextVarWatch:
        gc.callbacks.append(self._on_gc)
        sys.setprofile(self._profile)
        return self

    def __exit__(self, *exc: object) -> None:
        sys.setprofile(None)
        gc.callbacks.remove(self._on_gc)


@pytest.fixture
def sdk_spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


class TestNoContextChangeInsideACollection:
    """CPython 3.10 and 3.11 can crash on a context variable set during a collection."""

    def test_with_block_in_a_generator(self, gpu: SimulatedGpu, sdk_spans: Any):
        provider, exporter = sdk_spans
        tracker = Tracker(backend=gpu, threaded=False, tracer_provider=provider)
        abandon_in_cycle(streaming(tracker))
        with ContextVarWatch() as watch:
            gc.collect()
        assert watch.calls == []
        tracker.stats()  # finishes the recorded end, outside the collection
        assert [span.name for span in exporter.get_finished_spans()] == ["gpu_task stream"]
        # The span was current in this context since next(gen); now it is not.
        assert otel_trace.get_current_span() is otel_trace.INVALID_SPAN
        tracker.close()

    def test_decorated_generator(self, gpu: SimulatedGpu, sdk_spans: Any):
        provider, exporter = sdk_spans
        tracker = Tracker(backend=gpu, threaded=False, tracer_provider=provider)

        @tracker.gpu_task("tokens")
        def tokens() -> Iterator[int]:
            yield 1
            yield 2

        abandon_in_cycle(tokens())
        with ContextVarWatch() as watch:
            gc.collect()
        assert watch.calls == []
        tracker.close()  # close finishes recorded ends too
        assert [span.name for span in exporter.get_finished_spans()] == ["gpu_task tokens"]

    def test_decorated_async_generator_without_event_loop_hooks(
        self, gpu: SimulatedGpu, sdk_spans: Any
    ):
        # Outside an event loop no finaliser hook is installed, so the
        # collector closes an async generator itself, synchronously.
        provider, exporter = sdk_spans
        tracker = Tracker(backend=gpu, threaded=False, tracer_provider=provider)

        @tracker.gpu_task("tokens")
        async def tokens() -> AsyncIterator[int]:
            yield 1
            yield 2

        agen = tokens()
        with pytest.raises(StopIteration):
            agen.asend(None).send(None)  # first item, stepped by hand
        drop_in_cycle(agen)
        del agen
        with ContextVarWatch() as watch:
            gc.collect()
        assert watch.calls == []
        assert tracker.stats("tokens").task_count == 1
        assert [span.name for span in exporter.get_finished_spans()] == ["gpu_task tokens"]
        tracker.close()

    def test_the_watch_sees_a_set_in_a_collection(self):
        # The watch itself: a finaliser that sets a context variable is seen.
        var: contextvars.ContextVar[int] = contextvars.ContextVar("probe")

        class Sets:
            def __del__(self) -> None:
                var.set(1)

        drop_in_cycle(Sets())
        with ContextVarWatch() as watch:
            gc.collect()
        assert watch.calls == ["set"]


class TestDeferredEnds:
    """An end recorded in a collection is finished later with the figures it had then."""

    def collected_at_half_a_second(self, tracker: Tracker, clock: FakeClock) -> tuple[int, int]:
        @tracker.gpu_task("tokens")
        def tokens() -> Iterator[int]:
            yield 1
            yield 2

        abandon_in_cycle(tokens())
        clock.advance(0.5)
        tracker.poll()  # recorded ends make no exit read: the newest sample is known
        before = time.time_ns()
        gc.collect()
        after = time.time_ns()
        clock.advance(1.5)  # the end is finished later; its figures stay at 0.5 s
        return before, after

    @pytest.mark.parametrize("finisher", ["next task", "stats", "poll", "close"])
    def test_same_figures_span_metrics_and_listeners(
        self, clock: FakeClock, gpu: SimulatedGpu, sdk_spans: Any, finisher: str
    ):
        provider, exporter = sdk_spans
        reader = InMemoryMetricReader()
        meters = MeterProvider(metric_readers=[reader])
        gpu.set_utilization(100)
        tracker = Tracker(
            backend=gpu, threaded=False, tracer_provider=provider, meter_provider=meters
        )
        ended: list[TaskHandle] = []
        tracker.on_task_end(ended.append)
        before, after = self.collected_at_half_a_second(tracker, clock)
        assert not ended  # recorded only
        if finisher == "next task":
            with tracker.gpu_task("other"):
                pass
        elif finisher == "stats":
            tracker.stats()
        elif finisher == "poll":
            tracker.poll()
        else:
            tracker.close()
        (task,) = [h for h in ended if h.service == "tokens"]
        assert task.end_time == 0.5
        assert task.duration == 0.5
        assert task.gpu_ms == pytest.approx(500.0)
        assert task.status == "ok"
        (span,) = [s for s in exporter.get_finished_spans() if s.name == "gpu_task tokens"]
        assert span.end_time is not None
        assert before <= span.end_time <= after
        assert span.attributes is not None
        assert span.attributes["gputime.gpu.busy_ms"] == pytest.approx(500.0)
        durations = [
            point.sum
            for rm in reader.get_metrics_data().resource_metrics
            for sm in rm.scope_metrics
            for metric in sm.metrics
            if metric.name == "gputime.task.duration"
            for point in metric.data.data_points
            if point.attributes.get("gputime.service") == "tokens"
        ]
        assert durations == [pytest.approx(0.5)]
        tracker.close()
        meters.shutdown()

    def test_an_end_recorded_before_a_reset_belongs_before_it(
        self, clock: FakeClock, tracker: Tracker, gpu: SimulatedGpu
    ):
        gpu.set_utilization(100)
        self.collected_at_half_a_second(tracker, clock)  # ended at 0.5 s, recorded only
        zeroed = tracker._ledger.reset("tokens")  # at 2.0 s
        assert zeroed["tokens"].task_count == 1  # the snapshot the reset zeroed has it
        after = tracker.stats("tokens")
        assert (after.task_count, after.active_tasks, after.gpu_ms) == (0, 0, 0.0)

    def test_an_event_on_another_thread_never_moves_a_recorded_end(
        self, clock: FakeClock, tracker: Tracker, gpu: SimulatedGpu
    ):
        # Whichever thread comes first applies the recorded end before its own
        # event, under the ledger lock: the end stays where it was recorded.
        gpu.set_utilization(100)
        ended: list[TaskHandle] = []
        tracker.on_task_end(ended.append)
        self.collected_at_half_a_second(tracker, clock)

        def other() -> None:
            with tracker.gpu_task("other"):
                clock.advance(0.1)

        bounded(other)
        (task,) = [h for h in ended if h.service == "tokens"]
        assert (task.end_time, task.gpu_ms) == (0.5, pytest.approx(500.0))

    def test_the_sampler_thread_finishes_them(self):
        gpu = SimulatedGpu(sample_period=0.02)
        gpu.set_utilization(100)
        ended = threading.Event()
        with Tracker(backend=gpu, interval=0.01) as tracker:
            tracker.on_task_end(lambda handle: ended.set())
            abandon_in_cycle(streaming(tracker))
            gc.collect()
            # Nothing else happens on this thread: the sampler's next tick finishes it.
            assert ended.wait(WAIT_S)
            assert tracker._ledger.active_tasks == 0

    def test_a_parked_sampler_is_woken_by_a_task_started_in_a_collection(self):
        gpu = SimulatedGpu(sample_period=0.02)
        gpu.set_utilization(100)
        ended = threading.Event()
        with Tracker(backend=gpu, interval=0.01) as tracker:
            sampler = tracker._sampler
            assert sampler is not None
            with tracker.gpu_task("warm"):
                pass
            deadline = time.monotonic() + WAIT_S
            while not sampler.parked and time.monotonic() < deadline:
                time.sleep(0.005)
            assert sampler.parked
            tracker.on_task_end(lambda handle: ended.set() if handle.service == "cleanup" else None)

            def stream() -> Iterator[int]:
                try:
                    yield 1
                finally:
                    with tracker.gpu_task("cleanup"):  # starts and ends in the collection
                        pass

            abandon_in_cycle(stream())
            gc.collect()
            assert ended.wait(WAIT_S)  # the sampler's tick finished it
            assert tracker._ledger.active_tasks == 0

    def test_a_dropped_tracker_collected_under_its_samplers_lock(self):
        # The tracker's finaliser stops its sampler from inside the collection,
        # on a thread that holds the sampler's wake-up lock: it must not wait.
        tracker = Tracker(backend=SimulatedGpu(), interval=0.01)
        with tracker.gpu_task("warm"):
            pass
        sampler = tracker._sampler
        assert sampler is not None
        lock = sampler._wake._cond
        del tracker

        def collect_holding_the_lock() -> None:
            with lock:
                gc.collect()

        bounded(collect_holding_the_lock)
        assert sampler._stopped

    def test_a_forked_child_drops_the_parents_recorded_ends(self, tracker: Tracker):
        abandon_in_cycle(streaming(tracker))
        gc.collect()
        assert tracker._ledger.recorded
        tracker._after_fork_in_child()  # what the fork hook runs in the child
        assert not tracker._ledger.recorded
        assert tracker.stats() == {}


class TestSpansLeftInOtherContexts:
    """``with gpu_task`` in a generator stepped in copied contexts (Starlette's way)."""

    def test_stepped_in_copies_no_detach_error_and_not_left_current(
        self, gpu: SimulatedGpu, sdk_spans: Any, caplog: pytest.LogCaptureFixture
    ):
        provider, exporter = sdk_spans
        tracker = Tracker(backend=gpu, threaded=False, tracer_provider=provider)
        with caplog.at_level(logging.DEBUG):
            gen = streaming(tracker)
            contextvars.copy_context().run(list, gen)  # entered and left in one copy
            gen = streaming(tracker)
            contextvars.copy_context().run(next, gen)  # entered in one copy
            contextvars.copy_context().run(next, gen)
            with pytest.raises(StopIteration):
                contextvars.copy_context().run(next, gen)  # left in a third
        assert "Failed to detach context" not in caplog.text
        assert otel_trace.get_current_span() is otel_trace.INVALID_SPAN
        assert len(exporter.get_finished_spans()) == 2
        tracker.close()

    def test_left_in_a_copy_of_the_entering_context(self, gpu: SimulatedGpu, sdk_spans: Any):
        provider, _ = sdk_spans
        tracker = Tracker(backend=gpu, threaded=False, tracer_provider=provider)
        outer = provider.get_tracer("test").start_span("outer")
        token = otel_context.attach(otel_trace.set_span_in_context(outer))
        try:
            gen = streaming(tracker)
            next(gen)  # the task's span is current here now
            assert otel_trace.get_current_span() is not outer

            def finish() -> object:
                for _ in gen:
                    pass
                return otel_trace.get_current_span()

            # Left in a copy made while the task's span was current: that copy
            # gets the outer span back, not the ended one.
            assert contextvars.copy_context().run(finish) is outer
        finally:
            otel_context.detach(token)
        tracker.close()

    def test_a_decorated_generator_body_keeping_a_span_across_its_yield(
        self, gpu: SimulatedGpu, sdk_spans: Any
    ):
        # The body's own span is the body's: the consumer gets back the context
        # it resumed the generator in, while it is suspended and after it ends.
        provider, _ = sdk_spans
        tracker = Tracker(backend=gpu, threaded=False, tracer_provider=provider)
        tracer = provider.get_tracer("app")

        @tracker.gpu_task("tts")
        def stream() -> Iterator[int]:
            with tracer.start_as_current_span("synthesize"):
                yield 1
                yield 2

        def consume() -> tuple[object, object]:
            gen = stream()
            next(gen)
            between = otel_trace.get_current_span()
            for _ in gen:
                pass
            return between, otel_trace.get_current_span()

        between, after = contextvars.copy_context().run(consume)
        assert between is otel_trace.INVALID_SPAN
        assert after is otel_trace.INVALID_SPAN
        tracker.close()

    def test_a_task_started_by_a_finaliser_under_the_lock_does_not_reenter_it(
        self, ctracker: Tracker, cclock: CollectingClock
    ):
        # Not the collector: a reference dropped under the ledger lock runs a
        # generator's finally, which starts a task.
        begun: list[bool] = []
        ledger = ctracker._ledger
        ctracker.on_task_start(lambda handle: begun.append(ledger.held_here()))

        def stream() -> Iterator[int]:
            try:
                yield 1
            finally:
                with ctracker.gpu_task("cleanup"):
                    pass

        holder = [stream()]
        next(holder[0])
        cclock.arm(holder.clear)
        bounded(lambda: ctracker.reset("nobody"))
        assert begun == []  # no listener ran under the lock
        assert ctracker.stats("cleanup").active_tasks == 0

    def test_a_later_span_is_not_dropped(self, gpu: SimulatedGpu, sdk_spans: Any):
        provider, _ = sdk_spans
        tracker = Tracker(backend=gpu, threaded=False, tracer_provider=provider)

        def body() -> object:
            gen = streaming(tracker)
            next(gen)
            later = provider.get_tracer("test").start_span("later")
            otel_context.attach(otel_trace.set_span_in_context(later))
            for _ in gen:
                pass  # the task ends while a span made after it is current
            return otel_trace.get_current_span() is later

        # In a copy: the with block across a yield leaves this context changed.
        assert contextvars.copy_context().run(body)
        tracker.close()


def test_a_forked_child_is_not_inside_its_parents_collection():
    from gputime import _gcsafe

    _gcsafe.collecting = threading.get_ident()  # as if forked during a collection
    try:
        _gcsafe._forget_in_child()
        assert not _gcsafe.in_collection()
    finally:
        _gcsafe.collecting = 0
