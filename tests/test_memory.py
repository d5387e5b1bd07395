"""Memory does not grow with the number of tasks (a cheap check; ``benchmarks/memory.py`` measures).

Traced memory is sampled every 1000 tasks. The ledger prunes its lists when they
double, so memory saws between bounds; a leak of even one small object per task
(tens of bytes) over the 16,000 tasks between the two windows compared would
add hundreds of KiB, far above the allowance.
"""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Callable, Iterator

import pytest

from gputime import Tracker
from gputime.testing import FakeClock, SimulatedGpu

EVERY = 1000
ALLOWANCE = 64 * 1024


def traced_peaks(step: Callable[[int], None], checkpoints: int) -> list[int]:
    """Traced memory after each block of ``EVERY`` tasks."""
    for i in range(2 * EVERY):  # warm-up, before tracing: caches, first services
        step(i)
    gc.collect()
    tracemalloc.start()
    try:
        points = []
        for block in range(checkpoints):
            for i in range(EVERY):
                step((block + 2) * EVERY + i)
            gc.collect()
            points.append(tracemalloc.get_traced_memory()[0])
        return points
    finally:
        tracemalloc.stop()


def workloads(clock: FakeClock, gpu: SimulatedGpu) -> Iterator[Callable[[int], None]]:
    sequential = Tracker(backend=gpu, threaded=False)

    def one_after_another(i: int) -> None:
        with sequential.gpu_task("svc"):
            clock.advance(0.001)

    yield one_after_another

    split = Tracker(backend=gpu, threaded=False, attribution="split")
    held = split.gpu_task("held").__enter__()
    assert held.running

    @split.gpu_task("gen")
    def stream() -> Iterator[int]:
        yield 1
        yield 2

    def overlapping_generators_faults(i: int) -> None:
        with split.gpu_task(("a", "b", "c")[i % 3]):
            assert list(stream()) == [1, 2]
            clock.advance(0.001)
        if i % 100 == 0:
            gpu.fail_reads(1)
            split.poll()
        if i % 5000 == 0:
            split.reset()

    yield overlapping_generators_faults


@pytest.mark.parametrize("workload", [0, 1], ids=["sequential", "overlapping-generators-faults"])
def test_memory_does_not_grow_with_the_number_of_tasks(workload: int):
    clock = FakeClock(1.0)
    gpu = SimulatedGpu(2, clock=clock)
    gpu.set_utilization(60)
    step = list(workloads(clock, gpu))[workload]
    points = traced_peaks(step, checkpoints=22)
    first, last = max(points[2:6]), max(points[18:22])
    assert last - first < ALLOWANCE, [p // 1024 for p in points]
