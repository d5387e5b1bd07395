"""What users read: a task's and a service's figures, and how they come out of the sums.

The ledger keeps, per service and per device channel, cumulative sums that
only grow (see :mod:`gputime._sums`). A figure is the difference of those sums
between two instants, plus, for a task that ended before the driver's sample
covering its end came, a tail (see ``docs/semantics.md``). This module turns
such differences into the figures users see: milliseconds, status and
coverage, the same way for a task and for a service.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
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
    """

    service: str
    task_count: int = 0
    active_tasks: int = 0
    gpu_ms: float = 0.0
    gpu_util_ms: float = 0.0
    energy_mj: float | None = None
    status: Status = "ok"
    coverage: float = 1.0


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
    """

    measures: bool
    measures_energy: bool
    partial_devices: bool
    measured_share: float
    threshold: float
    split: bool

    @classmethod
    def of(
        cls,
        devices: int,
        unmeasured: int,
        measures_utilization: bool,
        measures_energy: bool,
        threshold: float,
        attribution: Attribution,
    ) -> Profile:
        """The profile of ``devices`` read and ``unmeasured`` tracked but never read (MIG)."""
        return cls(
            measures=measures_utilization and bool(devices),
            measures_energy=measures_energy,
            partial_devices=bool(devices and unmeasured),
            measured_share=devices / (devices + unmeasured) if devices else 1.0,
            threshold=threshold,
            split=attribution == "split",
        )

    @property
    def base_status(self) -> Status:
        """The status of a figure that needed no reading (or whose readings all came)."""
        if not self.measures:
            return "unavailable"
        return "partial" if self.partial_devices else "ok"


class Tally:
    """The differences of sums across channels, turned into one figure.

    Attributes are seconds (``busy``, ``covered``, ``missing``), percent-seconds
    (``weighted``) and millijoules (``energy``), summed over devices.
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

    def finish(self, profile: Profile, failed: bool) -> FiguresTuple:
        """The figure (``failed``: a reading it needed failed)."""
        return finish(
            profile,
            self.busy,
            self.weighted,
            self.covered,
            self.missing,
            self.energy,
            self.energy_missing or failed,
        )


def finish(
    profile: Profile,
    busy: float,
    weighted: float,
    covered: float,
    missing: float,
    energy: float,
    failed: bool,
) -> FiguresTuple:
    """A figure from its totals: milliseconds, energy, status and coverage.

    Args:
        profile: What the tracker's devices measure.
        busy: Busy seconds; ``weighted``: percent-seconds; ``covered`` and
            ``missing``: seconds read and seconds a reading said were lost;
            ``energy``: millijoules.
        failed: A reading the figure needed failed, or energy was lost.
    """
    if not profile.measures:
        return 0.0, 0.0, None, "unavailable", 0.0
    partial = failed or missing > EPS or profile.partial_devices
    seen = covered + missing
    return (
        1000.0 * busy,
        10.0 * weighted,
        energy if profile.measures_energy else None,
        "partial" if partial else "ok",
        (covered / seen if seen > EPS else 1.0) * profile.measured_share,
    )


def never_seen(name: str, profile: Profile) -> ServiceStats:
    """The figures of a service no task ever ran for: zeros."""
    return ServiceStats(
        name,
        energy_mj=0.0 if profile.measures_energy else None,
        status=profile.base_status,
        coverage=profile.measured_share if profile.measures else 0.0,
    )


def task_figures(
    record: TaskRecord,
    end: float | None,
    end_mark: Mark | None,
    reads: Sequence[ReadOutcome] | None,
    channels: Channels,
    profile: Profile,
    fail_epoch: int,
) -> FiguresTuple:
    """A task's figures: live (``end`` is ``None``) or final.

    Per channel, the sums at the end (the end mark, else the sums now) less
    the sums at the start; when final and the end is past the newest reading,
    plus the tail, which takes the channel's tail value (the newest sample's,
    or 0 after an idle claim) unless the exit read failed. Runs at every task
    exit: kept to plain arithmetic.

    Args:
        record: The task.
        end: When it ended, ``None`` while it runs.
        end_mark: The mark of its end, where the exit read filled one.
        reads: The exit read's outcome per device (``None``: no read was made).
        channels: The tracker's channels.
        profile: What its devices measure.
        fail_epoch: The ledger's count of failed reads (see ``Ledger``).
    """
    service = record._svc
    start = record.start_time
    starts = record._values
    ends = end_mark._values if end_mark is not None else None
    split = profile.split
    threshold = profile.threshold
    busy = weighted = covered = missing = energy = 0.0
    energy_missing = False
    for channel in channels.all:
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
            continue
        # The tail: from the newest reading (or the start) to the end.
        lo = start if start > horizon else horizon
        length = end - lo
        failed = reads is not None and isinstance(reads[channel.device], BaseException)
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
    if end is None:
        missing += channels.unread(service, start)
    failed_read = record._fail_epoch != fail_epoch
    return finish(profile, busy, weighted, covered, missing, energy, failed_read or energy_missing)


def service_stats(service: Service, channels: Channels, profile: Profile) -> ServiceStats:
    """A service's figures since its last reset: its sums now less its reset mark."""
    tally = Tally()
    mark = service.reset_mark
    for channel in channels.all:
        since = ZEROS if mark is None else mark.get(channel.slot)
        if since is None:
            continue  # the sample covering the reset has not come yet
        tally.add(service.sums[channel.slot], since, channel.is_power)
    tally.missing += channels.unread(service, service.reset_at)
    gpu_ms, gpu_util_ms, energy_mj, status, coverage = tally.finish(profile, service.failed)
    return ServiceStats(
        service=service.name,
        task_count=service.task_count,
        active_tasks=service.active,
        gpu_ms=gpu_ms,
        gpu_util_ms=gpu_util_ms,
        energy_mj=energy_mj,
        status=status,
        coverage=coverage,
    )
