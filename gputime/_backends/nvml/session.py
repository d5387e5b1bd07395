"""A :class:`~gputime._backends.nvml.NvmlBackend` opened for one tracker.

The session is the façade the tracker sees (the backend ``Session`` protocol);
the work is done by the parts it composes, each given what it needs:

- :class:`~gputime._backends.nvml.driver.Driver`: every NVML call, the error
  rules, reads in flight for a safe close, initialising again after a fork or
  an UNINITIALIZED answer;
- :class:`~gputime._backends.nvml.timeline.Timeline`: driver rows onto the
  tracker's clock, assembled into readings with their idle claims;
- the readers: :class:`~gputime._backends.nvml.utilization.UtilizationReader`
  (the sample buffer and the rates), :class:`~gputime._backends.nvml.processes.
  ProcessReader` (``attribution="process"``) and :class:`~gputime._backends.nvml.
  energy.EnergyReader` (the energy counter and its calibration);
- :class:`~gputime._backends.nvml.device.Device`: each device's read state.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from gputime._backends._base import DeviceInfo, Reading
from gputime._backends.nvml.cadence import DEFAULT_PERIOD, SLACK
from gputime._backends.nvml.clocks import TimeBases
from gputime._backends.nvml.device import Device
from gputime._backends.nvml.driver import Driver
from gputime._backends.nvml.energy import EnergyReader
from gputime._backends.nvml.errors import NvmlUnavailableError
from gputime._backends.nvml.processes import ProcessReader
from gputime._backends.nvml.selection import Target
from gputime._backends.nvml.timeline import Timeline
from gputime._backends.nvml.utilization import UtilizationReader
from gputime._faults import log_once
from gputime._types import Attribution, Clock


class NvmlSession:
    """The NVML backend opened for one tracker, on its clock and devices.

    Takes over one reference on the NVML runtime, released by :meth:`close`.

    Args:
        nv: The bindings (``pynvml``).
        targets: The selected devices.
        clock: The tracker's clock.
        attribution: ``"process"`` reads per-process samples; else the device's.
        bases: The clocks a device may stamp its samples with.
        pids: For ``"process"``: the process ids that count as this process's.

    Raises:
        ValueError: ``attribution="process"`` where a device has no per-process samples.
    """

    def __init__(
        self,
        nv: Any,
        targets: Sequence[Target],
        clock: Clock,
        attribution: Attribution,
        *,
        bases: TimeBases,
        pids: Callable[[], frozenset[int]],
    ) -> None:
        self._clock = clock
        self._timeline = timeline = Timeline(clock, bases)
        now = clock()
        self._devs = [Device(target, timeline.mapping("wall"), now) for target in targets]
        self._driver = driver = Driver(nv, self._devs)
        self._utilization = UtilizationReader(driver, timeline, clock)
        self._energy = EnergyReader(driver, clock)
        self._processes = (
            ProcessReader(driver, timeline, pids) if attribution == "process" else None
        )
        for dev in self._devs:
            # Probe failures (a lost GPU included) are logged; reads will report them.
            if dev.utilization:
                self._utilization.probe(dev)
            if dev.utilization and dev.energy_ok:
                self._energy.probe(dev)
        if self._processes is not None:
            self._processes.probe(self._devs)
        self.devices: Sequence[DeviceInfo] = tuple(dev.info for dev in self._devs)
        self.measures_utilization = any(dev.utilization for dev in self._devs)
        # Energy is reported only for all devices or none: a total missing a
        # device would be silently low.
        self.measures_energy = bool(self._devs) and all(dev.energy_ok for dev in self._devs)
        if not self.measures_energy:
            for dev in self._devs:
                dev.energy_ok = False
        for dev in self._devs:
            dev.info.details.update(utilization=dev.utilization, energy=dev.energy_ok)
        self._warn_unmeasurable()

    @property
    def sample_period(self) -> float:
        """The longest of the devices' sample periods (1/6 s until learned).

        Where a device's period is not yet certain, its shortest bound: task
        exits then read the driver as soon as a sample may be new.
        """
        return max((dev.cadence.reach for dev in self._devs), default=DEFAULT_PERIOD)

    @property
    def sample_jitter(self) -> float:
        """How much later than one period after the newest sample the next may be visible.

        Learned per device from the driver's own timestamps (the largest
        deviation of recent intervals from whole periods), plus what the
        clock mapping may be off by now (its measurement, and the drift seen
        since it was anchored); 20 ms for a device not yet seen sampling.
        Task exits read the driver only once a new sample must be out, so at
        most about once per sample period.
        """
        learned = [
            (dev.cadence.jitter if dev.cadence.jitter is not None else SLACK) + dev.mapping.error
            for dev in self._devs
        ]
        return max(learned, default=SLACK)

    def read(self, device: int, since: float) -> Reading:
        """Read one device's samples newer than ``since`` (tracker seconds).

        Raises:
            IndexError: No such device in this session.
            NvmlError: An NVML call failed (``NvmlDeviceLostError`` once the GPU is gone).
            NvmlUnavailableError: The device has no utilisation figure (MIG).
            RuntimeError: The session is closed.
        """
        dev = self._devs[device]
        driver = self._driver
        if not driver.begin():
            raise RuntimeError("gputime: the NVML session is closed")
        try:
            if not dev.utilization:
                raise NvmlUnavailableError(
                    f"gputime: {dev.info.id} has no utilisation figure "
                    f"({'MIG mode' if dev.info.details['mig'] else 'not supported by the driver'})"
                )
            now = self._clock()
            dev.mapping.refresh(now)
            idle_until: float | None = None
            if self._processes is not None:
                utilization, idle_until, source = self._processes.read(dev, since, now)
            elif dev.samples_ok:
                utilization, idle_until, source = self._utilization.read(dev, since, now)
            else:
                utilization, source = self._utilization.rates(dev, now), "utilization-rates"
            power = self._energy.read(dev) if dev.energy_ok else ()
            return Reading(
                utilization=utilization, power=power, source=source, idle_until=idle_until
            )
        finally:
            driver.end()

    def close(self) -> None:
        """Release NVML once no read is inside it any more (idempotent)."""
        self._driver.close()

    def after_fork(self) -> None:
        """Forget the parent's NVML state; the first read initialises again."""
        self._driver.after_fork()
        self._timeline.after_fork()
        for dev in self._devs:
            dev.lock = threading.Lock()

    def resume(self) -> None:
        """The first task after an idle spell began: take fresh energy baselines.

        Without this the first power figure after the spell would average over
        the whole spell and the task, crediting the task the idle draw.
        """
        if not self._driver.begin():
            return
        try:
            self._energy.rebase(self._devs)
        finally:
            self._driver.end()

    def calibration_due(self, now: float) -> bool:
        """Whether an energy counter has not been watched (see :meth:`calibrate`) for a while."""
        return self._energy.calibration_due(self._devs, now)

    def calibrate(self, sleep: Callable[[float], object] = time.sleep) -> None:
        """Learn when each energy counter steps.

        Reads each counter every 2 ms until it stepped three times, for at
        most a second: a few hundred driver calls over a few hundred
        milliseconds, so only the sampler thread calls this, while tasks run,
        once a minute. Failures leave the counter read as it is.
        """
        if not self._driver.begin():
            return
        try:
            self._energy.calibrate(self._devs, sleep)
        finally:
            self._driver.end()

    def _warn_unmeasurable(self) -> None:
        mig = [d.info.id for d in self._devs if not d.utilization and d.info.details["mig"]]
        other = [d.info.id for d in self._devs if not d.utilization and not d.info.details["mig"]]
        if mig:
            log_once(
                "mig " + ",".join(mig),
                logging.WARNING,
                "gputime: %s in MIG mode: NVML reports no utilisation for MIG devices, so "
                "their GPU figures are 'unavailable' (not 0)",
                ", ".join(mig),
            )
        if other:
            log_once(
                "noutil " + ",".join(other),
                logging.WARNING,
                "gputime: %s: the driver supports neither utilisation samples nor "
                "utilisation rates; GPU figures are 'unavailable'",
                ", ".join(other),
            )
