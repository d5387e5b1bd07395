"""Answer, on a real NVIDIA GPU, what gputime assumes of its driver (see docs/nvml.md).

Run it on a machine with an NVIDIA GPU (at most about two minutes; well under five)::

    python benchmarks/gpu_check.py --json report.json [--device 0]

It needs gputime importable (``pip install -e .``, or ``PYTHONPATH=.`` with
``nvidia-ml-py``, ``wrapt`` and ``opentelemetry-api`` installed) and torch or
cupy with CUDA for the sections that run kernels. Each section answers one
question, prints its answer and stores it under its key in the JSON report:

``devices``
    What ``gputime devices`` lists: supported calls, period, timestamp clock.
``call_cost``
    Median microseconds of each NVML call gputime makes (and of a whole
    gputime read, which a task exit makes at most once a sample period).
``count_query``
    What ``nvmlDeviceGetSamples``' size query (a NULL buffer) answers first,
    idle and busy: the buffer's size, or the samples waiting?
``idle_buffer``
    Does the utilisation buffer gain samples while the GPU is idle?
``cadence``
    During kernels: the sample period and its jitter, the timestamp clock,
    and how late after its timestamp each sample becomes visible.
``capacity``
    After the GPU was busy for more samples than a buffer holds, how many the
    whole buffer returns (the ring's capacity).
``processes``
    Per-process rows during this process's kernels: how many per call and per
    process, their timestamps against the device samples' (a history, or the
    newest row only?), and their values.
``energy_counter``
    How often the energy counter steps (reads every 1 ms), and what gputime's
    calibration learned.
``accuracy``
    gputime's task and service figures against CUDA-event timing, for tasks
    with a known duty cycle and idle stretches inside (idle, kernels, idle),
    attribution ``device`` and ``process``.

Without a GPU (or NVML) it says so and exits 0, writing a report that says so.
"""

from __future__ import annotations

import argparse
import ctypes
import itertools
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
UTILIZATION_SAMPLES = 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", type=Path, help="write the report here")
    parser.add_argument("--device", type=int, default=0, help="NVML index to check (default 0)")
    parser.add_argument(
        "--capacity-seconds", type=float, default=25.0, help="busy time to fill the buffer"
    )
    parser.add_argument("--quick", action="store_true", help="shorter sections (a smoke run)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    report: dict[str, Any] = {"started": time.time()}
    try:
        _run(args, report)
    finally:
        report["finished"] = time.time()
        if args.json is not None:
            args.json.write_text(json.dumps(report, indent=2, default=str))
            print(f"\nreport written to {args.json}")
    return 0


def _run(args: argparse.Namespace, report: dict[str, Any]) -> None:
    from gputime._backends._base import BackendUnavailable
    from gputime._backends.nvml import list_devices

    try:
        devices = list_devices()
    except BackendUnavailable as exc:
        report["error"] = f"no GPU: {exc}"
        print(f"no GPU: {exc}\nnothing to check here; run this on a machine with an NVIDIA GPU")
        return
    import pynvml

    report["devices"] = [_asdict(device) for device in devices]
    print_devices(devices)
    pynvml.nvmlInit()
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(args.device)
        uuid = str(pynvml.nvmlDeviceGetUUID(handle))
        report["device"] = {"index": args.device, "uuid": uuid}
        kernels = find_kernels(uuid)
        report["kernels"] = None if kernels is None else kernels.name
        sections: list[tuple[str, Callable[[], Any]]] = [
            ("call_cost", lambda: call_cost(pynvml, handle)),
            ("idle_buffer", lambda: idle_buffer(pynvml, handle, 2.0 if args.quick else 5.0)),
            ("count_query_idle", lambda: count_query(pynvml, handle)),
        ]
        if kernels is not None:
            sections += [
                ("cadence", lambda: cadence(pynvml, handle, kernels, 1.5 if args.quick else 3.0)),
                ("count_query_busy", lambda: busy(kernels, lambda: count_query(pynvml, handle))),
                (
                    "capacity",
                    lambda: capacity(
                        pynvml, handle, kernels, 3.0 if args.quick else args.capacity_seconds
                    ),
                ),
                ("processes", lambda: processes(pynvml, handle, kernels)),
            ]
        sections.append(("energy_counter", lambda: energy_counter(pynvml, handle, uuid)))
        if kernels is not None:
            sections.append(("accuracy", lambda: accuracy(kernels, uuid, 4 if args.quick else 8)))
        for key, section in sections:
            began = time.perf_counter()
            try:
                report[key] = section()
            except Exception as exc:  # noqa: BLE001 - every answer, failures too, is a finding
                report[key] = {"error": repr(exc)}
            print(f"\n[{key}] ({time.perf_counter() - began:.1f} s)")
            print(json.dumps(report[key], indent=2, default=str))
        if kernels is None:
            print(
                "\nkernels: skipped: neither torch nor cupy with CUDA is importable, so the "
                "sections that need a busy GPU did not run"
            )
    finally:
        pynvml.nvmlShutdown()


def _asdict(device: Any) -> dict[str, Any]:
    return {name: getattr(device, name) for name in device.__dataclass_fields__}


def print_devices(devices: Any) -> None:
    print(f"{len(devices)} GPU(s) seen by NVML:")
    for device in devices:
        period = "?" if device.sample_period is None else f"{device.sample_period:.4f} s"
        mig = " MIG" if device.mig_enabled else ""
        print(
            f"  [{device.index}] {device.uuid} {device.name}{mig} sample period {period}, "
            f"timestamps {device.timestamp_base or '?'}"
        )
        for call, state in device.calls.items():
            print(f"      {call:<42} {state}")


# -- the driver -------------------------------------------------------------------------


def _samples(pynvml: Any, handle: Any, last_seen: int) -> list[tuple[int, float]]:
    try:
        _type, rows = pynvml.nvmlDeviceGetSamples(handle, UTILIZATION_SAMPLES, last_seen)
    except pynvml.NVMLError as exc:
        if exc.value == pynvml.NVML_ERROR_NOT_FOUND:
            return []
        raise
    return sorted((int(r.timeStamp), float(r.sampleValue.uiVal)) for r in rows)


def _median_us(call: Callable[[], Any], times: int = 200) -> float | str:
    costs = []
    for _ in range(times):
        started = time.perf_counter()
        try:
            call()
        except Exception as exc:  # noqa: BLE001 - a call the driver refuses is a finding
            return f"error: {exc!r}"
        costs.append(time.perf_counter() - started)
    return round(statistics.median(costs) * 1e6, 2)


def call_cost(pynvml: Any, handle: Any) -> dict[str, Any]:
    """Median µs of each call gputime makes, and of gputime's whole read of this device."""
    from gputime._backends.nvml import NvmlBackend

    now_us = time.time_ns() // 1000
    costs: dict[str, Any] = {
        "nvmlDeviceGetSamples (2 C calls)": _median_us(
            lambda: _samples(pynvml, handle, now_us - 10_000_000)
        ),
        "nvmlDeviceGetUtilizationRates": _median_us(
            lambda: pynvml.nvmlDeviceGetUtilizationRates(handle)
        ),
        "nvmlDeviceGetTotalEnergyConsumption": _median_us(
            lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        ),
        "nvmlDeviceGetProcessUtilization": _median_us(
            lambda: pynvml.nvmlDeviceGetProcessUtilization(handle, now_us - 1_000_000)
        ),
    }
    session = NvmlBackend().open(clock=time.monotonic, devices=None, attribution="device")
    try:
        costs["gputime read (one device)"] = _median_us(
            lambda: session.read(0, time.monotonic() - 0.5)
        )
    finally:
        session.close()
    return costs


def count_query(pynvml: Any, handle: Any) -> dict[str, Any]:
    """What the size query answers (NULL buffer), for lastSeen 0 and lastSeen now."""
    function = pynvml._nvmlGetFunctionPointer("nvmlDeviceGetSamples")
    answers = {}
    for label, last_seen in (("last_seen=0", 0), ("last_seen=now", time.time_ns() // 1000)):
        value_type = pynvml._nvmlValueType_t()
        count = ctypes.c_uint(0)
        code = function(
            handle,
            pynvml._nvmlSamplingType_t(UTILIZATION_SAMPLES),
            ctypes.c_ulonglong(last_seen),
            ctypes.byref(value_type),
            ctypes.byref(count),
            None,
        )
        answers[label] = {"return code": int(code), "count": int(count.value)}
    answers["samples returned for last_seen=0"] = len(_samples(pynvml, handle, 0))
    return answers


def idle_buffer(pynvml: Any, handle: Any, seconds: float) -> dict[str, Any]:
    """Whether samples keep coming while nothing runs (other processes may still run)."""
    newest = max((ts for ts, _ in _samples(pynvml, handle, 0)), default=0)
    started = time.monotonic()
    time.sleep(seconds)
    fresh = _samples(pynvml, handle, newest)
    running = _other_processes(pynvml, handle)
    return {
        "seconds_watched": round(time.monotonic() - started, 3),
        "new_samples": len(fresh),
        "values": sorted({value for _, value in fresh}),
        "utilization_rates_now": int(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu),
        "processes_on_gpu": running,
        "answer": "the buffer gains samples while idle"
        if fresh
        else "no samples while idle (as docs/nvml.md assumes)",
    }


def _other_processes(pynvml: Any, handle: Any) -> list[int] | str:
    try:
        return [int(p.pid) for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle)]
    except Exception as exc:  # noqa: BLE001 - bindings and drivers disagree on versions
        return f"error: {exc!r}"


def cadence(pynvml: Any, handle: Any, kernels: Kernels, seconds: float) -> dict[str, Any]:
    """Period, jitter, timestamp clock and visibility latency, during kernels."""
    from gputime._backends.nvml.cadence import Cadence
    from gputime._backends.nvml.clocks import boottime_ns, detect_base

    bases = {"wall": time.time_ns, "boottime": boottime_ns, "monotonic": time.monotonic_ns}
    newest = max((ts for ts, _ in _samples(pynvml, handle, 0)), default=0)
    seen: dict[int, tuple[float, dict[str, int]]] = {}

    def watch() -> None:
        # Every 2 ms: each new sample's timestamp and the clocks when it was first seen.
        nonlocal newest
        for ts, value in _samples(pynvml, handle, newest):
            clocks = {name: read() // 1000 for name, read in bases.items()}
            seen.setdefault(ts, (value, clocks))
            newest = max(newest, ts)

    kernels.run_while(seconds, watch, every=0.002)
    stamps = sorted(seen)
    learned = Cadence()
    learned.observe(stamps)
    base = detect_base(stamps[-1], bases) if stamps else None
    latencies_ms = [
        (clocks[base] - ts) / 1000 for ts, (_, clocks) in seen.items() if base is not None
    ]
    intervals = [(b - a) / 1000 for a, b in itertools.pairwise(stamps)]
    return {
        "samples": len(stamps),
        "values": [value for _, (value, _) in sorted(seen.items())][:40],
        "intervals_ms": [round(i, 3) for i in intervals[:40]],
        "period_s": learned.shortest,
        "period_certain": learned.certain,
        "jitter_s": learned.jitter,
        "timestamp_base": base,
        "visible_after_stamp_ms": _spread(latencies_ms),
    }


def _spread(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)
    return {
        "min": round(ordered[0], 3),
        "median": round(statistics.median(ordered), 3),
        "p95": round(ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)], 3),
        "max": round(ordered[-1], 3),
    }


def capacity(pynvml: Any, handle: Any, kernels: Kernels, seconds: float) -> dict[str, Any]:
    """After more busy samples than a buffer holds: how many the whole buffer returns."""
    kernels.run_while(seconds, lambda: None, every=0.5)
    rows = _samples(pynvml, handle, 0)
    span = (rows[-1][0] - rows[0][0]) / 1e6 if len(rows) > 1 else 0.0
    return {"busy_seconds": seconds, "samples_in_buffer": len(rows), "buffer_span_s": span}


def processes(pynvml: Any, handle: Any, kernels: Kernels) -> dict[str, Any]:
    """Per-process rows during this process's kernels, against the device samples."""
    import os

    calls: list[dict[str, Any]] = []
    device_stamps: list[int] = []
    last_seen = time.time_ns() // 1000

    def watch() -> None:
        rows = _process_rows(pynvml, handle, last_seen)
        calls.append(
            {
                "at": time.time_ns() // 1000,
                "rows": [(pid, ts, sm) for pid, ts, sm in rows],
            }
        )
        device_stamps.extend(ts for ts, _ in _samples(pynvml, handle, last_seen))

    kernels.run_while(2.0, watch, every=0.25)
    ours = [row for call in calls for row in call["rows"] if row[0] == os.getpid()]
    return {
        "this_pid": os.getpid(),
        "rows_per_call": [len(call["rows"]) for call in calls],
        "our_rows_per_call": [
            sum(1 for row in call["rows"] if row[0] == os.getpid()) for call in calls
        ],
        "our_row_timestamps_on_device_grid": sorted({ts for _, ts, _ in ours})[:20],
        "device_sample_timestamps": sorted(set(device_stamps))[:20],
        "our_values": [sm for _, _, sm in ours][:40],
        "answer": "a history of rows per process"
        if any(n > 1 for n in (sum(1 for r in c["rows"] if r[0] == os.getpid()) for c in calls))
        else "the newest row per process only",
    }


def _process_rows(pynvml: Any, handle: Any, last_seen: int) -> list[tuple[int, int, int]]:
    try:
        rows = pynvml.nvmlDeviceGetProcessUtilization(handle, last_seen)
    except pynvml.NVMLError as exc:
        if exc.value == pynvml.NVML_ERROR_NOT_FOUND:
            return []
        raise
    return [(int(r.pid), int(r.timeStamp), int(r.smUtil)) for r in rows]


def energy_counter(pynvml: Any, handle: Any, uuid: str) -> dict[str, Any]:
    """How often the counter steps (a read every 1 ms for 1.5 s), and gputime's calibration."""
    from gputime._backends.nvml import NvmlBackend

    steps = []
    before = pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
    stop = time.monotonic() + 1.5
    while time.monotonic() < stop:
        time.sleep(0.001)
        value = pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        if value != before:
            steps.append(time.monotonic())
            before = value
    intervals = [round((b - a) * 1000, 2) for a, b in itertools.pairwise(steps)]
    session = NvmlBackend().open(clock=time.monotonic, devices=[uuid], attribution="device")
    try:
        session.calibrate()
        counter = session._devs[0].counter
        calibrated = {"period_s": counter.period, "step_at": counter.step_at}
    finally:
        session.close()
    return {
        "steps_seen": len(steps),
        "step_intervals_ms": intervals[:60],
        "median_interval_ms": statistics.median(intervals) if intervals else None,
        "gputime_calibration": calibrated,
    }


# -- kernels ----------------------------------------------------------------------------


class Kernels:
    """Kernels on the checked GPU, with CUDA-event timing."""

    def __init__(
        self,
        name: str,
        burst: Callable[[], None],
        synchronize: Callable[[], None],
        event_timer: Callable[[Callable[[], None]], float],
    ) -> None:
        self.name = name
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

    def run_while(self, seconds: float, watch: Callable[[], None], every: float) -> None:
        """Kernels for ``seconds``, calling ``watch`` every ``every`` seconds between bursts."""
        stop = time.perf_counter() + seconds
        due = time.perf_counter()
        while time.perf_counter() < stop:
            self._burst()
            self._synchronize()
            if time.perf_counter() >= due:
                watch()
                due += every
        watch()


def find_kernels(uuid: str) -> Kernels | None:
    try:
        import torch

        if torch.cuda.is_available():
            return _torch_kernels(torch, uuid)
    except ImportError:
        pass
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            return _cupy_kernels(cupy)
    except Exception:  # noqa: BLE001 - cupy raises its own errors without a driver
        pass
    return None


def _torch_kernels(torch: Any, uuid: str) -> Kernels:
    device = 0
    for index in range(torch.cuda.device_count()):
        found = getattr(torch.cuda.get_device_properties(index), "uuid", None)
        if found is not None and f"GPU-{found}" == uuid:
            device = index
    matrix = torch.randn(4096, 4096, device=f"cuda:{device}")

    def timer(body: Callable[[], None]) -> float:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        body()
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end)) / 1000

    return Kernels("torch", lambda: (matrix @ matrix, None)[1], torch.cuda.synchronize, timer)


def _cupy_kernels(cupy: Any) -> Kernels:
    matrix = cupy.random.rand(4096, 4096, dtype=cupy.float32)

    def timer(body: Callable[[], None]) -> float:
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        body()
        end.record()
        end.synchronize()
        return float(cupy.cuda.get_elapsed_time(start, end)) / 1000

    return Kernels(
        "cupy", lambda: (matrix @ matrix, None)[1], cupy.cuda.runtime.deviceSynchronize, timer
    )


def busy(kernels: Kernels, then: Callable[[], Any]) -> Any:
    kernels.busy(0.5)
    return then()


def accuracy(kernels: Kernels, uuid: str, tasks: int) -> dict[str, Any]:
    """Tasks of idle 0.3 s, kernels 0.4 s, idle 0.3 s: gputime against CUDA events."""
    import gputime

    results: dict[str, Any] = {}
    for attribution in ("device", "process"):
        try:
            tracker = gputime.Tracker(backend="nvml", devices=[uuid], attribution=attribution)
        except ValueError as exc:
            results[attribution] = {"error": str(exc)}
            continue
        try:
            kernels.busy(0.2)  # warm up: allocations and kernel loading outside the figures
            time.sleep(1.5)
            rows = []
            for _ in range(tasks):
                with tracker.gpu_task("gpu-check") as task:
                    time.sleep(0.3)
                    wall, event = kernels.busy(0.4)
                    time.sleep(0.3)
                rows.append(
                    {
                        "cuda_event_ms": round(event * 1000, 1),
                        "kernels_wall_ms": round(wall * 1000, 1),
                        "gpu_ms": round(task.gpu_ms, 1),
                        "gpu_util_ms": round(task.gpu_util_ms, 1),
                        "energy_mj": task.energy_mj,
                        "status": task.status,
                    }
                )
            time.sleep(2.0)  # let the readings covering the last task arrive
            stats = tracker.stats("gpu-check")
        finally:
            tracker.close()
        events = sum(row["cuda_event_ms"] for row in rows)
        results[attribution] = {
            "tasks": rows,
            "sum_cuda_event_ms": round(events, 1),
            "sum_task_gpu_util_ms": round(sum(row["gpu_util_ms"] for row in rows), 1),
            "service": {
                "gpu_ms": stats.gpu_ms,
                "gpu_util_ms": stats.gpu_util_ms,
                "energy_mj": stats.energy_mj,
                "status": stats.status,
                "coverage": stats.coverage,
            },
            "service_util_over_cuda_events": round(stats.gpu_util_ms / events, 3)
            if events
            else None,
        }
    return results


if __name__ == "__main__":
    sys.exit(main())
