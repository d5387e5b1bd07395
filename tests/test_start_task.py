"""``start_task`` / ``TaskHandle.end()``: a task started and ended by callbacks."""

from __future__ import annotations

import threading

import pytest
from opentelemetry import trace as otel_trace
from opentelemetry.trace import StatusCode

import gputime
from gputime import TaskHandle, Tracker
from gputime.testing import FakeClock, SimulatedGpu
from tests.otel_sdk import MyError, Sdk


def test_figures_match_a_with_block(tracker: Tracker, clock: FakeClock, busy: SimulatedGpu):
    task = tracker.start_task("nmt")
    assert task.running
    assert tracker.stats("nmt").active_tasks == 1
    clock.advance(1.0)
    task.end()
    assert not task.running
    assert task.duration == pytest.approx(1.0)
    clock.advance(1.0)
    tracker.poll()
    assert task.gpu_ms == pytest.approx(1000.0)
    stats = tracker.stats("nmt")
    assert (stats.task_count, stats.active_tasks) == (1, 0)
    assert stats.gpu_ms == pytest.approx(1000.0)


def test_end_twice_counts_emits_and_notifies_once(
    traced: Tracker, sdk: Sdk, clock: FakeClock, busy: SimulatedGpu
):
    ended: list[TaskHandle] = []
    traced.on_task_end(ended.append)
    task = traced.start_task("nmt")
    clock.advance(0.5)
    task.end()
    first_end = task.end_time
    clock.advance(0.5)
    task.end()
    task.end(MyError("late"))
    assert task.end_time == first_end
    assert task.error is None
    assert ended == [task]
    assert traced.stats("nmt").task_count == 1
    span = sdk.span("gpu_task nmt")
    assert span.status.status_code is StatusCode.UNSET
    (point,) = sdk.points("gputime.task.duration").values()
    assert point.count == 1
    assert point.sum == pytest.approx(0.5)


def test_span_is_not_current_unless_used_in_with(traced: Tracker, sdk: Sdk):
    outer = otel_trace.get_current_span()
    task = traced.start_task("nmt")
    # A callback returns before the work runs: making the span current here
    # would leak it into whatever the runner does next.
    assert otel_trace.get_current_span() is outer
    task.end()
    with traced.start_task("tts") as inner:
        current = otel_trace.get_current_span()
        assert current.get_span_context().span_id != 0
        assert current.name == "gpu_task tts"  # type: ignore[attr-defined] # an SDK span
    assert otel_trace.get_current_span() is outer
    assert not inner.running
    assert [s.name for s in sdk.spans()] == ["gpu_task nmt", "gpu_task tts"]


def test_span_parent_is_the_context_current_at_start(traced: Tracker, sdk: Sdk):
    tracer = sdk.tracer_provider.get_tracer("test")
    with tracer.start_as_current_span("request") as request:
        task = traced.start_task("nmt")
    task.end()
    span = sdk.span("gpu_task nmt")
    assert span.parent is not None
    assert span.parent.span_id == request.get_span_context().span_id


def test_end_with_an_error_marks_the_span(traced: Tracker, sdk: Sdk):
    task = traced.start_task("nmt")
    error = MyError("boom")
    task.end(error)
    assert task.error is error
    span = sdk.span("gpu_task nmt")
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None
    assert span.attributes["error.type"] == "tests.otel_sdk.MyError"


def test_with_block_records_the_exception(traced: Tracker, sdk: Sdk):
    with pytest.raises(MyError), traced.start_task("nmt") as task:
        raise MyError("boom")
    assert isinstance(task.error, MyError)
    assert sdk.span("gpu_task nmt").status.status_code is StatusCode.ERROR


def test_cancellation_ends_without_failure(traced: Tracker, sdk: Sdk):
    task = traced.start_task("nmt")
    task.end(KeyboardInterrupt())
    assert task.error is None
    assert sdk.span("gpu_task nmt").status.status_code is StatusCode.UNSET


def test_end_from_another_thread(tracker: Tracker, clock: FakeClock, busy: SimulatedGpu):
    task = tracker.start_task("nmt", name="job 7", attributes={"job.id": 7})
    assert (task.name, task.attributes) == ("job 7", {"job.id": 7})
    clock.advance(2.0)
    worker = threading.Thread(target=task.end)
    worker.start()
    worker.join(timeout=10)
    assert not worker.is_alive()
    assert not task.running
    assert tracker.stats("nmt").task_count == 1


def test_end_never_raises_when_the_tracker_fails(tracker: Tracker, clock: FakeClock):
    task = tracker.start_task("nmt")

    def broken_clock() -> float:
        raise RuntimeError("clock gone")

    tracker.clock = broken_clock  # type: ignore[method-assign]
    task.end()
    assert not task.running
    assert tracker.stats("nmt").task_count == 1


def test_bad_arguments_get_a_clear_error(tracker: Tracker):
    with pytest.raises(TypeError, match="service"):
        tracker.start_task(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="service"):
        tracker.start_task("")
    with pytest.raises(TypeError, match="attributes"):
        tracker.start_task("nmt", attributes=[1])  # type: ignore[arg-type]


def test_module_level_start_task_uses_the_default_tracker(clock: FakeClock):
    gpu = SimulatedGpu(clock=clock)
    gpu.set_utilization(50)
    gputime.configure(backend=gpu, threaded=False)
    task = gputime.start_task("nmt")
    clock.advance(1.0)
    task.end()
    assert task.tracker is gputime.get_tracker()
    assert gputime.stats("nmt").task_count == 1
