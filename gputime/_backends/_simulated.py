"""A simulated GPU that models the NVIDIA driver's utilisation sampling.

Sample ``k`` of a device has timestamp ``k * sample_period`` on the clock and
carries the time-weighted mean of the utilisation that was set over
``((k-1)·P, k·P]``, rounded to the nearest integer percent, halves up. It is
visible once the clock reaches its timestamp. That is the model the NVML
backend sees from the real driver, so every figure gputime computes on it can
be checked exactly.
"""

from __future__ import annotations

import math
import threading
import time
from bisect import bisect_right
from collections.abc import Sequence

from gputime import _validate
from gputime._backends._base import DeviceInfo, Reading, Sample
from gputime._types import Attribution, Clock, DeviceSelector

# Float sums of k·P drift by a few ulps; anything closer than this to an integer
# (sample index or percent half) is treated as exactly on it.
_EPS = 1e-9


#: What a read returns when the driver has produced no sample since ``since``.
_NOTHING_NEW = Reading()


class SimulatedReadError(RuntimeError):
    """The failure :meth:`SimulatedGpu.fail_reads` injects."""


class _Timeline:
    """Utilisation of one simulated device as a step function of time."""

    __slots__ = ("times", "values")

    def __init__(self) -> None:
        self.times: list[float] = [-math.inf]
        self.values: list[float] = [0.0]

    def set(self, at: float, percent: float) -> None:
        if at <= self.times[-1]:
            # Several changes at one instant: the last one wins.
            while len(self.times) > 1 and self.times[-1] >= at:
                self.times.pop()
                self.values.pop()
        self.times.append(at)
        self.values.append(percent)

    def mean(self, start: float, end: float) -> float:
        """Time-weighted mean over ``(start, end]``."""
        i = bisect_right(self.times, start) - 1
        total = 0.0
        cursor = start
        while cursor < end:
            nxt = self.times[i + 1] if i + 1 < len(self.times) else math.inf
            stop = min(nxt, end)
            total += self.values[i] * (stop - cursor)
            cursor = stop
            i += 1
        return total / (end - start)

    def forget_before(self, at: float) -> None:
        """Drop changes older than the one in effect at ``at``."""
        i = bisect_right(self.times, at) - 1
        if i > 0:
            self.times = [-math.inf, *self.times[i + 1 :]]
            self.values = self.values[i:]


class SimulatedGpu:
    """A backend modelling the driver's sample buffer, for tests and demos.

    Args:
        devices: Number of simulated devices.
        sample_period: The driver's sample period ``P`` in seconds.
        clock: Monotonic seconds; ``None`` uses the same default clock as
            :class:`~gputime.Tracker` (``time.monotonic``).
        buffer_samples: How many samples the driver keeps per device, like the
            real driver's ring buffer; older samples are lost and a reader that
            fell further behind sees the lost stretch as missing.
        measure_energy: Also model an energy counter: readings then carry the
            mean power set with :meth:`set_power` over each sample period, and
            figures get ``energy_mj``.

    Raises:
        ValueError: ``devices`` is not a positive integer, or ``sample_period``
            or ``buffer_samples`` is not positive.
    """

    name = "simulated"

    def __init__(
        self,
        devices: int = 1,
        *,
        sample_period: float = 1 / 6,
        clock: Clock | None = None,
        buffer_samples: int = 600,
        measure_energy: bool = False,
    ) -> None:
        _validate.count("devices", devices, minimum=1)
        sample_period = _validate.finite("sample_period", sample_period, positive=True)
        _validate.count("buffer_samples", buffer_samples, minimum=1)
        self.clock: Clock = clock if clock is not None else time.monotonic
        self.sample_period: float = float(sample_period)
        self.buffer_samples = buffer_samples
        self.measure_energy: bool = bool(measure_energy)
        self._timelines = [_Timeline() for _ in range(devices)]
        self._power = [_Timeline() for _ in range(devices)]
        self._failures_left: int | None = 0
        self._failing_device: int | None = None
        self._lock = threading.Lock()
        #: Reads made so far (every call to a session's ``read``), for tests.
        self.reads: int = 0

    @property
    def device_count(self) -> int:
        """How many simulated devices there are."""
        return len(self._timelines)

    def set_utilization(self, percent: float, device: int = 0) -> None:
        """Set ``device``'s utilisation from the clock's current time on.

        Raises:
            ValueError: ``percent`` is outside [0, 100] or ``device`` does not exist.
        """
        if not _validate.is_real(percent) or not 0 <= percent <= 100:
            raise ValueError(f"percent={percent!r}: must be a number in [0, 100]")
        timeline = self._timeline(device)
        with self._lock:
            now = self.clock()
            timeline.set(now, float(percent))
            # Keep what the buffer can still ask for, even if nobody reads.
            timeline.forget_before((self._oldest_kept(now) - 1) * self.sample_period)

    def set_power(self, watts: float, device: int = 0) -> None:
        """Set ``device``'s power draw from the clock's current time on.

        Only read when the GPU was made with ``measure_energy=True``.

        Raises:
            ValueError: ``watts`` is negative or not a finite number, or
                ``device`` does not exist.
        """
        watts = _validate.finite("watts", watts, minimum=0.0)
        self._timeline(device)
        with self._lock:
            now = self.clock()
            self._power[device].set(now, float(watts))
            self._power[device].forget_before((self._oldest_kept(now) - 1) * self.sample_period)

    def fail_reads(self, times: int | None = None, *, device: int | None = None) -> None:
        """Make the next ``times`` reads fail; every read while ``times`` is ``None``.

        A read is one call that reads one device's samples. ``fail_reads(0)``
        ends the failures.

        Args:
            times: How many reads fail (``None``: every read, until changed).
            device: Only this device's reads fail (and count); ``None``: any
                device's.
        """
        if times is not None:
            _validate.count("times", times)
        if device is not None:
            self._timeline(device)  # a clear error for a device that does not exist
        with self._lock:
            self._failures_left = times
            self._failing_device = device

    def sample(self, k: int, device: int = 0) -> int:
        """The value of sample ``k`` of ``device``, visible yet or not.

        Raises:
            ValueError: ``k`` is below 1 (the driver's first sample ends one
                period after time 0) or no longer in the driver's buffer.
        """
        timeline = self._timeline(device)
        period = self.sample_period
        with self._lock:
            if k < self._oldest_kept(self.clock()):
                raise ValueError(f"k={k!r}: sample no longer in the driver's buffer (or before 1)")
            mean = timeline.mean((k - 1) * period, k * period)
        return math.floor(mean + 0.5 + _EPS)

    def _oldest_kept(self, now: float) -> int:
        newest = math.floor(now / self.sample_period + _EPS)
        return max(1, newest - self.buffer_samples + 1)

    def open(
        self,
        *,
        clock: Clock,
        devices: Sequence[DeviceSelector] | None,
        attribution: Attribution,
    ) -> _SimulatedSession:
        if attribution == "process":
            raise ValueError("attribution='process': the simulated GPU has no per-process samples")
        if clock is not self.clock:
            raise ValueError(
                "clock: the tracker and the SimulatedGpu must share one clock "
                "(pass the same clock to both, or give the tracker clock=None)"
            )
        indices = (
            list(range(self.device_count))
            if devices is None
            else [self._resolve(selector) for selector in devices]
        )
        if len(set(indices)) != len(indices):
            raise ValueError(f"devices={list(devices or ())!r}: a device is named twice")
        return _SimulatedSession(self, indices)

    def _resolve(self, selector: DeviceSelector) -> int:
        if isinstance(selector, bool):
            raise ValueError(f"devices: {selector!r} is not a device index or id")
        if isinstance(selector, int) and 0 <= selector < self.device_count:
            return selector
        if isinstance(selector, str):
            for index in range(self.device_count):
                if selector == _device_id(index):
                    return index
        raise ValueError(
            f"devices: no simulated device {selector!r} "
            f"(there are {self.device_count}: indices 0..{self.device_count - 1} "
            f"or ids {_device_id(0)!r}...)"
        )

    def _timeline(self, device: int) -> _Timeline:
        if (
            isinstance(device, bool)
            or not isinstance(device, int)
            or not 0 <= device < self.device_count
        ):
            raise ValueError(f"device={device!r}: no such simulated device")
        return self._timelines[device]

    def _read(self, device: int, since: float) -> Reading:
        period = self.sample_period
        with self._lock:
            self.reads += 1
            if (self._failures_left is None or self._failures_left > 0) and (
                self._failing_device is None or self._failing_device == device
            ):
                if self._failures_left is not None:
                    self._failures_left -= 1
                raise SimulatedReadError(f"simulated read failure on device {device}")
            now = self.clock()
            newest = math.floor(now / period + _EPS)
            first = max(1, math.floor(max(since, 0.0) / period + _EPS) + 1)
            if first > newest:
                return _NOTHING_NEW
            oldest_kept = self._oldest_kept(now)
            samples: list[Sample] = []
            if first < oldest_kept <= newest:
                # The reader fell behind the ring buffer: that stretch is lost.
                samples.append(((oldest_kept - 1) * period, None))
                first = oldest_kept
            timeline = self._timelines[device]
            for k in range(first, newest + 1):
                mean = timeline.mean((k - 1) * period, k * period)
                samples.append((k * period, float(math.floor(mean + 0.5 + _EPS))))
            timeline.forget_before((oldest_kept - 1) * period)
            power: list[Sample] = []
            if self.measure_energy:
                watts = self._power[device]
                power = [
                    (end, None if value is None else 1000.0 * watts.mean(end - period, end))
                    for end, value in samples
                ]
                watts.forget_before((oldest_kept - 1) * period)
        return Reading(utilization=samples, power=power)


class _SimulatedSession:
    def __init__(self, gpu: SimulatedGpu, indices: list[int]) -> None:
        self._gpu = gpu
        self._indices = indices
        self.devices: Sequence[DeviceInfo] = tuple(
            DeviceInfo(id=_device_id(i), name="Simulated GPU", index=i) for i in indices
        )
        self.measures_utilization: bool = True
        self.measures_energy: bool = gpu.measure_energy
        self.sample_period: float = gpu.sample_period
        # Sample k appears at k * P, never later (a hair earlier: the float
        # tolerance of _read): a task exit before then need not read.
        self.sample_jitter: float = -_EPS * gpu.sample_period

    def read(self, device: int, since: float) -> Reading:
        return self._gpu._read(self._indices[device], since)

    def close(self) -> None:
        pass

    def after_fork(self) -> None:
        self._gpu._lock = threading.Lock()


def _device_id(index: int) -> str:
    return f"SIM-{index}"
