"""The model run with the real threaded sampler, on the real monotonic clock.

A seeded random history (task starts and ends on several services, overlapping and
nested, some raising; resets; utilisation held or changed) runs on a
``Tracker(threaded=True)`` whose sampler thread reads a ``SimulatedGpu`` with a
short sample period while the history goes on. The sampler's reads come whenever
the thread runs, so live figures depend on timing; what must hold is checked
against the integral of the driver's own samples (``SimulatedGpu.sample``) over
the windows the tracker recorded (``TaskHandle.start_time`` / ``end_time``):

- every ended task's ``gpu_ms`` and ``gpu_util_ms`` within one sample period per
  device of that integral (the tail after the newest visible sample is the only
  estimate), status ``ok``, coverage 1;
- every service, once the sampler settled, equal to the integral over its window
  since its reset (real samples only, nothing left out), and never down between
  resets while the history ran; exact counts.

The history sleeps for real between steps: the sampler must run meanwhile.
"""

from __future__ import annotations

import itertools
import os
import random
import time
from collections import defaultdict
from dataclasses import dataclass, field

import pytest

from gputime import TaskHandle, Tracker, gpu_task
from gputime.testing import SimulatedGpu

HEAVY = os.environ.get("GPUTIME_HEAVY") == "1"
PERIOD = 0.02
INTERVAL = 0.005
DEVICES = 2
SERVICES = ("a", "b", "c")
WAIT_S = 10.0


@dataclass
class History:
    tasks: list[TaskHandle] = field(default_factory=list)
    #: Per service: when its figures were last reset (a bracket on the real clock).
    reset_at: dict[str, tuple[float, float]] = field(default_factory=dict)


def windows(tasks: list[TaskHandle]) -> dict[str, list[tuple[float, float]]]:
    """Each service's window: the union of its tasks' windows, as sorted intervals."""
    spans: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for task in tasks:
        assert task.end_time is not None
        spans[task.service].append((task.start_time, task.end_time))
    union: dict[str, list[tuple[float, float]]] = {}
    for service, intervals in spans.items():
        merged: list[tuple[float, float]] = []
        for lo, hi in sorted(intervals):
            if merged and lo <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
            else:
                merged.append((lo, hi))
        union[service] = merged
    return union


class Truth:
    """Integrals of the driver's own samples over service windows (any attribution)."""

    def __init__(self, gpu: SimulatedGpu, union: dict[str, list[tuple[float, float]]], split: bool):
        self.gpu, self.union, self.split = gpu, union, split
        edges = sorted({t for spans in union.values() for span in spans for t in span})
        # Between consecutive edges the set of active services is constant.
        self.pieces: list[tuple[float, float, frozenset[str]]] = []
        for lo, hi in itertools.pairwise(edges):
            mid = (lo + hi) / 2
            active = frozenset(
                s for s, spans in union.items() if any(a <= mid <= b for a, b in spans)
            )
            if active:
                self.pieces.append((lo, hi, active))

    def service(self, service: str, lo: float, hi: float) -> tuple[float, float]:
        """``(gpu_ms, gpu_util_ms)`` of ``service`` over ``(lo, hi]``."""
        busy = util = 0.0
        for start, end, active in self.pieces:
            a, b = max(start, lo), min(end, hi)
            if b <= a or service not in active:
                continue
            share = 1 / len(active) if self.split else 1.0
            for device in range(self.gpu.device_count):
                k = int(a / PERIOD) + 1
                while (k - 1) * PERIOD < b:
                    overlap = min(b, k * PERIOD) - max(a, (k - 1) * PERIOD)
                    value = self.gpu.sample(k, device)
                    if overlap > 0 and value > 0:
                        busy += overlap * share
                        util += overlap * share * value / 100
                    k += 1
        return 1000 * busy, 1000 * util


def run_history(gpu: SimulatedGpu, tracker: Tracker, seed: int, steps: int, changing: bool):
    rng = random.Random(seed)
    history = History()
    running: list[tuple[gpu_task, TaskHandle]] = []
    floors: dict[str, float] = {}
    for _ in range(steps):
        roll = rng.random()
        if roll < 0.35 and len(running) < 6:
            block = tracker.gpu_task(rng.choice(SERVICES))
            running.append((block, block.__enter__()))
        elif roll < 0.7 and running:
            block, handle = running.pop(rng.randrange(len(running)))
            error = ValueError("job failed") if rng.random() < 0.2 else None
            block.__exit__(type(error) if error else None, error, None)
            history.tasks.append(handle)
            assert (handle.status, handle.coverage) == ("ok", 1.0)
        elif roll < 0.75:
            service = rng.choice(SERVICES)
            before = tracker.clock()
            tracker.reset(service)
            history.reset_at[service] = (before, tracker.clock())
            floors.pop(service, None)
        elif changing and roll < 0.85:
            gpu.set_utilization(rng.choice((0, 30, 70, 100)), device=rng.randrange(DEVICES))
        time.sleep(rng.uniform(0, 2 * INTERVAL))  # the sampler reads meanwhile
        for service, stats in tracker.stats().items():  # rule 4 under a live sampler
            assert stats.gpu_ms >= floors.get(service, 0.0), service
            floors[service] = stats.gpu_ms
    for block, handle in running:
        block.__exit__(None, None, None)
        history.tasks.append(handle)
    return history


@pytest.mark.heavy
@pytest.mark.timeout(600 if HEAVY else 120)
@pytest.mark.parametrize("split", [False, True], ids=["device", "split"])
@pytest.mark.parametrize("changing", [False, True], ids=["constant", "changing"])
def test_threaded_sampler_figures_match_the_driver_integral(changing: bool, split: bool):
    gpu = SimulatedGpu(DEVICES, sample_period=PERIOD, buffer_samples=10**7)
    for device in range(DEVICES):
        gpu.set_utilization(100 if device == 0 else 60, device=device)
    with Tracker(
        backend=gpu, interval=INTERVAL, attribution="split" if split else "device"
    ) as tracker:
        steps = 2000 if HEAVY else 150
        history = run_history(
            gpu, tracker, seed=11 + 2 * split + changing, steps=steps, changing=changing
        )
        deadline = time.monotonic() + WAIT_S
        while tracker.sampler_running and time.monotonic() < deadline:
            time.sleep(0.005)  # bounded: the settle read, then the sampler parks
        assert not tracker.sampler_running
        truth = Truth(gpu, windows(history.tasks), split)
        worst = 0.0
        for task in history.tasks:
            assert task.end_time is not None
            expected_ms, expected_util = truth.service(task.service, task.start_time, task.end_time)
            tolerance = 1000 * PERIOD * DEVICES
            assert abs(task.gpu_ms - expected_ms) <= tolerance + 1e-6
            assert abs(task.gpu_util_ms - expected_util) <= tolerance + 1e-6
            worst = max(worst, abs(task.gpu_ms - expected_ms))
        counts: dict[str, int] = defaultdict(int)
        for task in history.tasks:
            if task.end_time > history.reset_at.get(task.service, (-1.0, -1.0))[1]:
                counts[task.service] += 1
        for service, stats in tracker.stats().items():
            lo, hi = history.reset_at.get(service, (-1.0, -1.0))
            expected_ms, expected_util = truth.service(service, hi, float("inf"))
            # The reset instant is known to within its bracket on the real clock.
            slack = 1000 * (hi - lo) * DEVICES + 1e-6
            assert abs(stats.gpu_ms - expected_ms) <= slack, service
            assert abs(stats.gpu_util_ms - expected_util) <= slack, service
            assert (stats.status, stats.coverage) == ("ok", 1.0)
            assert stats.active_tasks == 0
            assert stats.task_count == counts[service]
    print(f"tasks {len(history.tasks)}, worst task gpu_ms deviation {worst:.3f} ms")
