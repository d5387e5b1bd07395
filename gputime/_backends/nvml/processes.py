"""``attribution="process"``: the utilisation of this process and its children, per sample.

The driver lists a process at a sample time only where its utilisation in that
period was above zero: a sample time listing other processes only is 0 for us,
and no row at all is idleness, claimed as for device samples. NVML reports host
process ids, which do not match ours inside a container with its own PID
namespace.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence

from gputime._backends.nvml.device import Device
from gputime._backends.nvml.driver import Driver
from gputime._backends.nvml.errors import (
    INSUFFICIENT_SIZE,
    NOTHING_NEW,
    UNSUPPORTED,
    NvmlDeviceLostError,
    NvmlError,
)
from gputime._backends.nvml.inventory import PROCESS_CALLS
from gputime._backends.nvml.timeline import Read, Timeline
from gputime._faults import log_once

#: Where this process's PID namespace is named.
PID_NAMESPACE = "/proc/self/ns/pid"
#: The inode number of the kernel's initial PID namespace (PROC_PID_INIT_INO).
_INIT_PID_NS = "pid:[4026531836]"

_SOURCES = {PROCESS_CALLS[0]: "process-utilization-info", PROCESS_CALLS[1]: "process-utilization"}


def in_initial_pid_namespace(link: str = PID_NAMESPACE) -> bool | None:
    """Whether this process sees the host's process ids (``None``: cannot tell).

    NVML reports host process ids; inside a container with its own PID
    namespace they do not match ``os.getpid()``.
    """
    try:
        return os.readlink(link) == _INIT_PID_NS
    except OSError:
        return None


class ProcessReader:
    """Reads devices' per-process samples, summed over the processes that count as ours.

    Args:
        driver: The session's NVML calls.
        timeline: The session's mapping of driver rows onto the tracker's clock.
        pids: The process ids that count as this process's, at the time of the call.
    """

    def __init__(
        self, driver: Driver, timeline: Timeline, pids: Callable[[], frozenset[int]]
    ) -> None:
        self._driver = driver
        self._timeline = timeline
        self._pids = pids

    def probe(self, devices: Sequence[Device]) -> None:
        """At open: the per-process call each device answers.

        Raises:
            ValueError: A device has no per-process utilisation.
        """
        for dev in devices:
            if not dev.utilization:
                raise ValueError(
                    f"attribution='process': NVML has no per-process utilisation for "
                    f"{dev.info.id} ({'MIG mode' if dev.info.details['mig'] else 'unsupported'})"
                )
            for call in PROCESS_CALLS:
                try:
                    self._driver.call(dev, call, 0)
                except NvmlDeviceLostError:
                    pass  # the reads will report it
                except NvmlError as exc:
                    if exc.code in UNSUPPORTED:
                        continue
                dev.process_call = call
                break
            if dev.process_call is None:
                raise ValueError(
                    f"attribution='process': the driver has no per-process utilisation for "
                    f"{dev.info.id} ({dev.info.name}); use 'device' or 'split'"
                )
        if in_initial_pid_namespace(PID_NAMESPACE) is False:
            log_once(
                "pidns",
                logging.WARNING,
                "gputime: attribution='process' inside a PID namespace (a container?): NVML "
                "reports host process ids, which may not match this process's; run the "
                "container with the host PID namespace if this process's figures stay 0",
            )

    def read(self, dev: Device, since: float, now: float) -> Read:
        """This process's (and its children's) utilisation samples newer than ``since``."""
        call = dev.process_call
        assert call is not None
        timeline = self._timeline
        last_seen = timeline.last_seen_us(dev, since)
        try:
            try:
                raw = self._driver.call(dev, call, last_seen)
            except NvmlError as exc:
                if exc.code != INSUFFICIENT_SIZE:
                    raise
                # pynvml asks for the row count, then the rows: a process or a
                # sample that appeared in between outgrows the buffer. Once more.
                raw = self._driver.call(dev, call, last_seen)
        except NvmlError as exc:
            if exc.code in UNSUPPORTED and call == PROCESS_CALLS[0]:
                dev.process_call = PROCESS_CALLS[1]
                return self.read(dev, since, now)
            if exc.code not in NOTHING_NEW:
                raise
            raw = ()
        ours = self._pids()
        totals: dict[int, float] = {}
        for row in raw:
            ts, pid, sm = int(row.timeStamp), int(row.pid), int(row.smUtil)
            if pid == 0 or sm > 100:
                continue  # garbage
            totals[ts] = min(100.0, totals.get(ts, 0.0) + (sm if pid in ours else 0))
        rows = timeline.clean(dev, totals.items(), last_seen, now)
        samples = timeline.newer(dev, rows, since)
        utilization, idle_until = timeline.assemble(dev, since, now, samples, None)
        return utilization, idle_until, _SOURCES[call]
