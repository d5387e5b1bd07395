"""Memory per task over a million tasks: flat, whatever the number of tasks.

Run it as ``python benchmarks/memory.py [--tasks N] [--checkpoints K]``. It prints
and never asserts. For each workload it runs ``N`` tasks (1,000,000 by default)
under :mod:`tracemalloc`, takes the traced memory at ``K`` evenly spaced
checkpoints after a warm-up of ``N / K`` tasks, and reports:

* **bytes per task**: the growth from the first checkpoint to the last, divided by
  the tasks run in between (0 means flat: nothing is kept per task);
* the traced memory at the first and last checkpoints (the workload's tracker and
  working set, imports excluded), the largest swing between checkpoints (lists the
  ledger prunes when they double grow and shrink, so memory saws between bounds)
  and the peak.

Workloads (the task handles are dropped as they end, as a server drops them):

* ``sequential``: one ``with`` block after another on a ``SimulatedGpu`` with a fake
  clock moving 1 ms per task (so windows open and close, samples are read, the
  driver's timeline moves on);
* ``overlapping``: the same, with a long task of the service always running and
  four services taking turns;
* ``split+faults``: attribution ``split``, a read fault every 1000 tasks, resets
  every 10,000;
* ``default, no GPU``: the process-wide default tracker with no GPU (``"none"``),
  decorated function calls.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import logging
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

Step = Callable[[int], None]


def sequential() -> Step:
    from gputime import Tracker
    from gputime.testing import FakeClock, SimulatedGpu

    clock = FakeClock(1.0)
    gpu = SimulatedGpu(2, clock=clock)
    gpu.set_utilization(70)
    tracker = Tracker(backend=gpu, threaded=False)

    def step(i: int) -> None:
        with tracker.gpu_task("svc"):
            clock.advance(0.001)
        if i % 1000 == 0:
            gpu.set_utilization(i % 100, device=1)

    return step


def overlapping() -> Step:
    from gputime import Tracker
    from gputime.testing import FakeClock, SimulatedGpu

    clock = FakeClock(1.0)
    gpu = SimulatedGpu(2, clock=clock)
    gpu.set_utilization(70)
    tracker = Tracker(backend=gpu, threaded=False)
    services = ("a", "b", "c", "d")
    long_running = [tracker.gpu_task(s).__enter__() for s in services]
    assert len(long_running) == len(services)

    def step(i: int) -> None:
        with tracker.gpu_task(services[i % 4]):
            clock.advance(0.001)
        if i % 500 == 0:
            tracker.poll()

    return step


def split_and_faults() -> Step:
    from gputime import Tracker
    from gputime.testing import FakeClock, SimulatedGpu

    clock = FakeClock(1.0)
    gpu = SimulatedGpu(2, clock=clock)
    gpu.set_utilization(70)
    tracker = Tracker(backend=gpu, threaded=False, attribution="split")
    services = ("a", "b", "c")

    def step(i: int) -> None:
        with tracker.gpu_task(services[i % 3]), tracker.gpu_task(services[(i + 1) % 3]):
            clock.advance(0.001)
        if i % 1000 == 0:
            gpu.fail_reads(1)
        if i % 10_000 == 0:
            tracker.reset()

    return step


def default_no_gpu() -> Step:
    import gputime

    gputime.configure(backend="none")  # no GPU, and no warning: none was asked for

    @gputime.gpu_task("svc")
    def job() -> None:
        return None

    def step(i: int) -> None:
        job()

    return step


WORKLOADS: dict[str, Callable[[], Step]] = {
    "sequential": sequential,
    "overlapping": overlapping,
    "split+faults": split_and_faults,
    "default, no GPU": default_no_gpu,
}


def measure(make: Callable[[], Step], tasks: int, checkpoints: int) -> dict[str, float]:
    gc.collect()
    tracemalloc.start()
    step = make()
    every = max(1, tasks // (checkpoints + 1))
    points: list[int] = []
    started = time.perf_counter()
    for i in range(tasks):
        step(i)
        if (i + 1) % every == 0:
            gc.collect()
            points.append(tracemalloc.get_traced_memory()[0])
    elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    measured_tasks = every * (len(points) - 1)
    swings = [abs(b - a) for a, b in itertools.pairwise(points)]
    return {
        "bytes_per_task": (points[-1] - points[0]) / measured_tasks,
        "first_kib": points[0] / 1024,
        "last_kib": points[-1] / 1024,
        "largest_swing_kib": max(swings, default=0) / 1024,
        "peak_kib": peak / 1024,
        "seconds": elapsed,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--checkpoints", type=int, default=10)
    args = parser.parse_args(argv)
    # The injected read faults are logged once (a warning): not the point here.
    logger = logging.getLogger("gputime")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        return _run(args.tasks, args.checkpoints)
    finally:
        logger.setLevel(level)


def _run(tasks: int, checkpoints: int) -> int:
    import gputime.testing

    for make in WORKLOADS.values():
        make()(0)  # imports (some are lazy) happen here, untraced: not part of any workload

    warm_up = tasks // (checkpoints + 1)
    print(
        f"python {sys.version.split()[0]}, gputime {gputime.__version__}, {tasks:,} tasks "
        f"per workload, {checkpoints} checkpoints after a warm-up of {warm_up:,}"
    )
    print(
        f"{'workload':<18}{'bytes/task':>11}{'first KiB':>11}{'last KiB':>10}"
        f"{'swing KiB':>11}{'peak KiB':>10}{'seconds':>9}"
    )
    for name, make in WORKLOADS.items():
        r = measure(make, tasks, checkpoints)
        print(
            f"{name:<18}{r['bytes_per_task']:>11.4f}{r['first_kib']:>11.1f}{r['last_kib']:>10.1f}"
            f"{r['largest_swing_kib']:>11.1f}{r['peak_kib']:>10.1f}{r['seconds']:>9.1f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
