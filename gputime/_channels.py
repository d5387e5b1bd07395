"""The device channels: how readings become credited sums, and when to read next.

Each tracked device feeds a utilisation channel (and a power channel where
energy is measured). A channel keeps its *horizon*, the end of the newest
reading credited: a sample ending at or before it is never credited again,
which lets the sampler thread and task exits on other threads read at the same
time without double counting. It also keeps what the next read asks from
(``since``), the newest sample and idle claim (for a task's tail), and the
marks waiting for the sample that covers their instant.

:class:`Channels` credits readings into the services' sums (the maths is in
:mod:`gputime._sums`) and decides, lock-free for task exits, when the driver can
have something new (:attr:`Channels.fresh_until`). Everything here runs with
the ledger lock held, except what is marked lock-free.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Sequence

from gputime._backends import Reading
from gputime._figures import EPS
from gputime._sums import Mark, Service, credit_to
from gputime._types import Clock

#: A device read as the ledger receives it: a reading, or the exception it raised.
ReadOutcome = Reading | BaseException

#: Pending-mark lists are pruned when they reach this length, then again at
#: twice what was left: amortised O(1) per change.
_PRUNE_MIN = 64

#: Told of every reading a channel credits, once each, under the ledger lock:
#: ``(device, is_power, start, end, value, inferred)``, where ``(start, end]`` is
#: the stretch credited and ``inferred`` marks an idle claim (no driver sample).
#: The timeline recorder is one (:mod:`gputime._timeline`); it must not raise,
#: log or block.
SampleSink = Callable[[int, bool, float, float, float | None, bool], None]


class Channel:
    """Ingest state of one device's stream of readings (utilisation or power)."""

    __slots__ = (
        "device",
        "failing",
        "horizon",
        "idle_until",
        "is_power",
        "last_end",
        "last_value",
        "pending",
        "prune_at",
        "quiet_until",
        "since",
        "slot",
        "tail",
    )

    def __init__(self, device: int, slot: int, is_power: bool) -> None:
        #: Which read (device) feeds this channel.
        self.device = device
        #: Where this channel's sums sit in a service's (and a mark's) list.
        self.slot = slot
        self.is_power = is_power
        #: Up to where readings were credited; -inf until the first task
        #: wakes the channel and moves it to "now".
        self.horizon = -math.inf
        #: The newest sample: its end and value (the tail rule's value).
        self.last_end: float | None = None
        self.last_value: float | None = None
        #: Marks waiting for the sample covering their instant, in no order.
        self.pending: list[tuple[float, Mark]] = []
        self.prune_at = _PRUNE_MIN
        #: What the next read asks from; kept current under the lock so that
        #: the read path can use it without taking the lock.
        self.since = -math.inf
        #: The newest read of this (utilisation) channel failed: nothing is
        #: known past the horizon, and figures count that stretch as not read.
        self.failing = False
        #: A read found no sample although one was overdue (the driver records
        #: nothing: an idle GPU): task exits ask again only from here on.
        self.quiet_until = -math.inf
        #: The newest idle claim (``Reading.idle_until``): the device was idle
        #: from the newest sample up to here, though no sample says so.
        self.idle_until = -math.inf
        #: What a task's tail takes where its exit made no read: the tail rule
        #: (:meth:`tail_value`), or ``None`` where the newest read failed.
        #: Kept current by each ingest, so that a task exit reads one attribute.
        self.tail: float | None = None

    def tail_value(self) -> float | None:
        """What the stretch after the newest reading takes (the tail rule).

        The newest sample's value, unless the driver has shown the device idle
        since (an idle claim newer than that sample): then 0, so a busy value
        is never carried across a stretch known to be idle. ``None`` where
        nothing was ever read.
        """
        last_end = self.last_end
        if self.idle_until > -math.inf and (last_end is None or self.idle_until > last_end):
            return 0.0
        return self.last_value

    def update_since(self, period: float) -> None:
        """Where the next read should start (two periods back at most)."""
        horizon = self.horizon
        last_end = self.last_end
        lookback = horizon - 2 * period
        if last_end is None:
            self.since = lookback
        elif last_end < horizon:
            # The horizon jumped to "now" when the first task after idle began,
            # or an idle claim moved it: samples ending between the newest one
            # read and the horizon are not credited, but the newest of them is
            # the value a short task's tail takes. Ask from just after it.
            self.since = max(last_end, lookback)
        else:
            self.since = horizon

    def place(self, mark: Mark, at: float, slots: int) -> None:
        """Have ``mark`` filled by the sample that covers ``at`` (or now, if it was credited)."""
        if at >= self.horizon:
            pending = self.pending
            pending.append((at, mark))
            if len(pending) >= self.prune_at:
                # Resets in a row with no sample between supersede each other.
                self.pending = [p for p in pending if not p[1]._done]
                self.prune_at = max(_PRUNE_MIN, 2 * len(self.pending))
        else:
            # The sample covering ``at`` was credited already (clock mapping
            # jitter puts a sample end a little past "now"): the sums now are
            # the sums at the mark, give or take that sliver.
            mark.fill_now(self.slot, slots)


class Channels:
    """Every channel of one tracker, their timing, and the crediting of readings.

    Args:
        devices: Devices read (one utilisation channel each).
        energy: Whether each device also feeds a power channel.
        period: The driver's sample period, in seconds.
        jitter: How much later than one period after the newest sample the next
            may first be visible; ``None``: the backend cannot say (every task
            exit reads).
        threshold: Samples at or below this percent count as idle.
        clock: The tracker's clock.
    """

    def __init__(
        self,
        devices: int,
        energy: bool,
        period: float,
        jitter: float | None,
        threshold: float,
        clock: Clock,
    ) -> None:
        self.util = [Channel(device, device, is_power=False) for device in range(devices)]
        self.power = (
            [Channel(device, devices + device, is_power=True) for device in range(devices)]
            if energy
            else []
        )
        self.all = (*self.util, *self.power)
        #: Per device, its channels (utilisation, then power where measured).
        self.of_device = tuple(
            (util, self.power[device]) if energy else (util,)
            for device, util in enumerate(self.util)
        )
        self.slots = len(self.all)
        self.set_timing(period, jitter)
        self._threshold = threshold
        self._clock = clock
        #: Until then a task exit need not read the driver (lock-free read).
        self.fresh_until = -math.inf
        #: The oldest and newest horizons (read on every task begin and end).
        self.min_horizon = -math.inf if self.all else math.inf
        self.max_horizon = -math.inf
        #: Failed reads so far: a task that sees the count change was running
        #: while a reading it needed failed (it notes the count when it begins).
        self.failures = 0
        #: Per device, the count just after its newest failed read (0: none).
        self.failed_at = [0] * devices
        #: Where credited readings are also sent; ``None`` (the default) costs
        #: one local check per ingested sample and nothing on the task path.
        self.on_sample: SampleSink | None = None

    def set_timing(self, period: float, jitter: float | None) -> None:
        """The driver's sample period and jitter, as the backend knows them now."""
        self.period = period
        self.jitter = jitter
        #: From the last task's end to the read that covers it: the sample
        #: covering the end is out one period later, plus the jitter.
        self.settle_delay = period + (jitter if jitter and jitter > 0 else 0.0)

    # -- reading plan ----------------------------------------------------------------

    def read_plan(self) -> list[float]:
        """Per device, the ``since`` to read utilisation from (lock-free: floats only)."""
        return [channel.since for channel in self.util]

    def covered_up_to(self, t: float) -> bool:
        """Whether every channel credited its readings up to ``t``."""
        return self.min_horizon >= t - EPS

    def wake(self, now: float) -> None:
        """The first task after idle, every window settled: credit from ``now`` on."""
        slots = self.slots
        for channel in self.all:
            if channel.pending:
                # Only resets can wait here (no task runs): their services are
                # settled, so their sums will not move over the idle stretch
                # the horizon now skips.
                for _, mark in channel.pending:
                    if not mark._done:
                        mark.fill_now(channel.slot, slots)
                channel.pending = []
            if channel.horizon < now:  # noqa: PLR1730 - no max() on every first task
                channel.horizon = now
            channel.update_since(self.period)
        self._update_horizons()
        self._update_fresh_until()

    def _update_horizons(self) -> None:
        horizons = [channel.horizon for channel in self.all]
        self.min_horizon = min(horizons, default=math.inf)
        self.max_horizon = max(horizons, default=-math.inf)

    def _update_fresh_until(self) -> None:
        """Until ``fresh_until`` a task exit need not read the driver.

        The next sample is due one period after the newest one read, and is
        visible at the latest ``jitter`` later; before then the exit's tail
        takes the newest sample read (for an exit in the jitter window just
        before a sample that is already out, the error is that sample's worth
        of its value). Where a read found nothing although a sample was
        overdue, exits wait for the driver's next tick (see ``_nothing_new``).
        So exits read the driver at most about once per sample period,
        however many tasks end.
        """
        jitter = self.jitter
        if jitter is None or not self.util:
            self.fresh_until = -math.inf
            return
        fresh = math.inf
        late = self.period + jitter
        for channel in self.util:
            last_end = channel.last_end
            if last_end is None:
                # No sample yet places the driver's grid: the first one may
                # come at any moment. Without an idle claim to stand in for
                # the tail, an exit must read, or its tail would be unknown.
                due = channel.quiet_until if channel.idle_until > -math.inf else -math.inf
            elif channel.since < last_end:
                due = -math.inf  # a read must still fetch the newest visible sample
            else:
                due = max(last_end + late, channel.quiet_until)
            fresh = min(fresh, due)
        self.fresh_until = fresh

    def _nothing_new(self, channel: Channel) -> None:
        """A read of ``channel`` brought no sample newer than the newest one.

        Where the next sample was overdue, the driver took it and recorded
        nothing (an idle GPU): no new sample can be visible before the tick
        after that, one period on along the driver's grid (the newest sample's
        time plus whole periods), plus the jitter. Without a sample to place
        the grid, one period from now.
        """
        jitter = self.jitter
        if jitter is None:
            return
        now = self._clock()
        period = self.period
        last_end = channel.last_end
        if last_end is None:
            channel.quiet_until = now + period
        elif now >= last_end + period + jitter:
            ticks = math.floor((now - jitter - last_end) / period) + 1
            channel.quiet_until = last_end + ticks * period + jitter

    # -- crediting ----------------------------------------------------------------------

    def ingest(self, reads: Sequence[ReadOutcome], tracking: Collection[Service]) -> None:
        """Credit one outcome per device to ``tracking`` (a failure counts in :attr:`failures`)."""
        for device, outcome in enumerate(reads):
            util = self.util[device]
            if isinstance(outcome, BaseException):
                self.failures += 1
                self.failed_at[device] = self.failures
                util.failing = True
                self._read_failed(util, tracking)
                if self.power:
                    self._read_failed(self.power[device], tracking)
                continue
            util.failing = False
            newest = util.last_end
            if outcome.utilization:
                self._ingest(util, outcome.utilization, tracking)
            if util.last_end == newest:
                self._nothing_new(util)
            idle_until = outcome.idle_until
            if idle_until is not None and idle_until > util.idle_until:
                util.idle_until = idle_until
                if idle_until > util.horizon:
                    self._ingest(util, ((idle_until, 0.0),), tracking, claim=True)
            if self.power and outcome.power:
                self._ingest(self.power[device], outcome.power, tracking)
        for util in self.util:
            util.tail = None if util.failing else util.tail_value()
        self._update_horizons()
        self._update_fresh_until()

    def _read_failed(self, channel: Channel, tracking: Collection[Service]) -> None:
        # Figures that needed this reading are partial, even if the samples
        # are recovered by a later read. A service whose windows this device
        # already covered needed nothing; a failure before a service's last
        # reset is not the new figures' business.
        unread_from = channel.horizon + EPS
        for service in tracking:
            if service.active or service.last_close > max(unread_from, service.reset_at):
                service.failed_on.add(channel.device)

    def _ingest(
        self,
        channel: Channel,
        samples: Sequence[tuple[float, float | None]],
        tracking: Collection[Service],
        *,
        claim: bool = False,
    ) -> None:
        horizon = channel.horizon
        threshold = self._threshold
        is_power = channel.is_power
        slot = channel.slot
        sink = self.on_sample
        for end, value in samples:
            if not claim and (channel.last_end is None or end > channel.last_end):
                channel.last_end = end
                channel.last_value = value
            if end <= horizon:
                continue
            if channel.pending:
                self._fill_marks(channel, horizon, end, value)
            for service in tracking:
                credit_to(service.sums[slot], service, horizon, end, value, is_power, threshold)
            if sink is not None:
                # Here, past the horizon check: each reading is recorded once.
                sink(channel.device, is_power, horizon, end, value, claim)
            horizon = end
        channel.horizon = horizon
        channel.update_since(self.period)

    def _fill_marks(self, channel: Channel, start: float, end: float, value: float | None) -> None:
        """Fill the marks whose instant the sample ``(start, end]`` covers."""
        slot, slots, threshold = channel.slot, self.slots, self._threshold
        waiting: list[tuple[float, Mark]] = []
        for at, mark in channel.pending:
            if mark._done or mark.get(slot) is not None:
                continue
            if at > end:
                waiting.append((at, mark))
                continue
            service = mark._svc
            sums = list(service.sums[slot])
            credit_to(sums, service, start, max(at, start), value, channel.is_power, threshold)
            mark.fill(slot, sums, slots)
        channel.pending = waiting

    # -- marks and tidying ------------------------------------------------------------

    def place(self, mark: Mark, at: float) -> None:
        """Have ``mark`` filled on each channel by the sample that covers ``at``."""
        for channel in self.all:
            channel.place(mark, at, self.slots)

    def fill_now(self, mark: Mark) -> None:
        """Fill what ``mark`` still lacks with its service's sums now (they no longer move)."""
        for channel in self.all:
            if mark.get(channel.slot) is None:
                mark.fill_now(channel.slot, self.slots)
        mark._done = True  # complete: pending lists drop it

    def drop_done_marks(self) -> None:
        """Forget pending marks nobody reads any more."""
        for channel in self.all:
            if channel.pending:
                channel.pending = [p for p in channel.pending if not p[1]._done]

    def unread_on(self, channel: Channel, service: Service, since: float) -> float:
        """Active time of ``service`` after ``since`` that ``channel``'s failing reads left unread.

        While a device's reads fail, its horizon stays where the last good
        read left it: the service's time past it, up to now, was not read.
        """
        if not channel.failing or not service.bp_t:
            return 0.0
        lo = channel.horizon if channel.horizon > since else since
        if not service.active and service.last_close <= lo:
            return 0.0
        now = self._clock()
        return service.active_between(lo, now) if now > lo else 0.0
