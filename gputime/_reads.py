"""One tracker's reads of its devices: the stage between the backend and the ledger.

Reads happen outside the ledger lock (a driver call can take hundreds of
microseconds, or hang) on whichever thread asks: the sampler thread's ticks and
task exits. Each read is one call for one device; a failing device must not
hide the samples of a healthy one, so a failure becomes that device's outcome
(logged once per kind) and the ledger counts nothing for it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from gputime._backends import DeviceInfo, Session
from gputime._channels import ReadOutcome
from gputime._faults import FaultLog


class TrackerClosedError(RuntimeError):
    """The read outcome of a task that ended after its tracker was closed."""


class DeviceReader:
    """Reads a session's measurable devices, and what the session knows of its timing.

    Args:
        session: The backend session.
        faults: Where failed reads are reported.
    """

    def __init__(self, session: Session, faults: FaultLog) -> None:
        self.session = session
        self._faults = faults
        # Devices that cannot report utilisation (MIG) are never read; the
        # ledger counts them as missing, so figures read partial, never idle.
        self._index = tuple(
            i
            for i, device in enumerate(session.devices)
            if device.details.get("utilization", True) is not False
        )
        #: How many devices are read (0: no GPU figure can exist).
        self.count = len(self._index) if session.measures_utilization else 0
        #: Devices tracked but never read.
        self.unmeasured = len(session.devices) - self.count
        #: Every tracked device: its id, and the channel that reads it (``None``: never read).
        channel_of = {device: channel for channel, device in enumerate(self._index)}
        self.layout: tuple[tuple[str, int | None], ...] = tuple(
            (device.id, channel_of.get(i) if self.count else None)
            for i, device in enumerate(session.devices)
        )
        #: Set by the tracker's close(): reads stop, and report why.
        self.closed = False
        # Optional parts of a session (see docs/design.md, "The backend interface").
        self.resume: Callable[[], object] | None = getattr(session, "resume", None)
        due = getattr(session, "calibration_due", None)
        calibrate = getattr(session, "calibrate", None)
        self._calibration: tuple[Callable[[float], bool], Callable[[], object]] | None = (
            (due, calibrate) if callable(due) and callable(calibrate) else None
        )

    @property
    def devices(self) -> Sequence[DeviceInfo]:
        """Every tracked device, read or not."""
        return self.session.devices

    @property
    def measured(self) -> tuple[DeviceInfo, ...]:
        """The devices that are read, in the order of the ledger's channels."""
        if not self.count:
            return ()
        devices = self.session.devices
        return tuple(devices[i] for i in self._index)

    def read_all(self, plan: Sequence[float]) -> list[ReadOutcome]:
        """One read per device from ``plan``'s ``since``; failures become outcomes."""
        if self.closed:
            closed = TrackerClosedError("the tracker was closed while the task ran")
            return [closed] * self.count
        read = self.session.read
        index = self._index
        reads: list[ReadOutcome] = []
        for channel, since in enumerate(plan):
            try:
                reads.append(read(index[channel], since))
            except Exception as exc:  # noqa: BLE001 - any driver fault is a failed reading
                self._faults.report("read", exc)
                reads.append(exc)
        return reads

    def timing(self) -> tuple[float, float | None]:
        """The driver's period and jitter as the backend knows them now.

        NVML learns them from the samples it reads, so they are taken after
        each read and applied with it: the exits that follow skip their reads
        by what that read taught. Backends that cannot say when their next
        sample can appear declare no jitter, and every exit reads.
        """
        jitter = getattr(self.session, "sample_jitter", None)
        return self.session.sample_period, None if jitter is None else float(jitter)

    def calibrate_if_due(self, now: float) -> None:
        """Background work of the session's, due while tasks run (never on a task's path).

        NVML watches each energy counter for a few hundred milliseconds once a
        minute to learn when it steps (see ``docs/nvml.md``).
        """
        calibration = self._calibration
        if calibration is None or self.closed:
            return
        due, calibrate = calibration
        try:
            if due(now):
                calibrate()
        except Exception as exc:  # noqa: BLE001 - a driver fault is a reported status
            self._faults.report("calibrate", exc)

    def close(self) -> None:
        """Stop reading and release the backend."""
        self.closed = True
        try:
            self.session.close()
        except Exception as exc:  # noqa: BLE001 - a driver fault must not escape close()
            self._faults.report("close", exc)

    def after_fork(self) -> None:
        """In a forked child: the session re-initialises (driver handles are not inherited)."""
        if self.closed:
            return
        try:
            self.session.after_fork()
        except Exception as exc:  # noqa: BLE001 - the child must start even without a GPU
            self._faults.report("after_fork", exc)
