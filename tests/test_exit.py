"""Interpreter exit: every task still open at exit ends while gputime can still end it.

Each case runs a small script in a fresh interpreter (bounded by a timeout) that leaves
a task open and exits. A listener prints each task end and an OpenTelemetry exporter
prints each span it is given, both straight to stdout, so the test sees what they saw.

``keep`` variants keep ``__main__`` alive past module teardown (a context variable in
the main context holds a function of ``__main__``, whose ``__globals__`` is its
namespace): Python then finalises the suspended generator or coroutine only after
gputime's module globals were cleared, when a task end can no longer run (issue 11,
point 4). The fix ends such tasks from an ``atexit`` hook, before teardown.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import subprocess
import sys
import textwrap

import pytest

#: Seconds any one script may take (they take well under one).
TIMEOUT_S = 60

PRELUDE = textwrap.dedent(
    """
    import asyncio, atexit, contextvars, gc, sys, threading, time
    atexit.register(print, "earlier exit handler", flush=True)  # runs after gputime's
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
    from gputime import Tracker
    from gputime.testing import FakeClock, SimulatedGpu

    class Printer(SpanExporter):
        def export(self, spans):
            for span in spans:
                print(f"span {span.name} status={span.status.status_code.name}", flush=True)
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(Printer()))
    KEEP = sys.argv[1] == "keep"
    THREADED = sys.argv[2] == "threaded"
    if THREADED:
        gpu = SimulatedGpu(sample_period=0.02)
        tracker = Tracker(backend=gpu, interval=0.01, tracer_provider=provider)
    else:
        clock = FakeClock(1.0)
        gpu = SimulatedGpu(clock=clock)
        tracker = Tracker(backend=gpu, threaded=False, tracer_provider=provider)
    gpu.set_utilization(100)

    @tracker.on_task_end
    def ended(task):
        error = type(task.error).__name__ if task.error is not None else None
        print(f"end {task.service} running={task.running} status={task.status} "
              f"error={error}", flush=True)

    keeper = contextvars.ContextVar("keeper")
    if KEEP:
        keeper.set(ended)  # keeps __main__'s namespace alive past module teardown
    """
)

CASES = {
    "decorated-generator": """
        @tracker.gpu_task("svc")
        def stream():
            try:
                yield 1
                yield 2
            finally:
                print("generator finally", flush=True)

        g = stream()
        next(g)
        """,
    "with-in-generator": """
        def stream():
            with tracker.gpu_task("svc"):
                yield 1
                yield 2

        g = stream()
        next(g)
        """,
    "decorated-async-generator": """
        @tracker.gpu_task("svc")
        async def stream():
            yield 1
            yield 2

        loop = asyncio.new_event_loop()
        g = stream()
        loop.run_until_complete(g.__anext__())
        """,
    "pending-coroutine": """
        @tracker.gpu_task("svc")
        async def job():
            await asyncio.sleep(3600)

        loop = asyncio.new_event_loop()
        pending = loop.create_task(job())
        loop.run_until_complete(asyncio.sleep(0.01))
        """,
    "async-with-in-pending-task": """
        async def job():
            async with tracker.gpu_task("svc"):
                await asyncio.sleep(3600)

        loop = asyncio.new_event_loop()
        pending = loop.create_task(job())
        loop.run_until_complete(asyncio.sleep(0.01))
        """,
    "with-never-left": """
        handle = tracker.gpu_task("svc").__enter__()
        """,
    "start-task-never-ended": """
        handle = tracker.start_task("svc")
        """,
    "start-task-with-in-generator": """
        def stream():
            with tracker.start_task("svc"):
                yield 1
                yield 2

        g = stream()
        next(g)
        """,
    "daemon-thread": """
        started = threading.Event()

        def work():
            with tracker.gpu_task("svc"):
                started.set()
                time.sleep(3600)

        threading.Thread(target=work, daemon=True).start()
        assert started.wait(10)
        if THREADED:
            deadline = time.monotonic() + 10
            while not tracker.sampler_running and time.monotonic() < deadline:
                time.sleep(0.005)
            assert tracker.sampler_running
        """,
    "ended-inside-a-collection": """
        gc.disable()

        def stream():
            with tracker.gpu_task("svc"):
                yield 1

        g = stream()
        next(g)
        box = [g]
        box.append(box)  # only the collector can free it, and it ends the task there
        del g, box
        gc.collect()  # the end is recorded; no later task event emits it
        """,
}


def run_case(case: str, keep: bool, threaded: bool = False) -> subprocess.CompletedProcess[str]:
    script = PRELUDE + textwrap.dedent(CASES[case]) + '\nprint("exiting", flush=True)\n'
    return subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            "keep" if keep else "free",
            "threaded" if threaded else "fake",
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )


@pytest.mark.parametrize("keep", [False, True], ids=["main-freed", "main-kept"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_a_task_open_at_exit_ends_before_teardown(case: str, keep: bool):
    result = run_case(case, keep)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "Exception ignored" not in result.stderr
    lines = result.stdout.splitlines()
    assert lines.index("exiting") < len(lines) - 1, result.stdout
    after_exit = lines[lines.index("exiting") + 1 :]
    # Ended once, after the script's last line, not as an error, with its span.
    ends = [line for line in after_exit if line.startswith("end svc")]
    assert ends == ["end svc running=False status=ok error=None"], result.stdout
    assert after_exit.count("span gpu_task svc status=UNSET") == 1, result.stdout
    # Before the exit handlers registered before the tracker (an SDK's shutdown).
    assert after_exit[-1] == "earlier exit handler", result.stdout
    if case == "decorated-generator":
        # Closed as Python would close it: its own clean-up runs inside the task.
        assert after_exit.index("generator finally") < after_exit.index(ends[0])


def test_exit_with_a_live_sampler_and_a_task_in_a_daemon_thread():
    result = run_case("daemon-thread", keep=False, threaded=True)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    after_exit = result.stdout.split("exiting\n", 1)[1].splitlines()
    assert [line for line in after_exit if line.startswith("end svc")] == [
        "end svc running=False status=ok error=None"
    ]
    assert "span gpu_task svc status=UNSET" in after_exit


class TestTheExitHookInProcess:
    """The hook's work, run here directly (``gputime._exit.end_open_tasks``, private)."""

    @pytest.fixture
    def ends(self, tracker) -> list[tuple[str, bool, str | None]]:
        seen: list[tuple[str, bool, str | None]] = []

        @tracker.on_task_end
        def ended(task) -> None:
            seen.append(
                (task.service, task.running, type(task.error).__name__ if task.error else None)
            )

        return seen

    def test_every_kind_of_open_task_ends_once(self, tracker, clock, ends):
        from gputime import _exit

        @tracker.gpu_task("gen")
        def stream():
            yield 1
            yield 2

        @tracker.gpu_task("agen")
        async def astream():
            yield 1

        @tracker.gpu_task("coro")
        async def job() -> None:
            await asyncio.sleep(3600)

        suspended = stream()
        next(suspended)
        never_started = stream()  # no task yet: left alone
        agen = astream()
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(agen.__anext__())
            pending = loop.create_task(job())
            loop.run_until_complete(asyncio.sleep(0))
            block = tracker.gpu_task("with")
            handle = block.__enter__()
            clock.advance(0.5)
            _exit.end_open_tasks()
            assert sorted(ends) == [
                ("agen", False, None),
                ("coro", False, None),
                ("gen", False, None),
                ("with", False, None),
            ]
            assert inspect.getgeneratorstate(suspended) == inspect.GEN_CLOSED
            assert inspect.getgeneratorstate(never_started) == inspect.GEN_CREATED
            assert handle.duration == pytest.approx(0.5)
            # What Python does later changes nothing: each task ended once.
            block.__exit__(None, None, None)
            pending.cancel()
            loop.run_until_complete(asyncio.gather(pending, return_exceptions=True))
            loop.run_until_complete(agen.aclose())
            _exit.end_open_tasks()  # and a second run finds nothing to do
        finally:
            loop.close()
        assert len(ends) == 4
        assert {s.service: s.task_count for s in tracker.stats().values()} == {
            "agen": 1,
            "coro": 1,
            "gen": 1,
            "with": 1,
        }
        assert all(s.active_tasks == 0 for s in tracker.stats().values())

    def test_a_generator_whose_clean_up_raises_ends_with_that_error(self, tracker, ends):
        from gputime import _exit

        @tracker.gpu_task("gen")
        def stream():
            try:
                yield 1
            finally:
                raise LookupError("clean-up failed")

        suspended = stream()
        next(suspended)
        _exit.end_open_tasks()  # nothing escapes
        assert ends == [("gen", False, "LookupError")]

    def test_a_with_block_left_meanwhile_is_not_ended_twice(self, tracker, ends):
        from gputime import _exit

        block = tracker.gpu_task("with")
        handle = block.__enter__()
        block._open.remove(handle)  # what a concurrent __exit__ does first
        _exit.end_open_tasks()
        assert ends == []
        tracker._end_task(handle, None)  # and then it ends it
        assert ends == [("with", False, None)]

    def test_a_task_inherited_from_a_parent_process_is_left_alone(self, tracker, ends):
        from gputime import _exit

        handle = tracker.gpu_task("parent").__enter__()
        tracker._after_fork_in_child()  # as in a forked child: the task is the parent's
        _exit.end_open_tasks()
        assert ends == []
        assert handle.running

    def test_an_async_generator_closed_after_the_hook_ended_its_task(self, traced, sdk):
        """Its clean-up runs later (if Python closes it) outside the ended task's span."""
        from opentelemetry import trace

        from gputime import _exit

        seen: list[object] = []

        @traced.gpu_task("agen")
        async def astream():
            try:
                yield 1
            finally:
                seen.append(trace.get_current_span())

        agen = astream()
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(agen.__anext__())
            _exit.end_open_tasks()
            (span,) = sdk.spans()
            loop.run_until_complete(agen.aclose())
        finally:
            loop.close()
        assert len(seen) == 1
        assert seen[0].get_span_context().span_id != span.context.span_id
        assert [s.name for s in sdk.spans()] == ["gpu_task agen"]  # ended once
        assert traced.stats("agen").task_count == 1

    def test_one_task_failing_to_end_does_not_keep_the_others_open(
        self, tracker, ends, monkeypatch
    ):
        from gputime import _exit

        first = tracker.gpu_task("first").__enter__()
        tracker.gpu_task("second").__enter__()
        end_task = tracker._end_task

        def failing(handle, exc):
            if handle is first:
                raise RuntimeError("cannot end this one")
            end_task(handle, exc)

        monkeypatch.setattr(tracker, "_end_task", failing)
        monkeypatch.setattr(tracker, "stats", lambda *a: 1 / 0)  # nor a failing stats()
        _exit.end_open_tasks()
        assert ends == [("second", False, None)]
        assert first.running

    def test_a_half_built_task_handle_does_not_stop_the_others_ending(self, tracker, ends):
        """A handle another thread is still building (its slots unset) is passed over."""
        from gputime import _exit
        from gputime._handle import TaskHandle

        half_built = TaskHandle.__new__(TaskHandle)
        tracker.gpu_task("open").__enter__()
        _exit.end_open_tasks()
        assert ends == [("open", False, None)]
        del half_built

    def test_an_interrupt_in_a_clean_up_is_raised_once_every_task_ended(self, tracker, ends):
        from gputime import _exit

        @tracker.gpu_task("gen")
        def stream():
            try:
                yield 1
            finally:
                raise KeyboardInterrupt

        suspended = stream()
        next(suspended)
        tracker.gpu_task("other").__enter__()
        with pytest.raises(KeyboardInterrupt):
            _exit.end_open_tasks()
        assert sorted(service for service, _, _ in ends) == ["gen", "other"]

    def test_tasks_made_before_gc_freeze_end_too(self, tracker, ends):
        from gputime import _exit

        tracker.gpu_task("before").__enter__()
        gc.freeze()  # a prefork server's trick: gc.get_objects() leaves these out
        try:
            tracker.gpu_task("after").__enter__()
            _exit.end_open_tasks()
        finally:
            gc.unfreeze()
        assert sorted(service for service, _, _ in ends) == ["after", "before"]


def run_script(body: str) -> list[str]:
    """PRELUDE and ``body`` in a fresh interpreter; the lines printed after it ended."""
    script = PRELUDE + textwrap.dedent(body) + '\nprint("exiting")\n'
    result = subprocess.run(
        [sys.executable, "-c", script, "free", "fake"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return result.stdout.split("exiting\n", 1)[1].splitlines()


def test_a_generator_a_daemon_thread_iterates_is_not_closed_under_it():
    """Its task ends where it stands; the thread's loop is not ended for it."""
    after_exit = run_script(
        """
        @tracker.gpu_task("svc")
        def stream():
            try:
                for i in range(1000):
                    yield i
            finally:
                print(f"generator finally on {threading.current_thread().name}", flush=True)

        def consume():
            for _ in stream():
                time.sleep(0.01)
            print("the consumer saw its stream end", flush=True)

        threading.Thread(target=consume, daemon=True).start()
        time.sleep(0.1)
        """
    )
    assert "generator finally on MainThread" not in after_exit
    assert "the consumer saw its stream end" not in after_exit
    assert [line for line in after_exit if line.startswith("end svc")] == [
        "end svc running=False status=ok error=None"
    ]


def test_a_tracker_made_by_an_exit_handler_keeps_the_hook():
    """An exit handler that runs first and makes a tracker does not unregister the hook."""
    after_exit = run_script(
        """
        tracker.start_task("svc")
        def late():
            Tracker(backend=SimulatedGpu(clock=FakeClock()))  # the hook re-registers here
            print("exit handler made a tracker", flush=True)
        atexit.register(late)
        """
    )
    assert after_exit[0] == "exit handler made a tracker"
    assert "end svc running=False status=ok error=None" in after_exit


def test_an_sdk_set_up_after_the_tracker_still_gets_the_span_at_exit():
    """The hook moves ahead of the SDK's shutdown when the tracker takes up the SDK."""
    script = textwrap.dedent(
        """
        from gputime import Tracker
        from gputime.testing import FakeClock, SimulatedGpu
        tracker = Tracker(backend=SimulatedGpu(clock=FakeClock()), threaded=False)

        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
        from opentelemetry.sdk.trace.export import SpanExportResult

        class Printer(SpanExporter):
            def export(self, spans):
                for span in spans:
                    print(f"exported {span.name}", flush=True)
                return SpanExportResult.SUCCESS

        provider = TracerProvider()  # registers its shutdown at exit, after the tracker
        provider.add_span_processor(BatchSpanProcessor(Printer()))
        trace.set_tracer_provider(provider)
        tracker.start_task("svc")  # takes up the SDK: a span, open at exit
        print("exiting", flush=True)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("exiting\n", 1)[1].splitlines() == ["exported gpu_task svc"]
