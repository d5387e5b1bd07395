"""What ``@gpu_task`` costs in the configuration users run, against same-run baselines.

Run it as ``python benchmarks/overhead.py [--calls N] [--rounds R] [--quick]``.
It prints and never asserts: timings on shared machines vary, so every figure
is a ratio to a baseline measured in the same run, rounds interleaved (a noisy
neighbour or a frequency change hits every case alike), medians shown.

Judged, in the default configuration (``threaded=True``, the default tracker):

* no GPU (the default tracker resolves ``"auto"`` to ``"none"``) and
  ``Tracker(backend="none")``: at most ``prometheus_client``'s
  ``Histogram.time()`` decorator (ratio <= 1.00);
* ``Tracker(backend=SimulatedGpu())``, tasks one after another (each the first
  after idle) and overlapping (another task of the service always running):
  at most twice ``Histogram.time()``;
* the NVML backend through the project's NVML double (``tests/nvml_double.py``,
  the unmodified ``pynvml`` bindings, a real clock): at most twice the
  ``SimulatedGpu`` case, and at most one exit read per driver sample period;
* with the OpenTelemetry SDK recording: at most 1.25x a bare
  ``start_as_current_span`` decorator setting as many attributes (and with the
  metrics SDK, the baseline also records one SDK histogram per call);
* throughput from 1, 2, 4 and 8 threads on one tracker, against
  ``Histogram.time()`` with the same threads; 8 threads reach at least the
  throughput of 1 (no lock convoy);
* ``import gputime``: at most 1.2x ``import opentelemetry.trace`` alone
  (``python -X importtime``, fresh interpreters, bytecode cached).

``threaded=False`` rows and the timeline rows (a recorder on: its cost on the task
path against the same tracker without one) are extras, never judged.
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HIST = "prometheus Histogram.time()"
SPAN = "bare OTel span decorator (SDK)"
SPAN_HIST = "bare span + SDK histogram"
SIM = "gputime SimulatedGpu, sequential"

Case = tuple[str, Callable[[], Any], str | None, float | None]


def _empty() -> None:
    return None


class _Nvml:
    """The NVML double on a real clock, behind the real NvmlBackend."""

    def __init__(self) -> None:
        sys.path.insert(0, str(ROOT))
        from gputime._backends.nvml import NvmlBackend
        from tests.nvml_double import FakeNvml

        start = time.monotonic()
        self.double = FakeNvml(lambda: time.monotonic() - start, 1)  # type: ignore[arg-type]
        self.double.install()
        self.double.set_utilization(60)
        self.backend = NvmlBackend(wall_clock_ns=self.double.wall_ns)

    def reads(self) -> float:
        # pynvml's nvmlDeviceGetSamples makes two C calls (size, then fill).
        return self.double.calls["nvmlDeviceGetSamples"] / 2

    def close(self) -> None:
        self.double.uninstall()


def _cases(nvml: _Nvml) -> tuple[list[Case], list[Any], dict[str, Any]]:
    """(label, function, baseline label, target ratio) per case, what to close, and extras."""
    import prometheus_client
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

    from gputime import Timeline, Tracker, gpu_task
    from gputime.testing import SimulatedGpu

    def passthrough(func: Callable[[], Any]) -> Callable[[], Any]:
        @functools.wraps(func)
        def wrapper() -> Any:
            return func()

        return wrapper

    registry = prometheus_client.CollectorRegistry()
    histogram = prometheus_client.Histogram("bench_seconds", "bench", registry=registry)

    # No SDK anywhere for these (the global providers stay unset; the SDK
    # cases below give theirs to their trackers).
    none_tracker = Tracker(backend="none")
    sim_tracker = Tracker(backend=SimulatedGpu())
    overlap_tracker = Tracker(backend=SimulatedGpu())
    overlap_gpu = overlap_tracker.backend
    overlap_gpu.set_utilization(50)  # type: ignore[attr-defined]
    # Another task of the service runs throughout: each call overlaps it.
    held = overlap_tracker.gpu_task("bench")
    held.__enter__()
    nvml_tracker = Tracker(backend=nvml.backend, clock=nvml.double.clock)
    none_unthreaded = Tracker(backend="none", threaded=False)
    sim_unthreaded = Tracker(backend=SimulatedGpu(), threaded=False)
    # A timeline recorded (off by default): its cost on the task path when on.
    none_timeline = Tracker(backend="none", timeline=Timeline(max_tasks=1000))
    sim_timeline = Tracker(backend=SimulatedGpu(), timeline=Timeline(max_tasks=1000))

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SpanProcessor())  # records; exports nothing
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    sdk_tracker = Tracker(backend="none", tracer_provider=tracer_provider)
    sdk_metrics_tracker = Tracker(
        backend="none", tracer_provider=tracer_provider, meter_provider=meter_provider
    )
    tracer = tracer_provider.get_tracer("bench")

    def bare_span(func: Callable[[], Any]) -> Callable[[], Any]:
        @functools.wraps(func)
        def wrapper() -> Any:
            with tracer.start_as_current_span("gpu_task bench") as span:
                result = func()
                span.set_attributes(
                    {
                        "gputime.service": "bench",
                        "gputime.gpu.busy_ms": 0.0,
                        "gputime.gpu.util_ms": 0.0,
                        "gputime.gpu.ids": (),
                        "gputime.task.concurrency": 1,
                        "gputime.status": "unavailable",
                    }
                )
                return result

        return wrapper

    duration = meter_provider.get_meter("bench").create_histogram("bench.duration", unit="s")
    duration_attrs = {"gputime.service": "bench"}

    def bare_span_and_histogram(func: Callable[[], Any]) -> Callable[[], Any]:
        timed = bare_span(func)

        @functools.wraps(func)
        def wrapper() -> Any:
            start = time.monotonic()
            try:
                return timed()
            finally:
                duration.record(time.monotonic() - start, duration_attrs)

        return wrapper

    cases: list[Case] = [
        ("plain call", _empty, None, None),
        ("functools pass-through", passthrough(_empty), None, None),
        (HIST, histogram.time()(_empty), None, None),
        ("gputime default tracker, no GPU", gpu_task("bench")(_empty), HIST, 1.0),
        ("gputime none", gpu_task("bench", tracker=none_tracker)(_empty), HIST, 1.0),
        (SIM, gpu_task("bench", tracker=sim_tracker)(_empty), HIST, 2.0),
        (
            "gputime SimulatedGpu, overlapping",
            gpu_task("bench", tracker=overlap_tracker)(_empty),
            HIST,
            2.0,
        ),
        (
            "gputime NVML double, sequential",
            gpu_task("bench", tracker=nvml_tracker)(_empty),
            SIM,
            2.0,
        ),
        (SPAN, bare_span(_empty), None, None),
        ("gputime none, SDK traces", gpu_task("bench", tracker=sdk_tracker)(_empty), SPAN, 1.25),
        (SPAN_HIST, bare_span_and_histogram(_empty), None, None),
        (
            "gputime none, SDK traces+metrics",
            gpu_task("bench", tracker=sdk_metrics_tracker)(_empty),
            SPAN_HIST,
            1.25,
        ),
        (
            "extra: none, threaded=False",
            gpu_task("bench", tracker=none_unthreaded)(_empty),
            HIST,
            None,
        ),
        (
            "extra: SimulatedGpu, threaded=False",
            gpu_task("bench", tracker=sim_unthreaded)(_empty),
            HIST,
            None,
        ),
        (
            "extra: none, timeline on",
            gpu_task("bench", tracker=none_timeline)(_empty),
            "gputime none",
            None,
        ),
        (
            "extra: SimulatedGpu, timeline on",
            gpu_task("bench", tracker=sim_timeline)(_empty),
            SIM,
            None,
        ),
    ]
    closers = [
        none_tracker,
        sim_tracker,
        overlap_tracker,
        nvml_tracker,
        none_unthreaded,
        sim_unthreaded,
        none_timeline,
        sim_timeline,
        sdk_tracker,
        sdk_metrics_tracker,
    ]
    extras = {
        "throughput": [
            (HIST, histogram.time()(_empty)),
            ("gputime SimulatedGpu", gpu_task("tput", tracker=sim_tracker)(_empty)),
            ("gputime default tracker, no GPU", gpu_task("tput")(_empty)),
        ],
        "held": held,
    }
    return cases, closers, extras


def _time(func: Callable[[], Any], calls: int) -> float:
    loop = range(calls)
    start = time.perf_counter_ns()
    for _ in loop:
        func()
    return (time.perf_counter_ns() - start) / calls


def _throughput(func: Callable[[], Any], threads: int, window: float) -> float:
    """Tasks per second from ``threads`` threads running ``func`` back to back, steady state.

    Every thread runs until told to stop. The count is taken over ``window``
    seconds that open once every thread runs (thread start-up and wake-up are
    not the tracker's cost) and span many GIL switch intervals (5 ms), so that
    the threads really contend: a lock convoy shows only then.
    """
    counts = [0] * threads
    started = threading.Barrier(threads + 1)
    stop = threading.Event()

    def run(slot: int) -> None:
        started.wait()
        while not stop.is_set():
            for _ in range(10):
                func()
            counts[slot] += 10

    workers = [threading.Thread(target=run, args=(slot,)) for slot in range(threads)]
    for worker in workers:
        worker.start()
    started.wait()
    time.sleep(window / 4)  # every thread is running by now
    # The main thread reads the counts and the clock holding the GIL: no
    # worker runs in between, so the two agree.
    start, first = time.perf_counter(), sum(counts)
    time.sleep(window)
    elapsed, done = time.perf_counter() - start, sum(counts) - first
    stop.set()
    for worker in workers:
        worker.join()
    return done / elapsed


def _import_ms(module: str) -> float:
    """Cumulative ``-X importtime`` of ``module`` in a fresh interpreter, in ms."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    last = [line for line in result.stderr.splitlines() if line.endswith(f"| {module}")][-1]
    return int(last.split("|")[1]) / 1000


def _print_ratio(label: str, value: float, base: float, target: float | None, width: int) -> None:
    ratio = value / base
    if target is None:
        print(f"{label:<{width}}  {value:>10.0f}  {ratio:>6.2f}")
        return
    verdict = "ok" if ratio <= target else "MISSED"
    print(f"{label:<{width}}  {value:>10.0f}  {ratio:>6.2f}  {target:>6.2f}  {verdict}")


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000, help="calls per case per round")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds")
    parser.add_argument("--imports", type=int, default=9, help="fresh interpreters per import")
    parser.add_argument(
        "--throughput-rounds", type=int, default=5, help="interleaved rounds of throughput"
    )
    parser.add_argument(
        "--window", type=float, default=0.2, help="seconds each throughput is counted over"
    )
    parser.add_argument("--quick", action="store_true", help="few calls and rounds (a smoke run)")
    args = parser.parse_args(argv)
    if args.quick:
        args.calls, args.rounds, args.imports = 2000, 3, 3
        args.throughput_rounds, args.window = 1, 0.05

    import gputime

    # The default tracker resolves "auto" now, before the NVML double is
    # installed: it sees no driver, as on a machine without a GPU.
    gputime.get_tracker()
    nvml = _Nvml()
    cases, closers, extras = _cases(nvml)
    samples: dict[str, list[float]] = {label: [] for label, *_ in cases}
    for func in (case[1] for case in cases):  # warm up caches and lazy set-up
        _time(func, 1000)
    threads = (1, 2, 4, 8)
    tput: dict[tuple[str, int], list[float]] = {}
    nvml_calls = nvml_reads = 0.0
    nvml_func = next(func for label, func, *_ in cases if label.startswith("gputime NVML"))
    gc_was_enabled = gc.isenabled()
    gc.disable()  # collections would land in whichever case happens to run
    try:
        for _ in range(args.rounds):
            for label, func, *_ in cases:
                reads_before = nvml.reads()
                samples[label].append(_time(func, args.calls))
                if func is nvml_func:
                    nvml_reads += nvml.reads() - reads_before
                    nvml_calls += args.calls
            gc.collect()
        for _ in range(args.throughput_rounds):
            for count in threads:
                for label, func in extras["throughput"]:
                    tput.setdefault((label, count), []).append(
                        _throughput(func, count, args.window)
                    )
            gc.collect()
        # Exit reads per driver sample period: tasks back to back for a while,
        # on a tracker without a sampler thread (whose ticks are not exit reads).
        from gputime import Tracker, gpu_task

        exits_only = Tracker(backend=nvml.backend, clock=nvml.double.clock, threaded=False)
        closers.append(exits_only)
        exit_func = gpu_task("bench", tracker=exits_only)(_empty)
        period = exits_only._reader.session.sample_period
        _time(exit_func, 100)
        reads_before, started = nvml.reads(), time.monotonic()
        while time.monotonic() - started < 20 * period:
            _time(exit_func, 100)
        per_period = (nvml.reads() - reads_before) / ((time.monotonic() - started) / period)
    finally:
        if gc_was_enabled:
            gc.enable()
        extras["held"].__exit__(None, None, None)
        for closer in closers:
            closer.close()
        nvml.close()

    medians = {label: statistics.median(values) for label, values in samples.items()}
    width = max(len(label) for label in medians) + 2
    print(f"{args.rounds} rounds x {args.calls} calls, median ns/call (default configuration)")
    print(f"{'case':<{width}}  {'ns/call':>10}  {'ratio':>6}  {'target':>6}  verdict / against")
    for label, _, baseline, target in cases:
        if baseline is None:
            print(f"{label:<{width}}  {medians[label]:>10.0f}")
            continue
        _print_ratio(label, medians[label], medians[baseline], target, width)
        if target is not None:
            print(f"{'':<{width}}  {'':>10}  {'':>6}  {'':>6}  against {baseline}")
    verdict = "ok" if per_period <= 1.0 else "MISSED"
    print(
        f"NVML double: {nvml_reads / nvml_calls:.5f} driver reads per task; tasks back to "
        f"back: {per_period:.2f} exit reads per sample period (target <= 1.00: {verdict})"
    )

    print()
    print("throughput, tasks/s, median (ratio to Histogram.time() with the same threads)")
    print(f"{'threads':<34}" + "".join(f"{count:>16}" for count in threads))
    for label, _ in extras["throughput"]:
        row = f"{label:<34}"
        for count in threads:
            value = statistics.median(tput[(label, count)])
            base = statistics.median(tput[(HIST, count)])
            row += f"{value:>9.0f} ({value / base:.2f})"
        print(row)
    scaling = {
        label: statistics.median(tput[(label, 8)]) / statistics.median(tput[(label, 1)])
        for label, _ in extras["throughput"]
    }
    print(f"{HIST}: 8 threads / 1 thread = {scaling[HIST]:.3f} (the baseline's own scaling)")
    for label, _ in extras["throughput"][1:]:
        verdict = "ok" if scaling[label] >= 1.0 else "MISSED"
        print(
            f"{label}: 8 threads / 1 thread = {scaling[label]:.3f} "
            f"(target >= 1.00: {verdict}; against Histogram.time()'s: "
            f"{scaling[label] / scaling[HIST]:.3f})"
        )

    print()
    imports: dict[str, list[float]] = {"gputime": [], "opentelemetry.trace": []}
    _import_ms("gputime")  # writes gputime's bytecode cache once
    for _ in range(args.imports):
        for module, values in imports.items():
            values.append(_import_ms(module))
    ours = statistics.median(imports["gputime"])
    base = statistics.median(imports["opentelemetry.trace"])
    verdict = "ok" if ours <= 1.2 * base else "MISSED"
    print(
        f"import gputime {ours:.1f} ms, import opentelemetry.trace {base:.1f} ms, "
        f"ratio {ours / base:.2f} (target <= 1.20: {verdict}); median of {args.imports}"
    )


if __name__ == "__main__":
    main()
