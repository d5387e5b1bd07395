"""Token streaming: a decorated generator is one task from its first token to its last.

A decorated generator (or async generator) function makes one task per
generator: it starts at the first ``next()`` (not when the generator object is
made) and ends when the generator is exhausted, or closed early: a consumer that
stops reading (a client that hangs up) closes it, which ends the task, without
an error. The task's window includes the time the consumer holds the generator
between tokens; its span is current only while the generator body runs
(docs/recipes/streaming.md).

The demo streams three replies and prints each task's figures as it ends. In
the third, the consumer takes as long per token as the GPU does: the GPU is busy
in every driver sample period of the task, so ``gpu_ms`` is about the task's
whole duration while ``gpu_util_ms``, weighted by utilisation, is about half.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import gputime
from gputime import TaskHandle, gpu_task
from gputime.testing import SimulatedGpu

GPU = SimulatedGpu()
TOKEN_S = 0.02  # GPU time per token


def decode_step() -> None:
    """Stand-in for one decoding step of a language model on the GPU."""
    GPU.set_utilization(100)
    time.sleep(TOKEN_S)
    GPU.set_utilization(0)


@gpu_task("llm")
def generate(prompt: str, max_tokens: int = 8) -> Iterator[str]:
    for i in range(max_tokens):
        decode_step()
        yield f"{prompt}-{i}"


@gpu_task("llm-async")
async def agenerate(prompt: str, max_tokens: int = 8) -> AsyncIterator[str]:
    for i in range(max_tokens):
        await asyncio.to_thread(decode_step)
        yield f"{prompt}-{i}"


def on_end(task: TaskHandle) -> None:
    print(
        f"  task ended: {task.service}, {task.duration * 1000:.0f} ms long, "
        f"{task.gpu_ms:.0f} GPU ms, {task.gpu_util_ms:.0f} util ms, {task.status}"
    )


async def consume_slowly() -> list[str]:
    tokens = []
    async for token in agenerate("c", max_tokens=4):
        tokens.append(token)
        await asyncio.sleep(TOKEN_S)  # sending it to the client: the GPU idles meanwhile
    return tokens


def main() -> None:
    tracker = gputime.configure(backend=GPU)  # the simulated GPU; leave out on a GPU machine
    tracker.on_task_end(on_end)

    print("a) read to the end:")
    stream = generate("a")  # no task yet: it starts at the first next()
    print("  ", " ".join(stream))

    print("b) the client hangs up after three tokens:")
    stream = generate("b")
    for n, token in enumerate(stream):
        print("  ", token)
        if n == 2:
            break
    stream.close()  # what a server does when the client is gone (else the GC does it)

    print("c) an async generator, the consumer slow between tokens:")
    print("  ", " ".join(asyncio.run(consume_slowly())))

    time.sleep(2 * GPU.sample_period)  # service totals settle with the next sample
    tracker.poll()
    for service, figures in gputime.stats().items():
        print(
            f"{service:10} tasks {figures.task_count}  GPU {figures.gpu_ms:6.1f} ms  "
            f"util {figures.gpu_util_ms:6.1f} ms"
        )


if __name__ == "__main__":
    main()
