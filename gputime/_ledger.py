"""The ledger: per-service task counts, windows and GPU time, under one lock.

Everything the sampler and the task-exit path learn from the backend flows into
the ledger as timestamped samples, and everything users see (``stats()``, task
handles, spans, metrics) is read out of it.

The integration maths (see ``docs/design.md``): a driver sample with value ``v``
covers a stretch ``(t0, t1]``. Each service keeps two piecewise-linear running
totals over time, ``A(t)`` (time it was active) and ``W(t)`` (attribution
weighted active time: ``W = A`` for ``device``; for ``split`` ``W`` grows at
``1/N`` while ``N`` services are active). The sample credits the service
``v * (W(t1) - W(t0))``, exact at the window edges, into cumulative sums that
only grow. A task's figure is the difference of its service's sums between
two *marks*, snapshots of those sums at the task's start and end, each taken
when the sample covering that instant is ingested: O(devices) per task however
long it runs, and no sample history kept.
"""

from __future__ import annotations

import math
import threading
import time
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

from gputime._backends import Attribution, Reading

Status = Literal["ok", "partial", "unavailable"]

# A service's sums per channel: [busy seconds (W-weighted, above the
# threshold), value x W (percent-seconds, or milliwatt-seconds = mJ for power),
# seconds covered by readings, seconds missing]. Busy is unused for power.
_BUSY, _WEIGHTED, _COVERED, _MISSING = 0, 1, 2, 3
Sums = list[float]

# Window edges and sample ends come from float arithmetic; stretches shorter
# than this are rounding noise, not missing data.
_EPS = 1e-9

# Task exits tidy up (settled services, breakpoints) every this many exits;
# sampler ticks and polls tidy up every time.
_FORGET_EVERY = 32

# A task begin or end that finds the ledger lock held yields the GIL this many
# times, trying again after each, before it blocks (see _acquire_contended).
_YIELDS_BEFORE_BLOCKING = 100

# The sampler stops re-reading for the settle this long after the last task
# ended: the longest driver sample period (1 s), its jitter and a few ticks.
_SETTLE_GIVE_UP = 3.0

#: What :meth:`Ledger.begin` returns for the only running task, and for one that
#: also starts the channels afresh after an idle spell (see there).
FIRST, WOKE = 1, 2

# Breakpoint lists and pending-mark lists are pruned when they reach this
# length, then again at twice what was left: amortised O(1) per change.
_PRUNE_MIN = 64


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


#: The figures of every task where no GPU figure can exist (the ``none`` backend).
_UNAVAILABLE = Figures(0.0, 0.0, None, "unavailable", 0.0)

#: Figures kept as a plain tuple in ``Figures``' field order: building a named
#: tuple costs several times more, and every task exit makes one.
FiguresTuple = tuple[float, float, float | None, Status, float]


class _Mark:
    """A snapshot of one service's sums at one instant, per channel.

    The value for a channel is known once the sample covering the instant was
    ingested on that channel (or at once, where that sample was ingested
    already). Task records are marks of their start; task ends and resets make
    plain marks.
    """

    __slots__ = ("_done", "_svc", "_values")

    _svc: _Service

    def __init__(self) -> None:
        self._values: list[Sums | None] | None = None
        # Done: nobody reads the mark any more; pending lists drop it.
        self._done = False

    def fill(self, slot: int, sums: Sums, slots: int) -> None:
        values = self._values
        if values is None:
            values = self._values = [None] * slots
        values[slot] = sums

    def get(self, slot: int) -> Sums | None:
        values = self._values
        return None if values is None else values[slot]


class _Channel:
    """Ingest state of one device's stream of samples (utilisation or power).

    ``horizon`` is the time up to which samples were credited: a sample ending
    at or before it is never credited again, which is what lets the sampler
    thread and task-exit reads on other threads read concurrently without
    double counting. ``pending`` holds the marks, in no particular order,
    waiting for the sample that covers their instant.
    """

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
    )

    def __init__(self, device: int, slot: int, is_power: bool) -> None:
        #: Which read (device) feeds this channel.
        self.device = device
        #: Where this channel's sums sit in a service's (and a mark's) list.
        self.slot = slot
        self.is_power = is_power
        # -inf until the first task wakes the channel and moves it to "now".
        self.horizon = -math.inf
        self.last_end: float | None = None
        self.last_value: float | None = None
        self.pending: list[tuple[float, _Mark]] = []
        self.prune_at = _PRUNE_MIN
        #: What the next read asks from; kept current under the lock so that
        #: the read path can use it without taking the lock.
        self.since = -math.inf
        #: The newest read of this (utilisation) channel failed: nothing is
        #: known past the horizon, and figures count that stretch as not read.
        self.failing = False
        #: A read found no sample although one was overdue (the driver is not
        #: sampling: an idle GPU): task exits ask again only from here on.
        self.quiet_until = -math.inf
        #: The newest idle claim (:attr:`Reading.idle_until`): the device was
        #: idle from the newest sample up to here, though no sample says so.
        self.idle_until = -math.inf

    def tail_value(self) -> float | None:
        """What the stretch after the newest reading takes (the spec's tail rule).

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
        horizon = self.horizon
        last_end = self.last_end
        lookback = horizon - 2 * period
        if last_end is None:
            self.since = lookback
        elif last_end < horizon:
            # The horizon jumped to "now" when the first task after idle began:
            # samples ending between the newest one read and now are not
            # credited, but the newest of them is the value a short task's tail
            # takes. Ask from just after what was read (two periods back at most).
            self.since = max(last_end, lookback)
        else:
            self.since = horizon


class _Service:
    """One service's counts, sums and activity breakpoints.

    Breakpoint ``i`` says: at time ``bp_t[i]`` the running totals were
    ``bps[i] = (A, W, rate)``, and from there ``W`` grows at ``rate`` (and
    ``A`` at 1 whenever ``rate`` is above 0). ``bp_t`` is kept apart for bisect.
    ``sums`` only ever grow; ``reset_mark`` is where the figures since the
    last reset start.
    """

    __slots__ = (
        "active",
        "bp_t",
        "bps",
        "failed",
        "last_close",
        "name",
        "prune_at",
        "reset_at",
        "reset_mark",
        "sums",
        "task_count",
    )

    def __init__(self, name: str, channels: int) -> None:
        self.name = name
        self.active = 0
        self.task_count = 0
        self.bp_t: list[float] = []
        self.bps: list[tuple[float, float, float]] = []
        self.last_close = -math.inf
        self.sums: list[Sums] = [[0.0, 0.0, 0.0, 0.0] for _ in range(channels)]
        self.reset_mark: _Mark | None = None
        #: When the last reset was (its figures count from there).
        self.reset_at = -math.inf
        #: A reading this service needed failed since its last reset.
        self.failed = False
        self.prune_at = _PRUNE_MIN

    def at(self, t: float) -> tuple[float, float]:
        """``(A(t), W(t))``."""
        bp_t = self.bp_t  # never empty while anyone asks: a window opened
        i = bisect_right(bp_t, t) - 1
        if i < 0:
            i = 0
            t = bp_t[0]
        a, w, rate = self.bps[i]
        if rate == 0.0:
            return a, w
        dt = t - bp_t[i]
        return a + dt, w + rate * dt

    def set_rate(self, t: float, rate: float) -> None:
        """From ``t`` on, ``W`` grows at ``rate`` (``t`` is never before the last breakpoint)."""
        bp_t = self.bp_t
        if not bp_t:
            bp_t.append(t)
            self.bps.append((0.0, 0.0, rate))
            return
        last_t = bp_t[-1]
        a, w, last_rate = self.bps[-1]
        if last_t >= t:
            # Same instant as the last change: only the rate from here on changes.
            self.bps[-1] = (a, w, rate)
            return
        if last_rate:
            dt = t - last_t
            a, w = a + dt, w + last_rate * dt
        bp_t.append(t)
        self.bps.append((a, w, rate))

    def weight(self, lo: float, hi: float) -> float:
        """``W(hi) - W(lo)``."""
        return self.at(hi)[1] - self.at(lo)[1]

    def forget_before(self, t: float) -> None:
        """Drop breakpoints no query at or after ``t`` needs."""
        i = bisect_right(self.bp_t, t) - 1
        if i > 0:
            del self.bp_t[:i], self.bps[:i]

    def forget_all(self) -> None:
        """The service's windows are settled: no query needs any breakpoint."""
        self.bp_t.clear()
        self.bps.clear()


class TaskRecord(_Mark):
    """The ledger's side of one running or finished task: the mark of its start.

    :class:`gputime.TaskHandle` extends it, so each task is one object.
    """

    __slots__ = ("_fail_epoch", "_final", "_generation", "concurrency", "end_time", "start_time")

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


#: A device read as the ledger receives it: a reading, or the exception it raised.
ReadOutcome = Reading | BaseException


class Ledger:
    """Per-service counts, windows and GPU time for one tracker.

    Args:
        devices: Number of tracked devices that are read (0 for the ``none`` backend).
        unmeasured: Tracked devices that cannot report utilisation (MIG): never
            read, they make every figure ``partial`` with its coverage reduced.
        measures_utilization: False when no GPU figure can exist
            (every status then reads ``unavailable``).
        measures_energy: True when readings carry power samples.
        sample_period: The driver's sample period, in seconds.
        sample_jitter: How much later than one period after the newest sample
            the next one may first be visible; task exits skip the read before
            that (``None``: the backend cannot say, and every exit reads).
        attribution: ``"device"``, ``"split"`` or ``"process"`` (which the
            ledger treats like ``"device"``: the backend already filtered).
        threshold: Samples at or below this percent count as idle.
        clock: Monotonic seconds.
    """

    def __init__(
        self,
        *,
        devices: int,
        unmeasured: int = 0,
        measures_utilization: bool,
        measures_energy: bool,
        sample_period: float,
        sample_jitter: float | None,
        attribution: Attribution,
        threshold: float,
        clock: Callable[[], float],
    ) -> None:
        # The one lock. It guards every attribute below that is not marked
        # immutable: the services and their counts, breakpoints and sums, the
        # channels' horizons and pending marks, the marks' values. No backend
        # call and no user callback ever runs while it is held.
        #
        # An RLock only so that :attr:`held_here` can ask who holds it (it
        # costs what a Lock does): it is never entered twice. A finaliser that
        # runs while this thread holds it (the last reference to a generator
        # dropped under the lock, or the collector running here) must neither
        # wait for it nor enter a half-updated ledger: the tracker checks first.
        self._new_lock()
        # Immutable after construction.
        self._clock = clock
        self._device_count = devices
        self._measures = measures_utilization
        self._measures_energy = measures_energy
        self._partial_devices = bool(devices and unmeasured)
        self._measured_share = devices / (devices + unmeasured) if devices else 1.0
        self._split = attribution == "split"
        self._threshold = threshold
        self._base_status: Status = (
            "unavailable"
            if not measures_utilization or not devices
            else "partial"
            if unmeasured
            else "ok"
        )
        # Guarded by the lock.
        self._period = sample_period
        self._jitter = sample_jitter
        #: Bumped in a forked child: records of an older generation are inherited.
        self.generation = 0
        self._new_state()

    def _new_state(self) -> None:
        """Everything that a reset of the process (fork) starts afresh."""
        devices = self._device_count
        self._services: dict[str, _Service] = {}
        self._active_services: list[_Service] = []
        self._tracking: set[_Service] = set()
        self._active_tasks = 0
        # The time of the newest begin or end: events are applied in lock
        # order, so an end read before another thread's event moves up to it.
        self._latest_event = -math.inf
        self._last_close = -math.inf
        self._settle_deadline: float | None = None
        self._ends_since_forget = 0
        # Bumped by every failed read: a task that sees it change was running
        # while a reading it needed failed.
        self._fail_epoch = 0
        #: See :meth:`_update_fresh_until`.
        self.fresh_until = -math.inf
        self._util = [_Channel(device, device, is_power=False) for device in range(devices)]
        self._power = (
            [_Channel(device, devices + device, is_power=True) for device in range(devices)]
            if self._measures_energy
            else []
        )
        self._channels = (*self._util, *self._power)
        #: Task ends recorded where they could not be applied (inside a garbage
        #: collection, or under this lock): ``(record, end, payload)``, appended
        #: without a lock, applied in order under the lock before any later
        #: event (see _apply_recorded), then moved to ``finished`` as
        #: ``(record, payload)`` for the tracker to emit from a safe place.
        if hasattr(self, "recorded"):  # a forked child: the parent's ends are not its own
            self.recorded.clear()
            self.finished.clear()
        else:
            self.recorded: deque[tuple[TaskRecord, float, object]] = deque()
            self.finished: deque[tuple[TaskRecord, object]] = deque()
        #: The oldest and newest of the channels' horizons (see _update_horizons).
        self._min_horizon = -math.inf if self._channels else math.inf
        self._max_horizon = -math.inf

    # -- task lifecycle --------------------------------------------------------------

    def _new_lock(self) -> None:
        self._lock = threading.RLock()
        #: Whether the current thread holds the ledger lock (then it must not
        #: wait for it): the lock's own C method, one call on the task path.
        self.held_here: Callable[[], bool] = self._lock._is_owned  # type: ignore[attr-defined] # C RLock

    @property
    def active_tasks(self) -> int:
        """Running tasks over all services (a plain read: an int is atomic)."""
        return self._active_tasks

    @property
    def settle_deadline(self) -> float | None:
        """When the sampler should make its last read after the last task ended."""
        return self._settle_deadline

    def begin(self, record: TaskRecord, service_name: str) -> int:
        """Open ``record`` as a task of ``service_name``.

        The hot path: one lock acquisition, no allocation but a new service's.

        Returns:
            0 if other tasks run; :data:`FIRST` if this is the only one;
            :data:`WOKE` if, besides, every earlier window was settled, so the
            channels start afresh from now (the first task after an idle spell).
        """
        lock = self._lock
        if not lock.acquire(False):  # positional: cheaper than blocking=False
            _acquire_contended(lock)
        try:
            if self.recorded:
                self._apply_recorded()
            now = self._clock()
            if now > self._latest_event:  # noqa: PLR1730 - no max() on every task
                self._latest_event = now
            service = self._services.get(service_name) or self._add_service(service_name)
            first_overall = not self._active_tasks
            self._active_tasks += 1
            service.active += 1
            record._svc = service
            record.start_time = now
            record.concurrency = service.active
            record._generation = self.generation
            record._fail_epoch = self._fail_epoch
            woke = False
            if self._device_count:
                if first_overall:
                    self._settle_deadline = None
                    # _settled() written out: this runs as every task after idle begins.
                    if self._min_horizon >= self._last_close - _EPS:
                        self._wake_channels(now)
                        woke = True
                if service.active == 1:
                    self._active_services.append(service)
                    self._tracking.add(service)
                    if self._split:
                        self._split_rates(now)
                    else:
                        service.set_rate(now, 1.0)
                for channel in self._channels:
                    if now >= channel.horizon:
                        channel.pending.append((now, record))
                    else:
                        self._fill_from_sums(record, channel)  # jitter: see _place_mark
            return first_overall + woke  # FIRST, WOKE or 0, without a branch
        finally:
            lock.release()

    def end(
        self,
        record: TaskRecord,
        end: float,
        reads: Sequence[ReadOutcome] | None,
        timing: tuple[float, float | None] | None = None,
    ) -> bool:
        """Close a task after its exit read; returns whether no task runs any more.

        Args:
            record: What :meth:`begin` opened.
            end: The clock when the task ended, taken before the exit read.
            reads: One outcome per device, read after ``end``; ``None`` when
                no read was made (nothing new could have been sampled, see
                :attr:`fresh_until`).
            timing: The driver's sample period and jitter as the backend
                knows them after those reads (see :meth:`ingest`).
        """
        lock = self._lock
        if not lock.acquire(False):  # positional: cheaper than blocking=False
            _acquire_contended(lock)
        try:
            if self.recorded:
                self._apply_recorded()
            if timing is not None:
                self._period, self._jitter = timing
            return self._end_locked(record, end, reads)
        finally:
            lock.release()

    def _end_locked(
        self, record: TaskRecord, end: float, reads: Sequence[ReadOutcome] | None
    ) -> bool:
        """:meth:`end` with the lock held."""
        if record.end_time is not None:
            return False  # ended twice
        if record._generation != self.generation:
            # Begun before a fork: the child starts empty, and this process
            # has no figures for the part of the task it saw.
            record.end_time = end
            record._final = (0.0, 0.0, None, "partial", 0.0)
            return False
        service = record._svc
        service.task_count += 1
        service.active -= 1
        self._active_tasks -= 1
        last = not self._active_tasks
        if not self._device_count:
            record.end_time = end if end > record.start_time else record.start_time
            record._final = _UNAVAILABLE
            return last
        # Keep time in order: a begin, an end or a sample that another
        # thread applied between our clock read and this lock moves the end
        # up to it (by the exit read's latency at most), so windows, frozen
        # task figures and credited samples all see one order of events.
        latest = self._latest_event
        if self._max_horizon > latest:  # noqa: PLR1730 - no max() on every task exit
            latest = self._max_horizon
        if end < latest:  # noqa: PLR1730 - as above
            end = latest
        self._latest_event = end
        record.end_time = end
        # Close the window before ingesting the exit reads, so that a sample
        # reaching past the end credits the service only up to the end.
        if not service.active:
            self._active_services.remove(service)
            service.set_rate(end, 0.0)
            service.last_close = end
            if self._split:
                self._split_rates(end)
        end_mark = None
        if reads is not None:
            end_mark = _Mark()
            end_mark._svc = service
            for channel in self._channels:
                channel.pending.append((end, end_mark))
            self._ingest(reads)
            end_mark._done = True
        record._final = self._task_figures(record, end, end_mark, reads)
        record._done = True
        if last:
            self._last_close = end
            # The sample covering the end is out one period later, plus the
            # driver's jitter; an idle claim covering it can come later still
            # (see settle_done).
            jitter = self._jitter
            self._settle_deadline = end + self._period + (jitter if jitter and jitter > 0 else 0.0)
        for channel in self._channels:
            pending = channel.pending
            if pending and pending[-1][1] is record:
                pending.pop()  # the common sequential case; others go at the next tidy-up
        self._ends_since_forget += 1
        if self._ends_since_forget >= _FORGET_EVERY:
            self._forget()
        return last

    def apply_recorded(self) -> None:
        """Apply the task ends recorded so far (see :attr:`recorded`)."""
        if self.recorded:
            with self._lock:
                self._apply_recorded()

    def _apply_recorded(self) -> None:
        # Only lock holders pop, so ends are applied once each and in order; a
        # finaliser may append meanwhile (the loop takes it too).
        recorded = self.recorded
        while recorded:
            record, end, payload = recorded.popleft()
            self._end_locked(record, end, None)  # no exit read: it could not be made
            self.finished.append((record, payload))

    def _add_service(self, name: str) -> _Service:
        service = self._services[name] = _Service(name, len(self._channels))
        return service

    # -- sampling --------------------------------------------------------------------

    def read_plan(self) -> list[float]:
        """Per device, the ``since`` to read utilisation from.

        Deliberately lock-free: it only reads floats, and a stale value merely
        makes the backend return a sample the ledger then skips.
        """
        return [channel.since for channel in self._util]

    @property
    def sample_period(self) -> float:
        """The driver's sample period."""
        return self._period

    def wants_reading(self) -> bool:
        """Whether a sampling tick has anything to learn (rule 1: only during tasks)."""
        with self._lock:
            if self.recorded:
                self._apply_recorded()
            return self._active_tasks > 0 or not self._settled()

    def ingest(
        self, reads: Sequence[ReadOutcome], timing: tuple[float, float | None] | None = None
    ) -> None:
        """Apply one sampling tick's reads (one outcome per device).

        Args:
            reads: One outcome per device.
            timing: The driver's sample period and jitter as the backend knows
                them after these reads (NVML learns them from its samples),
                applied with them, so that the exits that follow skip their
                reads by what the reads taught.
        """
        with self._lock:
            if self.recorded:
                self._apply_recorded()
            if timing is not None:
                self._period, self._jitter = timing
            self._ingest(reads)
            self._forget()

    def settle_done(self, deadline: float | None) -> None:
        """The sampler made the read due at ``deadline``; park once every window is settled.

        Compare-and-clear: a task that began and ended meanwhile set a new
        deadline, which still needs its own read. Where that read did not yet
        cover the last window (an idle claim lags the read by the longest
        sample period the driver may have), read again one period later, for
        at most :data:`_SETTLE_GIVE_UP` seconds after the last end; a stretch
        left unsettled then is covered by the next task's reads.
        """
        with self._lock:
            if self._active_tasks == 0 and self._settle_deadline == deadline:
                now = self._clock()
                if self._settled() or now >= self._last_close + _SETTLE_GIVE_UP:
                    self._settle_deadline = None
                else:
                    self._settle_deadline = now + self._period

    # -- reading figures ---------------------------------------------------------------

    def figures(self, record: TaskRecord) -> Figures:
        """A task's figures: final once it ended, else real samples so far."""
        final = record._final
        if final is not None:
            return Figures(*final)
        with self._lock:
            if self.recorded:
                self._apply_recorded()
            if record._final is not None:
                return Figures(*record._final)
            if not self._device_count:
                return _UNAVAILABLE
            if record._generation != self.generation:
                return Figures(0.0, 0.0, None, "partial", 0.0)
            return Figures(*self._task_figures(record, None, None, None))

    def stats(self, service_name: str | None = None) -> dict[str, ServiceStats]:
        """Snapshots of one service (zeros if never seen) or of all of them."""
        with self._lock:
            if self.recorded:
                self._apply_recorded()
            if service_name is not None:
                service = self._services.get(service_name)
                if service is None:
                    return {
                        service_name: ServiceStats(
                            service_name,
                            energy_mj=0.0 if self._measures_energy else None,
                            status=self._base_status,
                            coverage=self._measured_share if self._measures else 0.0,
                        )
                    }
                return {service_name: self._snapshot(service)}
            return {name: self._snapshot(s) for name, s in self._services.items()}

    def reset(self, service_name: str | None = None) -> dict[str, ServiceStats]:
        """Zero counters; running tasks go on and count from now on (rule 10).

        Returns:
            The figures that were zeroed, snapshotted under the same lock (the
            metrics carry them so exported counters never go down).
        """
        with self._lock:
            if self.recorded:
                self._apply_recorded()  # ends from before the reset belong before it
            now = self._clock()
            targets = (
                list(self._services.values())
                if service_name is None
                else [s for s in (self._services.get(service_name),) if s is not None]
            )
            zeroed = {service.name: self._snapshot(service) for service in targets}
            for service in targets:
                old = service.reset_mark
                if old is not None:
                    old._done = True
                mark = service.reset_mark = _Mark()
                mark._svc = service
                service.task_count = 0
                service.failed = False
                service.reset_at = now
                if service.active or not self._covered_up_to(service.last_close):
                    # A sample still to come may straddle the reset: only its
                    # later part counts, so the mark waits for that sample.
                    self._place_mark(mark, now)
                else:
                    self._fill_now(mark)
            return zeroed

    def clear_after_fork(self) -> None:
        """In a forked child: drop everything inherited (a new process starts at zero)."""
        self._new_lock()
        self.generation += 1
        self._new_state()

    # -- internals (all called with the lock held) ---------------------------------------

    def _covered_up_to(self, t: float) -> bool:
        """Whether every channel credited its samples up to ``t``."""
        return self._min_horizon >= t - _EPS

    def _update_horizons(self) -> None:
        """Keep the oldest and newest channel horizons (read on every task begin and end)."""
        horizons = [channel.horizon for channel in self._channels]
        self._min_horizon = min(horizons, default=math.inf)
        self._max_horizon = max(horizons, default=-math.inf)

    def _settled(self) -> bool:
        """Whether every sample covering the last closed window was credited."""
        return self._covered_up_to(self._last_close)

    def _wake_channels(self, now: float) -> None:
        """The first task after idle, every window settled: start crediting from now."""
        for channel in self._channels:
            if channel.pending:
                # Only resets can wait here (no task runs): their services
                # are settled, so their sums will not move over the idle
                # stretch the horizon now skips.
                for _, mark in channel.pending:
                    if not mark._done:
                        self._fill_from_sums(mark, channel)
                channel.pending = []
            if channel.horizon < now:  # noqa: PLR1730 - no max() on every first task
                channel.horizon = now
            channel.update_since(self._period)
        self._update_horizons()
        self._update_fresh_until()

    def _update_fresh_until(self) -> None:
        """Until ``fresh_until`` a task exit need not read the driver.

        The next sample is due one period after the newest one read, and is
        visible at the latest ``jitter`` later; before then the exit's tail
        takes the newest sample read (for an exit in the jitter window just
        before a sample that is already out, the error is that window's length
        at most). Where a read found nothing although a sample was overdue,
        the driver is not sampling: exits ask again one period later. So exits
        read the driver at most about once per sample period, however many
        tasks end. Read lock-free by the exit path.
        """
        jitter = self._jitter
        if jitter is None or not self._util:
            self.fresh_until = -math.inf
            return
        fresh = math.inf
        late = self._period + jitter
        for channel in self._util:
            last_end = channel.last_end
            if last_end is None:
                due = channel.quiet_until
            elif channel.since < last_end:
                due = -math.inf  # a read must still fetch the newest visible sample
            else:
                due = last_end + late
                due = max(due, channel.quiet_until)
            fresh = min(fresh, due)
        self.fresh_until = fresh

    def _nothing_new(self, channel: _Channel) -> None:
        """A read of ``channel`` brought no sample newer than the newest one.

        Where the next sample was overdue, the driver took it and recorded
        nothing (an idle GPU): no new sample can be visible before the tick
        after that, one period on along the driver's grid (the newest sample's
        time plus whole periods), plus the jitter. Without a sample to place
        the grid, one period from now.
        """
        last_end = channel.last_end
        jitter = self._jitter
        if jitter is None:
            return
        now = self._clock()
        period = self._period
        if last_end is None:
            channel.quiet_until = now + period
        elif now >= last_end + period + jitter:
            ticks = math.floor((now - jitter - last_end) / period) + 1
            channel.quiet_until = last_end + ticks * period + jitter

    def _split_rates(self, now: float) -> None:
        """Under ``split``, the active services share each moment equally from ``now`` on."""
        active = self._active_services
        if active:
            rate = 1.0 / len(active)
            for service in active:
                service.set_rate(now, rate)

    def _place_mark(self, mark: _Mark, at: float) -> None:
        """Have ``mark`` filled on each channel by the sample that covers ``at``."""
        for channel in self._channels:
            if at >= channel.horizon:
                channel.pending.append((at, mark))
                if len(channel.pending) >= channel.prune_at:
                    # Resets in a row with no sample between supersede each other.
                    channel.pending = [p for p in channel.pending if not p[1]._done]
                    channel.prune_at = max(_PRUNE_MIN, 2 * len(channel.pending))
            else:
                # The sample covering ``at`` was credited already (clock mapping
                # jitter puts a sample end a little past "now"): the sums now are
                # the sums at the mark, give or take that sliver.
                self._fill_from_sums(mark, channel)

    def _fill_from_sums(self, mark: _Mark, channel: _Channel) -> None:
        """Fill a mark's value on ``channel`` with its service's sums as they are now."""
        mark.fill(channel.slot, list(mark._svc.sums[channel.slot]), len(self._channels))

    def _fill_now(self, mark: _Mark) -> None:
        """Fill what a mark still lacks with its service's sums now (they no longer move)."""
        for channel in self._channels:
            if mark.get(channel.slot) is None:
                self._fill_from_sums(mark, channel)
        mark._done = True  # complete: pending lists drop it

    def _ingest(self, reads: Sequence[ReadOutcome]) -> None:
        for device, outcome in enumerate(reads):
            util = self._util[device]
            if isinstance(outcome, BaseException):
                util.failing = True
                self._read_failed(util)
                if self._power:
                    self._read_failed(self._power[device])
                continue
            util.failing = False
            newest = util.last_end
            if outcome.utilization:
                self._ingest_channel(util, outcome.utilization)
            if util.last_end == newest:
                self._nothing_new(util)
            idle_until = outcome.idle_until
            if idle_until is not None and idle_until > util.idle_until:
                util.idle_until = idle_until
                if idle_until > util.horizon:
                    self._ingest_channel(util, ((idle_until, 0.0),), claim=True)
            if self._power and outcome.power:
                self._ingest_channel(self._power[device], outcome.power)
        self._update_horizons()
        self._update_fresh_until()

    def _read_failed(self, channel: _Channel) -> None:
        # Figures that needed this reading are partial, even if the samples
        # are recovered by a later read (spec: "even if recovered later"). A
        # service whose windows this device already covered needed nothing.
        # A failure before the last reset is not the new figures' business.
        self._fail_epoch += 1
        unread_from = channel.horizon + _EPS
        for service in self._tracking:
            if service.active or service.last_close > max(unread_from, service.reset_at):
                service.failed = True

    def _ingest_channel(
        self,
        channel: _Channel,
        samples: Sequence[tuple[float, float | None]],
        *,
        claim: bool = False,
    ) -> None:
        horizon = channel.horizon
        for end, value in samples:
            if not claim and (channel.last_end is None or end > channel.last_end):
                channel.last_end = end
                channel.last_value = value
            if end <= horizon:
                continue
            if channel.pending:
                self._fill_marks(channel, horizon, end, value)
            self._credit(channel, horizon, end, value)
            horizon = end
        channel.horizon = horizon
        channel.update_since(self._period)

    def _fill_marks(self, channel: _Channel, start: float, end: float, value: float | None) -> None:
        """Fill the marks whose instant the sample ``(start, end]`` covers."""
        slot = channel.slot
        slots = len(self._channels)
        waiting: list[tuple[float, _Mark]] = []
        for at, mark in channel.pending:
            if mark._done or mark.get(slot) is not None:
                continue
            if at > end:
                waiting.append((at, mark))
                continue
            service = mark._svc
            sums = list(service.sums[slot])
            self._add(channel, sums, service, start, max(at, start), value)
            mark.fill(slot, sums, slots)
        channel.pending = waiting

    def _credit(self, channel: _Channel, start: float, end: float, value: float | None) -> None:
        """Credit the sample ``(start, end]`` to every service that may have been active."""
        slot = channel.slot
        for service in self._tracking:
            self._add(channel, service.sums[slot], service, start, end, value)

    def _add(
        self,
        channel: _Channel,
        sums: Sums,
        service: _Service,
        lo: float,
        hi: float,
        value: float | None,
    ) -> None:
        """Add ``value`` over ``(lo, hi]`` of ``service``'s activity to ``sums``."""
        if hi <= lo:
            return
        a0, w0 = service.at(lo)
        a1, w1 = service.at(hi)
        active = a1 - a0
        if active <= 0.0:
            return
        if value is None:
            sums[_MISSING] += active
            return
        sums[_COVERED] += active
        if channel.is_power:
            sums[_WEIGHTED] += value * (w1 - w0)
        elif value > self._threshold:
            weight = w1 - w0
            sums[_BUSY] += weight
            sums[_WEIGHTED] += value * weight

    def _task_figures(
        self,
        record: TaskRecord,
        end: float | None,
        end_mark: _Mark | None,
        reads: Sequence[ReadOutcome] | None,
    ) -> FiguresTuple:
        """A task's figures: live (``end`` is ``None``) or final.

        Per channel, the sums at the end (the end mark, else the sums now) less
        the sums at the start; when final and the end is past the newest
        sample, plus the tail, which takes that sample's value unless the exit
        read failed. Runs at every task exit: kept to plain arithmetic.
        """
        service = record._svc
        start = record.start_time
        starts = record._values
        ends = end_mark._values if end_mark is not None else None
        split = self._split
        threshold = self._threshold
        busy = weighted = covered = missing = energy = 0.0
        energy_missing = False
        for channel in self._channels:
            slot = channel.slot
            at_end = ends[slot] if ends is not None else None
            at_start = starts[slot] if starts is not None else None
            if at_start is not None:
                if at_end is None:
                    at_end = service.sums[slot]
                if channel.is_power:
                    energy += at_end[_WEIGHTED] - at_start[_WEIGHTED]
                    energy_missing |= at_end[_MISSING] - at_start[_MISSING] > _EPS
                else:
                    busy += at_end[_BUSY] - at_start[_BUSY]
                    weighted += at_end[_WEIGHTED] - at_start[_WEIGHTED]
                    covered += at_end[_COVERED] - at_start[_COVERED]
                    missing += at_end[_MISSING] - at_start[_MISSING]
            horizon = channel.horizon
            if end is None or (ends is not None and ends[slot] is not None) or horizon >= end:
                continue
            # The tail: from the newest sample (or the start) to the end.
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
        if not self._measures:
            return 0.0, 0.0, None, "unavailable", 0.0
        if end is None:
            missing += self._unread(service, start)
        failed_read = record._fail_epoch != self._fail_epoch
        partial = failed_read or missing > _EPS or energy_missing or self._partial_devices
        seen = covered + missing
        return (
            1000.0 * busy,
            10.0 * weighted,
            energy if self._measures_energy else None,
            "partial" if partial else "ok",
            (covered / seen if seen > _EPS else 1.0) * self._measured_share,
        )

    def _forget(self) -> None:
        """Drop breakpoints, pending entries and settled services no one needs."""
        self._ends_since_forget = 0
        floor = math.inf
        for channel in self._channels:
            floor = min(floor, channel.horizon)
            if channel.pending:
                channel.pending = [p for p in channel.pending if not p[1]._done]
        for service in list(self._tracking):
            if service.active == 0 and service.last_close <= floor + _EPS:
                # Settled: every sample covering its windows was credited; its
                # sums no longer move, so a reset still waiting is known now.
                self._tracking.discard(service)
                service.forget_all()
                mark = service.reset_mark
                if mark is not None:
                    self._fill_now(mark)
            elif len(service.bp_t) >= service.prune_at:
                # Every query from here on is at or after the oldest horizon.
                service.forget_before(floor)
                service.prune_at = max(_PRUNE_MIN, 2 * len(service.bp_t))

    def _unread(self, service: _Service, since: float) -> float:
        """Active time of ``service`` after ``since`` that failing reads left unread.

        While a device's reads fail, its horizon stays where the last good
        read left it: the service's time past it, up to now, was not read.
        """
        unread = 0.0
        now: float | None = None
        for channel in self._util:
            if not channel.failing or not service.bp_t:
                continue
            lo = channel.horizon if channel.horizon > since else since
            if not service.active and service.last_close <= lo:
                continue
            if now is None:
                now = self._clock()
            if now > lo:
                unread += service.at(now)[0] - service.at(lo)[0]
        return unread

    def _snapshot(self, service: _Service) -> ServiceStats:
        busy = weighted = covered = missing = energy = 0.0
        energy_missing = False
        mark = service.reset_mark
        for channel in self._channels:
            now = service.sums[channel.slot]
            if mark is None:
                since = _ZEROS
            else:
                since_reset = mark.get(channel.slot)
                if since_reset is None:
                    continue  # the sample covering the reset has not come yet
                since = since_reset
            if channel.is_power:
                energy += now[_WEIGHTED] - since[_WEIGHTED]
                energy_missing |= now[_MISSING] - since[_MISSING] > _EPS
            else:
                busy += now[_BUSY] - since[_BUSY]
                weighted += now[_WEIGHTED] - since[_WEIGHTED]
                covered += now[_COVERED] - since[_COVERED]
                missing += now[_MISSING] - since[_MISSING]
        missing += self._unread(service, service.reset_at)
        status = self._base_status
        if status == "ok" and (service.failed or missing > _EPS or energy_missing):
            status = "partial"
        if not self._measures:
            coverage = 0.0
        else:
            seen = covered + missing
            coverage = (covered / seen if seen > _EPS else 1.0) * self._measured_share
        return ServiceStats(
            service=service.name,
            task_count=service.task_count,
            active_tasks=service.active,
            gpu_ms=1000.0 * busy,
            gpu_util_ms=10.0 * weighted,
            energy_mj=energy if self._measures_energy else None,
            status=status,
            coverage=coverage,
        )


def _acquire_contended(lock: threading.RLock) -> None:
    """Take ``lock``, held by another thread, without a convoy.

    A thread that holds the ledger lock can lose the GIL inside its (short)
    critical section. A contender that then blocks on the lock sleeps in the
    OS, and every hand-over costs two thread switches and two GIL hand-overs:
    measured here, 8 threads running tasks back to back got a quarter of one
    thread's throughput. Yielding the GIL instead lets the holder finish, and
    the lock is free at the next try. After a while, block as usual.
    """
    for _ in range(_YIELDS_BEFORE_BLOCKING):
        time.sleep(0)  # releases the GIL, so the holder runs
        if lock.acquire(blocking=False):
            return
    lock.acquire()


#: Sums of a mark that starts at nothing.
_ZEROS: Sums = [0.0, 0.0, 0.0, 0.0]
