"""What ``@gpu_task`` costs per call, against the baselines it is judged by.

Run it as ``python benchmarks/overhead.py [--calls N] [--rounds R]``. Every
case runs ``N`` calls of an empty function per round, the rounds of all cases
interleaved (so a noisy neighbour or a frequency change hits them all alike),
and the table shows the median over rounds in nanoseconds per call, with each
gputime row's ratio to the baseline it is judged against, measured in the same
run. It prints and never asserts: timings on shared machines vary.

Targets (from the issues):

* no OpenTelemetry SDK: ``gputime`` with backend ``"none"`` costs no more than
  ``prometheus_client``'s ``Histogram.time()`` decorator (ratio <= 1.00);
* with ``SimulatedGpu`` (real monotonic clock, ``threaded=False``): at most
  twice ``Histogram.time()`` (ratio <= 2.00);
* with the OpenTelemetry SDK recording: at most 1.25x a bare
  ``start_as_current_span`` decorator that sets as many attributes as gputime
  does (six with no energy figure); with the metrics SDK too, the baseline
  also records one SDK histogram per call, as gputime does.
"""

from __future__ import annotations

import argparse
import functools
import gc
import statistics
import time
from collections.abc import Callable
from typing import Any


def _empty() -> None:
    return None


def _cases() -> tuple[list[tuple[str, Callable[[], Any], str | None, float | None]], list[Any]]:
    """(label, function, baseline label, target ratio) per case, and what to close."""
    import prometheus_client
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

    from gputime import Tracker, gpu_task
    from gputime.testing import SimulatedGpu

    def passthrough(func: Callable[[], Any]) -> Callable[[], Any]:
        @functools.wraps(func)
        def wrapper() -> Any:
            return func()

        return wrapper

    registry = prometheus_client.CollectorRegistry()
    histogram = prometheus_client.Histogram("bench_seconds", "bench", registry=registry)

    # With no SDK configured anywhere (the global providers stay unset: the
    # SDK cases below inject theirs).
    none_tracker = Tracker(backend="none", threaded=False)
    sim_tracker = Tracker(backend=SimulatedGpu(), threaded=False)

    # The SDK recording every span; the processor does nothing with ended
    # spans, so that what is measured is the instrumentation, not an exporter.
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SpanProcessor())
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    sdk_tracker = Tracker(backend="none", threaded=False, tracer_provider=tracer_provider)
    sdk_metrics_tracker = Tracker(
        backend="none",
        threaded=False,
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
    )
    tracer = tracer_provider.get_tracer("bench")

    def bare_span(func: Callable[[], Any]) -> Callable[[], Any]:
        # What a hand-written span decorator with the same attributes costs.
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
        # The same, plus the one histogram record gputime makes per task.
        timed = bare_span(func)

        @functools.wraps(func)
        def wrapper() -> Any:
            start = time.monotonic()
            try:
                return timed()
            finally:
                duration.record(time.monotonic() - start, duration_attrs)

        return wrapper

    hist = "prometheus Histogram.time()"
    span = "bare OTel span decorator (SDK)"
    span_hist = "bare span + SDK histogram"
    cases: list[tuple[str, Callable[[], Any], str | None, float | None]] = [
        ("plain call", _empty, None, None),
        ("functools pass-through", passthrough(_empty), None, None),
        (hist, histogram.time()(_empty), None, None),
        ("gputime none, no SDK", gpu_task("bench", tracker=none_tracker)(_empty), hist, 1.0),
        ("gputime SimulatedGpu, no SDK", gpu_task("bench", tracker=sim_tracker)(_empty), hist, 2.0),
        (span, bare_span(_empty), None, None),
        ("gputime none, SDK traces", gpu_task("bench", tracker=sdk_tracker)(_empty), span, 1.25),
        (span_hist, bare_span_and_histogram(_empty), None, None),
        (
            "gputime none, SDK traces+metrics",
            gpu_task("bench", tracker=sdk_metrics_tracker)(_empty),
            span_hist,
            1.25,
        ),
    ]
    closers = [none_tracker, sim_tracker, sdk_tracker, sdk_metrics_tracker]
    return cases, closers


def _time(func: Callable[[], Any], calls: int) -> float:
    loop = range(calls)
    start = time.perf_counter_ns()
    for _ in loop:
        func()
    return (time.perf_counter_ns() - start) / calls


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000, help="calls per case per round")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds")
    args = parser.parse_args(argv)

    cases, closers = _cases()
    samples: dict[str, list[float]] = {label: [] for label, *_ in cases}
    for func in (case[1] for case in cases):  # warm up caches and lazy set-up
        _time(func, 1000)
    gc_was_enabled = gc.isenabled()
    gc.disable()  # collections would land in whichever case happens to run
    try:
        for _ in range(args.rounds):
            for label, func, *_ in cases:
                samples[label].append(_time(func, args.calls))
            gc.collect()
    finally:
        if gc_was_enabled:
            gc.enable()
        for closer in closers:
            closer.close()

    medians = {label: statistics.median(values) for label, values in samples.items()}
    width = max(len(label) for label in medians)
    print(f"{args.rounds} rounds x {args.calls} calls, median ns/call")
    print(f"{'case':<{width}}  {'ns/call':>8}  {'ratio':>6}  {'target':>6}  against")
    for label, _, baseline, target in cases:
        ns = medians[label]
        if baseline is None:
            print(f"{label:<{width}}  {ns:>8.0f}")
            continue
        ratio = ns / medians[baseline]
        verdict = "ok" if target is not None and ratio <= target else "MISSED"
        print(
            f"{label:<{width}}  {ns:>8.0f}  {ratio:>6.2f}  {target:>6.2f}  {baseline} ({verdict})"
        )


if __name__ == "__main__":
    main()
