"""The ledger: per-service task counts, windows and GPU time, under one lock.

Everything the sampler and task exits learn from the backend flows in here as
readings (:meth:`Ledger.ingest`, :meth:`Ledger.end`), and everything users see
(``stats()``, task handles, spans, metrics) is read out of it. The ledger holds
the one lock and orders events; the maths lives beside it: activity windows in
:mod:`gputime._windows`, sums and marks in :mod:`gputime._sums`, device
channels and crediting in :mod:`gputime._channels`, figures in
:mod:`gputime._figures`.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

from gputime._channels import Channels, ReadOutcome
from gputime._figures import (
    EPS,
    INHERITED,
    UNAVAILABLE,
    DeviceFigures,
    Figures,
    FiguresTuple,
    PerDevice,
    Profile,
    ServiceStats,
)
from gputime._sums import Mark, Services, TaskRecord
from gputime._tally import per_device_figures, task_figures
from gputime._types import Attribution, Clock
from gputime._windows import split_rates

# Task exits tidy up (settled services, breakpoints) every this many exits;
# sampler ticks and polls tidy up every time.
_FORGET_EVERY = 32

# A task begin or end that finds the ledger lock held yields the GIL this many
# times, trying again after each, before it blocks (see _acquire_contended).
_YIELDS_BEFORE_BLOCKING = 100

# The sampler stops re-reading for the settle this long after the last task
# ended: the longest driver sample period (1 s), its jitter and a few ticks.
_SETTLE_GIVE_UP = 3.0

# The figure of a task whose tail alone took an idle value (see _end_locked).
_IDLE_TAIL: FiguresTuple = (0.0, 0.0, None, "ok", 1.0)

#: What :meth:`Ledger.begin` returns for the only running task, and for one that
#: also starts the channels afresh after an idle spell (see there).
FIRST, WOKE = 1, 2

__all__ = ["FIRST", "WOKE", "Figures", "Ledger", "ReadOutcome", "ServiceStats", "TaskRecord"]


class Ledger:
    """Per-service counts, windows and GPU time for one tracker.

    Args:
        devices: Number of tracked devices that are read (0 for the ``none`` backend).
        unmeasured: Tracked devices that cannot report utilisation (MIG): never
            read, they make every figure ``partial`` with its coverage reduced.
        layout: Every tracked device in order: its id and the channel that
            reads it (``None``: never read); figures per device go by these ids.
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
        layout: Sequence[tuple[str, int | None]] = (),
        measures_utilization: bool,
        measures_energy: bool,
        sample_period: float,
        sample_jitter: float | None,
        attribution: Attribution,
        threshold: float,
        clock: Clock,
    ) -> None:
        # The one lock. It guards every attribute set in _new_state: the
        # services and their counts, windows and sums, the channels' horizons
        # and pending marks, the marks' values. No backend call and no user
        # callback ever runs while it is held.
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
        self.profile = Profile.of(
            devices,
            unmeasured,
            measures_utilization,
            measures_energy,
            threshold,
            attribution,
            layout,
        )
        self._split = self.profile.split
        #: Bumped in a forked child: records of an older generation are inherited.
        self.generation = 0
        #: Task ends recorded where they could not be applied (inside a garbage
        #: collection, or under this lock): ``(record, end, payload)``, appended
        #: without a lock, applied in order under the lock before any later
        #: event (see _apply_recorded), then moved to ``finished`` as
        #: ``(record, payload)`` for the tracker to emit from a safe place.
        self.recorded: deque[tuple[TaskRecord, float, object]] = deque()
        self.finished: deque[tuple[TaskRecord, object]] = deque()
        self._new_state(sample_period, sample_jitter)

    def _new_state(self, period: float, jitter: float | None) -> None:
        """Everything that a new process (a forked child) starts afresh.

        Args:
            period: The driver's sample period, as known now.
            jitter: Its jitter, likewise.
        """
        self._active_tasks = 0
        # The time of the newest begin or end: events are applied in lock
        # order, so an end read before another thread's event moves up to it.
        self._latest_event = -math.inf
        self._last_close = -math.inf
        self._settle_deadline: float | None = None
        self._ends_since_forget = 0
        self.channels = Channels(
            self._device_count,
            self.profile.measures_energy,
            period,
            jitter,
            self.profile.threshold,
            self._clock,
        )
        self._channel_list = self.channels.all
        profile = self.profile
        # The one channel where one device's utilisation is all that is read,
        # attributed per device: there, most task ends need no figure but the
        # tail (see _end_locked). None elsewhere.
        self._sole = (
            self.channels.util[0]
            if self._channel_list == tuple(self.channels.util[:1])
            and profile.measures
            and not profile.split
            and not profile.per_device
            else None
        )
        self.services = services = Services(self.channels.slots)
        # Its containers under short names: the task path reads them on every task.
        self._services, self._tracking = services.by_name, services.tracking
        self._active_services = services.active
        # A forked child: the parent's recorded ends are not its own.
        self.recorded.clear()
        self.finished.clear()

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

    @property
    def fresh_until(self) -> float:
        """Until then a task exit need not read the driver (lock-free; see Channels)."""
        return self.channels.fresh_until

    @property
    def sample_period(self) -> float:
        """The driver's sample period."""
        return self.channels.period

    # -- task lifecycle --------------------------------------------------------------

    def begin(self, record: TaskRecord, service_name: str) -> int:
        """Open ``record`` as a task of ``service_name``.

        The hot path: one lock acquisition, no allocation but a new service's.

        Returns:
            0 if other tasks run, or if no device is read (nothing to wake);
            :data:`FIRST` if this is the only one; :data:`WOKE` if, besides,
            every earlier window was settled, so the channels start afresh
            from now (the first task after an idle spell).
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
            service = self._services.get(service_name) or self.services.add(service_name)
            first_overall = not self._active_tasks
            self._active_tasks += 1
            service.active += 1
            record._svc = service
            record.start_time = now
            record.concurrency = service.active
            record._generation = self.generation
            if not self._device_count:
                return 0  # no sampler to wake, no baseline to refresh
            channels = self.channels
            record._fail_epoch = channels.failures
            woke = False
            if first_overall:
                self._settle_deadline = None
                # covered_up_to() written out: this runs as every task after idle begins.
                if channels.min_horizon >= self._last_close - EPS:
                    channels.wake(now)
                    woke = True
            if service.active == 1:
                # Its window opens (written out: every sequential task opens one).
                active = self._active_services
                active.append(service)
                self._tracking.add(service)
                if self._split:
                    split_rates(active, len(active), now)
                else:
                    # service.set_rate(now, 1.0) written out for a shut window
                    # (rate 0): its totals carry over to the new breakpoint.
                    bp_t = service.bp_t
                    if bp_t and bp_t[-1] < now:
                        bps = service.bps
                        a, w, _ = bps[-1]
                        bp_t.append(now)
                        bps.append((a, w, 1.0))
                    else:
                        service.set_rate(now, 1.0)  # the first window, or a same-instant one
            for channel in self._channel_list:
                if now >= channel.horizon:
                    channel.pending.append((now, record))
                else:
                    record.fill_now(channel.slot, channels.slots)  # see Channel.place
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
        """Close a task after its exit read; False where it had ended already.

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
                self.channels.set_timing(*timing)
            return self._end_locked(record, end, reads)
        finally:
            lock.release()

    def end_unmeasured(self, record: TaskRecord, end: float) -> bool:
        """:meth:`end` for a ledger that reads no device (only there: it opens and
        closes no window); False where it had ended already.

        Written out, not :meth:`end`: with no device (backend ``"none"``, the
        default tracker without a GPU) this is the whole of a task's end, and
        one Python call is about 1.5 % of it.
        """
        lock = self._lock
        if not lock.acquire(False):  # positional: cheaper than blocking=False
            _acquire_contended(lock)
        try:
            if self.recorded:
                self._apply_recorded()
            if record.end_time is not None:
                return False  # ended before: the first end counted
            if record._generation != self.generation:
                return self._end_locked(record, end, None)  # begun before a fork
            service = record._svc
            service.task_count += 1
            service.active -= 1
            self._active_tasks -= 1
            record.end_time = end if end > record.start_time else record.start_time
            record._final = UNAVAILABLE
            return True
        finally:
            lock.release()

    def _end_locked(
        self, record: TaskRecord, end: float, reads: Sequence[ReadOutcome] | None
    ) -> bool:
        """:meth:`end` with the lock held."""
        if record.end_time is not None:
            return False  # ended before: the first end counted
        if record._generation != self.generation:
            # Begun before a fork: the child starts empty, and this process
            # has no figures for the part of the task it saw.
            record.end_time = end
            record._final = INHERITED
            return True
        service = record._svc
        service.task_count += 1
        service.active -= 1
        self._active_tasks -= 1
        last = not self._active_tasks
        if not self._device_count:
            record.end_time = end if end > record.start_time else record.start_time
            record._final = UNAVAILABLE
            return True
        channels = self.channels
        # Keep time in order: a begin, an end or a sample that another
        # thread applied between our clock read and this lock moves the end
        # up to it (by the exit read's latency at most), so windows, frozen
        # task figures and credited samples all see one order of events.
        latest = self._latest_event
        if channels.max_horizon > latest:  # noqa: PLR1730 - no max() on every task exit
            latest = channels.max_horizon
        if end < latest:  # noqa: PLR1730 - as above
            end = latest
        self._latest_event = end
        record.end_time = end
        # Close the window before ingesting the exit reads, so that a sample
        # reaching past the end credits the service only up to the end.
        if not service.active:
            # Its window closes (written out: every sequential task closes one).
            active = self._active_services
            active.remove(service)
            # service.set_rate(end, 0.0) written out: the totals advance to the end.
            bp_t = service.bp_t
            last_t = bp_t[-1]  # the window's own breakpoints are there
            if last_t < end:
                bps = service.bps
                a, w, rate = bps[-1]
                dt = end - last_t
                bp_t.append(end)
                bps.append((a + dt, w + rate * dt, 0.0))
            else:
                service.set_rate(end, 0.0)  # at the instant it opened
            service.last_close = end
            if self._split:
                split_rates(active, len(active), end)
        end_mark = None
        if reads is not None:
            end_mark = Mark()
            end_mark._svc = service
            for channel in self._channel_list:
                channel.pending.append((end, end_mark))
            channels.ingest(reads, self._tracking)
            end_mark._done = True
        profile = self.profile
        sole = self._sole
        if (
            sole is not None
            and reads is None
            and record._values is None
            and record._fail_epoch == channels.failures
            and (value := sole.tail) is not None
        ):
            # task_figures() cut to the most common end: one device read, no
            # exit read, no sample since the task began, none failed. Its
            # figure is then its tail alone (a read device, fully covered),
            # from its start: its start mark still waits for a sample, so the
            # newest reading is no later than its start.
            length = end - record.start_time
            if value > profile.threshold:
                record._final = (1000.0 * length, 10.0 * (value * length), None, "ok", 1.0)
            else:
                record._final = _IDLE_TAIL
        else:
            record._final = task_figures(record, end, end_mark, reads, channels, profile)
        if profile.per_device:
            record._final_devices = per_device_figures(
                record, end, end_mark, reads, channels, profile
            )
        record._done = True
        if last:
            self._last_close = end
            # The sample covering the end is out one period later, plus the
            # driver's jitter; an idle claim covering it can come later still
            # (see settle_done).
            self._settle_deadline = end + channels.settle_delay
        for channel in self._channel_list:
            # Its start mark is frozen into its figures: drop it now, newest
            # first (it is the last or nearly so). Left there, it would tie the
            # task, and through it its tracker, to the ledger until the next
            # tidy-up: a cycle that a dropped tracker would wait out.
            pending = channel.pending
            if pending:
                if pending[-1][1] is record:
                    pending.pop()  # the common sequential case
                else:
                    _drop(pending, record)
        self._ends_since_forget += 1
        if self._ends_since_forget >= _FORGET_EVERY:
            self._ends_since_forget = 0
            self.services.forget(channels)
        return True

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
            # No exit read: it could not be made. An end recorded twice emits once.
            if self._end_locked(record, end, None):
                self.finished.append((record, payload))

    # -- sampling --------------------------------------------------------------------

    def read_plan(self) -> list[float]:
        """Per device, the ``since`` to read utilisation from (lock-free)."""
        return self.channels.read_plan()

    def wants_reading(self) -> bool:
        """Whether a sampling tick has anything to learn (only during tasks, and the settle)."""
        with self._lock:
            if self.recorded:
                self._apply_recorded()
            return self._active_tasks > 0 or not self.channels.covered_up_to(self._last_close)

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
            channels = self.channels
            if timing is not None:
                channels.set_timing(*timing)
            channels.ingest(reads, self._tracking)
            self._ends_since_forget = 0
            self.services.forget(channels)

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
                if (
                    self.channels.covered_up_to(self._last_close)
                    or now >= self._last_close + _SETTLE_GIVE_UP
                ):
                    self._settle_deadline = None
                else:
                    self._settle_deadline = now + self.channels.period

    # -- reading figures ---------------------------------------------------------------

    def figures(self, record: TaskRecord) -> Figures:
        """A task's figures: final once it ended, else real samples so far."""
        final = record._final
        if final is not None:
            return Figures(*final)
        return Figures(*self._live_figures(record)[0])

    def device_figures(self, record: TaskRecord) -> dict[str, DeviceFigures]:
        """A task's figures per tracked device, by id (see :meth:`figures`)."""
        final = record._final
        if final is None:
            final, per_device = self._live_figures(record)
        else:
            per_device = record._final_devices
        return self.profile.devices(final, per_device)

    def _live_figures(self, record: TaskRecord) -> tuple[FiguresTuple, PerDevice]:
        with self._lock:
            if self.recorded:
                self._apply_recorded()
            if record._final is not None:
                return record._final, record._final_devices
            if not self._device_count:
                return UNAVAILABLE, None
            if record._generation != self.generation:
                return INHERITED, None
            channels, profile = self.channels, self.profile
            return (
                task_figures(record, None, None, None, channels, profile),
                per_device_figures(record, None, None, None, channels, profile),
            )

    def stats(self, service_name: str | None = None) -> dict[str, ServiceStats]:
        """Snapshots of one service (zeros if never seen) or of all of them."""
        with self._lock:
            if self.recorded:
                self._apply_recorded()
            return self.services.stats(service_name, self.channels, self.profile)

    def reset(self, service_name: str | None = None) -> dict[str, ServiceStats]:
        """Zero counters; running tasks go on and count from now on (see Services.reset)."""
        with self._lock:
            if self.recorded:
                self._apply_recorded()  # ends from before the reset belong before it
            return self.services.reset(service_name, self._clock(), self.channels, self.profile)

    def clear_after_fork(self) -> None:
        """In a forked child: drop everything inherited (a new process starts at zero)."""
        self._new_lock()
        self.generation += 1
        self._new_state(self.channels.period, self.channels.jitter)


def _drop(pending: list[tuple[float, Mark]], mark: Mark) -> None:
    """Remove ``mark``'s entry from a pending list (newest first: it is near the end)."""
    for i in range(len(pending) - 1, -1, -1):
        if pending[i][1] is mark:
            del pending[i]
            return


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
