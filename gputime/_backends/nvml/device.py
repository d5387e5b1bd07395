"""One tracked device's read state within a session, shared by the driver access and the readers."""

from __future__ import annotations

import math
import threading
from typing import Any

from gputime._backends._base import DeviceInfo
from gputime._backends.nvml.cadence import Cadence, CounterClock
from gputime._backends.nvml.clocks import ClockMap
from gputime._backends.nvml.errors import NvmlDeviceLostError
from gputime._backends.nvml.selection import Target


class Device:
    """Per-device read state of one session.

    Args:
        target: The selected device.
        mapping: The mapping of the wall clock, which the driver is taken to
            stamp with until a sample tells.
        now: The session's opening, on the tracker's clock.
    """

    __slots__ = (
        "base",
        "cadence",
        "counter",
        "dead",
        "energy_base",
        "energy_ok",
        "handle",
        "heard_at",
        "info",
        "lock",
        "lookup",
        "mapping",
        "newest_end",
        "newest_value",
        "process_call",
        "rates_checked",
        "rates_ok",
        "samples_ok",
        "utilization",
    )

    def __init__(self, target: Target, mapping: ClockMap, now: float) -> None:
        self.info = DeviceInfo(
            id=target.id,
            name=target.gpu.name,
            index=target.gpu.index,
            details={"uuid": target.gpu.uuid, "mig": target.mig},
        )
        self.lookup = target.lookup
        self.handle: Any = target.handle
        #: Whether any utilisation source works (neither does on MIG).
        self.utilization = not target.mig
        #: Whether to read the sample buffer (else the rates).
        self.samples_ok = True
        #: Whether the rates can confirm a silent buffer, or stand in for it.
        self.rates_ok = True
        self.energy_ok = not target.mig
        #: The per-process call this device answers (``attribution="process"``).
        self.process_call: str | None = None
        self.cadence = Cadence()
        self.counter = CounterClock()
        #: The clock the driver stamps samples with; ``None`` until a sample told.
        self.base: str | None = None
        #: The mapping of that clock onto the tracker's (the wall clock's until known).
        self.mapping = mapping
        #: Tracker time and value of the newest sample read.
        self.newest_end: float | None = None
        self.newest_value: float | None = None
        #: Tracker time of the newest sample, or of the session's opening: the
        #: driver has been silent since.
        self.heard_at = now
        self.rates_checked = -math.inf
        #: The last counter read: (tracker time of the read, mJ).
        self.energy_base: tuple[float, int] | None = None
        #: Set once the GPU is lost: every later call raises a copy of it.
        self.dead: NvmlDeviceLostError | None = None
        #: Guards what reads on several threads update together (newest sample, energy base).
        self.lock = threading.Lock()

    def note_newest(self, end: float, value: float | None) -> None:
        """A sample at ``end`` was read: the driver was heard then."""
        with self.lock:
            if self.newest_end is None or end > self.newest_end:
                self.newest_end, self.newest_value = end, value
            self.heard_at = max(self.heard_at, end)
