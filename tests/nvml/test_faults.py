"""Random faults at every NVML call, through the NVML double and the unmodified ``pynvml``.

A seeded random history of tasks (overlapping, some raising), clock steps,
utilisation changes (busy and idle stretches), polls and ``stats()`` runs on a
tracker with ``NvmlBackend(**double.backend_clocks())``, while faults are
injected at random into any NVML entry point the backend may call (every one
the double defines, but ``nvmlErrorString``, which returns a string, not a
status): error codes a driver really returns, for one call or a few, on one GPU
or all. For each of the two driver models of idle time it checks:

- no exception ever reaches the caller (task entry and exit, ``stats``, ``poll``,
  task figures, ``close``), and the double saw no malformed call;
- no figure counts a stretch it did not read: a task's ``gpu_ms`` never exceeds
  the GPU's true busy time in its window (plus the tail after the newest sample,
  one sample period per device at most), ``gpu_util_ms`` never exceeds ``gpu_ms``;
- a figure that says ``ok`` is complete (within that tail), and ``coverage`` below
  1 comes with ``partial``;
- a task during which a utilisation read of one of its GPUs failed is
  ``partial``, and so is every task (of any duration) once a GPU was lost;
- counts are exact and service figures never go down.
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass

import pytest

from gputime import BackendUnavailable, TaskHandle, Tracker, gpu_task
from gputime._backends.nvml import NvmlBackend
from gputime.testing import FakeClock
from tests.nvml.support import START, P, installed
from tests.nvml_double import (
    DRIVER_MODELS,
    GPU_IS_LOST,
    INSUFFICIENT_SIZE,
    NOT_SUPPORTED,
    UNINITIALIZED,
    UNKNOWN,
    FakeNvml,
)

HEAVY = os.environ.get("GPUTIME_HEAVY") == "1"
DEVICES = 2
#: Codes a driver returns for a failing call (GPU_IS_LOST is rare: it is for good).
CODES = (UNKNOWN, UNKNOWN, UNINITIALIZED, NOT_SUPPORTED, INSUFFICIENT_SIZE, GPU_IS_LOST)
#: Calls whose failure is a failed utilisation reading of that device.
UTILIZATION_READS = ("nvmlDeviceGetSamples",)


@dataclass
class Fault:
    step: int
    call: str
    device: int | None
    code: int


@dataclass
class Run:
    handle: TaskHandle
    block: gpu_task
    begun: int
    ended: int | None = None


def busy_ms(double: FakeNvml, lo: float, hi: float, tracked: tuple[str, ...]) -> float:
    """The true busy milliseconds of the tracked GPUs over ``(lo, hi]``, by the driver's samples."""
    total = 0.0
    for gpu in double.gpus:
        if gpu.uuid not in tracked:
            continue
        k = math.floor((lo - gpu.phase) / gpu.period) + 1
        while double.sample_time(gpu, k - 1) < hi:
            a, b = double.sample_time(gpu, k - 1), double.sample_time(gpu, k)
            overlap = min(b, hi) - max(a, lo)
            if overlap > 0 and round(gpu.util.mean(a, b)) > 0:
                total += 1000 * overlap
            k += 1
    return total


def run_history(model: str, seed: int, steps: int) -> None:
    rng = random.Random(seed)
    clock = FakeClock(START)
    double = FakeNvml(clock, DEVICES, model=model)
    double.worked_earlier()
    faults: list[Fault] = []
    step = 0
    original = double._fault

    def record(call: str, device: int | None) -> int | None:
        code = original(call, device)
        if code is not None:
            faults.append(Fault(step, call, device, code))
        return code

    double._fault = record  # type: ignore[method-assign]
    with installed(double):
        tracker = Tracker(
            backend=NvmlBackend(**double.backend_clocks()), clock=clock, threaded=False
        )
        calls = sorted(name for name in double.functions if name != "nvmlErrorString")
        running: list[Run] = []
        ended: list[Run] = []
        counts: dict[str, int] = {}
        floors: dict[str, float] = {}
        for step in range(steps):
            roll = rng.random()
            if roll < 0.2:
                clock.advance(rng.choice((0.0, P / 4, P / 2, P, 3 * P, 1.0)))
            elif roll < 0.3:
                double.set_utilization(rng.choice((0, 0, 40, 100)), device=rng.randrange(DEVICES))
            elif roll < 0.45 and len(running) < 5:
                block = tracker.gpu_task(rng.choice(("a", "b", "c")))
                running.append(Run(block.__enter__(), block, step))
            elif roll < 0.6 and running:
                run = running.pop(rng.randrange(len(running)))
                error = LookupError("job failed") if rng.random() < 0.2 else None
                run.block.__exit__(type(error) if error else None, error, None)
                run.ended = step
                ended.append(run)
                counts[run.handle.service] = counts.get(run.handle.service, 0) + 1
            elif roll < 0.7:
                tracker.poll()
            elif roll < 0.8:
                double.fail(
                    rng.choice(calls),
                    rng.choice(CODES),
                    device=rng.choice((None, *range(DEVICES))),
                    times=rng.choice((1, 1, 2, 3)),
                )
            for service, stats in tracker.stats().items():
                assert stats.gpu_ms >= floors.get(service, 0.0), service
                floors[service] = stats.gpu_ms
            for run in running:
                check_figures(run.handle, double, clock(), live=True)
        step += 1
        for run in running:
            run.block.__exit__(None, None, None)
            run.ended = step
            ended.append(run)
            counts[run.handle.service] = counts.get(run.handle.service, 0) + 1
        lost = min((f.step for f in faults if f.code == GPU_IS_LOST), default=math.inf)
        for run in ended:
            check_figures(run.handle, double, clock(), live=False)
            assert run.ended is not None
            needed = [
                f
                for f in faults
                if f.call in UTILIZATION_READS
                and f.code in (UNKNOWN, GPU_IS_LOST)
                and run.begun <= f.step <= run.ended
            ]
            # A task with no duration needed no reading at all.
            after_loss = run.ended >= lost and run.handle.duration > 0
            if needed or after_loss:
                assert run.handle.status == "partial", (run, needed, lost, faults)
        stats = tracker.stats()
        assert {name: s.task_count for name, s in stats.items()} == counts
        assert all(s.active_tasks == 0 for s in stats.values())
        for s in stats.values():
            assert 0.0 <= s.coverage <= 1.0
            assert s.coverage == 1.0 or s.status == "partial"
        double.fail("nvmlShutdown", UNKNOWN)
        tracker.close()  # never raises, even when the driver fails to shut down


def check_figures(handle: TaskHandle, double: FakeNvml, now: float, *, live: bool) -> None:
    figures = handle.figures
    end = now if live else handle.end_time
    assert end is not None
    duration = end - handle.start_time
    tracked = handle.tracker.device_ids
    truth = busy_ms(double, handle.start_time, end, tracked)
    # NVML stamps samples in whole microseconds: a few µs of slack per device.
    slack = 0.01
    tail = 1000 * P * len(tracked) + slack
    assert 0.0 <= figures.gpu_util_ms <= figures.gpu_ms + slack
    assert figures.gpu_ms <= 1000 * duration * len(tracked) + slack
    assert figures.gpu_ms <= truth + tail, (figures, truth)  # nothing unread is counted
    assert 0.0 <= figures.coverage <= 1.0
    if figures.coverage < 1.0:
        assert figures.status == "partial"
    if not live and figures.status == "ok":
        assert figures.gpu_ms >= truth - tail, (figures, truth)  # ok means complete


@pytest.mark.heavy
@pytest.mark.parametrize("model", DRIVER_MODELS)
@pytest.mark.parametrize("seed", range(40 if HEAVY else 3))
def test_random_faults_at_every_nvml_call(model: str, seed: int):
    run_history(model, seed, steps=400 if HEAVY else 250)


OPEN_CALLS = (
    "nvmlInitWithFlags",
    "nvmlDeviceGetCount_v2",
    "nvmlDeviceGetHandleByIndex_v2",
    "nvmlDeviceGetUUID",
    "nvmlDeviceGetName",
    "nvmlDeviceGetMigMode",
    "nvmlDeviceGetSamples",
    "nvmlDeviceGetUtilizationRates",
    "nvmlDeviceGetTotalEnergyConsumption",
)


@pytest.mark.parametrize("code", [UNKNOWN, GPU_IS_LOST, NOT_SUPPORTED])
@pytest.mark.parametrize("call", OPEN_CALLS)
def test_a_fault_while_the_tracker_opens_nvml(call: str, code: int):
    """Construction succeeds (tasks then run, on the GPUs it could open) or says why not."""
    clock = FakeClock(START)
    double = FakeNvml(clock, DEVICES)
    double.worked_earlier()
    with installed(double):
        double.fail(call, code, times=1)
        try:
            tracker = Tracker(
                backend=NvmlBackend(**double.backend_clocks()), clock=clock, threaded=False
            )
        except BackendUnavailable as exc:
            reason = str(exc)
        else:
            reason = ""
        if reason:
            assert "NVML" in reason or "GPU" in reason  # says what is missing
            return
        with tracker:
            assert tracker.device_ids  # a GPU that failed to open is left out, not faked
            for device in range(DEVICES):
                double.set_utilization(100, device=device)
            with tracker.gpu_task("svc") as task:
                clock.advance(0.5)
                tracker.poll()
                clock.advance(0.5)
            check_figures(task, double, clock(), live=False)
            assert tracker.stats("svc").task_count == 1
