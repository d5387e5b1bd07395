"""Driver timestamps onto the tracker's clock: which clock a device stamps with, and the mapping.

NVML stamps samples in microseconds of the wall clock (``CLOCK_REALTIME``) on
the drivers documented publicly, but at least one platform stamps the time
since boot, so the clock is detected per device (:func:`detect_base`). A
:class:`ClockMap` maps that clock onto the tracker's through the tightest of
several side-by-side readings of both, refreshed every second so that a step of
the wall clock is followed, and otherwise held fixed so that one driver sample
always maps to the same tracker time.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping

from gputime._faults import logger
from gputime._types import Clock

#: Samples stamped this far after "now" are garbage (or from before a wall-clock
#: step backwards); a clock that reads this far before a timestamp is not its clock.
FUTURE_SLACK = 0.05
#: The wall-clock/tracker offset is re-measured this often (tracker seconds)...
_CLOCK_REFRESH = 1.0
#: ...and only adopted when it moved by more than this (a wall-clock step), so
#: one sample keeps mapping to one tracker time between steps.
_CLOCK_STEP = 0.002

#: The clocks NVML may stamp samples with, by name, each read in nanoseconds.
TimeBases = Mapping[str, Callable[[], int]]


def boottime_ns() -> int:
    """``CLOCK_BOOTTIME`` in ns (Linux); the monotonic clock where there is none."""
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    return time.clock_gettime_ns(boottime) if boottime is not None else time.monotonic_ns()


def time_bases(
    wall: Callable[[], int], boot: Callable[[], int] | None, mono: Callable[[], int] | None
) -> dict[str, Callable[[], int]]:
    """The clocks a device may stamp with; ``None`` for the system's own."""
    return {
        "wall": wall,
        "boottime": boot if boot is not None else boottime_ns,
        "monotonic": mono if mono is not None else time.monotonic_ns,
    }


def detect_base(newest_us: int, bases: TimeBases) -> str:
    """Which clock a device stamps its samples with, from its newest timestamp.

    Drivers document the wall clock, but at least one platform stamps the time
    since boot. A timestamp lies in the past of its own clock, and the bases'
    ranges are far apart (the wall clock counts from 1970, the others from
    boot), so the base whose "now" is at or after the timestamp and closest to
    it is the one. The wall clock where none fits (a garbage timestamp).
    """
    best, best_age = "wall", math.inf
    for name, read_ns in bases.items():
        age = read_ns() / 1000 - newest_us
        if -FUTURE_SLACK * 1e6 <= age < best_age:
            best, best_age = name, age
    return best


class ClockMap:
    """Maps NVML's microseconds (of the clock a device stamps with) onto the tracker's clock.

    Holds one anchor pair ``(driver clock ns, tracker s)``; conversions use
    integer differences from it, so they keep sub-microsecond precision.

    Args:
        clock: The tracker's clock.
        wall_ns: The clock the driver stamps with, in nanoseconds.
    """

    def __init__(self, clock: Clock, wall_ns: Callable[[], int]) -> None:
        self._clock = clock
        self._wall_ns = wall_ns
        self._lock = threading.Lock()
        self._anchor_ns, self._anchor_t, self.uncertainty = self._measure()
        self._checked = self._anchor_t
        #: How far the clock drifted from the anchor at the last refresh: held
        #: below ``_CLOCK_STEP``, it is what the mapping may be off by now.
        self.drift = 0.0

    @property
    def error(self) -> float:
        """What a mapped time may be off by: the measurement's and the drift since."""
        return self.uncertainty + abs(self.drift)

    def _measure(self) -> tuple[int, float, float]:
        best: tuple[int, float, float] | None = None
        for _ in range(5):
            before = self._clock()
            wall = self._wall_ns()
            after = self._clock()
            half = (after - before) / 2
            if best is None or half < best[2]:
                best = (wall, before + half, half)
        assert best is not None
        return best

    def refresh(self, now: float) -> None:
        """Re-measure at most every ``_CLOCK_REFRESH`` s; adopt it after a wall-clock step."""
        if now - self._checked < _CLOCK_REFRESH:
            return
        wall, mid, half = self._measure()
        with self._lock:
            self._checked = now
            drift = (mid - self._anchor_t) - (wall - self._anchor_ns) / 1e9
            if abs(drift) > _CLOCK_STEP + half + self.uncertainty:
                logger.debug("gputime: wall clock moved by %.6f s; NVML times re-anchored", -drift)
                self._anchor_ns, self._anchor_t, self.uncertainty = wall, mid, half
                drift = 0.0
            self.drift = drift

    def to_tracker(self, wall_us: int) -> float:
        """A driver timestamp (µs) as tracker seconds."""
        return self._anchor_t + (wall_us * 1000 - self._anchor_ns) / 1e9

    def to_raw_us(self, t: float) -> int:
        """Tracker seconds as a driver timestamp (µs)."""
        return (self._anchor_ns + round((t - self._anchor_t) * 1e9)) // 1000

    def after_fork(self) -> None:
        """A forked child: the lock may have been held by a thread that does not exist there."""
        self._lock = threading.Lock()
