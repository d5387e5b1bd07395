"""Contention: many threads and many asyncio tasks on one tracker; exact counts, monotonic figures.

Sizes: 64 threads x 10,000 tasks and 10,000 asyncio tasks over 100 services with
``GPUTIME_HEAVY=1``; smaller by default (the same code paths, a fraction of the load).
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from collections import Counter

import pytest

from gputime import Tracker
from gputime.testing import SimulatedGpu

HEAVY = os.environ.get("GPUTIME_HEAVY") == "1"
WAIT_S = 600.0 if HEAVY else 120.0


@pytest.mark.heavy
@pytest.mark.timeout(600 if HEAVY else 120)
def test_64_threads_on_one_tracker_exact_counts_monotonic_figures():
    threads, per_thread = 64, (10_000 if HEAVY else 300)
    services = ("nmt", "tts", "yourtts", "rust")
    gpu = SimulatedGpu(2, sample_period=0.02)
    gpu.set_utilization(100, device=0)
    gpu.set_utilization(40, device=1)
    with Tracker(backend=gpu, interval=0.01) as tracker:
        expected: Counter[str] = Counter()
        expected_lock = threading.Lock()
        errors: list[BaseException] = []
        violations: list[str] = []
        done = threading.Event()
        start = threading.Barrier(threads + 2)
        reads = 0

        def reader() -> None:
            nonlocal reads
            last: dict[str, tuple[float, float, int]] = {}
            start.wait()
            while not done.is_set():
                for name, s in tracker.stats().items():
                    now = (s.gpu_ms, s.gpu_util_ms, s.task_count)
                    before = last.get(name, (0.0, 0.0, 0))
                    if any(a < b for a, b in zip(now, before, strict=True)):
                        violations.append(f"{name}: {before} -> {now}")
                    if not 0 <= s.active_tasks <= threads:
                        violations.append(f"{name}: active_tasks {s.active_tasks}")
                    last[name] = now
                reads += 1

        def worker(seed: int) -> None:
            rng = random.Random(seed)
            mine: Counter[str] = Counter()
            start.wait()
            for i in range(per_thread):
                service = services[rng.randrange(len(services))]
                mine[service] += 1
                try:
                    with tracker.gpu_task(service):
                        if i % 7 == 0:
                            raise LookupError("job failed")
                except LookupError:
                    pass
                except BaseException as exc:  # reported below
                    errors.append(exc)
            with expected_lock:
                expected.update(mine)

        workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
        watcher = threading.Thread(target=reader)
        watcher.start()
        for thread in workers:
            thread.start()
        began = time.perf_counter()
        start.wait()
        for thread in workers:
            thread.join(WAIT_S)
        elapsed = time.perf_counter() - began
        done.set()
        watcher.join(WAIT_S)
        assert not any(thread.is_alive() for thread in workers)
        assert not errors
        assert not violations, violations[:5]
        assert reads > 0
        stats = tracker.stats()
        assert {name: s.task_count for name, s in stats.items()} == dict(expected)
        assert sum(expected.values()) == threads * per_thread
        assert all(s.active_tasks == 0 for s in stats.values())
    print(f"{threads * per_thread} tasks on {threads} threads in {elapsed:.1f} s; {reads} reads")


@pytest.mark.heavy
@pytest.mark.timeout(600 if HEAVY else 120)
def test_10000_asyncio_tasks_over_100_services_with_cancellations():
    total, services = (10_000 if HEAVY else 2_000), 100
    gpu = SimulatedGpu(sample_period=0.02)
    gpu.set_utilization(100)
    with Tracker(backend=gpu, interval=0.01) as tracker:

        async def job(i: int) -> int:
            async with tracker.gpu_task(f"svc-{i % services}"):
                await asyncio.sleep(0.001 * (i % 5))
                if i % 13 == 0:
                    raise ValueError(i)
                if i % 3 == 0:
                    await asyncio.sleep(3600)  # cancelled below
                return i

        @tracker.gpu_task("decorated")
        async def decorated(i: int) -> int:
            await asyncio.sleep(0.001 * (i % 3))
            if i % 4 == 0:
                await asyncio.sleep(3600)
            return i

        async def main() -> tuple[list[object], list[object]]:
            jobs = [asyncio.create_task(job(i)) for i in range(total)]
            more = [asyncio.create_task(decorated(i)) for i in range(total // 10)]
            parked = [t for i, t in enumerate(jobs) if i % 13 and i % 3 == 0]
            parked += [t for i, t in enumerate(more) if i % 4 == 0]
            parked_ids = set(map(id, parked))
            finishing = [t for t in (*jobs, *more) if id(t) not in parked_ids]
            await asyncio.wait(finishing)
            running = sum(s.active_tasks for s in tracker.stats().values())
            assert running == len(parked)
            for task in parked:
                task.cancel()
            return (
                await asyncio.gather(*jobs, return_exceptions=True),
                await asyncio.gather(*more, return_exceptions=True),
            )

        results, decorated_results = asyncio.run(main())
        stats = tracker.stats()
        kinds = Counter(type(r).__name__ for r in results)
        assert kinds["ValueError"] == len([i for i in range(total) if i % 13 == 0])
        assert kinds["CancelledError"] == len([i for i in range(total) if i % 13 and i % 3 == 0])
        assert kinds["int"] + kinds["ValueError"] + kinds["CancelledError"] == total
        per_service = Counter(f"svc-{i % services}" for i in range(total))
        per_service["decorated"] = len(decorated_results)
        assert {name: s.task_count for name, s in stats.items()} == dict(per_service)
        assert all(s.active_tasks == 0 for s in stats.values())
        cancelled = sum(isinstance(r, asyncio.CancelledError) for r in decorated_results)
        assert cancelled == len([i for i in range(total // 10) if i % 4 == 0])
