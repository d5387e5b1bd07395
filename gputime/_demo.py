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
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TextIO

from gputime._figures import ServiceStats
from gputime._task import gpu_task
from gputime._tracker import Tracker
from gputime.testing import SimulatedGpu


class _SharedGpu:
    """Utilisation = the sum of the loads of the jobs running now, capped at 100 %."""

    def __init__(self, gpu: SimulatedGpu, stop: threading.Event) -> None:
        self._gpu = gpu
        self._stop = stop
        self._loads: dict[int, float] = {}
        self._lock = threading.Lock()
        self._next = 0

    def use(self, percent: float, seconds: float) -> None:
        with self._lock:
            key = self._next
            self._next += 1
            self._loads[key] = percent
            self._apply()
        self._stop.wait(seconds)  # a stop cuts the job short
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


#: Seconds between two calls of ``run_demo``'s ``progress`` callback.
PROGRESS_EVERY = 0.2


def run_demo(
    seconds: float = 3.0,
    *,
    seed: int = 7,
    out: TextIO | None = None,
    stop: threading.Event | None = None,
    progress: Callable[[float, Mapping[str, ServiceStats]], object] | None = None,
    tracker_options: Mapping[str, Any] | None = None,
    finish: Callable[[Tracker, dict[str, ServiceStats]], object] | None = None,
) -> dict[str, ServiceStats]:
    """Run the workload for about ``seconds`` and print a per-service table.

    Args:
        seconds: How long the workload runs.
        seed: Seed of the workload's random choices.
        out: Where the table goes (stdout if ``None``).
        stop: Set it (from a signal handler, another thread) to end the
            workload at once: running jobs are cut short, and no table is
            printed. It is set when the function returns.
        progress: Called about every 0.2 s with the seconds elapsed and the
            figures so far.
        tracker_options: Further keyword arguments for the demo's ``Tracker``.
        finish: Called with the tracker, still open, and the final figures
            once the workload ended (not where ``stop`` was set), before the
            table is printed: where the command line writes its output files.

    Returns:
        The final per-service figures (those so far, where ``stop`` was set).
    """
    stop = stop if stop is not None else threading.Event()
    rng = random.Random(seed)
    gpu = SimulatedGpu(devices=1, sample_period=1 / 6)
    shared = _SharedGpu(gpu, stop)
    began = time.monotonic()
    deadline = began + seconds

    def running() -> bool:
        return not stop.is_set() and time.monotonic() < deadline

    with Tracker(backend=gpu, interval=0.1, **dict(tracker_options or {})) as tracker:
        nmt_job = _nmt_job(tracker, shared)
        yourtts_stream = _yourtts_stream(tracker, shared)

        def nmt_worker(worker_rng: random.Random) -> None:
            while running():
                nmt_job(worker_rng.uniform(0.05, 0.4), worker_rng.choice((60.0, 100.0)))
                stop.wait(worker_rng.uniform(0.02, 0.3))

        def yourtts_worker() -> None:
            while running():
                for _chunk in yourtts_stream(rng.randint(2, 5)):
                    stop.wait(0.01)  # the consumer's time between chunks is in the task too
                stop.wait(0.2)

        def rust_worker() -> None:
            runner = _CallbackRunner()
            running_jobs: dict[str, gpu_task] = {}

            def started(job: str) -> None:
                running_jobs[job] = tracker.gpu_task("rust", name=f"rust {job}")
                running_jobs[job].__enter__()

            def ended(job: str) -> None:
                running_jobs.pop(job).__exit__(None, None, None)

            runner.set_on_task_start_callback(started)
            runner.set_on_task_end_callback(ended)
            n = 0
            while running():
                n += 1
                runner.process_job(f"job-{n}", lambda: shared.use(100.0, 0.25))
                stop.wait(0.35)

        async def tts_main() -> None:
            while running():
                async with tracker.gpu_task("tts"):
                    await asyncio.to_thread(shared.use, 80.0, 0.15)
                    await asyncio.sleep(0.05)  # post-processing on the CPU, still in the task
                await asyncio.sleep(0.25)

        async def report() -> None:
            while progress is not None and running():
                progress(time.monotonic() - began, tracker.stats())
                await asyncio.sleep(PROGRESS_EVERY)

        async def main() -> None:
            await asyncio.gather(tts_main(), report())

        with ThreadPoolExecutor(max_workers=4, thread_name_prefix="demo") as pool:
            futures = [
                pool.submit(nmt_worker, random.Random(seed + 1)),
                pool.submit(nmt_worker, random.Random(seed + 2)),
                pool.submit(yourtts_worker),
                pool.submit(rust_worker),
            ]
            try:
                asyncio.run(main())
            finally:
                interrupted = stop.is_set()
                # Whatever ended the loop (the deadline, a stop, an exception), the
                # workers end now rather than at the deadline.
                stop.set()
                for future in futures:
                    future.result()
        if not interrupted:
            # Let the sampler collect the samples covering the last task ends.
            time.sleep(gpu.sample_period + 0.15)
            tracker.poll()
        stats = tracker.stats()
        if finish is not None and not interrupted:
            finish(tracker, stats)
    if interrupted:
        return stats
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
