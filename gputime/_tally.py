"""How a task's and a service's figures come out of the ledger's sums.

The ledger keeps, per service and per device channel, cumulative sums that
only grow (see :mod:`gputime._sums`). A figure is the difference of those sums
between two instants, plus, for a task that ended before the driver's sample
covering its end came, a tail (see ``docs/semantics.md``). This module turns
such differences into the figures users see (:mod:`gputime._figures`):
milliseconds, status and coverage, the same way for a task and for a service.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gputime._figures import (
    BUSY,
    COVERED,
    EPS,
    MISSING,
    WEIGHTED,
    ZEROS,
    FiguresTuple,
    PerDevice,
    Profile,
    ServiceStats,
    Sums,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from gputime._channels import Channels, ReadOutcome
    from gputime._sums import Mark, Service, TaskRecord


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
