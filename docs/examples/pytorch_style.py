"""PyTorch-style inference: CUDA work is asynchronous, so synchronise inside the task.

A CUDA kernel launch returns at once; the GPU runs the kernel later, from a
queue (the stream). ``model(x)`` in PyTorch returns as soon as its kernels are
*queued*. A task that ends right after it ends before the GPU did the work: its
window misses the work, which then counts for nothing (or for whichever service
happens to be running). ``torch.cuda.synchronize()`` (or anything that waits for
the result: ``.item()``, ``.cpu()``, ``.tolist()``) inside the task keeps the
window open until the GPU is done (docs/recipes/pytorch.md).

No PyTorch here: ``FakeCuda`` stands in for the CUDA stream, running queued
kernels on a simulated GPU in a thread of its own. The demo runs the same
forward pass as two tasks, without and with the synchronisation.
"""

from __future__ import annotations

import queue
import threading
import time

import gputime
from gputime import gpu_task
from gputime.testing import SimulatedGpu

GPU = SimulatedGpu()


class FakeCuda:
    """One CUDA stream: kernels run in order, after the launch returned."""

    def __init__(self) -> None:
        self._queue: queue.Queue[float] = queue.Queue()
        threading.Thread(target=self._run, daemon=True, name="fake-cuda-stream").start()

    def launch(self, kernel_s: float) -> None:
        """Queue a kernel; returns at once, like a CUDA launch."""
        self._queue.put(kernel_s)

    def synchronize(self) -> None:
        """Wait until every queued kernel ran, like ``torch.cuda.synchronize()``."""
        self._queue.join()

    def _run(self) -> None:
        while True:
            kernel_s = self._queue.get()
            GPU.set_utilization(100)
            time.sleep(kernel_s)
            GPU.set_utilization(0)
            self._queue.task_done()


cuda = FakeCuda()


def forward(batch: list[str]) -> None:
    """``model(batch)``: three layers, each one kernel launch; returns before they ran."""
    for _ in range(3):
        cuda.launch(0.1)


@gpu_task("nmt-unsynchronised")
def translate_without_sync(batch: list[str]) -> None:
    forward(batch)  # the task ends here, with the kernels still queued


@gpu_task("nmt")
def translate(batch: list[str]) -> None:
    forward(batch)
    cuda.synchronize()  # the task ends when the GPU is done: torch.cuda.synchronize()


def main() -> None:
    gputime.configure(backend=GPU)  # the simulated GPU; leave out on a GPU machine

    start = time.monotonic()
    with gpu_task("nmt-unsynchronised") as task:
        forward(["hello"])
    print(f"without synchronize(): task {task.duration * 1000:5.1f} ms, {task.gpu_ms:5.1f} GPU ms")
    cuda.synchronize()  # (outside any task: the 300 ms of kernels count for nothing)
    print(f"  the GPU was busy {(time.monotonic() - start) * 1000:.0f} ms meanwhile")

    with gpu_task("nmt") as task:
        forward(["hello"])
        cuda.synchronize()
    print(f"with synchronize():    task {task.duration * 1000:5.1f} ms, {task.gpu_ms:5.1f} GPU ms")

    # The decorated forms of the same two.
    translate_without_sync(["hello"])
    cuda.synchronize()
    translate(["hello"])

    time.sleep(2 * GPU.sample_period)  # service totals settle with the next sample
    gputime.get_tracker().poll()
    for service, figures in gputime.stats().items():
        print(f"{service:20} tasks {figures.task_count}  GPU {figures.gpu_ms:6.1f} ms")


if __name__ == "__main__":
    main()
