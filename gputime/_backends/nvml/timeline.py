"""Driver rows onto the tracker's timeline: cleaned, mapped, and assembled into a reading.

Both utilisation sources (the device's samples and the per-process samples)
arrive as rows ``(driver timestamp µs, percent)``. Here they are cleaned,
mapped onto the tracker's clock, and turned into what the ledger integrates:
samples, the idle stretches between them, and the *idle claim* after the
newest one (real drivers record nothing while the GPU is idle, so the absence
of a sample that would be visible by now is itself a reading).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable

from gputime._backends._base import Sample
from gputime._backends.nvml.cadence import SLACK
from gputime._backends.nvml.clocks import FUTURE_SLACK, ClockMap, TimeBases, detect_base
from gputime._backends.nvml.device import Device
from gputime._faults import log_once
from gputime._types import Clock

#: Extra lookback when asking NVML for samples newer than ``since``, in µs, so
#: that rounding in the clock mapping never hides a sample.
_LOOKBACK_US = 1000
#: NVML's timestamps have microsecond resolution: a sample that maps within this
#: of ``since`` is the one that ended there.
_RESOLUTION = 1e-6

#: Whether the stretch from ``since`` to the first new sample was idle (0.0) or
#: lost (``None``): called with the device, ``since`` and the read time.
FirstGap = Callable[[Device, float, float], float | None]
#: What a read of a utilisation source returns: samples, the idle claim, the source's name.
Read = tuple[list[Sample], float | None, str]


class Timeline:
    """One session's mapping of driver time onto the tracker's, per clock the devices stamp with.

    Args:
        clock: The tracker's clock.
        bases: The clocks a device may stamp its samples with.
    """

    def __init__(self, clock: Clock, bases: TimeBases) -> None:
        self._clock = clock
        self._bases = bases
        # One mapping per clock the devices stamp samples with, made on first use.
        self._maps: dict[str, ClockMap] = {}

    def mapping(self, base: str) -> ClockMap:
        """The mapping of clock ``base`` onto the tracker's clock."""
        mapping = self._maps.get(base)
        if mapping is None:
            mapping = self._maps[base] = ClockMap(self._clock, self._bases[base])
        return mapping

    def after_fork(self) -> None:
        """A forked child: fresh locks in the mappings."""
        for mapping in self._maps.values():
            mapping.after_fork()

    def last_seen_us(self, dev: Device, since: float) -> int:
        """NVML's ``lastSeenTimeStamp`` for samples newer than ``since``.

        0 (everything the buffer holds) until a sample showed which clock the
        driver stamps with: a guess in the wrong clock would hide every sample.
        """
        if dev.base is None:
            return 0
        return max(0, dev.mapping.to_raw_us(since) - _LOOKBACK_US)

    @staticmethod
    def slack(dev: Device) -> float:
        """How late a sample may be, and how far off its mapped time."""
        jitter = dev.cadence.jitter
        return (jitter if jitter is not None else SLACK) + dev.mapping.uncertainty

    def clean(
        self, dev: Device, rows: Iterable[tuple[int, float | None]], last_seen: int, now: float
    ) -> list[tuple[int, float]]:
        """Drop garbage rows, sort, de-duplicate (the last row of a timestamp wins).

        Every row the driver returns passes through here once, so this is also
        where its clock (from the first samples ever seen) and its cadence are
        learned.
        """
        rows = list(rows)
        plausible = [(ts, v) for ts, v in rows if ts > 0 and v is not None and 0 <= v <= 100]
        dropped = len(rows) - len(plausible)
        if dev.base is None and plausible:
            self._learn_base(dev, max(ts for ts, _ in plausible))
        horizon = dev.mapping.to_raw_us(now + FUTURE_SLACK)
        kept: dict[int, float] = {}
        for ts, value in plausible:
            if ts > horizon:
                dropped += 1
            elif ts > last_seen:
                kept[ts] = value
        if dropped:
            log_once(
                f"garbage {dev.info.id}",
                logging.DEBUG,
                "gputime: dropped %d malformed NVML sample(s) from %s",
                dropped,
                dev.info.id,
            )
        ordered = sorted(kept.items())
        dev.cadence.observe(ts for ts, _ in ordered)
        return ordered

    def _learn_base(self, dev: Device, newest_us: int) -> None:
        base = detect_base(newest_us, self._bases)
        # The mapping first: a read on another thread that sees the base must
        # map through its clock (a lastSeenTimeStamp in the wrong one hides samples).
        dev.mapping = self.mapping(base)
        dev.base = base
        if base != "wall":
            log_once(
                f"base {dev.info.id}",
                logging.INFO,
                "gputime: %s stamps its samples with CLOCK_%s, not the wall clock; "
                "mapping through that clock",
                dev.info.id,
                base.upper(),
            )

    @staticmethod
    def newer(dev: Device, rows: Iterable[tuple[int, float]], since: float) -> list[Sample]:
        """Rows on the tracker's clock, newer than ``since``."""
        to_tracker = dev.mapping.to_tracker
        # The lookback may bring back the sample ending at ``since``: leave it out.
        return [
            (end, value)
            for end, value in ((to_tracker(ts), v) for ts, v in rows)
            if end > since + _RESOLUTION
        ]

    def assemble(
        self,
        dev: Device,
        since: float,
        now: float,
        samples: list[Sample],
        first_gap: FirstGap | None,
    ) -> tuple[list[Sample], float | None]:
        """The reading: samples with the idle stretches between them, and the idle claim.

        A sample covers one period before its timestamp. Time before that back
        to the previous sample (or ``since``) that no sample covers is a stretch
        the driver took samples of and recorded none: idle, unless ``first_gap``
        finds that the ring buffer overran since ``since`` (then lost). After
        the newest sample, every sample stamped up to the read time less the
        jitter would be visible now: none newer means idle up to one (longest)
        period before that, and, once the period is known, up to the newest
        tick of the driver's grid visible by now (the claim).
        """
        cadence = dev.cadence
        reach = cadence.reach
        slack = self.slack(dev)
        reading: list[Sample] = []
        previous = since
        for index, (end, value) in enumerate(samples):
            start = end - reach
            if start > previous + slack:
                gap = 0.0 if index or first_gap is None else first_gap(dev, since, now)
                reading.append((start, gap))
            reading.append((end, value))
            previous = end
        if samples:
            dev.note_newest(*samples[-1])
        claim = now - cadence.lag - slack
        newest = dev.newest_end
        if cadence.certain and newest is not None:
            # The period known, the driver's grid runs on from the newest
            # sample: every tick visible by now (at most the jitter ago) was
            # taken and recorded nothing, so idle up to the newest of them.
            ticks = math.floor((now - slack - newest) / reach)
            if ticks >= 1:
                claim = max(claim, newest + ticks * reach)
        if samples and claim <= previous:
            return reading, None  # the newest sample says more than the claim
        # Without new samples even a claim that reaches no further than
        # ``since`` says something: the newest reading is idleness, so a
        # task's tail is idle (a buffer that never held a sample included).
        return reading, claim
