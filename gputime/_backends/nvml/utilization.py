"""A device's utilisation: its sample buffer, confirmed and stood in for by the rates.

The buffer (``nvmlDeviceGetSamples``) is the source: the driver's own samples,
integrated over the exact windows. ``nvmlDeviceGetUtilizationRates`` reports
the newest sample the driver took, recorded or not, and serves three ways: it
confirms that a buffer silent for a while means an idle GPU, it tells at once
whether a busy newest sample is still the newest, and it is the source where
the buffer is unsupported or does not record.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from gputime._backends._base import Sample
from gputime._backends.nvml.cadence import SHORTEST_PERIOD, SLACK
from gputime._backends.nvml.device import Device
from gputime._backends.nvml.driver import Driver
from gputime._backends.nvml.errors import (
    NOT_SUPPORTED,
    NOTHING_NEW,
    UNSUPPORTED,
    NvmlDeviceLostError,
    NvmlError,
    NvmlUnavailableError,
    log_failure,
)
from gputime._backends.nvml.inventory import GPU_UTILIZATION_SAMPLES, RATES_CALL, SAMPLES_CALL
from gputime._backends.nvml.timeline import Read, Timeline
from gputime._faults import log_once
from gputime._types import Clock

#: The fewest samples a driver's ring buffer is assumed to hold (drivers keep
#: about 100): a reader fewer samples behind cannot have lost any to an overrun.
_MIN_RING = 32

#: The field of an ``nvmlValue_t`` union that holds the number, by the value type NVML reports.
_VALUE_FIELDS = {
    0: "dVal",
    1: "uiVal",
    2: "ulVal",
    3: "ullVal",
    4: "sllVal",
    5: "siVal",
    6: "usVal",
}


def sample_value(value_type: int, value: Any) -> float | None:
    """The number in an ``nvmlValue_t`` union, by the value type NVML reported."""
    name = _VALUE_FIELDS.get(value_type)
    return None if name is None else float(getattr(value, name))


class UtilizationReader:
    """Reads devices' utilisation samples, and their rates where the samples cannot tell.

    Args:
        driver: The session's NVML calls.
        timeline: The session's mapping of driver rows onto the tracker's clock.
        clock: The tracker's clock.
    """

    def __init__(self, driver: Driver, timeline: Timeline, clock: Clock) -> None:
        self._driver = driver
        self._timeline = timeline
        self._clock = clock
        # Made once, and holding the driver only (no cycle back to the reader):
        # the overrun check handed to every assembly of the device's samples.
        self._first_gap = functools.partial(_overrun_gap, driver)

    def probe(self, dev: Device) -> None:
        """At open: which source works, and what the buffer already says.

        Failures other than "unsupported" (a lost GPU included) are logged;
        the reads will report them.
        """
        call = self._driver.call
        try:
            value_type, rows = call(dev, SAMPLES_CALL, GPU_UTILIZATION_SAMPLES, 0)
            # Whatever the buffer still holds (samples of earlier work, if
            # any) teaches the period and the clock the driver stamps with.
            kept = self._timeline.clean(
                dev,
                ((int(r.timeStamp), sample_value(value_type, r.sampleValue)) for r in rows),
                0,
                self._clock(),
            )
            if kept:
                newest = dev.mapping.to_tracker(kept[-1][0])
                dev.note_newest(newest, kept[-1][1])
                dev.heard_at = newest  # silent since that sample, not since the opening
            return
        except NvmlError as exc:
            if exc.code in NOTHING_NEW:
                return
            if exc.code not in UNSUPPORTED:
                log_failure(exc)
                return
        dev.samples_ok = False
        try:
            call(dev, RATES_CALL)
        except NvmlError as exc:
            if exc.code in UNSUPPORTED:
                dev.rates_ok = False
                dev.utilization = False
                dev.energy_ok = False
            else:
                log_failure(exc)

    def read(self, dev: Device, since: float, now: float) -> Read:
        """The device's samples newer than ``since``, with the idle stretches and claim."""
        timeline = self._timeline
        last_seen = timeline.last_seen_us(dev, since)
        rows = self._rows(dev, last_seen, now)
        if rows is None:
            return self.rates(dev, now), None, "utilization-rates"
        samples = timeline.newer(dev, rows, since)
        if not samples and dev.rates_ok and self._buffer_silent(dev, now):
            # Silent for a while: an idle GPU, which the rates confirm with 0
            # (they report the newest sample the driver took, recorded or not).
            # Anything else is a busy GPU whose buffer records nothing, unless
            # a sample landed between the two calls: look once more.
            rates = self.rates(dev, now)
            if rates and rates[0][1]:
                rows = self._rows(dev, last_seen, now) or []
                samples = timeline.newer(dev, rows, since)
                if not samples:
                    return self._buffer_not_filling(dev, since, now, rates[0][1])
        utilization, idle_until = timeline.assemble(dev, since, now, samples, self._first_gap)
        if dev.rates_ok and self._unsure_after_busy(dev, now, idle_until):
            rates = self.rates(dev, now)
            if rates and not rates[0][1] and dev.newest_end is not None:
                # The newest sample was busy and the newest the driver took is
                # not: that one came a period later (at least a shortest one),
                # and the time up to it was idle.
                cadence = dev.cadence
                confirmed = dev.newest_end + (cadence.reach if cadence.certain else SHORTEST_PERIOD)
                if idle_until is None or confirmed > idle_until:
                    idle_until = confirmed
        return utilization, idle_until, "samples"

    def rates(self, dev: Device, now: float) -> list[Sample]:
        """``nvmlDeviceGetUtilizationRates`` as one sample at ``now``; ``[]`` if unsupported.

        Raises:
            NvmlUnavailableError: Neither the samples nor the rates are supported.
            NvmlError: The call failed, or answered an impossible value.
        """
        try:
            value = int(self._driver.call(dev, RATES_CALL).gpu)
        except NvmlError as exc:
            if exc.code not in UNSUPPORTED:
                raise
            dev.rates_ok = False
            if dev.samples_ok:
                return []
            dev.utilization = False
            dev.info.details["utilization"] = False
            raise NvmlUnavailableError(
                f"gputime: {dev.info.id}: the driver supports neither utilisation samples "
                "nor utilisation rates"
            ) from exc
        if not 0 <= value <= 100:
            raise NvmlError(RATES_CALL, None, dev.info.id, f"{value}%")
        return [(now, float(value))]

    def _rows(self, dev: Device, last_seen: int, now: float) -> list[tuple[int, float]] | None:
        """The buffer's samples newer than ``last_seen``; ``None`` if the device has no buffer."""
        try:
            value_type, raw = self._driver.call(
                dev, SAMPLES_CALL, GPU_UTILIZATION_SAMPLES, last_seen
            )
        except NvmlError as exc:
            # Only NOT_SUPPORTED gives the buffer up here: a function missing at
            # read time, though it was there at open, fails the read.
            if exc.code == NOT_SUPPORTED:
                dev.samples_ok = False
                log_once(
                    f"nosamples {dev.info.id}",
                    logging.INFO,
                    "gputime: %s has no utilisation sample buffer; using utilisation rates",
                    dev.info.id,
                )
                return None
            if exc.code not in NOTHING_NEW:
                raise
            return []  # nothing newer: routine
        return self._timeline.clean(
            dev,
            ((int(r.timeStamp), sample_value(value_type, r.sampleValue)) for r in raw),
            last_seen,
            now,
        )

    def _unsure_after_busy(self, dev: Device, now: float, claim: float | None) -> bool:
        """Whether to ask the rates if the busy newest sample is still the newest one.

        Until the driver's period and jitter are known, a claim waits for the
        longest period a sample may take, and meanwhile a task's tail takes the
        newest sample's busy value although the driver may since have taken
        an idle one (a freshly booted GPU after its first busy samples; any GPU
        in the jitter window after a tick). The rates tell at once. Asked only
        in that window, at most once a shortest period.
        """
        newest = dev.newest_end
        if newest is None or not dev.newest_value:
            return False
        reach = dev.cadence.reach
        next_tick = newest + (reach if dev.cadence.certain else SHORTEST_PERIOD)
        claimed = claim is not None and claim >= next_tick
        if now < next_tick or claimed or now - dev.rates_checked < SHORTEST_PERIOD:
            return False
        dev.rates_checked = now
        return True

    def _buffer_silent(self, dev: Device, now: float) -> bool:
        """Whether to confirm idleness with the rates: no sample for over two periods.

        At most once a period per device, so a long idle stretch inside a task
        costs one extra driver call a period, never one per read.
        """
        lag = dev.cadence.lag
        if now - dev.heard_at <= 2 * lag + SLACK or now - dev.rates_checked < lag:
            return False
        dev.rates_checked = now
        return True

    @staticmethod
    def _buffer_not_filling(dev: Device, since: float, now: float, value: float) -> Read:
        """The rates say busy, the buffer stays empty: read the rates from now on.

        The stretch since ``since`` was not read (its idleness was only
        inferred from a buffer that does not record); the last period takes
        the rates' value.
        """
        dev.samples_ok = False
        log_once(
            f"notfilling {dev.info.id}",
            logging.WARNING,
            "gputime: %s reports %d%% utilisation but records no samples; using "
            "utilisation rates from now on (figures are 'partial' until then)",
            dev.info.id,
            value,
        )
        start = now - dev.cadence.lag
        reading: list[Sample] = [(start, None)] if start > since else []
        reading.append((now, value))
        return reading, None, "utilization-rates"


def _overrun_gap(driver: Driver, dev: Device, since: float, now: float) -> float | None:
    """Idle (0.0) or lost (``None``): the stretch from ``since`` to the first new sample.

    Only evidence makes it lost: the driver's ring buffer no longer reaches
    back to ``since`` although it is full enough to have overrun. A reader
    fewer than ``_MIN_RING`` samples behind cannot have lost any, and a
    buffer that holds fewer than that never overran (a freshly booted,
    mostly idle GPU holds few or none).
    """
    if now - since < _MIN_RING * dev.cadence.reach:
        return 0.0
    try:
        _type, raw = driver.call(dev, SAMPLES_CALL, GPU_UTILIZATION_SAMPLES, 0)
    except NvmlError as exc:
        if isinstance(exc, NvmlDeviceLostError):
            raise
        return None  # cannot tell: count the stretch as lost, never as idle
    stamps = [int(r.timeStamp) for r in raw if int(r.timeStamp) > 0]
    if len(stamps) < _MIN_RING:
        return 0.0
    return 0.0 if min(stamps) <= dev.mapping.to_raw_us(since) else None
