"""What users read: a task's and a service's figures, and how they come out of the sums.

The ledger keeps, per service and per device channel, cumulative sums that
only grow (see :mod:`gputime._sums`). A figure is the difference of those sums
between two instants, plus, for a task that ended before the driver's sample
covering its end came, a tail (see ``docs/semantics.md``). This module turns
such differences into the figures users see: milliseconds, status and
coverage, the same way for a task and for a service.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from gputime._types import Attribution, Status

if TYPE_CHECKING:
    from gputime._channels import Channels, ReadOutcome
    from gputime._sums import Mark, Service, TaskRecord

#: Where each quantity sits in a channel's sums: busy seconds (attribution
#: weighted, above the threshold), value x weight (percent-seconds, or
#: milliwatt-seconds = mJ for a power channel), seconds covered by readings,
#: seconds a reading said were lost. Busy is unused for power.
BUSY, WEIGHTED, COVERED, MISSING = 0, 1, 2, 3
Sums = list[float]

#: The sums of a mark that starts at nothing.
ZEROS: Sums = [0.0, 0.0, 0.0, 0.0]

#: Window edges and sample ends come from float arithmetic; stretches shorter
#: than this are rounding noise, not missing data.
EPS = 1e-9


@dataclass(frozen=True, slots=True)
class DeviceFigures:
    """One device's part of a task's or a service's figures.

    Attributes:
        gpu_ms: GPU-busy milliseconds of this device inside the window.
        gpu_util_ms: The same integral weighted by utilisation / 100.
        energy_mj: Energy this device drew, in millijoules; ``None`` where
            not measured.
        status: ``"ok"``, ``"partial"`` (a reading of this device that the
            figure needed failed or was lost) or ``"unavailable"`` (this
            device cannot report utilisation, e.g. MIG, or nothing can).
        coverage: Fraction of the window for which this device's readings
            arrived.
    """

    gpu_ms: float = 0.0
    gpu_util_ms: float = 0.0
    energy_mj: float | None = None
    status: Status = "ok"
    coverage: float = 1.0


@dataclass(frozen=True, slots=True)
class ServiceStats:
    """A snapshot of one service's figures since its last reset.

    Attributes:
        service: The service name.
        task_count: Tasks that ended (returned, raised or were cancelled).
        active_tasks: Tasks running now.
        gpu_ms: GPU-busy milliseconds over the service window, summed over
            tracked devices (two busy devices for one second make 2000).
        gpu_util_ms: The same integral weighted by utilisation / 100.
        energy_mj: Energy in millijoules, ``None`` where not measured.
        status: ``"ok"``, ``"partial"`` or ``"unavailable"``, the worst since
            the last reset.
        coverage: Fraction of the service window (times devices) for which
            readings arrived; 1.0 before any reading was needed.
        devices: Each tracked device's part, by device id (NVML UUID), in
            the tracker's device order; ``gpu_ms``, ``gpu_util_ms`` and
            ``energy_mj`` above are their sums. Empty without devices.
    """

    service: str
    task_count: int = 0
    active_tasks: int = 0
    gpu_ms: float = 0.0
    gpu_util_ms: float = 0.0
    energy_mj: float | None = None
    status: Status = "ok"
    coverage: float = 1.0
    # Left out of the hash (a dict has none), kept in equality.
    devices: Mapping[str, DeviceFigures] = field(default_factory=dict, hash=False)


class Figures(NamedTuple):
    """GPU figures of one task: live while it runs, final once it ended."""

    gpu_ms: float
    gpu_util_ms: float
    energy_mj: float | None
    status: Status
    coverage: float


#: Figures kept as a plain tuple in ``Figures``' field order: building a named
#: tuple costs several times more, and every task exit makes one.
FiguresTuple = tuple[float, float, float | None, Status, float]

#: The figures of every task where no GPU figure can exist (the ``none`` backend).
UNAVAILABLE = Figures(0.0, 0.0, None, "unavailable", 0.0)

#: The figures of a task a forked child inherited: it has none for it.
INHERITED: FiguresTuple = (0.0, 0.0, None, "partial", 0.0)

#: The part of a device that is tracked but cannot be read (MIG), or of every
#: device where no GPU figure can exist.
DEVICE_UNAVAILABLE = DeviceFigures(0.0, 0.0, None, "unavailable", 0.0)

#: Per read device, a figure (``None``: one device, whose figure is the total).
PerDevice = tuple[FiguresTuple, ...] | None


@dataclass(frozen=True, slots=True)
class Profile:
    """What a tracker's devices can measure, fixed when it is made.

    Attributes:
        measures: False where no GPU figure can exist (every status reads
            ``unavailable``).
        measures_energy: Whether readings carry power.
        partial_devices: Some tracked devices cannot report utilisation (MIG):
            every figure is ``partial``.
        measured_share: The share of tracked devices that are read (coverage
            is at most this).
        threshold: Samples at or below this percent count as idle.
        split: Attribution ``"split"``: busy time at each moment is divided
            among the services active then.
        layout: Every tracked device in the tracker's order: its id, and the
            channel that reads it (``None``: never read).
        per_device: Figures are kept per device (more than one tracked
            device); with one, its figure is the total.
    """

    measures: bool
    measures_energy: bool
    partial_devices: bool
    measured_share: float
    threshold: float
    split: bool
    layout: tuple[tuple[str, int | None], ...] = ()
    per_device: bool = False

    @classmethod
    def of(
        cls,
        devices: int,
        unmeasured: int,
        measures_utilization: bool,
        measures_energy: bool,
        threshold: float,
        attribution: Attribution,
        layout: Sequence[tuple[str, int | None]] = (),
    ) -> Profile:
        """The profile of ``devices`` read and ``unmeasured`` tracked but never read (MIG).

        ``layout`` names the tracked devices (see the attribute); without it,
        the read devices are named by their channel number.
        """
        if not layout:
            layout = [(str(channel), channel) for channel in range(devices)]
        return cls(
            measures=measures_utilization and bool(devices),
            measures_energy=measures_energy,
            partial_devices=bool(devices and unmeasured),
            measured_share=devices / (devices + unmeasured) if devices else 1.0,
            threshold=threshold,
            split=attribution == "split",
            layout=tuple(layout),
            per_device=devices + unmeasured > 1,
        )

    @property
    def base_status(self) -> Status:
        """The status of a figure that needed no reading (or whose readings all came)."""
        if not self.measures:
            return "unavailable"
        return "partial" if self.partial_devices else "ok"

    def devices(self, total: FiguresTuple, per_device: PerDevice) -> dict[str, DeviceFigures]:
        """Each tracked device's figures by id, from what :func:`task_figures` returned."""
        if not self.measures:
            return dict.fromkeys((device for device, _ in self.layout), DEVICE_UNAVAILABLE)
        # None: one device, whose figure is the total, or a figure that is
        # the same on every device (a task a forked child inherited).
        figures = (total,) * len(self.layout) if per_device is None else per_device
        return {
            device: DEVICE_UNAVAILABLE if channel is None else DeviceFigures(*figures[channel])
            for device, channel in self.layout
        }


class Tally:
    """The differences of sums across channels, turned into one figure.

    Attributes are seconds (``busy``, ``covered``, ``missing``), percent-seconds
    (``weighted``) and millijoules (``energy``), summed over the channels added.
    """

    __slots__ = ("busy", "covered", "energy", "energy_missing", "missing", "weighted")

    def __init__(self) -> None:
        self.busy = self.weighted = self.covered = self.missing = self.energy = 0.0
        self.energy_missing = False

    def add(self, now: Sums, since: Sums, is_power: bool) -> None:
        """Add one channel's ``now - since``."""
        if is_power:
            self.energy += now[WEIGHTED] - since[WEIGHTED]
            self.energy_missing |= now[MISSING] - since[MISSING] > EPS
        else:
            self.busy += now[BUSY] - since[BUSY]
            self.weighted += now[WEIGHTED] - since[WEIGHTED]
            self.covered += now[COVERED] - since[COVERED]
            self.missing += now[MISSING] - since[MISSING]

    def add_tally(self, other: Tally) -> None:
        """Add another tally (one device's) to this one."""
        self.busy += other.busy
        self.weighted += other.weighted
        self.covered += other.covered
        self.missing += other.missing
        self.energy += other.energy
        self.energy_missing |= other.energy_missing

    def finish(self, profile: Profile, failed: bool, *, whole: bool = True) -> FiguresTuple:
        """The figure (``failed``: a reading it needed failed; see :func:`finish`)."""
        return finish(
            profile,
            self.busy,
            self.weighted,
            self.covered,
            self.missing,
            self.energy,
            self.energy_missing or failed,
            whole=whole,
        )


def finish(
    profile: Profile,
    busy: float,
    weighted: float,
    covered: float,
    missing: float,
    energy: float,
    failed: bool,
    whole: bool = True,
) -> FiguresTuple:
    """A figure from its totals: milliseconds, energy, status and coverage.

    Args:
        profile: What the tracker's devices measure.
        busy: Busy seconds; ``weighted``: percent-seconds; ``covered`` and
            ``missing``: seconds read and seconds a reading said were lost;
            ``energy``: millijoules.
        failed: A reading the figure needed failed, or energy was lost.
        whole: The figure of every tracked device (False: of one read device,
            which devices never read do not make partial).
    """
    if not profile.measures:
        return 0.0, 0.0, None, "unavailable", 0.0
    partial = failed or missing > EPS or (whole and profile.partial_devices)
    seen = covered + missing
    return (
        1000.0 * busy,
        10.0 * weighted,
        energy if profile.measures_energy else None,
        "partial" if partial else "ok",
        (covered / seen if seen > EPS else 1.0) * (profile.measured_share if whole else 1.0),
    )


def never_seen(name: str, profile: Profile) -> ServiceStats:
    """The figures of a service no task ever ran for: zeros."""
    zeros = (
        0.0,
        0.0,
        0.0 if profile.measures_energy else None,
        profile.base_status,
        profile.measured_share if profile.measures else 0.0,
    )
    devices_zeros: FiguresTuple = (0.0, 0.0, zeros[2], "ok", 1.0)
    per_device = tuple(devices_zeros for _, channel in profile.layout if channel is not None)
    return ServiceStats(
        name,
        energy_mj=zeros[2],
        status=zeros[3],
        coverage=zeros[4],
        devices=profile.devices(zeros, per_device if profile.per_device else None),
    )


def task_figures(
    record: TaskRecord,
    end: float | None,
    end_mark: Mark | None,
    reads: Sequence[ReadOutcome] | None,
    channels: Channels,
    profile: Profile,
    device: int | None = None,
) -> FiguresTuple:
    """A task's figures, live (``end`` is ``None``) or final: in total, or of one device.

    Per channel, the sums at the end (the end mark, else the sums now) less
    the sums at the start; when final and the end is past the newest reading,
    plus the tail, which takes the channel's tail value (the newest sample's,
    or 0 after an idle claim) unless the exit read failed, or was skipped while
    the device's newest read had failed. Runs at every task exit: kept to
    plain arithmetic.

    Args:
        record: The task.
        end: When it ended, ``None`` while it runs.
        end_mark: The mark of its end, where the exit read filled one.
        reads: The exit read's outcome per device (``None``: no read was made).
        channels: The tracker's channels.
        profile: What its devices measure.
        device: The read device (channel number) whose part to figure;
            ``None``: every device's, summed.
    """
    service = record._svc
    start = record.start_time
    starts = record._values
    ends = end_mark._values if end_mark is not None else None
    split = profile.split
    threshold = profile.threshold
    busy = weighted = covered = missing = energy = 0.0
    energy_missing = False
    for channel in channels.all if device is None else channels.of_device[device]:
        slot = channel.slot
        at_end = ends[slot] if ends is not None else None
        at_start = starts[slot] if starts is not None else None
        if at_start is not None:
            if at_end is None:
                at_end = service.sums[slot]
            if channel.is_power:
                energy += at_end[WEIGHTED] - at_start[WEIGHTED]
                energy_missing |= at_end[MISSING] - at_start[MISSING] > EPS
            else:
                busy += at_end[BUSY] - at_start[BUSY]
                weighted += at_end[WEIGHTED] - at_start[WEIGHTED]
                covered += at_end[COVERED] - at_start[COVERED]
                missing += at_end[MISSING] - at_start[MISSING]
        horizon = channel.horizon
        if end is None or (ends is not None and ends[slot] is not None) or horizon >= end:
            if end is None and channel.failing:
                missing += channels.unread_on(channel, service, start)
            continue
        # The tail: from the newest reading (or the start) to the end.
        lo = start if start > horizon else horizon
        length = end - lo
        # Nothing is known past the newest reading where the exit read failed,
        # or where it was skipped while the device's newest read had failed
        # (it would have failed too): no guessing.
        failed = channel.failing or (
            reads is not None and isinstance(reads[channel.device], BaseException)
        )
        value = None if failed else channel.tail_value()
        if value is None:
            if not channel.is_power:
                missing += length
            elif failed:
                energy_missing = True
            # A counter that has not stepped since the task began (a task
            # shorter than its step, on a new tracker) is the counter's
            # resolution, not a failed reading: that tail counts nothing.
            continue
        weight = service.weight(lo, end) if split else length
        if channel.is_power:
            energy += value * weight
            continue
        covered += length
        if value > threshold:
            busy += weight
            weighted += value * weight
    # A read failed since the task began: of any device, or of this one.
    if device is None:
        failed_read = record._fail_epoch != channels.failures
    else:
        failed_read = channels.failed_at[device] > record._fail_epoch
    return finish(
        profile,
        busy,
        weighted,
        covered,
        missing,
        energy,
        failed_read or energy_missing,
        device is None,  # positional: a keyword costs more on every task exit
    )


def per_device_figures(
    record: TaskRecord,
    end: float | None,
    end_mark: Mark | None,
    reads: Sequence[ReadOutcome] | None,
    channels: Channels,
    profile: Profile,
) -> PerDevice:
    """Each read device's part of a task's figures (see :func:`task_figures`).

    ``None`` where the tracker tracks one device: its figure is the total, and
    the task path pays nothing for it.
    """
    if not profile.per_device:
        return None
    return tuple(
        task_figures(record, end, end_mark, reads, channels, profile, device)
        for device in range(len(channels.util))
    )


def service_stats(service: Service, channels: Channels, profile: Profile) -> ServiceStats:
    """A service's figures since its last reset: its sums now less its reset mark."""
    tallies = [Tally() for _ in channels.util]
    mark = service.reset_mark
    for channel in channels.all:
        since = ZEROS if mark is None else mark.get(channel.slot)
        if since is None:
            continue  # the sample covering the reset has not come yet
        tallies[channel.device].add(service.sums[channel.slot], since, channel.is_power)
    for channel in channels.util:
        if channel.failing:
            tallies[channel.device].missing += channels.unread_on(
                channel, service, service.reset_at
            )
    failed_on = service.failed_on
    per_device: PerDevice = None
    if not profile.per_device and len(tallies) == 1:
        total = tallies[0]
    else:
        per_device = tuple(
            tally.finish(profile, device in failed_on, whole=False)
            for device, tally in enumerate(tallies)
        )
        total = Tally()
        for tally in tallies:
            total.add_tally(tally)
    figures = total.finish(profile, bool(failed_on))
    gpu_ms, gpu_util_ms, energy_mj, status, coverage = figures
    return ServiceStats(
        service=service.name,
        task_count=service.task_count,
        active_tasks=service.active,
        gpu_ms=gpu_ms,
        gpu_util_ms=gpu_util_ms,
        energy_mj=energy_mj,
        status=status,
        coverage=coverage,
        devices=profile.devices(figures, per_device),
    )
