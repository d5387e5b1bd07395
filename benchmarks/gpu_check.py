"""Check gputime's NVML backend on a real GPU (run it on a borrowed GPU machine).

What it does, in order:

1. Lists the GPUs NVML sees and which of gputime's NVML calls each supports.
2. Runs a workload with a known duty cycle on CUDA device 0 (torch, else cupy),
   each cycle inside a ``gpu_task``, and prints gputime's busy and util
   milliseconds against the known active time and CUDA-event timing.
3. Measures the sampler tick cost per device and the task-exit read cost.

Without a GPU (or NVML) it says so and exits 0. Usage::

    python benchmarks/gpu_check.py [--cycles 10] [--period 1.0] [--duty 0.5]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=10, help="workload cycles (default 10)")
    parser.add_argument("--period", type=float, default=1.0, help="cycle length, s (default 1)")
    parser.add_argument("--duty", type=float, default=0.5, help="busy fraction (default 0.5)")
    parser.add_argument("--reads", type=int, default=200, help="reads timed per device")
    args = parser.parse_args(argv)

    from gputime._backends._base import BackendUnavailable
    from gputime._backends._nvml import NvmlBackend, list_devices

    try:
        devices = list_devices()
        backend = NvmlBackend()
    except BackendUnavailable as exc:
        print(f"no GPU: {exc}")
        print("nothing to check here; run this script on a machine with an NVIDIA GPU")
        return 0

    print_devices(devices)
    measure_read_costs(backend, args.reads)
    workload = find_workload()
    if workload is None:
        print(
            "\nworkload: skipped: neither torch nor cupy with CUDA is importable, so no "
            "kernels with a known duty cycle could be run (pip install torch or cupy)"
        )
        return 0
    run_duty_cycle(workload, args.cycles, args.period, args.duty)
    return 0


def print_devices(devices: Any) -> None:
    print(f"{len(devices)} GPU(s) seen by NVML:")
    for device in devices:
        period = "?" if device.sample_period is None else f"{device.sample_period:.3f} s"
        mig = " MIG" if device.mig_enabled else ""
        print(f"  [{device.index}] {device.uuid} {device.name}{mig} sample period {period}")
        if device.error:
            print(f"      unusable: {device.error}")
        for call, state in device.calls.items():
            print(f"      {call:<42} {state}")


def measure_read_costs(backend: Any, reads: int) -> None:
    """Time ``session.read`` per device (a sampler tick) and all devices (a task exit)."""
    session = backend.open(clock=time.monotonic, devices=None, attribution="device")
    try:
        print(f"\nread cost (median of {reads}):")
        period = session.sample_period
        for index, device in enumerate(session.devices):
            costs = []
            for _ in range(reads):
                since = time.monotonic() - 2 * period
                started = time.perf_counter()
                try:
                    session.read(index, since)
                except Exception as exc:  # noqa: BLE001 - reported, the check goes on
                    print(f"  {device.id}: read failed: {exc}")
                    break
                costs.append(time.perf_counter() - started)
            if costs:
                print(f"  sampler tick, {device.id}: {statistics.median(costs) * 1e6:.0f} µs")
        exits = []
        for _ in range(max(1, reads // 4)):
            since = time.monotonic() - 2 * period
            started = time.perf_counter()
            for index in range(len(session.devices)):
                # Failures were reported above; this only times the reads.
                with contextlib.suppress(Exception):
                    session.read(index, since)
            exits.append(time.perf_counter() - started)
        print(f"  task-exit read, all devices: {statistics.median(exits) * 1e6:.0f} µs")
    finally:
        session.close()


class Workload:
    """Kernels on CUDA device 0 for a given time, timed with CUDA events."""

    def __init__(
        self,
        name: str,
        uuid: str | None,
        burst: Callable[[], None],
        synchronize: Callable[[], None],
        event_timer: Callable[[Callable[[], None]], float],
    ) -> None:
        self.name = name
        self.uuid = uuid
        self._burst = burst
        self._synchronize = synchronize
        self._event_timer = event_timer

    def busy(self, seconds: float) -> tuple[float, float]:
        """Keep the GPU busy for ``seconds``; returns (wall s, CUDA-event s)."""
        started = time.perf_counter()

        def loop() -> None:
            while time.perf_counter() - started < seconds:
                self._burst()
                self._synchronize()

        event_seconds = self._event_timer(loop)
        return time.perf_counter() - started, event_seconds


def find_workload() -> Workload | None:
    try:
        import torch

        if torch.cuda.is_available():
            return _torch_workload(torch)
    except ImportError:
        pass
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            return _cupy_workload(cupy)
    except Exception:  # noqa: BLE001 - cupy raises its own errors without a driver
        pass
    return None


def _torch_workload(torch: Any) -> Workload:
    matrix = torch.randn(2048, 2048, device="cuda:0")
    uuid = getattr(torch.cuda.get_device_properties(0), "uuid", None)

    def timer(body: Callable[[], None]) -> float:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        body()
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end)) / 1000

    return Workload(
        "torch",
        f"GPU-{uuid}" if uuid is not None else None,
        lambda: (matrix @ matrix, None)[1],
        torch.cuda.synchronize,
        timer,
    )


def _cupy_workload(cupy: Any) -> Workload:
    matrix = cupy.random.rand(2048, 2048, dtype=cupy.float32)

    def timer(body: Callable[[], None]) -> float:
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        body()
        end.record()
        end.synchronize()
        return float(cupy.cuda.get_elapsed_time(start, end)) / 1000

    return Workload(
        "cupy",
        None,
        lambda: (matrix @ matrix, None)[1],
        cupy.cuda.runtime.deviceSynchronize,
        timer,
    )


def run_duty_cycle(workload: Workload, cycles: int, period: float, duty: float) -> None:
    import gputime

    devices = [workload.uuid] if workload.uuid else None
    print(f"\nworkload: {workload.name}, {cycles} cycles of {period} s at {duty:.0%} busy")
    if devices is None:
        print("  (device UUID unknown: tracking every visible GPU)")
    tracker = gputime.Tracker(backend="nvml", devices=devices)
    try:
        workload.busy(0.2)  # warm up: allocations and kernel loading outside the figures
        time.sleep(2)
        active = events = window = 0.0
        tasks = []
        for _ in range(cycles):
            entered = time.monotonic()
            with tracker.gpu_task("gpu-check") as task:
                wall, event = workload.busy(period * duty)
                time.sleep(max(0.0, period - wall))
            window += time.monotonic() - entered
            active += wall
            events += event
            tasks.append(task)
        time.sleep(2)  # let the samples covering the last task arrive
        stats = tracker.stats("gpu-check")
    finally:
        tracker.close()
    print(f"  known active time      {active * 1000:10.1f} ms")
    print(f"  CUDA-event time        {events * 1000:10.1f} ms")
    print(f"  gputime gpu_util_ms    {stats.gpu_util_ms:10.1f} ms   (closest to kernel time)")
    print(f"  gputime gpu_ms         {stats.gpu_ms:10.1f} ms   (whole sample periods)")
    print(f"  task windows           {window * 1000:10.1f} ms")
    print(f"  status {stats.status}, energy {stats.energy_mj} mJ, tasks {stats.task_count}")
    print(f"  per task gpu_util_ms: {[round(t.gpu_util_ms) for t in tasks]}")
    if active:
        print(f"  util / active = {stats.gpu_util_ms / (active * 1000):.3f}")


if __name__ == "__main__":
    sys.exit(main())
