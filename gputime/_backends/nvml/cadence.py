"""When the driver's counters move: the utilisation sample cadence, and the energy counter's steps.

Both are learned from what the driver shows, never assumed: the sample period
and jitter from the timestamps of consecutive samples (:class:`Cadence`), the
energy counter's steps from watching it closely (:class:`CounterClock`).
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Iterable, Sequence

#: The driver samples every 1/6 s to 1 s depending on the product. Until a
#: device's samples tell, a sample is taken to reach back 1/6 s (a longer guess
#: would credit a busy value back across idle time) and a sample may still be
#: due for up to 1 s (a shorter guess would call time idle whose sample is yet
#: to come).
DEFAULT_PERIOD = 1 / 6
MAX_PERIOD = 1.0
_MIN_PERIOD = 1 / 60
#: The shortest period NVML documents (1/6 s), less a margin: an interval
#: between samples is never taken for a whole multiple of a shorter period.
SHORTEST_PERIOD = 0.15
#: Consecutive samples lie a whole number of periods apart within this
#: fraction of a period (the driver's timestamps jitter by a few ms).
_PERIOD_TOLERANCE = 0.08
#: Intervals between samples kept to learn the period and the jitter from; the
#: oldest drop out, so one late sample does not keep exits careful for ever.
_CADENCE_WINDOW = 64
#: Fewer intervals than this teach no jitter (``SLACK`` until then).
_JITTER_MIN_INTERVALS = 3
#: NVML timestamps jitter by a few milliseconds around the nominal period.
SLACK = 0.02

#: Calibrating an energy counter (see CounterClock): read it this often...
CALIBRATE_STEP = 0.002
#: Counters that step this often or more need no correction (it would be below this).
_COUNTER_FINE = 0.005


def _whole(interval: float, period: float) -> bool:
    """Whether ``interval`` is a whole number of ``period`` (within the tolerance)."""
    return abs(interval - round(interval / period) * period) <= _PERIOD_TOLERANCE * period


class Cadence:
    """What one device's sample timestamps say about its driver's sampling.

    Real drivers record no sample while the GPU is idle, so consecutive
    recorded samples lie a whole number of periods apart, and most reads bring
    one sample: the period is learned from the intervals between consecutive
    timestamps, across reads. The smallest interval (the median of those
    close to it) is the period once it was seen twice. Seen once, it may
    itself span several periods (a GPU busy for single ticks only), so two
    bounds are kept, each used where it errs on the safe side:
    :attr:`shortest` for how far back a sample reaches (a longer guess would
    credit a busy value back across idle time) and :attr:`longest` for how
    long a sample may still be on its way (a shorter guess would call time
    idle whose sample is yet to come).
    """

    __slots__ = ("_intervals", "jitter", "longest", "newest_us", "shortest")

    def __init__(self) -> None:
        self._intervals: deque[float] = deque(maxlen=_CADENCE_WINDOW)
        #: The newest timestamp seen (driver microseconds), ``None`` before any.
        self.newest_us: int | None = None
        self.shortest: float | None = None
        self.longest: float | None = None
        #: The largest deviation of recent intervals from whole periods (s).
        self.jitter: float | None = None

    def observe(self, timestamps_us: Iterable[int]) -> None:
        """Learn from the timestamps (ascending) of the samples a read brought."""
        newest = self.newest_us
        learned = False
        for ts in timestamps_us:
            if newest is not None and ts > newest:
                interval = (ts - newest) / 1e6
                if interval >= _MIN_PERIOD:
                    self._intervals.append(interval)
                    learned = True
            if newest is None or ts > newest:
                newest = ts
        self.newest_us = newest
        if learned:
            self._estimate()

    def _estimate(self) -> None:
        intervals = self._intervals
        smallest = min(intervals)
        close = [i for i in intervals if i <= smallest * (1 + 2 * _PERIOD_TOLERANCE)]
        base = statistics.median(close)
        if len(close) >= 2:
            candidates = [base]
        else:
            # Seen once: any whole fraction of it down to the shortest period
            # that fits every interval may be the period.
            candidates = [
                base / m
                for m in range(1, max(1, int(base / SHORTEST_PERIOD)) + 1)
                if all(_whole(i, base / m) for i in intervals)
            ] or [base]
        self.shortest = min(*candidates, MAX_PERIOD)
        plausible = [c for c in candidates if c <= MAX_PERIOD * (1 + _PERIOD_TOLERANCE)]
        self.longest = max(plausible) if plausible else MAX_PERIOD
        if len(intervals) >= _JITTER_MIN_INTERVALS:
            period = self.shortest
            self.jitter = max(abs(i - round(i / period) * period) for i in intervals)

    @property
    def certain(self) -> bool:
        """Whether the period is known (seen twice), not just bounded."""
        return self.shortest is not None and self.shortest == self.longest

    @property
    def reach(self) -> float:
        """How far back a sample reaches: the period, or its shortest bound."""
        return self.shortest if self.shortest is not None else DEFAULT_PERIOD

    @property
    def lag(self) -> float:
        """How long the next sample may take: the period, or its longest bound."""
        return self.longest if self.longest is not None else MAX_PERIOD


class CounterClock:
    """When a device's energy counter steps, learned by watching it closely.

    The counter does not count continuously: it moves in steps (every ~100 ms
    on many GPUs, every ~10 ms on others), and a read returns the value as of
    the newest step. So the energy between two reads belongs to the stretch
    between their steps, not between the reads, and a whole step's energy
    (70 J at 700 W and 100 ms) would land in the wrong task. Zeus-style
    begin/end reads carry that error at both ends of every window. The
    session's calibration watches the counter until it stepped three times,
    evenly; from then on a read at ``t`` counts as of the newest step at or
    before ``t``. Counters that step irregularly, or finer than
    ``_COUNTER_FINE``, are read as they are.
    """

    __slots__ = ("calibrated_at", "period", "step_at")

    def __init__(self) -> None:
        #: Seconds between steps; ``None``: read the counter as it is.
        self.period: float | None = None
        #: Tracker time of one step.
        self.step_at = 0.0
        self.calibrated_at = -math.inf

    def as_of(self, t: float) -> float:
        """The time the counter's value at ``t`` is from: its newest step at or before ``t``."""
        period = self.period
        if period is None:
            return t
        return self.step_at + math.floor((t - self.step_at) / period + 1e-9) * period

    def learn(self, steps: Sequence[float], now: float) -> None:
        """Adopt the steps seen while watching (at least three, evenly spaced), or none."""
        self.calibrated_at = now
        if len(steps) < 3:
            self.period = None
            return
        first, second = steps[1] - steps[0], steps[2] - steps[1]
        even = abs(first - second) <= 2 * CALIBRATE_STEP + 0.05 * max(first, second)
        if not even or min(first, second) < _COUNTER_FINE:
            self.period = None
            return
        self.period = (steps[2] - steps[0]) / 2
        self.step_at = steps[2]
