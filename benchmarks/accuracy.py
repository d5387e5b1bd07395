"""How close gputime's figures come to the truth, next to the seed's and the limit.

A seeded, fully simulated workload (no GPU, no sleeping): four services (``nmt``,
``tts`` with two overlapping workers, ``yourtts``, ``rust``) run tasks of 50 ms to
5 s for ``--duration`` seconds on one simulated device, whose utilisation follows
a 10 ms-resolution timeline of 100 % stretches, partial (20-90 %) stretches and
idle gaps of 20 ms to 2.5 s, independent of the task boundaries (the whole GPU is
shared). The driver makes one sample every 1/6 s; gputime polls every 0.5 s.

Every figure is compared with the **truth**, computed from the 10 ms timeline
itself (attribution ``device``, threshold 0): ``gpu_ms`` is the time in the window
with utilisation above 0, ``gpu_util_ms`` the integral of utilisation / 100. A
task's window is its own; a service's is the union of its tasks' windows.

Methods compared:

* **gputime**: a :class:`gputime.Tracker` (``threaded=False``) on a
  :class:`gputime.testing.SimulatedGpu`, polled every 0.5 s; task figures read
  from the handles after exit, service figures from ``stats()`` after one more
  second of polling (so the samples covering the last windows are in).
* **limit**: every driver sample integrated exactly over each window (sample
  ``k`` covers ``((k-1)P, kP]``). No sampler of this driver can do better, so its
  error is the floor set by the driver's sample period and its rounding.
* **causal** (tasks only): the best a figure that is final when the task ends
  can do: the limit over the part of the window covered by samples visible at
  the task's end, plus the newest visible sample's value carried over the
  rest. This is what the spec asks gputime's task figures to equal.
* **seed**: the seed's ``GpuUsageTracker``, re-implemented from its text with
  the Rust service's behaviour (tracking starts at task start, stops at task
  end; for a service, at the first task start and the last task end of each
  stretch of overlapping tasks, as its "keeps tracking until all tasks are
  done"). It reads the latest reading (the newest visible sample, as
  ``nvmlDeviceGetUtilizationRates``) when tracking starts and every 500 ms
  after; idle->busy (value > 0) notes the time, busy->idle adds the elapsed
  time, stopping adds the open period. The seed has no utilisation-weighted
  figure; for ``gpu_util_ms`` it is credited the same way, each polled value
  held until the next poll (or the stop) and weighted by value / 100, which is
  the natural extension of its transitions. Per-task seed figures use one seed
  tracker per task. (Reading only on the 500 ms timer, with no read at start,
  makes the seed about 2x worse on tasks and several times worse on services.)

Targets (from the issue), printed with PASS/MISS (never asserted, exit 0):

* service ``gpu_util_ms`` error <= 1.5 x the limit's + 10 ms;
* task ``gpu_util_ms`` error at the level of the causal estimate
  (<= 1.05 x its error + 1 ms);
* ``gpu_ms`` error (task and service) <= 1.05 x the limit's.

Reading the output: ``gpu_ms`` errors are dominated by the driver itself (a
sample counts its whole period busy if any kernel ran in it), so every method,
the limit included, overstates it by a similar amount; ``gpu_util_ms`` is where
sampling matters. The "largest |gputime - reference|" line should read 0: task
figures equal the causal estimate and settled service figures equal the limit
exactly, so anything else there is a bug, not noise. ``causal_ratio`` applies a
target to the causal estimate: where it misses too, no figure that is final at
task end can meet it on that workload.

Run ``python benchmarks/accuracy.py [--seed N] [--duration S] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

TICK = 0.01  # seconds per timeline step
TICKS_PER_S = 100
SAMPLE_PERIOD = 1 / 6  # the driver's sample period P
POLL_TICKS = 50  # gputime's and the seed's poll interval, 0.5 s, in ticks
SETTLE_TICKS = 100  # one more second of polling after the workload
FIRST_START_TICKS = 50  # no task before 0.5 s, so a sample is always visible
SERVICES: dict[str, int] = {"nmt": 1, "tts": 2, "yourtts": 1, "rust": 1}  # workers each
DEFAULT_SEED = 20251217
_EPS = 1e-9

Metric = str  # "gpu_ms" or "gpu_util_ms"
METRICS: tuple[Metric, ...] = ("gpu_ms", "gpu_util_ms")


@dataclass(frozen=True, slots=True)
class Task:
    """One task of the workload: its service and window ``[start, end)`` in ticks."""

    service: str
    worker: int
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Workload:
    """The utilisation timeline (percent per 10 ms tick) and the tasks."""

    util: list[int]
    tasks: list[Task]

    @property
    def ticks(self) -> int:
        """Length of the workload in ticks."""
        return len(self.util)


@dataclass(frozen=True, slots=True)
class Figure:
    """A ``gpu_ms`` / ``gpu_util_ms`` pair."""

    gpu_ms: float
    gpu_util_ms: float

    def get(self, metric: Metric) -> float:
        """The figure named ``metric``."""
        return self.gpu_ms if metric == "gpu_ms" else self.gpu_util_ms


@dataclass(slots=True)
class Results:
    """Every method's figures per task (workload order) and per service."""

    tasks: list[Figure] = field(default_factory=list)
    services: dict[str, Figure] = field(default_factory=dict)


# -- the workload ------------------------------------------------------------------------


def _log_uniform_ticks(rng: random.Random, low_s: float, high_s: float, minimum: int) -> int:
    """A duration drawn log-uniformly from ``[low_s, high_s]``, in whole ticks."""
    seconds = math.exp(rng.uniform(math.log(low_s), math.log(high_s)))
    return max(minimum, round(seconds * TICKS_PER_S))


def make_workload(seed: int, duration_s: float) -> Workload:
    """Draw the utilisation timeline and every worker's tasks from ``seed``.

    Args:
        seed: The random seed; the same seed gives the same workload.
        duration_s: Length of the workload in seconds.

    Returns:
        The workload; every task ends within it.
    """
    rng = random.Random(seed)
    ticks = round(duration_s * TICKS_PER_S)

    # The whole GPU's utilisation, shared by every service: busy stretches at
    # 100 % or at a partial level, sometimes back to back, and idle gaps.
    util: list[int] = []
    busy = rng.random() < 0.5
    while len(util) < ticks:
        if busy:
            level = 100 if rng.random() < 0.5 else rng.randint(20, 90)
            util += [level] * _log_uniform_ticks(rng, 0.02, 3.0, 2)
            busy = rng.random() < 0.35  # another busy stretch at another level
        else:
            util += [0] * _log_uniform_ticks(rng, 0.02, 2.5, 2)
            busy = True
    del util[ticks:]

    tasks: list[Task] = []
    for service, workers in SERVICES.items():
        for worker in range(workers):
            t = FIRST_START_TICKS + _log_uniform_ticks(rng, 0.02, 3.0, 2)
            while True:
                length = _log_uniform_ticks(rng, 0.05, 5.0, 5)
                if t + length > ticks:
                    break
                tasks.append(Task(service, worker, t, t + length))
                t += length + _log_uniform_ticks(rng, 0.02, 3.0, 2)
    tasks.sort(key=lambda task: (task.start, task.service, task.worker))
    return Workload(util, tasks)


def service_windows(workload: Workload) -> dict[str, list[tuple[int, int]]]:
    """Each service's window: the union of its task windows, as ``[start, end)`` ticks."""
    windows: dict[str, list[tuple[int, int]]] = {}
    for service in SERVICES:
        spans = sorted((t.start, t.end) for t in workload.tasks if t.service == service)
        merged: list[tuple[int, int]] = []
        for start, end in spans:
            if merged and start <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], end))
            else:
                merged.append((start, end))
        windows[service] = merged
    return windows


# -- gputime -----------------------------------------------------------------------------


def run_gputime(workload: Workload) -> tuple[list[Figure], dict[str, Figure], list[int]]:
    """Run the workload through gputime on a simulated GPU, in simulated time.

    The clock moves in 10 ms ticks. At each tick the utilisation change takes
    effect, tasks that end there leave (their exit read happens then), tasks
    that start there enter, and every 0.5 s the tracker is polled.

    Returns:
        Per-task figures (workload order), per-service figures after one more
        second of polling, and the driver's samples (index ``k`` holds sample
        ``k``; index 0 is unused), taken from the simulated driver as each
        became visible.
    """
    from gputime import TaskHandle, Tracker, gpu_task
    from gputime.testing import FakeClock, SimulatedGpu

    clock = FakeClock()
    gpu = SimulatedGpu(sample_period=SAMPLE_PERIOD, clock=clock)
    tracker = Tracker(backend=gpu, threaded=False, interval=POLL_TICKS * TICK)

    starts: dict[int, list[int]] = {}
    ends: dict[int, list[int]] = {}
    for index, task in enumerate(workload.tasks):
        starts.setdefault(task.start, []).append(index)
        ends.setdefault(task.end, []).append(index)
    # One gpu_task object per task: each keeps its handle in its own context
    # variable, so overlapping tasks may leave in any order.
    running: dict[int, tuple[gpu_task, TaskHandle]] = {}
    figures: dict[int, Figure] = {}
    samples = [0]
    level = 0
    for tick in range(workload.ticks + SETTLE_TICKS + 1):
        clock.advance(max(0.0, tick * TICK - clock()))  # land on the tick, no drift
        while len(samples) * SAMPLE_PERIOD <= clock() + _EPS:
            samples.append(gpu.sample(len(samples)))
        new_level = workload.util[tick] if tick < workload.ticks else 0
        if new_level != level:
            gpu.set_utilization(new_level)
            level = new_level
        for index in ends.get(tick, ()):
            context, handle = running.pop(index)
            context.__exit__(None, None, None)
            figures[index] = Figure(handle.gpu_ms, handle.gpu_util_ms)
        for index in starts.get(tick, ()):
            context = tracker.gpu_task(workload.tasks[index].service, span=False)
            running[index] = (context, context.__enter__())
        if tick % POLL_TICKS == 0:
            tracker.poll()
    stats = tracker.stats()
    tracker.close()
    services = {
        name: Figure(stats[name].gpu_ms, stats[name].gpu_util_ms)
        if name in stats
        else Figure(0.0, 0.0)
        for name in SERVICES
    }
    return [figures[i] for i in range(len(workload.tasks))], services, samples


# -- references --------------------------------------------------------------------------


class Truth:
    """Exact figures from the 10 ms utilisation timeline, via prefix sums."""

    def __init__(self, util: Sequence[int]) -> None:
        self._busy = [0]
        self._util = [0]
        for percent in util:
            self._busy.append(self._busy[-1] + (percent > 0))
            self._util.append(self._util[-1] + percent)

    def window(self, start: int, end: int) -> Figure:
        """Truth over ``[start, end)`` ticks."""
        ms_per_tick = TICK * 1000.0
        return Figure(
            (self._busy[end] - self._busy[start]) * ms_per_tick,
            (self._util[end] - self._util[start]) * ms_per_tick / 100.0,
        )


def _credit(value: int, seconds: float) -> Figure:
    """What a value held over ``seconds`` contributes (threshold 0)."""
    if value <= 0 or seconds <= 0:
        return Figure(0.0, 0.0)
    return Figure(1000.0 * seconds, 10.0 * value * seconds)


def _add(figures: Sequence[Figure]) -> Figure:
    return Figure(sum(f.gpu_ms for f in figures), sum(f.gpu_util_ms for f in figures))


def _newest_visible(samples: Sequence[int], seconds: float) -> int:
    """Index of the newest sample visible at ``seconds`` (0 if none)."""
    return min(len(samples) - 1, math.floor(seconds / SAMPLE_PERIOD + _EPS))


def limit(samples: Sequence[int], start_s: float, end_s: float) -> Figure:
    """The driver's samples integrated exactly over ``(start_s, end_s]``."""
    parts: list[Figure] = []
    first = math.floor(start_s / SAMPLE_PERIOD + _EPS) + 1
    last = math.ceil(end_s / SAMPLE_PERIOD - _EPS)
    for k in range(first, last + 1):
        lo = max(start_s, (k - 1) * SAMPLE_PERIOD)
        hi = min(end_s, k * SAMPLE_PERIOD)
        parts.append(_credit(samples[k], hi - lo))
    return _add(parts)


def causal(samples: Sequence[int], start_s: float, end_s: float) -> Figure:
    """Best estimate final at ``end_s``: visible samples, then the newest one carried on."""
    newest = _newest_visible(samples, end_s)
    seen_to = min(end_s, newest * SAMPLE_PERIOD)
    covered = limit(samples, start_s, seen_to) if seen_to > start_s else Figure(0.0, 0.0)
    tail = end_s - max(start_s, seen_to)
    return _add([covered, _credit(samples[newest] if newest else 0, tail)])


def seed(samples: Sequence[int], start: int, end: int) -> Figure:
    """The seed's tracker started at tick ``start`` and stopped at tick ``end``.

    It reads the newest visible sample at ``start`` and every 500 ms after,
    while tracking; each reading's busy state (and value, for the util figure)
    holds until the next reading or the stop, which is exactly what its
    idle->busy / busy->idle transitions accumulate.
    """
    polls = list(range(start, end, POLL_TICKS))
    parts: list[Figure] = []
    for poll, until in zip(polls, [*polls[1:], end], strict=True):
        value = samples[_newest_visible(samples, poll * TICK)]
        parts.append(_credit(value, (until - poll) * TICK))
    return _add(parts)


def evaluate(workload: Workload) -> dict[str, Results]:
    """Every method's figures, plus the truth, per task and per service.

    Returns:
        ``{"truth": ..., "gputime": ..., "seed": ..., "limit": ..., "causal": ...}``;
        ``causal`` has no service figures.
    """
    task_figures, service_figures, samples = run_gputime(workload)
    windows = service_windows(workload)
    truth = Truth(workload.util)

    def per_window(method: Callable[[int, int], Figure]) -> Results:
        return Results(
            tasks=[method(t.start, t.end) for t in workload.tasks],
            services={s: _add([method(a, b) for a, b in w]) for s, w in windows.items()},
        )

    return {
        "truth": per_window(truth.window),
        "gputime": Results(tasks=task_figures, services=service_figures),
        "seed": per_window(lambda a, b: seed(samples, a, b)),
        "limit": per_window(lambda a, b: limit(samples, a * TICK, b * TICK)),
        "causal": Results(
            tasks=[causal(samples, t.start * TICK, t.end * TICK) for t in workload.tasks]
        ),
    }


# -- the report --------------------------------------------------------------------------


def _signed_errors(method: Results, truth: Results, level: str, metric: Metric) -> list[float]:
    """``method - truth`` per task (or per service)."""
    pairs: Iterable[tuple[Figure, Figure]]
    if level == "task":
        pairs = zip(method.tasks, truth.tasks, strict=True)
    else:
        pairs = ((method.services[s], truth.services[s]) for s in method.services)
    return [m.get(metric) - t.get(metric) for m, t in pairs]


def _errors(method: Results, truth: Results, level: str, metric: Metric) -> list[float]:
    return [abs(e) for e in _signed_errors(method, truth, level, metric)]


def _mae(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _max_gap(a: Results, b: Results, level: str, metric: Metric) -> float:
    """Largest ``|a - b|`` over tasks (or services): a bug shows here, not noise."""
    if level == "task":
        pairs = list(zip(a.tasks, b.tasks, strict=True))
    else:
        pairs = [(a.services[s], b.services[s]) for s in a.services]
    return max((abs(x.get(metric) - y.get(metric)) for x, y in pairs), default=0.0)


def summarise(workload: Workload, results: dict[str, Results]) -> dict[str, Any]:
    """The figures the report prints, as plain data (also the ``--json`` output)."""
    truth = results["truth"]
    methods = ("gputime", "seed", "limit", "causal")
    mae: dict[str, dict[str, dict[str, float | None]]] = {}
    bias: dict[str, dict[str, dict[str, float | None]]] = {}
    for level in ("task", "service"):
        mae[level] = {}
        bias[level] = {}
        for name in methods:
            method = results[name]
            has = bool(method.tasks) if level == "task" else bool(method.services)
            mae[level][name] = {
                metric: _mae(_errors(method, truth, level, metric)) if has else None
                for metric in METRICS
            }
            bias[level][name] = {
                metric: _mae(_signed_errors(method, truth, level, metric)) if has else None
                for metric in METRICS
            }

    def get(level: str, name: str, metric: Metric) -> float:
        value = mae[level][name][metric]
        assert value is not None
        return value

    targets = []

    def ratio(actual: float, bound: float) -> float:
        return actual / bound if bound > 0 else (0.0 if actual == 0 else math.inf)

    def target(
        label: str, actual: float, bound: float, rule: str, causal: float | None = None
    ) -> None:
        entry: dict[str, Any] = {
            "target": label,
            "rule": rule,
            "gputime_mae_ms": actual,
            "bound_ms": bound,
            "ratio": ratio(actual, bound),
            "pass": actual <= bound + 1e-9,
        }
        if causal is not None:
            # The same test applied to the best causal estimate: where it misses
            # too, the miss is the price of a figure final at task end.
            entry["causal_ratio"] = ratio(causal, bound)
        targets.append(entry)

    target(
        "service gpu_util_ms",
        get("service", "gputime", "gpu_util_ms"),
        1.5 * get("service", "limit", "gpu_util_ms") + 10.0,
        "<= 1.5 x limit + 10 ms",
    )
    target(
        "task gpu_util_ms",
        get("task", "gputime", "gpu_util_ms"),
        1.05 * get("task", "causal", "gpu_util_ms") + 1.0,
        "<= 1.05 x causal + 1 ms",
    )
    for level in ("task", "service"):
        target(
            f"{level} gpu_ms",
            get(level, "gputime", "gpu_ms"),
            1.05 * get(level, "limit", "gpu_ms"),
            "<= 1.05 x limit",
            get(level, "causal", "gpu_ms") if level == "task" else None,
        )

    seed_factor = {
        level: {
            metric: get(level, "seed", metric) / get(level, "gputime", metric)
            if get(level, "gputime", metric) > 0
            else math.inf
            for metric in METRICS
        }
        for level in ("task", "service")
    }
    consistency = {
        "task_vs_causal_max_ms": {
            m: _max_gap(results["gputime"], results["causal"], "task", m) for m in METRICS
        },
        "service_vs_limit_max_ms": {
            m: _max_gap(results["gputime"], results["limit"], "service", m) for m in METRICS
        },
    }
    busy = sum(1 for u in workload.util if u > 0) / max(1, workload.ticks)
    return {
        "workload": {
            "duration_s": workload.ticks * TICK,
            "tasks": len(workload.tasks),
            "tasks_per_service": {
                s: sum(1 for t in workload.tasks if t.service == s) for s in SERVICES
            },
            "gpu_busy_fraction": busy,
            "mean_task_s": sum(t.end - t.start for t in workload.tasks)
            * TICK
            / max(1, len(workload.tasks)),
            "mean_truth_ms": {
                level: {
                    metric: _mae(
                        [
                            f.get(metric)
                            for f in (
                                truth.tasks if level == "task" else list(truth.services.values())
                            )
                        ]
                    )
                    for metric in METRICS
                }
                for level in ("task", "service")
            },
        },
        "mae_ms": mae,
        "bias_ms": bias,
        "seed_error_over_gputime": seed_factor,
        "gputime_consistency": consistency,
        "targets": targets,
    }


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:10.1f}"


def print_report(summary: dict[str, Any], seed_value: int) -> None:
    """Print the summary as tables."""
    w = summary["workload"]
    print(
        f"gputime accuracy: seed {seed_value}, {w['duration_s']:.0f} s, {w['tasks']} tasks "
        f"({', '.join(f'{s} {n}' for s, n in w['tasks_per_service'].items())}), "
        f"GPU busy {100 * w['gpu_busy_fraction']:.0f} % of the time, "
        f"mean task {w['mean_task_s']:.2f} s"
    )
    print(f"driver period {SAMPLE_PERIOD * 1000:.1f} ms, poll every {POLL_TICKS * TICK:.1f} s\n")
    print("mean absolute error vs truth, ms   (truth mean in brackets)")
    header = f"{'method':<10}" + "".join(
        f"{level + ' ' + metric:>22}" for level in ("task", "service") for metric in METRICS
    )
    print(header)
    truth_row = "".join(
        f"{'(' + format(w['mean_truth_ms'][level][metric], '.1f') + ')':>22}"
        for level in ("task", "service")
        for metric in METRICS
    )
    print(f"{'truth':<10}{truth_row}")
    for name in ("gputime", "causal", "limit", "seed"):
        row = "".join(
            f"{_fmt(summary['mae_ms'][level][name][metric]):>22}"
            for level in ("task", "service")
            for metric in METRICS
        )
        print(f"{name:<10}{row}")
    print("\nmean signed error (bias) vs truth, ms")
    for name in ("gputime", "causal", "limit", "seed"):
        row = "".join(
            f"{_fmt(summary['bias_ms'][level][name][metric]):>22}"
            for level in ("task", "service")
            for metric in METRICS
        )
        print(f"{name:<10}{row}")
    factor = summary["seed_error_over_gputime"]
    print(
        "\nseed error / gputime error: "
        + ", ".join(
            f"{level} {metric} {factor[level][metric]:.0f}x"
            for level in ("task", "service")
            for metric in METRICS
        )
    )
    c = summary["gputime_consistency"]
    print(
        "largest |gputime - reference| over tasks vs causal: "
        + ", ".join(f"{m} {v:.3f} ms" for m, v in c["task_vs_causal_max_ms"].items())
        + "; over services vs limit: "
        + ", ".join(f"{m} {v:.3f} ms" for m, v in c["service_vs_limit_max_ms"].items())
    )
    print("\ntargets")
    for t in summary["targets"]:
        verdict = "PASS" if t["pass"] else "MISS"
        print(
            f"  {verdict}  {t['target']:<20} {t['gputime_mae_ms']:9.1f} ms  "
            f"bound {t['bound_ms']:9.1f} ms ({t['rule']})  ratio {t['ratio']:.3f}"
            + (f"  (causal: {t['causal_ratio']:.3f})" if "causal_ratio" in t else "")
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; always returns 0 (the targets are reported, not asserted)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed")
    parser.add_argument("--duration", type=float, default=120.0, help="workload seconds")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    workload = make_workload(args.seed, args.duration)
    summary = summarise(workload, evaluate(workload))
    summary["seed"] = args.seed
    summary["runtime_s"] = time.perf_counter() - began
    if args.json:
        json.dump(summary, sys.stdout, indent=2)
        print()
    else:
        print_report(summary, args.seed)
        print(f"\n({summary['runtime_s']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
