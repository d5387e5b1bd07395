"""Checked by ``mypy --strict`` and by pyright (not run by pytest): signatures survive.

Each ``assert_type`` fails type checking if ``gpu_task`` lost the original
signature, and the ``type: ignore[...]`` lines fail it (as unused ignores: mypy's
``warn_unused_ignores``, pyright's setting below) if a wrong call stopped being an
error. ``.ci/run`` runs both.
"""

# pyright: reportUnnecessaryTypeIgnoreComment=true

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Coroutine, Generator, Iterator
from typing import Any, Literal

from matplotlib.figure import Figure
from typing_extensions import assert_type

import gputime
from gputime import (
    DeviceFigures,
    DeviceSample,
    ServiceStats,
    TaskHandle,
    TaskWindow,
    Timeline,
    Tracker,
    gpu_task,
)


@gpu_task("nmt")
def translate(text: str, *, beam: int = 4) -> list[str]:
    return [text] * beam


@gpu_task("tts")
async def synth(text: str) -> bytes:
    return text.encode()


@gpu_task("yourtts")
def stream(n: int) -> Generator[int, str, bool]:
    yield n
    return True


@gpu_task("yourtts")
def chunks(n: int) -> Iterator[int]:
    yield n


@gpu_task("yourtts")
async def astream(n: int) -> AsyncIterator[int]:
    yield n


class Service:
    @gpu_task("m")
    def method(self, x: int) -> str:
        return str(x)


def check() -> None:
    assert_type(translate("hi", beam=2), list[str])
    translate(3)  # type: ignore[arg-type]
    translate("hi", beam="2")  # type: ignore[arg-type]
    coroutine = assert_type(synth("hi"), Coroutine[Any, Any, bytes])
    coroutine.close()
    assert_type(stream(3), Generator[int, str, bool])
    assert_type(chunks(3), Iterator[int])
    assert_type(astream(3), AsyncIterator[int])
    assert_type(Service().method(3), str)
    Service().method("3")  # type: ignore[arg-type]

    with gpu_task("tts") as task:
        assert_type(task, TaskHandle)
        assert_type(task.gpu_ms, float)
        assert_type(task.energy_mj, float | None)

    tracker = Tracker(backend="none", interval=0.5, threaded=False)
    assert_type(tracker.stats(), dict[str, ServiceStats])
    assert_type(tracker.stats("nmt"), ServiceStats)
    assert_type(gputime.stats(), dict[str, ServiceStats])
    assert_type(gputime.stats("nmt"), ServiceStats)
    assert_type(gputime.configure(backend="none"), Tracker)

    @tracker.on_task_end
    def listener(task: TaskHandle) -> None:
        pass

    listener(task)
    tracker.on_task_start(lambda t: print(t.service))

    started = gputime.start_task("nmt", name="job", attributes={"job.id": 7})
    assert_type(started, TaskHandle)
    assert_type(started.end(), None)
    with tracker.start_task("tts") as block:
        assert_type(block, TaskHandle)
    assert_type(block.devices, dict[str, DeviceFigures])
    assert_type(
        tracker.stats("nmt").devices["GPU-0"].status, Literal["ok", "partial", "unavailable"]
    )
    gputime.configure(backend="none", metrics_per_device=True)

    timeline = tracker.record_timeline(max_tasks=100)
    assert_type(timeline, Timeline)
    assert_type(tracker.timeline, Timeline | None)
    assert_type(tracker.stop_timeline(), Timeline | None)
    assert_type(timeline.tasks(), list[TaskWindow])
    assert_type(timeline.tasks()[0].end, float | None)
    assert_type(timeline.samples("SIM-0")[0].value, float | None)
    assert_type(timeline.samples()[0], DeviceSample)
    assert_type(timeline.to_trace(), dict[str, Any])
    assert_type(timeline.plot(), Figure)
    Tracker(backend="none", timeline=Timeline(max_samples=1000))
    gputime.configure(backend="none", timeline=True)


async def acheck() -> None:
    async with gpu_task("tts") as task:
        assert_type(task, TaskHandle)
    gen: AsyncGenerator[int, None] | AsyncIterator[int] = astream(1)
    del gen


def celery_check(app: object) -> None:
    from gputime.integrations.celery import CeleryInstrumentation, instrument, uninstrument

    def choose(task: Any) -> str | None:
        return None

    instrumentation = instrument(app, service=choose, tasks="opt-in", tracker=None)
    assert_type(instrumentation, CeleryInstrumentation)
    assert_type(instrumentation.running, int)
    assert_type(instrumentation.uninstrument(), None)
    instrument(service="gpu-worker").uninstrument()
    uninstrument()
    instrument(app, tasks="some")  # type: ignore[arg-type]
    instrument(app, servce="nmt")  # type: ignore[call-arg]


def misspelt_arguments_are_type_errors() -> None:
    # Spelled-out keywords: a misspelt one fails type checking, not only at run time.
    gputime.configure(intervall=0.5)  # type: ignore[call-arg]
    Tracker(backend="none").gpu_task("nmt", nmae="x")  # type: ignore[call-arg]
    Tracker(backend="none", timeline="yes")  # type: ignore[arg-type]
    Timeline(max_task=5)  # type: ignore[call-arg]
    assert_type(Tracker(backend="none").gpu_task("nmt", name="x", span=False), gpu_task)
