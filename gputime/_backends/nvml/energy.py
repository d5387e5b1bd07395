"""Energy: mean power between the cumulative counter's own steps.

``nvmlDeviceGetTotalEnergyConsumption`` is cumulative (mJ), so a failed or
deferred read loses nothing: the next good read's delta covers the stretch.
The counter moves in steps, learned by watching it closely
(:class:`~gputime._backends.nvml.cadence.CounterClock`), so that each delta is
credited to the stretch between its own steps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from gputime._backends._base import Sample
from gputime._backends.nvml.cadence import CALIBRATE_STEP
from gputime._backends.nvml.device import Device
from gputime._backends.nvml.driver import Driver
from gputime._backends.nvml.errors import UNSUPPORTED, NvmlDeviceLostError, NvmlError, log_failure
from gputime._backends.nvml.inventory import ENERGY_CALL
from gputime._types import Clock

#: The energy counter updates every ~100 ms; unchanged for this long, it is stuck.
_ENERGY_STALL = 1.0
#: Watch a counter for at most this long (counters step every 10 to 100 ms on the GPUs seen)...
_CALIBRATE_FOR = 1.0
#: ...and again this often while tasks run, to follow the drift between the
#: GPU's timer and the host's clock.
_RECALIBRATE = 60.0


class EnergyReader:
    """Reads devices' energy counters as power samples.

    Args:
        driver: The session's NVML calls.
        clock: The tracker's clock.
    """

    def __init__(self, driver: Driver, clock: Clock) -> None:
        self._driver = driver
        self._clock = clock

    def probe(self, dev: Device) -> None:
        """At open: whether the device has the counter, and a first baseline."""
        try:
            energy = int(self._driver.call(dev, ENERGY_CALL))
        except NvmlError as exc:
            if exc.code in UNSUPPORTED:
                dev.energy_ok = False
            else:
                log_failure(exc)
            return
        dev.energy_base = (self._clock(), energy)

    def read(self, dev: Device) -> list[Sample]:
        """Mean power (mW) since the last read, as of the counter's steps; ``[]`` if none yet.

        Raises:
            NvmlDeviceLostError: The GPU is gone (other failures defer the sample).
        """
        try:
            energy = int(self._driver.call(dev, ENERGY_CALL))
        except NvmlDeviceLostError:
            raise
        except NvmlError as exc:
            # The counter is cumulative: the next good read covers this stretch too.
            log_failure(exc)
            return []
        read_at = self._clock()
        # Bases keep the read's own time, mapped when used: a calibration
        # learned since then applies to them too.
        as_of = dev.counter.as_of
        at = as_of(read_at)
        with dev.lock:
            base = dev.energy_base
            if base is None or at <= as_of(base[0]):
                if base is None:
                    dev.energy_base = (read_at, energy)
                return []
            elapsed = at - as_of(base[0])
            if energy < base[1]:
                dev.energy_base = (read_at, energy)  # counter restarted (driver reload)
                return [(at, None)]
            if energy == base[1]:
                if elapsed < _ENERGY_STALL:
                    # The counter updates every ~100 ms: wait for it rather than
                    # report 0 for a stretch shorter than its update period.
                    return []
                dev.energy_base = (read_at, energy)
                return [(at, None)]
            dev.energy_base = (read_at, energy)
        return [(at, (energy - base[1]) / elapsed)]  # mJ / s = mW

    def rebase(self, devices: Sequence[Device]) -> None:
        """Fresh baselines: the next power sample starts now, not at the last read."""
        for dev in devices:
            if dev.energy_ok and dev.dead is None:
                try:
                    energy = int(self._driver.call(dev, ENERGY_CALL))
                except NvmlError as exc:
                    log_failure(exc)  # the next read's delta covers the spell
                    continue
                with dev.lock:
                    dev.energy_base = (self._clock(), energy)

    @staticmethod
    def calibration_due(devices: Sequence[Device], now: float) -> bool:
        """Whether a counter has not been watched for ``_RECALIBRATE`` seconds."""
        return any(
            dev.energy_ok and dev.dead is None and now - dev.counter.calibrated_at >= _RECALIBRATE
            for dev in devices
        )

    def calibrate(self, devices: Sequence[Device], sleep: Callable[[float], object]) -> None:
        """Learn when each counter steps: a read every ``CALIBRATE_STEP`` until three steps."""
        for dev in devices:
            if dev.energy_ok and dev.dead is None:
                self._watch(dev, sleep)

    def _watch(self, dev: Device, sleep: Callable[[float], object]) -> None:
        call, clock = self._driver.call, self._clock
        steps: list[float] = []
        try:
            before, value = clock(), int(call(dev, ENERGY_CALL))
            deadline = before + _CALIBRATE_FOR
            # Bounded in reads too: a clock that does not move must not hold us.
            for _ in range(round(_CALIBRATE_FOR / CALIBRATE_STEP)):
                sleep(CALIBRATE_STEP)
                now, seen = clock(), int(call(dev, ENERGY_CALL))
                if seen != value:
                    steps.append((before + now) / 2)  # it stepped between the two reads
                before, value = now, seen
                if len(steps) == 3 or now >= deadline:
                    break
        except NvmlError as exc:
            log_failure(exc)
            steps = []
        dev.counter.learn(steps, clock())
