"""Celery: ``gputime.integrations.celery`` and ``@gpu_task`` on Celery tasks, on a real worker.

One worker serves the whole module (threads pool, in-memory broker and result
backend; stopping one takes about two seconds, so it is started once). Each test
instruments with a tracker of its own on a simulated GPU and a fake clock that
the tasks advance, so the figures are exact; every wait is bounded.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery, shared_task, signals
from celery.contrib.testing.worker import start_worker
from celery.exceptions import Ignore, Retry
from celery.loaders.app import AppLoader
from opentelemetry import context as otel_context
from opentelemetry import trace as otel_trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import StatusCode

import gputime
from gputime import TaskHandle, Tracker, gpu_task
from gputime.integrations import celery as gputime_celery
from gputime.integrations.celery import CeleryInstrumentation, instrument
from gputime.testing import FakeClock, SimulatedGpu
from tests.otel_sdk import Sdk

WAIT = 10.0  # seconds: the bound of every wait (a task takes milliseconds)


class GpuOutOfMemoryError(Exception):
    pass


class World:
    """What the tasks, which run on the worker's threads, measure against."""

    clock: FakeClock
    sdk: Sdk
    started: threading.Semaphore
    release: threading.Event
    break_task_init = False


WORLD = World()


class Loader(AppLoader):  # type: ignore[misc] # Celery has no type information
    """The app's loader, able to fail around a task's body (a fault of Celery's own)."""

    def on_task_init(self, task_id: str, task: Any) -> None:
        if WORLD.break_task_init:
            raise RuntimeError("task init failed")
        super().on_task_init(task_id, task)


app = Celery("gputime_tests", loader=Loader, set_as_current=False)
app.conf.update(
    broker_url="memory://",
    result_backend="cache+memory://",
    broker_transport_options={"polling_interval": 0.01},
    worker_hijack_root_logger=False,
)


@app.task(name="tests.translate")
def translate(seconds: float = 1.0) -> str:
    WORLD.clock.advance(seconds)
    return "translated"


@app.task(name="tests.synth", gputime_service="tts")
def synth(seconds: float = 1.0) -> str:
    WORLD.clock.advance(seconds)
    return "synthesised"


@app.task(name="tests.opted_in", gputime_service=True)
def opted_in() -> str:
    return "in"


@app.task(name="tests.opted_out", gputime_service=False)
def opted_out() -> str:
    return "out"


@app.task(name="tests.bad_option", gputime_service=3)
def bad_option() -> str:
    return "ran"


@app.task(name="tests.fail")
def fail() -> None:
    WORLD.clock.advance(0.5)
    raise GpuOutOfMemoryError("no GPU memory left")


@app.task(name="tests.flaky", bind=True, max_retries=1)
def flaky(self: Any) -> int:
    if self.request.retries == 0:
        raise self.retry(countdown=0)
    return int(self.request.retries)


@app.task(name="tests.ignored")
def ignored() -> None:
    raise Ignore()


@app.task(name="tests.hold")
def hold() -> str:
    WORLD.started.release()
    if not WORLD.release.wait(WAIT):
        raise TimeoutError("never released")
    return "held"


@app.task(name="tests.spans")
def spans() -> str:
    """The span current in the body (hex id), and a child span made there."""
    current = otel_trace.get_current_span().get_span_context().span_id
    with WORLD.sdk.tracer_provider.get_tracer("test").start_as_current_span("inner"):
        pass
    return format(current, "016x")


@app.task(name="tests.transcribe", bind=True)
@gpu_task("asr")
def transcribe(self: Any, seconds: float) -> str:
    """The right order: @gpu_task below @app.task, on a bound task."""
    WORLD.clock.advance(seconds)
    return str(self.request.id)


# -- fixtures and helpers ---------------------------------------------------------------


def _leave_logging_alone(**_: Any) -> None:
    """A ``setup_logging`` receiver: with one, Celery does not configure logging."""


@pytest.fixture(scope="module")
def worker() -> Iterator[Any]:
    # Without the receiver the worker would set the root logger to ERROR for
    # the rest of the session, hiding the warnings other modules' tests read.
    signals.setup_logging.connect(_leave_logging_alone, weak=False, dispatch_uid="tests")
    try:
        with start_worker(
            app, pool="threads", concurrency=4, perform_ping_check=False, shutdown_timeout=WAIT
        ) as started:
            yield started
    finally:
        signals.setup_logging.disconnect(dispatch_uid="tests")


@pytest.fixture
def world(
    worker: Any, traced: Tracker, sdk: Sdk, clock: FakeClock, busy: SimulatedGpu
) -> Iterator[Tracker]:
    """The worker's tasks measure against ``traced`` (the GPU busy throughout)."""
    WORLD.clock, WORLD.sdk = clock, sdk
    WORLD.started, WORLD.release = threading.Semaphore(0), threading.Event()
    yield traced
    WORLD.release.set()
    WORLD.break_task_init = False
    gputime_celery.uninstrument()


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"waited {WAIT} s for {what}"
        time.sleep(0.005)


def ended_on(tracker: Tracker) -> list[TaskHandle]:
    """The tasks ``tracker`` ends from now on (listeners run last, after the span ended)."""
    ended: list[TaskHandle] = []
    tracker.on_task_end(ended.append)
    return ended


def run(task: Any, *args: Any, ended: list[TaskHandle], count: int = 1) -> Any:
    """Run ``task`` on the worker; wait for its result and for ``count`` ended tasks."""
    before = len(ended)
    result = task.delay(*args).get(timeout=WAIT, interval=0.005)
    wait_until(lambda: len(ended) >= before + count, f"{count} task end(s)")
    return result


def attributes(span: ReadableSpan) -> dict[str, Any]:
    assert span.attributes is not None
    return dict(span.attributes)


# -- instrument(): what is measured, under which service ---------------------------------


def test_each_run_is_a_task_of_the_service_its_name_gives(world: Tracker, clock: FakeClock):
    ended = ended_on(world)
    instrument(app, tracker=world)
    assert run(translate, 1.0, ended=ended) == "translated"
    assert run(translate, 0.5, ended=ended) == "translated"
    assert [task.gpu_ms for task in ended] == [pytest.approx(1000.0), pytest.approx(500.0)]
    clock.advance(1.0)
    world.poll()
    stats = world.stats("tests.translate")
    assert (stats.task_count, stats.active_tasks) == (2, 0)
    assert stats.gpu_ms == pytest.approx(1500.0)


def test_the_span_names_the_service_and_the_celery_task(world: Tracker, sdk: Sdk):
    ended = ended_on(world)
    instrument(app, tracker=world)
    result = synth.delay(0.5)
    result.get(timeout=WAIT, interval=0.005)
    wait_until(lambda: len(ended) == 1, "the task's end")
    span = sdk.span("gpu_task tts")
    attrs = attributes(span)
    assert attrs["gputime.service"] == "tts"
    assert attrs["gputime.gpu.busy_ms"] == pytest.approx(500.0)
    assert attrs["celery.task_name"] == "tests.synth"
    assert attrs["celery.task_id"] == result.id
    assert attrs["celery.state"] == "SUCCESS"
    assert span.status.status_code is StatusCode.UNSET
    assert world.stats("tts").task_count == 1


def test_a_service_given_to_instrument_is_every_tasks_but_an_option_wins(world: Tracker):
    ended = ended_on(world)
    instrument(app, service="gpu-worker", tracker=world)
    run(translate, 0.1, ended=ended)
    run(synth, 0.1, ended=ended)
    assert [task.service for task in ended] == ["gpu-worker", "tts"]


def test_a_service_function_chooses_per_task_and_none_leaves_a_task_out(world: Tracker):
    ended = ended_on(world)
    seen: list[str] = []

    def choose(task: Any) -> str | None:
        seen.append(task.name)
        return None if task.name == "tests.opted_in" else task.name.rsplit(".", 1)[1]

    instrument(app, service=choose, tracker=world)
    run(translate, 0.1, ended=ended)
    assert opted_in.delay().get(timeout=WAIT, interval=0.005) == "in"  # chosen as None
    run(translate, 0.1, ended=ended)
    assert [task.service for task in ended] == ["translate", "translate"]
    assert seen == ["tests.translate", "tests.opted_in", "tests.translate"]
    assert "tests.opted_in" not in world.stats()


def test_opt_in_measures_only_tasks_with_the_option(world: Tracker):
    ended = ended_on(world)
    instrument(app, tasks="opt-in", tracker=world)
    assert translate.delay(0.1).get(timeout=WAIT, interval=0.005) == "translated"
    run(synth, 0.1, ended=ended)
    run(opted_in, ended=ended)
    assert [task.service for task in ended] == ["tts", "tests.opted_in"]
    assert "tests.translate" not in world.stats()


def test_an_opted_out_task_and_celerys_own_tasks_are_not_measured(world: Tracker):
    ended = ended_on(world)
    instrument(app, tracker=world)
    assert opted_out.delay().get(timeout=WAIT, interval=0.005) == "out"
    accumulate = app.tasks["celery.accumulate"]
    assert accumulate.delay(1, 2).get(timeout=WAIT, interval=0.005) == [1, 2]  # by JSON
    run(translate, 0.1, ended=ended)  # ends after the two above: they ran first
    assert [task.service for task in ended] == ["tests.translate"]
    assert set(world.stats()) == {"tests.translate"}


def test_tasks_of_another_app_are_not_measured(world: Tracker):
    other = Celery("other", set_as_current=False)
    instrument(other, tracker=world)
    ended = ended_on(world)
    assert translate.delay(0.1).get(timeout=WAIT, interval=0.005) == "translated"
    assert ended == []
    assert world.stats() == {}


def test_the_default_tracker_is_looked_up_at_each_run(world: Tracker, clock: FakeClock):
    instrument(app)  # no tracker: gputime's default one, configured afterwards
    configured = gputime.configure(backend=SimulatedGpu(clock=clock), threaded=False)
    ended = ended_on(configured)
    run(translate, 0.1, ended=ended)
    assert gputime.stats("tests.translate").task_count == 1
    assert world.stats() == {}


# -- failures, retries and the ways a run ends --------------------------------------------


def test_a_failed_task_is_counted_and_its_span_failed(world: Tracker, sdk: Sdk):
    ended = ended_on(world)
    instrument(app, tracker=world)
    result = fail.delay()
    with pytest.raises(GpuOutOfMemoryError):  # rebuilt from the result backend, by name
        result.get(timeout=WAIT, interval=0.005)
    wait_until(lambda: len(ended) == 1, "the failed task's end")
    (task,) = ended
    assert isinstance(task.error, GpuOutOfMemoryError)
    assert task.gpu_ms == pytest.approx(500.0)
    assert world.stats("tests.fail").task_count == 1
    span = sdk.span("gpu_task tests.fail")
    assert span.status.status_code is StatusCode.ERROR
    attrs = attributes(span)
    assert attrs["error.type"] == "tests.test_celery.GpuOutOfMemoryError"
    assert attrs["celery.state"] == "FAILURE"
    assert [event.name for event in span.events] == ["exception"]


def test_a_retry_is_a_run_of_its_own_and_not_a_failure(world: Tracker, sdk: Sdk):
    ended = ended_on(world)
    instrument(app, tracker=world)
    assert run(flaky, ended=ended, count=2) == 1
    assert [task.error for task in ended] == [None, None]
    assert world.stats("tests.flaky").task_count == 2
    states = sorted(attributes(span)["celery.state"] for span in sdk.spans())
    assert states == ["RETRY", "SUCCESS"]
    assert {span.status.status_code for span in sdk.spans()} == {StatusCode.UNSET}


def test_an_ignored_task_ends_without_a_failure(world: Tracker, sdk: Sdk):
    ended = ended_on(world)
    instrument(app, tracker=world)
    ignored.delay()  # Ignore stores no result: wait for the end instead
    wait_until(lambda: len(ended) == 1, "the ignored task's end")
    span = sdk.span("gpu_task tests.ignored")
    assert span.status.status_code is StatusCode.UNSET
    assert attributes(span)["celery.state"] == "IGNORED"
    assert world.stats("tests.ignored").task_count == 1


@pytest.mark.filterwarnings("ignore:Exception raised outside body:RuntimeWarning")
def test_a_fault_of_celerys_around_the_body_still_ends_the_task(world: Tracker, sdk: Sdk):
    # The loader fails after task_prerun: the exception leaves Celery's tracer
    # and task_postrun comes without a state (the task_internal_error path).
    ended = ended_on(world)
    instrument(app, tracker=world)
    WORLD.break_task_init = True
    result = translate.delay(0.1)
    wait_until(lambda: len(ended) == 1, "the task's end")
    (task,) = ended
    assert isinstance(task.error, RuntimeError)
    stats = world.stats("tests.translate")
    assert (stats.task_count, stats.active_tasks) == (1, 0)
    span = sdk.span("gpu_task tests.translate")
    assert span.status.status_code is StatusCode.ERROR
    assert "celery.state" not in attributes(span)
    with pytest.raises(Exception, match="task init failed"):
        result.get(timeout=WAIT, interval=0.005)


def test_an_eager_apply_is_measured_in_the_callers_thread(world: Tracker, sdk: Sdk):
    instrument(app, tracker=world)
    tracer = sdk.tracer_provider.get_tracer("test")
    with tracer.start_as_current_span("request") as request:
        assert translate.apply(args=(0.25,)).get() == "translated"
        with pytest.raises(GpuOutOfMemoryError):
            fail.apply(throw=True)  # propagates out of Celery's tracer
        with pytest.raises(Retry):  # an eager retry propagates too: not a failure
            flaky.apply(throw=True)
        assert otel_trace.get_current_span() is request
    retried = sdk.span("gpu_task tests.flaky")
    assert retried.status.status_code is StatusCode.UNSET
    assert world.stats("tests.flaky").task_count == 1
    ok, failed = sdk.span("gpu_task tests.translate"), sdk.span("gpu_task tests.fail")
    assert ok.parent is not None
    assert ok.parent.span_id == request.get_span_context().span_id
    assert attributes(ok)["gputime.gpu.busy_ms"] == pytest.approx(250.0)
    assert failed.status.status_code is StatusCode.ERROR
    assert "celery.state" not in attributes(failed)  # it left the tracer with the error


# -- concurrency ---------------------------------------------------------------------------


def test_concurrent_runs_of_one_service_count_their_shared_time_once(
    world: Tracker, clock: FakeClock, sdk: Sdk
):
    ended = ended_on(world)
    instrumentation = instrument(app, service="nmt", tracker=world)
    results = [hold.delay(), hold.delay()]
    for _ in results:
        assert WORLD.started.acquire(timeout=WAIT), "a held task never started"
    assert instrumentation.running == 2
    assert world.stats("nmt").active_tasks == 2
    clock.advance(1.0)
    WORLD.release.set()
    assert [r.get(timeout=WAIT, interval=0.005) for r in results] == ["held", "held"]
    wait_until(lambda: len(ended) == 2, "both ends")
    assert instrumentation.running == 0
    assert [task.gpu_ms for task in ended] == [pytest.approx(1000.0)] * 2
    clock.advance(1.0)
    world.poll()
    stats = world.stats("nmt")
    assert (stats.task_count, stats.active_tasks) == (2, 0)
    assert stats.gpu_ms == pytest.approx(1000.0)  # the union of the two windows
    concurrency = sorted(attributes(span)["gputime.task.concurrency"] for span in sdk.spans())
    assert concurrency == [1, 2]


# -- the span is current while the body runs ------------------------------------------------


def test_spans_made_in_the_body_are_children_and_nothing_stays_current(world: Tracker, sdk: Sdk):
    ended = ended_on(world)
    instrument(app, tracker=world)
    first = run(spans, ended=ended)
    second = run(spans, ended=ended)
    runs = [s for s in sdk.spans() if s.name == "gpu_task tests.spans"]
    inner = [s for s in sdk.spans() if s.name == "inner"]
    assert [format(s.context.span_id, "016x") for s in runs] == [first, second]
    assert [s.parent.span_id if s.parent else None for s in inner] == [
        s.context.span_id for s in runs
    ]
    # Each run's span is a root: the previous one did not stay current on its thread.
    assert [s.parent for s in runs] == [None, None]


class OtherInstrumentation:
    """Another instrumentation that, like OpenTelemetry's own for Celery, makes a
    span current in task_prerun and takes it back in task_postrun."""

    def __init__(self, sdk: Sdk) -> None:
        self.tracer = sdk.tracer_provider.get_tracer("other")
        self.open: dict[int, tuple[Any, object]] = {}
        self.connected = False

    def connect(self) -> None:
        signals.task_prerun.connect(self.prerun, weak=False, dispatch_uid="other")
        signals.task_postrun.connect(self.postrun, weak=False, dispatch_uid="other")
        self.connected = True

    def disconnect(self) -> None:
        signals.task_prerun.disconnect(dispatch_uid="other")
        signals.task_postrun.disconnect(dispatch_uid="other")

    def prerun(self, task: Any = None, **_: Any) -> None:
        span = self.tracer.start_span(f"run/{task.name}")
        token = otel_context.attach(otel_trace.set_span_in_context(span))
        self.open[id(task.request)] = (span, token)

    def postrun(self, task: Any = None, **_: Any) -> None:
        span, token = self.open.pop(id(task.request))
        otel_context.detach(token)  # type: ignore[arg-type] # made by attach()
        span.end()


@pytest.fixture
def other(sdk: Sdk) -> Iterator[OtherInstrumentation]:
    instrumentation = OtherInstrumentation(sdk)
    yield instrumentation
    instrumentation.disconnect()


def _parent_ids(sdk: Sdk, name: str) -> list[int | None]:
    return [s.parent.span_id if s.parent else None for s in sdk.spans() if s.name == name]


def _ids(sdk: Sdk, name: str) -> list[int]:
    return [s.context.span_id for s in sdk.spans() if s.name == name]


def test_with_another_instrumentation_connected_first_gputime_nests_inside_it(
    world: Tracker, sdk: Sdk, other: OtherInstrumentation
):
    ended = ended_on(world)
    other.connect()
    instrument(app, tracker=world)
    for _ in range(3):
        run(spans, ended=ended)
    runs = "gpu_task tests.spans"
    assert _parent_ids(sdk, runs) == _ids(sdk, "run/tests.spans")
    assert _parent_ids(sdk, "inner") == _ids(sdk, runs)
    assert _parent_ids(sdk, "run/tests.spans") == [None] * 3  # nothing left current


def test_with_another_instrumentation_connected_after_no_span_stays_current(
    world: Tracker, sdk: Sdk, other: OtherInstrumentation
):
    # Celery calls task_postrun's handlers in the order they connected, so the
    # other one puts gputime's ended span back when it detaches its own: the
    # next run takes it away before it starts.
    ended = ended_on(world)
    instrument(app, tracker=world)
    other.connect()
    for _ in range(3):
        run(spans, ended=ended)
    runs = "gpu_task tests.spans"
    assert _parent_ids(sdk, runs) == [None] * 3
    assert _parent_ids(sdk, "run/tests.spans") == _ids(sdk, runs)
    assert _parent_ids(sdk, "inner") == _ids(sdk, "run/tests.spans")


# -- uninstrument() ----------------------------------------------------------------------


def test_uninstrument_stops_counting(world: Tracker):
    receivers = len(signals.task_prerun.receivers), len(signals.task_postrun.receivers)
    ended = ended_on(world)
    instrumentation = instrument(app, tracker=world)
    run(translate, 0.1, ended=ended)
    instrumentation.uninstrument()
    instrumentation.uninstrument()  # idempotent
    assert not instrumentation.active
    assert translate.delay(0.1).get(timeout=WAIT, interval=0.005) == "translated"
    assert world.stats("tests.translate").task_count == 1
    assert (len(signals.task_prerun.receivers), len(signals.task_postrun.receivers)) == receivers


def test_a_run_started_before_uninstrument_still_ends(world: Tracker):
    receivers = len(signals.task_postrun.receivers)
    ended = ended_on(world)
    instrumentation = instrument(app, tracker=world)
    result = hold.delay()
    assert WORLD.started.acquire(timeout=WAIT)
    instrumentation.uninstrument()
    assert instrumentation.running == 1
    assert len(signals.task_postrun.receivers) == receivers + 1  # until the run ends
    WORLD.release.set()
    assert result.get(timeout=WAIT, interval=0.005) == "held"
    wait_until(lambda: len(ended) == 1, "the held task's end")
    stats = world.stats("tests.hold")
    assert (stats.task_count, stats.active_tasks) == (1, 0)
    wait_until(lambda: len(signals.task_postrun.receivers) == receivers, "the disconnect")
    assert instrumentation.running == 0


def test_one_instrumentation_per_app(world: Tracker):
    first = instrument(app, tracker=world)
    with pytest.raises(RuntimeError, match="already instrumented"):
        instrument(app, tracker=world)
    with pytest.raises(RuntimeError, match="already instrumented"):
        instrument(tracker=world)  # every app includes this one
    other = instrument(Celery("other", set_as_current=False), tracker=world)
    gputime_celery.uninstrument()
    assert not first.active
    assert not other.active
    instrument(tracker=world).uninstrument()  # free again
    assert "uninstrumented" in repr(first)


# -- faults never reach the task -----------------------------------------------------------


def test_a_failing_service_function_leaves_the_task_unmeasured_and_is_logged_once(
    world: Tracker, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.WARNING, logger="gputime")

    def choose(task: Any) -> str:
        raise LookupError(task.name)

    instrument(app, service=choose, tracker=world)
    for _ in range(2):
        assert translate.delay(0.1).get(timeout=WAIT, interval=0.005) == "translated"
    assert world.stats() == {}
    faults = [r.getMessage() for r in caplog.records if r.name == "gputime"]
    assert len(faults) == 1
    assert "celery task_prerun failed" in faults[0]
    assert "LookupError" in faults[0]


@pytest.mark.parametrize(
    ("service", "task", "message"),
    [
        (lambda task: 7, translate, "returned int"),
        (lambda task: " ", translate, "service"),
        (None, bad_option, "gputime_service must be a string, True or False, not int"),
    ],
)
def test_a_bad_service_at_run_time_is_a_logged_fault(
    world: Tracker,
    caplog: pytest.LogCaptureFixture,
    service: Callable[[Any], Any] | None,
    task: Any,
    message: str,
):
    caplog.set_level(logging.WARNING, logger="gputime")
    instrument(app, service=service, tracker=world)
    assert task.delay().get(timeout=WAIT, interval=0.005) is not None
    assert world.stats() == {}
    faults = [r.getMessage() for r in caplog.records if r.name == "gputime"]
    assert len(faults) == 1
    assert message in faults[0]


def test_uninstrument_while_a_run_is_starting_leaves_nothing_open(world: Tracker):
    # The service function runs between the handler's first look at whether
    # it was uninstrumented and the moment it records the run: the race
    # uninstrument() from another thread could win there.
    instrumentation: list[CeleryInstrumentation] = []

    def choose(task: Any) -> str:
        instrumentation[0].uninstrument()
        return "nmt"

    instrumentation.append(instrument(app, service=choose, tracker=world))
    assert translate.delay(0.1).get(timeout=WAIT, interval=0.005) == "translated"
    assert instrumentation[0].running == 0
    assert world.stats() == {}


def test_signals_sent_without_a_task_are_ignored_or_logged(
    world: Tracker, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.WARNING, logger="gputime")
    instrument(app, tracker=world)
    # Someone else's send of Celery's signals, not the worker's.
    signals.task_prerun.send(sender=None)
    signals.task_postrun.send(sender=None)
    signals.task_postrun.send(sender=None, task=object())  # no request to look up
    assert world.stats() == {}
    faults = [r.getMessage() for r in caplog.records if r.name == "gputime"]
    assert len(faults) == 1
    assert "celery task_postrun failed" in faults[0]


class RefusingSpan:
    """The span a faulty SDK made current: refuses attributes, otherwise the real one."""

    def __init__(self, span: Any) -> None:
        self._span = span

    def set_attribute(self, key: str, value: Any) -> None:
        raise RuntimeError("attribute refused")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._span, name)


def test_an_sdk_fault_on_the_span_does_not_reach_the_task(
    world: Tracker, sdk: Sdk, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.WARNING, logger="gputime")
    real = otel_trace.get_current_span
    monkeypatch.setattr(otel_trace, "get_current_span", lambda *a: RefusingSpan(real(*a)))
    ended = ended_on(world)
    instrument(app, tracker=world)
    assert run(translate, 0.5, ended=ended) == "translated"
    assert ended[0].gpu_ms == pytest.approx(500.0)
    assert "celery.state" not in attributes(sdk.span("gpu_task tests.translate"))
    faults = [r.getMessage() for r in caplog.records if r.name == "gputime"]
    assert len(faults) == 1
    assert "celery span failed" in faults[0]


# -- instrument()'s arguments -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"tasks": "some"}, ValueError, "tasks must be 'all' or 'opt-in'"),
        ({"service": ""}, ValueError, "service"),
        ({"service": 3}, TypeError, "service must be a string, a function"),
        ({"tracker": "default"}, TypeError, "tracker must be a gputime.Tracker"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, Any], error: type[Exception], message: str):
    with pytest.raises(error, match=message):
        instrument(app, **kwargs)
    instrument(app).uninstrument()  # nothing was left connected


def test_forked_child_starts_with_no_run_open(world: Tracker):
    if not hasattr(os, "fork"):  # pragma: no cover - POSIX only
        pytest.skip("fork is POSIX-only")
    instrumentation = instrument(app, tracker=world)
    result = hold.delay()
    assert WORLD.started.acquire(timeout=WAIT)
    assert instrumentation.running == 1
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child; reported through its exit code
        os._exit(0 if instrumentation.running == 0 else 3)
    _, status = os.waitpid(pid, 0)
    WORLD.release.set()
    assert result.get(timeout=WAIT, interval=0.005) == "held"
    assert os.waitstatus_to_exitcode(status) == 0


def _folder_client(folder: Path) -> Celery:
    """A client of the worker of tests/celery_worker_app.py (the same folders)."""
    client = Celery("client", broker="filesystem://", backend=f"file://{folder}/results")
    client.conf.broker_transport_options = {
        "data_folder_in": f"{folder}/queue",
        "data_folder_out": f"{folder}/queue",
        "control_folder": f"{folder}/control",  # not ./control
        "polling_interval": 0.02,
    }
    return client


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the prefork pool forks")
def test_a_prefork_worker_measures_in_each_child_what_that_child_ran(tmp_path: Path):
    # A real `celery worker` process, as deployed: instrument() runs when it
    # imports the app, before it forks its pool; gputime is configured in each
    # child as it starts, and each child's figures are its own.
    for folder in ("queue", "results", "control"):
        (tmp_path / folder).mkdir()
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tests.celery_worker_app", "worker",
         "--pool=prefork", "--concurrency=1", "--without-mingle", "--without-gossip",
         "--without-heartbeat", "--loglevel=WARNING"],
        env={**os.environ, "GPUTIME_CELERY_FOLDER": str(tmp_path)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its pool's children with it, to stop them at once
    )  # fmt: skip
    try:
        client = _folder_client(tmp_path)
        # The first waits for the worker to start, too.
        pids = [
            client.send_task("prefork.work", args=(0.01,)).get(timeout=30, interval=0.02)
            for _ in range(3)
        ]
        report = client.send_task("prefork.report").get(timeout=WAIT, interval=0.02)
    finally:
        # The tasks are done: no warm shutdown (seconds) is needed.
        os.killpg(worker.pid, signal.SIGKILL)
        output, _ = worker.communicate(timeout=WAIT)
    assert set(pids) == {report["pid"]}, output
    assert report["parent"] == worker.pid  # ran in the pool's child, not the main process
    assert report["tasks"] == {"prefork.work": 3, "prefork.report": 0}  # the report runs


# -- @gpu_task and Celery task objects ---------------------------------------------------------


def test_gpu_task_below_app_task_measures_a_bound_task(worker: Any, clock: FakeClock):
    configured = gputime.configure(backend=SimulatedGpu(clock=clock), threaded=False)
    ended = ended_on(configured)
    WORLD.clock = clock
    result = transcribe.delay(0.5)
    assert result.get(timeout=WAIT, interval=0.005) == result.id  # bound: self is the task
    wait_until(lambda: len(ended) == 1, "the task's end")
    assert transcribe.name == "tests.transcribe"
    assert gputime.stats("asr").task_count == 1
    assert ended[0].duration == pytest.approx(0.5)


def test_gpu_task_above_app_task_is_refused_with_the_order_to_use(worker: Any):
    with pytest.raises(TypeError, match=r"Put @gpu_task below @app\.task") as refused:
        gpu_task("nmt")(translate)  # what @app.task returned: a proxy, evaluated by now
    assert "@gpu_task('nmt')" in str(refused.value)
    with pytest.raises(TypeError, match=r"on the Celery task 'tests\.translate'"):
        gpu_task("nmt")(app.tasks["tests.translate"])  # the task object itself


def test_a_lazy_task_proxy_is_refused_without_being_evaluated():
    lazy = Celery("lazy", autofinalize=False, set_as_current=False)

    @lazy.task
    def later() -> None: ...

    assert type(later).__name__ == "PromiseProxy"
    with pytest.raises(TypeError, match="Celery task proxy"):
        gpu_task("nmt")(later)
    assert not later.__evaluated__()  # the app's tasks are still to be made
    assert not lazy.finalized


def test_a_shared_task_proxy_is_refused():
    @shared_task(name="tests.shared_refused")
    def shared() -> None: ...

    with pytest.raises(TypeError, match=r"below @app\.task"):
        gpu_task("nmt")(shared)


# -- imports -----------------------------------------------------------------------------------


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_importing_gputime_imports_no_celery():
    result = _python(
        """
        import sys
        import gputime, gputime.integrations
        from gputime import gpu_task

        gpu_task("nmt")(lambda: None)()
        assert "celery" not in sys.modules, sorted(m for m in sys.modules if "celery" in m)
        print("no celery")
        """
    )
    assert result.stdout.strip() == "no celery", result.stderr


def test_without_celery_the_integration_says_what_to_install():
    result = _python(
        """
        import sys
        sys.modules["celery"] = None  # as if not installed
        try:
            import gputime.integrations.celery
        except ImportError as exc:
            print(exc)
        """
    )
    assert "pip install 'gputime[celery]'" in result.stdout, result.stderr


def test_the_public_names(world: Tracker):
    assert gputime_celery.OPTION == "gputime_service"
    instrumentation = instrument(app, tracker=world)
    assert isinstance(instrumentation, CeleryInstrumentation)
    assert (instrumentation.app, instrumentation.tasks) == (app, "all")
    assert instrumentation.active
    assert "all tasks, active" in repr(instrumentation)
