"""An exact oracle of docs/semantics.md on the simulated driver, independent of gputime's code.

It is told what a test does (clock steps, utilisation changes, task starts and ends,
polls, resets, read faults) and answers, exactly, what every figure must be: each
task's ``gpu_ms``, ``gpu_util_ms``, ``status`` and ``coverage`` (live while it runs,
final once it ended) and each service's counts and figures. It never looks at the
ledger: it keeps the whole history (utilisation steps, every window) and integrates
it from scratch at each question.

Time is counted in integer *units* (``P = period_units`` units per driver sample), so
windows, samples and shares are exact: a share ``1/N`` is ``SCALE / N`` with
``SCALE`` divisible by every ``N`` that can occur. Figures come out as
:class:`fractions.Fraction` of milliseconds.

What it models, and where each rule comes from:

- docs/semantics.md and ``gputime.testing.SimulatedGpu``: sample ``k`` covers
  ``((k-1)P, kP]``, is the time-weighted mean utilisation over it rounded half up,
  and is visible once the clock reaches ``kP``. Busy means a sample above the
  threshold; both figures count only busy samples. Attribution ``device`` credits
  every active service; ``split`` divides each moment equally among the services
  active then.
- docs/semantics.md (the tail rule): a running task's figures and every service's
  figures use real samples only, those read so far; a task's final figure adds the
  *tail*: the part of its window after the newest visible sample takes that sample's
  value, unless its exit read failed (then it counts nothing and is missing), and
  likewise when the exit made no read (nothing new could be visible) but the
  device's newest read had failed: the exit read would have failed too. A service's
  window is the union of its tasks' windows; ``reset`` counts from its own instant
  on.
- docs/semantics.md rule 1 and docs/design.md ("Skipping exit reads", "Horizons"):
  every device is read (in order, one read each) at ``poll()`` while a task runs or
  a closed window is not yet covered by read samples, and at a task's exit unless no
  sample newer than the newest one read can be visible yet; nowhere else. After an
  idle spell in which every window was covered, the first task starts the devices
  afresh from its start (the idle stretch is never read).
- docs/semantics.md rule 5 and its "Choices made where the definition leaves room":
  a failed read of any device makes every task running then ``partial`` (recovered
  samples still count); it makes a service ``partial`` if the service was running,
  or had window time after its reset not yet covered by that device's samples; the
  worst status since the last reset. While a device's newest read failed, the window
  time after the newest sample read up to now counts as *missing* for running tasks
  and for services; ``coverage`` is read time over read plus missing time (1.0 where
  nothing was needed yet).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass, field
from fractions import Fraction

#: Shares under ``split`` are ``SCALE / N``: exact for up to 4 services at once.
SCALE = 12

NEG_INF = -(10**18)


@dataclass(frozen=True)
class Figures:
    """What the oracle says one figure set must be (ms as exact fractions)."""

    gpu_ms: Fraction
    gpu_util_ms: Fraction
    status: str
    coverage: Fraction


@dataclass
class Task:
    service: str
    start: int
    epoch: int
    concurrency: int
    end: int | None = None
    final: Figures | None = None


@dataclass
class Service:
    name: str
    active: int = 0
    task_count: int = 0
    reset_at: int = NEG_INF
    last_close: int = NEG_INF
    failed: bool = False


@dataclass
class Device:
    #: Utilisation steps: from ``times[i]`` on, ``values[i]`` percent.
    times: list[int] = field(default_factory=lambda: [NEG_INF])
    values: list[int] = field(default_factory=lambda: [0])
    #: Up to where samples were read (a sample end, or a task start after idle).
    horizon: int = NEG_INF
    #: The newest sample a read brought, and its value.
    newest: int | None = None
    newest_value: int | None = None
    #: The newest read of this device failed.
    failing: bool = False


class Oracle:
    """The defined figures for one tracker on one simulated GPU.

    Args:
        devices: Number of simulated devices, all tracked.
        period_units: Units per driver sample period.
        threshold: Percent at or below which a sample is idle.
        split: Attribution ``split`` (else ``device``).
        unit_ms: Milliseconds per unit (for the figures' scale only).
        start: The clock at construction, in units.
    """

    def __init__(
        self,
        *,
        devices: int,
        period_units: int,
        threshold: float,
        split: bool,
        unit_ms: Fraction,
        start: int,
    ) -> None:
        self.period = period_units
        self.threshold = threshold
        self.split = split
        self.unit_ms = unit_ms
        self.now = start
        self.devices = [Device() for _ in range(devices)]
        self.services: dict[str, Service] = {}
        self.tasks: list[Task] = []
        #: ``(time, services active from then on)``; the last entry wins at one instant.
        self.changes: list[tuple[int, frozenset[str]]] = [(NEG_INF, frozenset())]
        self.running = 0
        self.last_close = NEG_INF
        #: Failed reads so far: a task running while it changes is partial.
        self.fail_epoch = 0
        #: Reads still to fail (``None``: every read), as ``SimulatedGpu.fail_reads``.
        self.failures_left: int | None = 0
        #: Read calls made so far, as ``SimulatedGpu.reads`` counts them.
        self.reads = 0
        self._samples: dict[tuple[int, int], int] = {}

    # -- what the test does --------------------------------------------------------

    def advance(self, units: int) -> None:
        assert units >= 0
        self.now += units

    def set_utilization(self, percent: int, device: int) -> None:
        dev = self.devices[device]
        while dev.times[-1] >= self.now and len(dev.times) > 1:
            dev.times.pop()
            dev.values.pop()
        dev.times.append(self.now)
        dev.values.append(percent)

    def fail_reads(self, times: int | None) -> None:
        self.failures_left = times

    def begin(self, service: str) -> Task:
        svc = self.services.setdefault(service, Service(service))
        if self.running == 0 and self._covered(self.last_close):
            # The first task after a settled idle spell: reading starts from here.
            for dev in self.devices:
                dev.horizon = max(dev.horizon, self.now)
        self.running += 1
        svc.active += 1
        if svc.active == 1:
            self._activity_changed()
        task = Task(service, self.now, self.fail_epoch, svc.active)
        self.tasks.append(task)
        return task

    def end(self, task: Task) -> Figures:
        assert task.end is None
        newest_visible = self.now // self.period
        must_read = any(dev.newest is None or newest_visible > dev.newest for dev in self.devices)
        outcomes = self._read_all() if must_read else None
        svc = self.services[task.service]
        svc.active -= 1
        svc.task_count += 1
        self.running -= 1
        task.end = self.now
        if svc.active == 0:
            svc.last_close = self.now
            self._activity_changed()
        if self.running == 0:
            self.last_close = self.now
        if outcomes is not None:
            self._apply(outcomes)
        task.final = self._task_figures(task)
        return task.final

    def poll(self) -> None:
        if self.running or not self._covered(self.last_close):
            self._apply(self._read_all())

    def reset(self, service: str | None) -> None:
        names = list(self.services) if service is None else [service]
        for name in names:
            svc = self.services.get(name)
            if svc is not None:
                svc.task_count = 0
                svc.failed = False
                svc.reset_at = self.now

    # -- what the figures must be -----------------------------------------------------

    def task_figures(self, task: Task) -> Figures:
        """Final once ended; live (real samples read so far) while running."""
        if task.final is not None:
            return task.final
        return self._task_figures(task, live=True)

    def service_figures(self, name: str) -> tuple[int, int, Figures]:
        """``(task_count, active_tasks, figures)`` of one service since its last reset."""
        svc = self.services[name]
        busy = weighted = covered = missing = 0
        for index, dev in enumerate(self.devices):
            lo = svc.reset_at
            if dev.horizon > lo:
                b, w, c = self._integrals(name, index, lo, dev.horizon)
                busy, weighted, covered = busy + b, weighted + w, covered + c
            if dev.failing:
                missing += self._active_time(name, max(dev.horizon, svc.reset_at), self.now)
        status = "partial" if svc.failed or missing else "ok"
        return svc.task_count, svc.active, self._figures(busy, weighted, covered, missing, status)

    # -- internals ----------------------------------------------------------------------

    def _covered(self, t: int) -> bool:
        """Whether every device's samples were read up to ``t``."""
        return all(dev.horizon >= t for dev in self.devices)

    def _activity_changed(self) -> None:
        active = frozenset(name for name, svc in self.services.items() if svc.active)
        self.changes.append((self.now, active))

    def _read_all(self) -> list[bool]:
        """One read per device, in order; True where it failed."""
        outcomes = []
        for _ in self.devices:
            self.reads += 1
            failed = self.failures_left is None or self.failures_left > 0
            if self.failures_left:
                self.failures_left -= 1
            outcomes.append(failed)
        return outcomes

    def _apply(self, outcomes: list[bool]) -> None:
        newest = self.now // self.period
        for index, (dev, failed) in enumerate(zip(self.devices, outcomes, strict=True)):
            if failed:
                dev.failing = True
                self.fail_epoch += 1
                for svc in self.services.values():
                    if svc.active or svc.last_close > max(dev.horizon, svc.reset_at):
                        svc.failed = True
                continue
            dev.failing = False
            if newest >= 1:
                dev.newest = newest
                dev.newest_value = self.sample(index, newest)
                dev.horizon = max(dev.horizon, newest * self.period)

    def _task_figures(self, task: Task, live: bool = False) -> Figures:
        busy = weighted = covered = missing = 0
        end = self.now if live else task.end
        assert end is not None
        for index, dev in enumerate(self.devices):
            read_to = min(end, dev.horizon)
            if read_to > task.start:
                b, w, c = self._integrals(task.service, index, task.start, read_to)
                busy, weighted, covered = busy + b, weighted + w, covered + c
            if live:
                if dev.failing and self.now > max(dev.horizon, task.start):
                    missing += self.now - max(dev.horizon, task.start)
                continue
            if dev.horizon >= end:
                continue
            # The tail: after the newest sample read, the newest visible sample's value;
            # nothing if the device's newest read failed (this exit's read, or the one
            # before an exit that needed no read: that exit read would have failed too).
            lo = max(task.start, dev.horizon)
            value = dev.newest_value
            if dev.failing or value is None:
                missing += end - lo
                continue
            covered += end - lo
            if value > self.threshold:
                share = self._share(task.service, lo, end)
                busy += share
                weighted += value * share
        partial = self.fail_epoch != task.epoch or missing > 0
        return self._figures(busy, weighted, covered, missing, "partial" if partial else "ok")

    def _figures(
        self, busy: int, weighted: int, covered: int, missing: int, status: str
    ) -> Figures:
        seen = covered + missing
        return Figures(
            gpu_ms=Fraction(busy, SCALE) * self.unit_ms,
            gpu_util_ms=Fraction(weighted, SCALE * 100) * self.unit_ms,
            status=status,
            coverage=Fraction(covered, seen) if seen else Fraction(1),
        )

    def sample(self, device: int, k: int) -> int:
        """Sample ``k`` of ``device``: mean over ``((k-1)P, kP]``, rounded half up."""
        key = (device, k)
        value = self._samples.get(key)
        if value is None:
            dev = self.devices[device]
            lo, hi = (k - 1) * self.period, k * self.period
            total = 0
            i = bisect_right(dev.times, lo) - 1
            cursor = lo
            while cursor < hi:
                nxt = dev.times[i + 1] if i + 1 < len(dev.times) else hi
                stop = min(nxt, hi)
                total += dev.values[i] * (stop - cursor)
                cursor = stop
                i += 1
            value = (2 * total + self.period) // (2 * self.period)  # half up
            if hi <= self.now:
                self._samples[key] = value  # visible: it can no longer change
        return value

    def _segments(self, service: str, lo: int, hi: int) -> list[tuple[int, int, int]]:
        """``(a, b, share)`` over ``(lo, hi]``: ``service``'s share (x SCALE) on ``(a, b]``."""
        out = []
        changes = self.changes
        i = bisect_right(changes, lo, key=lambda c: c[0]) - 1
        while i < len(changes):
            at, active = changes[i]
            nxt = changes[i + 1][0] if i + 1 < len(changes) else math.inf
            a, b = max(at, lo), min(nxt, hi)
            if b > a and service in active:
                out.append((a, int(b), SCALE // len(active) if self.split else SCALE))
            if nxt >= hi:
                break
            i += 1
        return out

    def _integrals(self, service: str, device: int, lo: int, hi: int) -> tuple[int, int, int]:
        """``service`` over ``(lo, hi]``: busy and busy x percent time (x SCALE), active time."""
        busy = weighted = active = 0
        period = self.period
        for a, b, share in self._segments(service, lo, hi):
            active += b - a
            k = a // period + 1
            while (k - 1) * period < b:
                overlap = min(b, k * period) - max(a, (k - 1) * period)
                value = self.sample(device, k)
                if value > self.threshold:
                    busy += share * overlap
                    weighted += value * share * overlap
                k += 1
        return busy, weighted, active

    def _share(self, service: str, lo: int, hi: int) -> int:
        return sum(share * (b - a) for a, b, share in self._segments(service, lo, hi))

    def _active_time(self, service: str, lo: int, hi: int) -> int:
        return sum(b - a for a, b, _ in self._segments(service, lo, hi)) if hi > lo else 0
