"""``gputime demo``: a small multi-service workload on a simulated GPU.

Four services share one simulated GPU, as in the desktop service manager
gputime grew out of: ``nmt`` (a decorated thread-pool job, two workers),
``tts`` (an ``async with`` block), ``yourtts`` (a decorated generator that
streams chunks) and ``rust`` (an external job runner that only offers start and
end callbacks). Each running job adds its load to the GPU's utilisation.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TextIO

from gputime._ledger import ServiceStats
from gputime._task import gpu_task
from gputime._tracker import Tracker
from gputime.testing import SimulatedGpu


class _SharedGpu:
    """Utilisation = the sum of the loads of the jobs running now, capped at 100 %."""

    def __init__(self, gpu: SimulatedGpu) -> None:
        self._gpu = gpu
        self._loads: dict[int, float] = {}
        self._lock = threading.Lock()
        self._next = 0

    def use(self, percent: float, seconds: float) -> None:
        with self._lock:
            key = self._next
            self._next += 1
            self._loads[key] = percent
            self._apply()
        time.sleep(seconds)
        with self._lock:
            del self._loads[key]
            self._apply()

    def _apply(self) -> None:
        self._gpu.set_utilization(min(100.0, sum(self._loads.values())))


class _CallbackRunner:
    """A job runner that only calls back on start and end (like the seed's Rust service)."""

    def __init__(self) -> None:
        self._on_start: Callable[[str], None] = lambda job: None
        self._on_end: Callable[[str], None] = lambda job: None

    def set_on_task_start_callback(self, callback: Callable[[str], None]) -> None:
        self._on_start = callback

    def set_on_task_end_callback(self, callback: Callable[[str], None]) -> None:
        self._on_end = callback

    def process_job(self, job: str, work: Callable[[], None]) -> None:
        self._on_start(job)
        try:
            work()
        finally:
            self._on_end(job)


def run_demo(
    seconds: float = 3.0, *, seed: int = 7, out: TextIO | None = None
) -> dict[str, ServiceStats]:
    """Run the workload for about ``seconds`` and print a per-service table.

    Returns:
        The final per-service figures.
    """
    rng = random.Random(seed)
    gpu = SimulatedGpu(devices=1, sample_period=1 / 6)
    shared = _SharedGpu(gpu)
    deadline = time.monotonic() + seconds
    with Tracker(backend=gpu, interval=0.1) as tracker:
        nmt_job = _nmt_job(tracker, shared)
        yourtts_stream = _yourtts_stream(tracker, shared)

        def nmt_worker(worker_rng: random.Random) -> None:
            while time.monotonic() < deadline:
                nmt_job(worker_rng.uniform(0.05, 0.4), worker_rng.choice((60.0, 100.0)))
                time.sleep(worker_rng.uniform(0.02, 0.3))

        def yourtts_worker() -> None:
            while time.monotonic() < deadline:
                for _chunk in yourtts_stream(rng.randint(2, 5)):
                    time.sleep(0.01)  # the consumer's time between chunks is in the task too
                time.sleep(0.2)

        def rust_worker() -> None:
            runner = _CallbackRunner()
            running: dict[str, gpu_task] = {}

            def started(job: str) -> None:
                running[job] = tracker.gpu_task("rust", name=f"rust {job}")
                running[job].__enter__()

            def ended(job: str) -> None:
                running.pop(job).__exit__(None, None, None)

            runner.set_on_task_start_callback(started)
            runner.set_on_task_end_callback(ended)
            n = 0
            while time.monotonic() < deadline:
                n += 1
                runner.process_job(f"job-{n}", lambda: shared.use(100.0, 0.25))
                time.sleep(0.35)

        async def tts_main() -> None:
            while time.monotonic() < deadline:
                async with tracker.gpu_task("tts"):
                    await asyncio.to_thread(shared.use, 80.0, 0.15)
                    await asyncio.sleep(0.05)  # post-processing on the CPU, still in the task
                await asyncio.sleep(0.25)

        with ThreadPoolExecutor(max_workers=4, thread_name_prefix="demo") as pool:
            futures = [
                pool.submit(nmt_worker, random.Random(seed + 1)),
                pool.submit(nmt_worker, random.Random(seed + 2)),
                pool.submit(yourtts_worker),
                pool.submit(rust_worker),
            ]
            asyncio.run(tts_main())
            for future in futures:
                future.result()
        # Let the sampler collect the samples covering the last task ends.
        time.sleep(gpu.sample_period + 0.15)
        tracker.poll()
        stats = tracker.stats()
    print_table(stats, out=out)
    print(
        "GPU ms: time the (simulated) GPU was busy during each service's tasks; services\n"
        "running at once each see the shared GPU (attribution 'device'). util ms: the same,\n"
        "weighted by utilisation. See README.md, 'What the figures mean'.",
        file=out,
    )
    return stats


def _nmt_job(tracker: Tracker, shared: _SharedGpu) -> Callable[[float, float], None]:
    @tracker.gpu_task("nmt")
    def translate(seconds: float, load: float) -> None:
        shared.use(load, seconds)

    return translate


def _yourtts_stream(tracker: Tracker, shared: _SharedGpu) -> Callable[[int], Iterator[int]]:
    @tracker.gpu_task("yourtts")
    def synthesize(chunks: int) -> Iterator[int]:
        for chunk in range(chunks):
            shared.use(50.0, 0.06)
            yield chunk

    return synthesize


def print_table(stats: dict[str, ServiceStats], *, out: TextIO | None = None) -> None:
    """Print the per-service figures as a fixed-width table."""
    header = (
        f"{'service':<10} {'tasks':>6} {'GPU ms':>10} {'util ms':>10} {'status':>9} {'coverage':>9}"
    )
    lines = [header, "-" * len(header)]
    for name in sorted(stats):
        s = stats[name]
        lines.append(
            f"{name:<10} {s.task_count:>6} {s.gpu_ms:>10.1f} {s.gpu_util_ms:>10.1f} "
            f"{s.status:>9} {s.coverage:>9.3f}"
        )
    print("\n".join(lines), file=out)
