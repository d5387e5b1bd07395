"""Tasks in asyncio tasks and thread pools: the figures, and whose child each span is.

gputime's figures need no context: one tracker per process is shared by every
thread and asyncio task, and a task is measured wherever it runs. The *span* of a
task is a child of the span current where the task starts, and "current" lives in
a ``contextvars`` context, which asyncio tasks and ``asyncio.to_thread`` copy for
you but ``loop.run_in_executor`` and ``ThreadPoolExecutor.submit`` do not
(docs/recipes/concurrency.md).

The demo runs a request span with five tasks inside, in each of those ways, and
a batch span handing one to a thread pool, then prints the span tree: the task
started without the context is a root span, a trace of its own.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import gputime
from gputime import gpu_task
from gputime.testing import SimulatedGpu

GPU = SimulatedGpu()
_busy = 0
_lock = threading.Lock()


def run_model(seconds: float) -> None:
    """Stand-in for a blocking model call; tasks on several threads overlap."""
    global _busy
    with _lock:
        _busy += 1
        GPU.set_utilization(90)
    time.sleep(seconds)
    with _lock:
        _busy -= 1
        if _busy == 0:
            GPU.set_utilization(0)


@gpu_task("embed")
async def embed(text: str) -> list[float]:
    """An async task: ``await`` the blocking part in a thread."""
    await asyncio.to_thread(run_model, 0.05)
    return [float(len(text))]


@gpu_task("translate")
def translate(text: str) -> str:
    """A blocking task, for thread pools."""
    run_model(0.05)
    return text[::-1]


async def handle_request(pool: ThreadPoolExecutor) -> None:
    loop = asyncio.get_running_loop()
    with trace.get_tracer("app").start_as_current_span("request"):
        # asyncio tasks copy the context when they are created: children.
        await asyncio.gather(embed("a"), embed("bb"))
        # asyncio.to_thread copies it too: a child.
        await asyncio.to_thread(translate, "to_thread")
        # run_in_executor does not: this task's span starts a trace of its own...
        await loop.run_in_executor(pool, translate, "run_in_executor")
        # ...unless the call runs in a copy of the context: a child.
        context = contextvars.copy_context()
        await loop.run_in_executor(pool, context.run, translate, "copied context")
    # Plain threads: the same rule. Copy the context where the work is handed over.
    with trace.get_tracer("app").start_as_current_span("batch"):
        context = contextvars.copy_context()
        pool.submit(context.run, translate, "submit").result()


def print_tree(spans: list[ReadableSpan]) -> None:
    by_parent: dict[int | None, list[ReadableSpan]] = {}
    for span in sorted(spans, key=lambda s: s.start_time or 0):
        parent = span.parent.span_id if span.parent else None
        by_parent.setdefault(parent, []).append(span)

    def show(span: ReadableSpan, depth: int) -> None:
        print(f"{'    ' * depth}{span.name}")
        for child in by_parent.get(span.context.span_id if span.context else None, []):
            show(child, depth + 1)

    for root in by_parent.get(None, []):
        show(root, 0)


def main() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    gputime.configure(backend=GPU)  # the simulated GPU; leave out on a GPU machine

    with ThreadPoolExecutor(max_workers=2) as pool:
        asyncio.run(handle_request(pool))
    print_tree(list(exporter.get_finished_spans()))
    # Service totals settle once the driver's sample covering the end is read.
    time.sleep(2 * GPU.sample_period)
    gputime.get_tracker().poll()
    for service, figures in gputime.stats().items():
        print(f"{service:10} tasks {figures.task_count}  GPU {figures.gpu_ms:6.1f} ms")


if __name__ == "__main__":
    main()
