"""``gpu_task`` as decorator and context manager, for every kind of callable."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator

import pytest

import gputime
from gputime import Tracker, gpu_task
from gputime.testing import FakeClock, SimulatedGpu


@pytest.fixture
def busy(gpu: SimulatedGpu) -> SimulatedGpu:
    gpu.set_utilization(100)
    return gpu


class TestKinds:
    def test_plain_function_keeps_name_doc_signature(self, tracker: Tracker):
        @tracker.gpu_task("nmt")
        def translate(text: str, *, lang: str = "en") -> str:
            """Translate text."""
            return text.upper()

        assert translate("hi", lang="fr") == "HI"
        assert translate.__name__ == "translate"
        assert translate.__doc__ == "Translate text."
        params = inspect.signature(translate).parameters
        assert list(params) == ["text", "lang"]
        assert params["lang"].kind is inspect.Parameter.KEYWORD_ONLY
        assert params["lang"].default == "en"
        assert tracker.stats("nmt").task_count == 1

    def test_coroutine_function_covers_the_whole_await(self, tracker, clock: FakeClock, busy):
        @tracker.gpu_task("tts")
        async def synth(seconds: float) -> float:
            clock.advance(seconds / 2)
            await asyncio.sleep(0)
            clock.advance(seconds / 2)
            return seconds

        assert inspect.iscoroutinefunction(synth)
        coroutine = synth(1.0)
        assert tracker.stats("tts").active_tasks == 0  # nothing runs until awaited
        assert asyncio.run(coroutine) == 1.0
        assert tracker.stats("tts").task_count == 1
        clock.advance(1)
        tracker.poll()
        assert tracker.stats("tts").gpu_ms == pytest.approx(1000.0)

    def test_generator_task_runs_from_first_resume_to_exhaustion(self, tracker, clock, busy):
        @tracker.gpu_task("yourtts")
        def chunks(n: int) -> Iterator[int]:
            for i in range(n):
                clock.advance(0.25)
                yield i
            return None

        assert inspect.isgeneratorfunction(chunks)
        gen = chunks(4)
        clock.advance(5)  # created, not started: not in the task
        assert tracker.stats("yourtts").active_tasks == 0
        assert next(gen) == 0
        assert tracker.stats("yourtts").active_tasks == 1
        clock.advance(0.5)  # the consumer's time between items is in the task
        assert list(gen) == [1, 2, 3]
        stats = tracker.stats("yourtts")
        assert (stats.task_count, stats.active_tasks) == (1, 0)

    def test_generator_return_value_send_and_throw_pass_through(self, tracker):
        @tracker.gpu_task("g")
        def echo() -> Iterator[object]:
            received = yield "ready"
            try:
                yield f"got {received}"
            except ValueError as exc:
                yield f"caught {exc}"
            return "done"

        gen = echo()
        assert next(gen) == "ready"
        assert gen.send(5) == "got 5"
        assert gen.throw(ValueError("x")) == "caught x"
        with pytest.raises(StopIteration) as stop:
            next(gen)
        assert stop.value.value == "done"
        assert tracker.stats("g").task_count == 1

    def test_generator_closed_early_ends_the_task(self, tracker):
        @tracker.gpu_task("g")
        def forever() -> Iterator[int]:
            i = 0
            while True:
                yield i
                i += 1

        gen = forever()
        next(gen)
        gen.close()
        assert tracker.stats("g").task_count == 1
        assert tracker.stats("g").active_tasks == 0

    def test_generator_raising_ends_the_task_and_propagates(self, tracker):
        error = RuntimeError("stream broke")

        @tracker.gpu_task("g")
        def broken() -> Iterator[int]:
            yield 1
            raise error

        with pytest.raises(RuntimeError) as caught:
            list(broken())
        assert caught.value is error
        assert tracker.stats("g").task_count == 1

    def test_async_generator(self, tracker, clock, busy):
        @tracker.gpu_task("stream")
        async def stream(n: int) -> AsyncIterator[int]:
            for i in range(n):
                clock.advance(0.5)
                await asyncio.sleep(0)
                yield i

        assert inspect.isasyncgenfunction(stream)

        async def consume() -> list[int]:
            return [i async for i in stream(4)]

        assert asyncio.run(consume()) == [0, 1, 2, 3]
        stats = tracker.stats("stream")
        assert (stats.task_count, stats.active_tasks) == (1, 0)

    def test_async_generator_asend_athrow_aclose(self, tracker):
        @tracker.gpu_task("stream")
        async def echo() -> AsyncIterator[object]:
            received = yield "ready"
            try:
                yield f"got {received}"
            except ValueError:
                yield "caught"
            yield "more"

        async def drive() -> list[object]:
            agen = echo()
            out = [await agen.__anext__(), await agen.asend(3), await agen.athrow(ValueError())]
            await agen.aclose()
            return out

        assert asyncio.run(drive()) == ["ready", "got 3", "caught"]
        assert tracker.stats("stream").task_count == 1
        assert tracker.stats("stream").active_tasks == 0

    def test_async_generator_raising(self, tracker):
        @tracker.gpu_task("stream")
        async def broken() -> AsyncIterator[int]:
            yield 1
            raise KeyError("k")

        async def consume() -> None:
            async for _ in broken():
                pass

        with pytest.raises(KeyError):
            asyncio.run(consume())
        assert tracker.stats("stream").task_count == 1


class TestMethods:
    def test_instance_class_and_static_methods(self, tracker: Tracker):
        class Service:
            factor = 3

            @tracker.gpu_task("m")
            def instance(self, x: int) -> int:
                return x * self.factor

            @tracker.gpu_task("m")
            @classmethod
            def klass(cls, x: int) -> int:
                return x * cls.factor

            @classmethod
            @tracker.gpu_task("m")
            def klass_inner(cls, x: int) -> int:
                return x + cls.factor

            @tracker.gpu_task("m")
            @staticmethod
            def static(x: int) -> int:
                return x + 1

            @tracker.gpu_task("m")
            async def coro(self, x: int) -> int:
                return x * self.factor

        svc = Service()
        assert svc.instance(2) == 6
        assert Service.klass(2) == 6
        assert svc.klass(2) == 6
        assert Service.klass_inner(2) == 5
        assert Service.static(2) == 3
        assert svc.static(2) == 3
        assert asyncio.run(svc.coro(2)) == 6
        assert inspect.iscoroutinefunction(Service.coro)
        assert tracker.stats("m").task_count == 7


class TestContextManager:
    def test_with_binds_a_handle(self, tracker, clock, busy):
        with tracker.gpu_task("tts") as task:
            assert task.service == "tts"
            assert task.running
            clock.advance(0.5)
        assert task.gpu_ms == pytest.approx(500.0)
        assert task.energy_mj is None
        assert "tts" in repr(task)

    def test_async_with(self, tracker, clock, busy):
        async def main() -> gputime.TaskHandle:
            async with tracker.gpu_task("tts") as task:
                clock.advance(0.5)
                await asyncio.sleep(0)
            return task

        task = asyncio.run(main())
        assert task.gpu_ms == pytest.approx(500.0)
        assert task.status == "ok"

    def test_one_object_reentered_nested_and_concurrently(self, tracker, clock, busy):
        shared = gpu_task("tts", tracker=tracker)
        with shared as outer:
            clock.advance(0.5)
            with shared as inner:
                clock.advance(0.5)
            clock.advance(0.5)
        assert inner.gpu_ms == pytest.approx(500.0)
        assert outer.gpu_ms == pytest.approx(1500.0)

        async def use(delay: float) -> float:
            async with shared as task:
                await asyncio.sleep(delay)
            return task.duration

        async def main() -> list[float]:
            return list(await asyncio.gather(use(0.01), use(0.0), use(0.02)))

        asyncio.run(main())
        assert tracker.stats("tts").task_count == 5

    def test_user_exception_propagates_unchanged(self, tracker):
        error = ValueError("job failed")
        with (
            pytest.raises(ValueError, match="job failed") as caught,
            tracker.gpu_task("tts") as task,
        ):
            raise error
        assert caught.value is error
        assert task.error is error
        assert tracker.stats("tts").task_count == 1

    def test_cancellation_ends_the_task(self, tracker):
        started = asyncio.Event()

        @tracker.gpu_task("tts")
        async def slow() -> None:
            started.set()
            await asyncio.sleep(60)

        async def main() -> None:
            job = asyncio.create_task(slow())
            await started.wait()
            job.cancel()
            with pytest.raises(asyncio.CancelledError):
                await job

        asyncio.run(main())
        stats = tracker.stats("tts")
        assert (stats.task_count, stats.active_tasks) == (1, 0)

    def test_keyboard_interrupt_ends_the_task(self, tracker):
        with pytest.raises(KeyboardInterrupt), tracker.gpu_task("tts") as task:
            raise KeyboardInterrupt
        assert task.error is None
        assert tracker.stats("tts").task_count == 1


class TestContexts:
    def test_with_block_in_a_generator_stepped_in_copied_contexts(self, tracker, clock):
        # Starlette's iterate_in_threadpool steps sync generators this way.
        def stream() -> Iterator[int]:
            with tracker.gpu_task("tts"):
                for i in range(3):
                    clock.advance(0.1)
                    yield i

        gen = stream()
        assert [contextvars.copy_context().run(next, gen) for _ in range(3)] == [0, 1, 2]
        with pytest.raises(StopIteration):
            contextvars.copy_context().run(next, gen)
        stats = tracker.stats("tts")
        assert (stats.task_count, stats.active_tasks) == (1, 0)

    def test_async_generator_stepped_from_different_tasks(self, tracker, clock):
        async def stream() -> AsyncIterator[int]:
            async with tracker.gpu_task("agen"):
                for i in range(2):
                    clock.advance(0.1)
                    yield i

        async def main() -> list[int]:
            agen = stream()
            out = [await asyncio.create_task(agen.__anext__()) for _ in range(2)]
            with pytest.raises(StopAsyncIteration):
                await asyncio.create_task(agen.__anext__())
            return out

        assert asyncio.run(main()) == [0, 1]
        assert tracker.stats("agen").task_count == 1

    def test_exit_without_enter_is_ignored(self, tracker):
        gpu_task("x", tracker=tracker).__exit__(None, None, None)
        assert tracker.stats() == {}


class TestCallableObjects:
    def test_async_call_is_measured_over_the_await(self, tracker, clock, busy):
        class Model:
            async def __call__(self, seconds: float) -> str:
                await asyncio.sleep(0)
                clock.advance(seconds)
                return "done"

        job = tracker.gpu_task("obj")(Model())
        assert asyncio.run(job(1.0)) == "done"
        clock.advance(1)
        tracker.poll()
        assert tracker.stats("obj").gpu_ms == pytest.approx(1000.0)

    def test_generator_call_and_async_partial(self, tracker, clock, busy):
        class Stream:
            def __call__(self, n: int) -> Iterator[int]:
                for i in range(n):
                    clock.advance(0.5)
                    yield i

        async def synth(seconds: float) -> float:
            clock.advance(seconds)
            await asyncio.sleep(0)
            return seconds

        assert list(tracker.gpu_task("gen")(Stream())(2)) == [0, 1]
        assert asyncio.run(tracker.gpu_task("part")(functools.partial(synth, 0.5))()) == 0.5
        clock.advance(1)
        tracker.poll()
        assert tracker.stats("gen").gpu_ms == pytest.approx(1000.0)
        assert tracker.stats("part").gpu_ms == pytest.approx(500.0)


class TestDefaultTracker:
    def test_module_level_api_uses_the_default_tracker(self, clock: FakeClock):
        gpu = SimulatedGpu(clock=clock)
        tracker = gputime.configure(backend=gpu, threaded=False)
        assert gputime.get_tracker() is tracker
        gpu.set_utilization(100)

        @gpu_task("nmt")
        def job() -> None:
            clock.advance(1)

        job()
        assert gputime.stats("nmt").gpu_ms == pytest.approx(1000.0)
        assert set(gputime.stats()) == {"nmt"}
        gputime.reset("nmt")
        assert gputime.stats("nmt").gpu_ms == 0
        gputime.reset()

    def test_decorated_functions_follow_configure(self, clock: FakeClock):
        @gpu_task("nmt")
        def job() -> None:
            pass

        first = gputime.configure(backend=SimulatedGpu(clock=clock), threaded=False)
        job()
        second = gputime.configure(backend="none", threaded=False)
        job()
        assert first.closed
        assert first.stats("nmt").task_count == 1
        assert second.stats("nmt").task_count == 1
        assert second.stats("nmt").status == "unavailable"

    def test_listeners_of_the_default_tracker_survive_configure(self, clock: FakeClock):
        started: list[str] = []
        ended: list[str] = []
        # Registered at import time, before the application configures gputime.
        first = gputime.get_tracker()
        first.on_task_start(lambda task: started.append(task.service))
        first.on_task_end(lambda task: ended.append(task.service))
        gputime.configure(backend=SimulatedGpu(clock=clock), threaded=False)
        with gpu_task("nmt"):
            pass
        assert (started, ended) == (["nmt"], ["nmt"])
        # A tracker made directly starts with no listeners.
        with Tracker(backend="none") as own, own.gpu_task("tts"):
            pass
        assert ended == ["nmt"]

    def test_default_is_created_lazily_with_auto(self, caplog):
        tracker = gputime.get_tracker()
        assert gputime.get_tracker() is tracker
        assert tracker.backend.name in ("none", "nvml")


def test_wrapper_works_with_functools_partial_and_lambda(tracker):
    job = tracker.gpu_task("p")(functools.partial(pow, 2))
    assert job(5) == 32
    assert tracker.gpu_task("p")(lambda: 1)() == 1
    assert tracker.stats("p").task_count == 2


def test_import_loads_neither_wrapt_nor_asyncio_nor_the_metrics_api():
    # Each is imported when first needed: wrapt for callables that are not
    # plain functions, the metrics API when the first tracker is made. What the
    # tracing API loads by itself is not gputime's doing (older releases of
    # opentelemetry-api import wrapt themselves, through `deprecated`).
    code = (
        "import sys, functools\n"
        "names = ('wrapt', 'asyncio', 'opentelemetry.metrics')\n"
        "import opentelemetry.context, opentelemetry.trace\n"
        "by_api = {m for m in names if m in sys.modules}\n"
        "import gputime\n"
        "early = [m for m in names if m in sys.modules and m not in by_api]\n"
        "assert not early, early\n"
        "gputime.gpu_task('svc')(functools.partial(print))\n"
        "assert 'wrapt' in sys.modules\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_import_loads_no_opentelemetry_and_no_backend_until_the_first_tracker():
    # The tracker's machinery (OpenTelemetry, the backends, the ledger) costs
    # more to import than the rest of gputime: it comes with the first tracker.
    code = (
        "import sys\n"
        "import gputime\n"
        "from gputime import gpu_task, BackendUnavailable, ServiceStats\n"
        "heavy = ('opentelemetry', 'gputime._tracker', 'gputime._backends')\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(heavy))\n"
        "assert not loaded, loaded\n"
        "@gpu_task('svc')\n"
        "def job():\n"
        "    return 7\n"
        "assert 'opentelemetry.trace' not in sys.modules  # decorating makes no tracker\n"
        "from gputime import Tracker\n"
        "assert gputime.Tracker is Tracker and 'Tracker' in dir(gputime)\n"
        "assert 'opentelemetry.trace' in sys.modules\n"
        "gputime.configure(backend='none')\n"
        "assert job() == 7 and gputime.stats('svc').task_count == 1\n"
        "try:\n"
        "    gputime.Trackre\n"
        "except AttributeError as exc:\n"
        "    assert 'Trackre' in str(exc)\n"
        "else:\n"
        "    raise AssertionError('no error for a misspelt name')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
