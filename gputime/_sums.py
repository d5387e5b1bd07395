"""Cumulative sums and marks: what the ledger keeps instead of sample history.

Each service keeps, per device channel, sums that only ever grow (busy and
weighted time, time covered by readings and time lost, see
:mod:`gputime._figures`). A driver sample credits every service that was active
during it, over exactly the part of it each was active (:func:`credit_to`). A
**mark** snapshots one service's sums at one instant: a task's figure is the
difference of two marks (its start and its end), a service's the difference of
its sums now and its reset mark. So a task's figure costs O(devices) however
long it ran, and memory stays flat (``docs/design.md``, "Marks").
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from gputime._figures import (
    BUSY,
    COVERED,
    EPS,
    MISSING,
    WEIGHTED,
    FiguresTuple,
    PerDevice,
    Profile,
    ServiceStats,
    Sums,
)
from gputime._tally import never_seen, service_stats
from gputime._windows import Windows

if TYPE_CHECKING:
    from gputime._channels import Channels


class Mark:
    """A snapshot of one service's sums at one instant, per channel.

    The value for a channel is known once the sample covering the instant was
    ingested on that channel (or at once, where that sample was ingested
    already). Task records are marks of their start; task ends and resets make
    plain marks.
    """

    __slots__ = ("_done", "_svc", "_values")

    _svc: Service

    def __init__(self) -> None:
        self._values: list[Sums | None] | None = None
        # Done: nobody reads the mark any more; pending lists drop it.
        self._done = False

    def fill(self, slot: int, sums: Sums, slots: int) -> None:
        """Set the sums at the mark's instant on channel ``slot`` (of ``slots``)."""
        values = self._values
        if values is None:
            values = self._values = [None] * slots
        values[slot] = sums

    def get(self, slot: int) -> Sums | None:
        """The sums at the mark's instant on channel ``slot``, ``None`` until known."""
        values = self._values
        return None if values is None else values[slot]

    def fill_now(self, slot: int, slots: int) -> None:
        """Fill channel ``slot`` with the service's sums as they are now."""
        self.fill(slot, list(self._svc.sums[slot]), slots)


class TaskRecord(Mark):
    """The ledger's side of one running or finished task: the mark of its start.

    :class:`gputime.TaskHandle` extends it, so each task is one object.
    """

    __slots__ = (
        "_fail_epoch",
        "_final",
        "_final_devices",
        "_generation",
        "concurrency",
        "end_time",
        "start_time",
    )

    _generation: int
    _fail_epoch: int
    #: Running tasks of this service when this one began, itself included.
    concurrency: int
    #: Tracker clock when the task began.
    start_time: float

    def __init__(self) -> None:
        super().__init__()
        #: Tracker clock when the task ended; ``None`` while it runs.
        self.end_time: float | None = None
        self._final: FiguresTuple | None = None
        # Per read device, once ended (None: one device, whose figure is the total).
        self._final_devices: PerDevice = None


class Service(Windows):
    """One service: its counts, its activity windows, and its sums per channel.

    ``sums`` only ever grow; ``reset_mark`` is where the figures since the
    last reset start.
    """

    __slots__ = (
        "active",
        "failed_on",
        "last_close",
        "name",
        "reset_at",
        "reset_mark",
        "sums",
        "task_count",
    )

    def __init__(self, name: str, channels: int) -> None:
        super().__init__()
        self.name = name
        #: Tasks running now, and tasks that ended since the last reset.
        self.active = 0
        self.task_count = 0
        #: When its last window closed.
        self.last_close = -math.inf
        self.sums: list[Sums] = [[0.0, 0.0, 0.0, 0.0] for _ in range(channels)]
        self.reset_mark: Mark | None = None
        #: When the last reset was (its figures count from there).
        self.reset_at = -math.inf
        #: Devices whose reading this service needed failed since its last reset.
        self.failed_on: set[int] = set()


def credit_to(
    sums: Sums,
    service: Service,
    lo: float,
    hi: float,
    value: float | None,
    is_power: bool,
    threshold: float,
) -> None:
    """Add ``value`` over ``(lo, hi]`` of ``service``'s activity to ``sums``.

    ``None`` is a stretch the backend knows was lost: it counts nothing and is
    counted as missing. A power value (mW) adds energy weighted by the
    attribution; a utilisation value adds busy and weighted time when above
    ``threshold``, and covered time either way.
    """
    if hi <= lo:
        return
    a0, w0 = service.at(lo)
    a1, w1 = service.at(hi)
    active = a1 - a0
    if active <= 0.0:
        return
    if value is None:
        sums[MISSING] += active
        return
    sums[COVERED] += active
    if is_power:
        sums[WEIGHTED] += value * (w1 - w0)
    elif value > threshold:
        weight = w1 - w0
        sums[BUSY] += weight
        sums[WEIGHTED] += value * weight


class Services:
    """The services of one tracker: by name, the active ones, and those still credited.

    A service stays *tracked* while a channel may still credit its windows;
    once every channel's readings passed its last window it is settled, and
    its sums no longer move. All of it is guarded by the ledger's lock.
    """

    __slots__ = ("active", "by_name", "slots", "tracking")

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.by_name: dict[str, Service] = {}
        #: Services with a running task, in the order their windows opened.
        self.active: list[Service] = []
        #: Services whose windows the channels may still have to credit.
        self.tracking: set[Service] = set()

    def add(self, name: str) -> Service:
        """A new service, with no task yet."""
        service = self.by_name[name] = Service(name, self.slots)
        return service

    def stats(
        self, name: str | None, channels: Channels, profile: Profile
    ) -> dict[str, ServiceStats]:
        """Snapshots of one service (zeros if never seen) or of all of them."""
        if name is not None:
            service = self.by_name.get(name)
            if service is None:
                return {name: never_seen(name, profile)}
            return {name: service_stats(service, channels, profile)}
        return {n: service_stats(s, channels, profile) for n, s in self.by_name.items()}

    def reset(
        self, name: str | None, now: float, channels: Channels, profile: Profile
    ) -> dict[str, ServiceStats]:
        """Zero one service's counters (or all); running tasks go on, counting from ``now``.

        Returns:
            The figures that were zeroed (the metrics carry them, so exported
            counters never go down).
        """
        targets = (
            list(self.by_name.values())
            if name is None
            else [s for s in (self.by_name.get(name),) if s is not None]
        )
        zeroed = {s.name: service_stats(s, channels, profile) for s in targets}
        for service in targets:
            old = service.reset_mark
            if old is not None:
                old._done = True
            mark = service.reset_mark = Mark()
            mark._svc = service
            service.task_count = 0
            service.failed_on = set()
            service.reset_at = now
            if service.active or not channels.covered_up_to(service.last_close):
                # A sample still to come may straddle the reset: only its
                # later part counts, so the mark waits for that sample.
                channels.place(mark, now)
            else:
                channels.fill_now(mark)
        return zeroed

    def forget(self, channels: Channels) -> None:
        """Drop breakpoints, pending marks and settled services no one needs."""
        floor = channels.min_horizon
        channels.drop_done_marks()
        for service in list(self.tracking):
            if service.active == 0 and service.last_close <= floor + EPS:
                # Settled: every sample covering its windows was credited; its
                # sums no longer move, so a reset still waiting is known now.
                self.tracking.discard(service)
                service.forget_all()
                mark = service.reset_mark
                if mark is not None:
                    channels.fill_now(mark)
            else:
                # Every query from here on is at or after the oldest horizon.
                service.forget_before(floor)
