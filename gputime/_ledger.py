"""The ledger: per-service task counts, windows and GPU time, under one lock.

Everything the sampler and the task-exit path learn from the backend flows into
the ledger as timestamped samples, and everything users see (``stats()``, task
handles, spans, metrics) is read out of it.

The integration maths (see ``docs/design.md``): a driver sample with value ``v``
covers a stretch ``(t0, t1]``. Each service keeps two piecewise-linear running
totals over time, ``A(t)`` (time it was active) and ``W(t)`` (attribution
weighted active time: ``W = A`` for ``device``; for ``split`` ``W`` grows at
``1/N`` while ``N`` services are active). The sample credits the service
``v * (W(t1) - W(t0))``, exact to the microsecond of the window edges, in
O(log n). A task is credited the same way over its own window from the sample
history kept while it runs.
"""

from __future__ import annotations

import math
import threading
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

from gputime._backends import Attribution, Reading

Status = Literal["ok", "partial", "unavailable"]

_STATUS_RANK: dict[Status, int] = {"ok": 0, "partial": 1, "unavailable": 2}

#: Totals are kept as ``[busy_ms, util_ms, energy_mj]``.
_BUSY, _UTIL, _ENERGY = 0, 1, 2

# Window edges and sample ends come from float arithmetic; stretches shorter
# than this are rounding noise, not missing data.
_EPS = 1e-9

# Task exits tidy up (histories, settled services, breakpoints) every this many
# exits; sampler ticks and polls tidy up every time.
_FORGET_EVERY = 32

# Histories and breakpoint lists are pruned when they reach this length, then
# again at twice what was left: amortised O(1) per sample however long a task runs.
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


class _Channel:
    """Ingest state of one device's stream of samples (utilisation or power).

    ``horizon`` is the time up to which samples were credited: a sample ending
    at or before it is never credited again, which is what lets the sampler
    thread and task-exit reads on other threads read concurrently without
    double counting. ``history`` keeps the credited samples a running task may
    still need, as ``(start, end, value)``.
    """

    __slots__ = (
        "history",
        "history_ends",
        "horizon",
        "is_power",
        "last_end",
        "last_value",
        "prune_at",
        "since",
    )

    def __init__(self, is_power: bool) -> None:
        self.is_power = is_power
        # -inf until the first task wakes the channel and moves it to "now".
        self.horizon = -math.inf
        self.last_end: float | None = None
        self.last_value: float | None = None
        self.history: list[tuple[float, float, float | None]] = []
        self.history_ends: list[float] = []
        self.prune_at = _PRUNE_MIN
        #: What the next read asks from; kept current under the lock so that
        #: the read path can use it without taking the lock.
        self.since = -math.inf

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
    """One service's counts, totals and activity breakpoints.

    Breakpoint ``i`` says: at time ``bp_t[i]`` the running totals were
    ``bps[i] = (A, W, rate)``, and from there ``W`` grows at ``rate`` (and
    ``A`` at 1 whenever ``rate`` is above 0). ``bp_t`` is kept apart for bisect.
    """

    __slots__ = (
        "active",
        "bp_t",
        "bps",
        "covered",
        "floor",
        "last_close",
        "missing",
        "name",
        "prune_at",
        "running",
        "status",
        "task_count",
        "totals",
    )

    def __init__(self, name: str, status: Status) -> None:
        self.name = name
        self.active = 0
        self.task_count = 0
        self.running: set[TaskRecord] = set()
        self.bp_t: list[float] = []
        self.bps: list[tuple[float, float, float]] = []
        self.floor = -math.inf
        self.last_close = -math.inf
        self.totals = [0.0, 0.0, 0.0]
        self.covered = 0.0
        self.missing = 0.0
        self.status: Status = status
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

    def worsen(self, status: Status) -> None:
        if _STATUS_RANK[status] > _STATUS_RANK[self.status]:
            self.status = status


class TaskRecord:
    """The ledger's side of one running or finished task.

    :class:`gputime.TaskHandle` extends it, so each task is one object.
    """

    __slots__ = (
        "_failed",
        "_final",
        "_generation",
        "_svc",
        "concurrency",
        "end_time",
        "start_time",
    )

    _svc: _Service
    _generation: int
    #: Running tasks of this service when this one began, itself included.
    concurrency: int
    #: Tracker clock when the task began.
    start_time: float

    def __init__(self) -> None:
        #: Tracker clock when the task ended; ``None`` while it runs.
        self.end_time: float | None = None
        self._failed = False
        # Plain tuple in Figures' field order: building a named tuple costs
        # several times more, and every task exit makes one.
        self._final: tuple[float, float, float | None, Status, float] | None = None


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
        sample_jitter: How much earlier than one period after the newest sample
            the next one may appear; task exits skip the read before that.
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
        sample_jitter: float,
        attribution: Attribution,
        threshold: float,
        clock: Callable[[], float],
    ) -> None:
        # The one lock. It guards every attribute below that is not marked
        # immutable: the services and their counts, breakpoints and totals, the
        # channels' horizons and histories, and the running-task records. No
        # backend call and no user callback ever runs while it is held.
        self._lock = threading.Lock()
        # Immutable after construction.
        self._clock = clock
        self._device_count = devices
        self._measures = measures_utilization
        self._partial_devices = bool(devices and unmeasured)
        self._measured_share = devices / (devices + unmeasured) if devices else 1.0
        self._measures_energy = measures_energy
        self._period = sample_period
        self._jitter = sample_jitter
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
        self._generation = 0
        self._services: dict[str, _Service] = {}
        self._active_services: list[_Service] = []
        self._tracking: set[_Service] = set()
        self._active_tasks = 0
        self._last_close = -math.inf
        self._settle_deadline: float | None = None
        self._ends_since_forget = 0
        #: See :meth:`_update_fresh_until`.
        self.fresh_until = -math.inf
        self._util = [_Channel(is_power=False) for _ in range(devices)]
        self._power = [_Channel(is_power=True) for _ in range(devices if measures_energy else 0)]

    # -- task lifecycle --------------------------------------------------------------

    @property
    def active_tasks(self) -> int:
        """Running tasks over all services (a plain read: an int is atomic)."""
        return self._active_tasks

    @property
    def settle_deadline(self) -> float | None:
        """When the sampler should make its last read after the last task ended."""
        return self._settle_deadline

    def begin(self, record: TaskRecord, service_name: str) -> bool:
        """Open ``record`` as a task of ``service_name``; True if it is the only one running.

        The hot path: one lock acquisition, no allocation but a new service's.
        """
        with self._lock:
            now = self._clock()
            service = self._services.get(service_name) or self._add_service(service_name)
            first_overall = not self._active_tasks
            self._active_tasks += 1
            service.active += 1
            record._svc = service
            record.start_time = now
            record.concurrency = service.active
            record._generation = self._generation
            if self._device_count:
                service.running.add(record)
                if first_overall:
                    self._wake_channels(now)
                if service.active == 1:
                    self._active_services.append(service)
                    self._tracking.add(service)
                    if self._split:
                        self._split_rates(now)
                    else:
                        service.set_rate(now, 1.0)
            return first_overall

    def end(self, record: TaskRecord, end: float, reads: Sequence[ReadOutcome] | None) -> bool:
        """Close a task after its exit read; returns whether no task runs any more.

        Args:
            record: What :meth:`begin` opened.
            end: The clock when the task ended, taken before the exit read.
            reads: One outcome per device, read after ``end``; ``None`` when
                no device needed reading (see :meth:`read_plan`).
        """
        with self._lock:
            if record._generation != self._generation or record.end_time is not None:
                # Inherited across fork (the child starts empty), or ended twice.
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
            service.running.discard(record)
            # Breakpoints are appended in time order; a clock read on another
            # thread just before ours may have added one a few microseconds later.
            latest = service.bp_t[-1]
            if end < latest:  # noqa: PLR1730 - max() costs a call on every task exit
                end = latest
            record.end_time = end
            if reads is not None:
                self._ingest(reads)
            record._final = self._task_figures(record, end, reads, final=True)
            if not service.active:
                self._active_services.remove(service)
                service.set_rate(end, 0.0)
                service.last_close = end
                if self._split:
                    self._split_rates(end)
            if last:
                self._last_close = end
                self._settle_deadline = end + self._period
            self._ends_since_forget += 1
            if self._ends_since_forget >= _FORGET_EVERY:
                self._forget()
            return last

    def _add_service(self, name: str) -> _Service:
        service = self._services[name] = _Service(name, self._base_status)
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
        """The driver's sample period; the tracker refreshes it (NVML learns it late)."""
        return self._period

    @sample_period.setter
    def sample_period(self, period: float) -> None:
        if period != self._period:
            with self._lock:
                self._period = period
                self._update_fresh_until()

    def _update_fresh_until(self) -> None:
        """Until ``fresh_until`` no driver can have a sample newer than the newest read.

        A task exit before then need not read: the newest visible sample, which
        its tail takes, is already known. Read lock-free by the exit path.
        """
        fresh = math.inf if self._util else -math.inf
        lead = self._period - self._jitter
        for channel in self._util:
            last_end = channel.last_end
            if last_end is None or channel.since < last_end:
                fresh = -math.inf  # a read must still fetch the newest visible sample
                break
            fresh = min(fresh, last_end + lead)
        self.fresh_until = fresh

    def wants_reading(self) -> bool:
        """Whether a sampling tick has anything to learn (rule 1: only during tasks)."""
        with self._lock:
            return self._active_tasks > 0 or not self._settled()

    def ingest(self, reads: Sequence[ReadOutcome]) -> None:
        """Apply one sampling tick's reads (one outcome per device)."""
        with self._lock:
            self._ingest(reads)
            self._forget()

    def settle_done(self) -> None:
        """The sampler made its last read after the last task; park until the next."""
        with self._lock:
            if self._active_tasks == 0:
                self._settle_deadline = None

    # -- reading figures ---------------------------------------------------------------

    def figures(self, record: TaskRecord) -> Figures:
        """A task's figures: final once it ended, else real samples so far."""
        final = record._final
        if final is not None:
            return Figures(*final)
        with self._lock:
            if record._final is not None:
                return Figures(*record._final)
            if not self._device_count:
                return _UNAVAILABLE
            if record._generation != self._generation:
                return Figures(0.0, 0.0, None, "partial", 0.0)
            return Figures(*self._task_figures(record, math.inf, None, final=False))

    def stats(self, service_name: str | None = None) -> dict[str, ServiceStats]:
        """Snapshots of one service (zeros if never seen) or of all of them."""
        with self._lock:
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
            now = self._clock()
            targets = (
                list(self._services.values())
                if service_name is None
                else [s for s in (self._services.get(service_name),) if s is not None]
            )
            zeroed = {service.name: self._snapshot(service) for service in targets}
            for service in targets:
                service.floor = now
                service.totals = [0.0, 0.0, 0.0]
                service.task_count = 0
                service.covered = service.missing = 0.0
                service.status = self._base_status
            return zeroed

    def clear_after_fork(self) -> None:
        """In a forked child: drop everything inherited (a new process starts at zero)."""
        self._lock = threading.Lock()
        self._generation += 1
        self._services = {}
        self._active_services = []
        self._tracking = set()
        self._active_tasks = 0
        self._last_close = -math.inf
        self._settle_deadline = None
        self._ends_since_forget = 0
        self.fresh_until = -math.inf
        self._util = [_Channel(is_power=False) for _ in range(self._device_count)]
        self._power = [_Channel(is_power=True) for _ in self._power]

    # -- internals (all called with the lock held) ---------------------------------------

    def _settled(self) -> bool:
        """Whether every sample covering the last closed window was credited."""
        last_close = self._last_close - _EPS
        # Loops, not all() over generators: this runs as every task after idle
        # begins, and a generator costs more than the whole check.
        for channel in self._util:
            if channel.horizon < last_close:
                return False
        for channel in self._power:  # noqa: SIM110 - see above
            if channel.horizon < last_close:
                return False
        return True

    def _wake_channels(self, now: float) -> None:
        """The first task after idle: start crediting from now, unless a window is unsettled."""
        if self._settled():
            for channel in (*self._util, *self._power):
                if channel.horizon < now:  # noqa: PLR1730 - as above, on every first task
                    channel.horizon = now
                channel.history.clear()
                channel.history_ends.clear()
                channel.update_since(self._period)
            self._update_fresh_until()
        self._settle_deadline = None

    def _split_rates(self, now: float) -> None:
        """Under ``split``, the active services share each moment equally from ``now`` on."""
        active = self._active_services
        if active:
            rate = 1.0 / len(active)
            for service in active:
                service.set_rate(now, rate)

    def _ingest(self, reads: Sequence[ReadOutcome]) -> None:
        for device, outcome in enumerate(reads):
            if isinstance(outcome, BaseException):
                self._read_failed()
                continue
            if outcome.utilization:
                self._ingest_channel(self._util[device], outcome.utilization)
            if self._power and outcome.power:
                self._ingest_channel(self._power[device], outcome.power)
        self._update_fresh_until()

    def _read_failed(self) -> None:
        # Every figure that needed this reading is partial, even if the samples
        # are recovered by a later read (spec: "even if recovered later").
        for service in self._tracking:
            service.worsen("partial")
            for record in service.running:
                record._failed = True

    def _ingest_channel(
        self, channel: _Channel, samples: Sequence[tuple[float, float | None]]
    ) -> None:
        horizon = channel.horizon
        for end, value in samples:
            if channel.last_end is None or end > channel.last_end:
                channel.last_end = end
                channel.last_value = value
            if end <= horizon:
                continue
            self._credit_services(channel, horizon, end, value)
            channel.history.append((horizon, end, value))
            channel.history_ends.append(end)
            horizon = end
        channel.horizon = horizon
        channel.update_since(self._period)

    def _credit_services(
        self, channel: _Channel, start: float, end: float, value: float | None
    ) -> None:
        for service in self._tracking:
            lo = max(start, service.floor)
            if lo >= end:
                continue
            a0, w0 = service.at(lo)
            a1, w1 = service.at(end)
            weight = w1 - w0
            if channel.is_power:
                if value is None:
                    if a1 - a0 > _EPS:
                        service.worsen("partial")
                else:
                    service.totals[_ENERGY] += value * weight
                continue
            if value is None:
                service.missing += a1 - a0
                if a1 - a0 > _EPS:
                    service.worsen("partial")
                continue
            service.covered += a1 - a0
            if value > self._threshold:
                service.totals[_BUSY] += 1000.0 * weight
                service.totals[_UTIL] += 10.0 * value * weight

    def _task_figures(
        self,
        record: TaskRecord,
        end: float,
        reads: Sequence[ReadOutcome] | None,
        *,
        final: bool,
    ) -> tuple[float, float, float | None, Status, float]:
        """Integrate a task's window up to ``end`` (``inf``: the newest sample).

        ``final``: the task ended at ``end``; the tail after the newest sample
        is included. ``reads`` are the exit reads (``None``: no device needed one).

        On every task exit: written for speed (locals, one loop per channel).
        """
        service = record._svc
        start = record.start_time
        split = self._split
        threshold = self._threshold
        busy = covered = missing = 0.0
        weighted = 0.0  # sum of value * weight: util_ms / 10
        for device, channel in enumerate(self._util):
            if not channel.history:
                # The common short task: no sample inside it yet, only the tail
                # (written out: this runs at every task exit).
                horizon = channel.horizon
                if not final or horizon >= end:
                    continue
                lo = start if start > horizon else horizon
                length = end - lo
                if reads is not None and isinstance(reads[device], BaseException):
                    value = None
                else:
                    value = channel.last_value
                if value is None:
                    missing += length
                    continue
                covered += length
                if value > threshold:
                    weight = service.weight(lo, end) if split else length
                    busy += weight
                    weighted += value * weight
                continue
            for lo, hi, value in self._task_pieces(channel, start, end, reads, device, final):
                if hi <= lo:
                    continue
                if value is None:
                    missing += hi - lo
                    continue
                covered += hi - lo
                if value > threshold:
                    weight = service.weight(lo, hi) if split else hi - lo
                    busy += weight
                    weighted += value * weight
        energy = 0.0
        energy_missing = False
        for device, channel in enumerate(self._power):
            pieces = self._task_pieces(channel, start, end, reads, device, final)
            for lo, hi, value in pieces:
                if hi <= lo:
                    continue
                if value is None:
                    energy_missing = True
                else:
                    energy += value * service.weight(lo, hi)
        if not self._measures:
            status: Status = "unavailable"
            coverage = 0.0
        else:
            partial = record._failed or missing > _EPS or energy_missing
            status = "partial" if partial or self._partial_devices else "ok"
            seen = covered + missing
            coverage = (covered / seen if seen > _EPS else 1.0) * self._measured_share
        return (
            1000.0 * busy,
            10.0 * weighted,
            energy if self._measures_energy else None,
            status,
            coverage,
        )

    @staticmethod
    def _task_pieces(
        channel: _Channel,
        start: float,
        end: float,
        reads: Sequence[ReadOutcome] | None,
        device: int,
        final: bool,
    ) -> list[tuple[float, float, float | None]]:
        """The stretches ``(lo, hi, value)`` of a channel inside a task's window.

        Real samples up to the horizon (and ``end``); when ``final`` (the task
        ended at ``end``), also the tail after the newest visible sample, which
        takes that sample's value unless the exit read failed (then nothing is
        guessed: ``None``).
        """
        horizon = channel.horizon
        upto = horizon if end > horizon else end
        history = channel.history
        pieces: list[tuple[float, float, float | None]] = []
        if history:
            for s0, s1, value in history[bisect_right(channel.history_ends, start) :]:
                if s0 >= upto:
                    break
                pieces.append((s0 if s0 > start else start, s1 if s1 < upto else upto, value))
        if final and horizon < end:
            failed = reads is not None and isinstance(reads[device], BaseException)
            pieces.append(
                (start if start > horizon else horizon, end, None if failed else channel.last_value)
            )
        return pieces

    def _forget(self) -> None:
        """Drop history, breakpoints and settled services no future query needs."""
        self._ends_since_forget = 0
        channels = (*self._util, *self._power)
        floor = math.inf
        for channel in channels:
            floor = min(floor, channel.horizon)
        if self._active_tasks == 0:
            for channel in channels:
                channel.history.clear()
                channel.history_ends.clear()
        else:
            for channel in channels:
                if len(channel.history) >= channel.prune_at:
                    cut = bisect_right(channel.history_ends, self._earliest_running_start())
                    del channel.history[:cut], channel.history_ends[:cut]
                    channel.prune_at = max(_PRUNE_MIN, 2 * len(channel.history))
        for service in list(self._tracking):
            if service.active == 0 and service.last_close <= floor + _EPS:
                # Settled: every sample covering its windows was credited.
                self._tracking.discard(service)
                service.forget_all()
            elif len(service.bp_t) >= service.prune_at:
                service.forget_before(min([floor, *(r.start_time for r in service.running)]))
                service.prune_at = max(_PRUNE_MIN, 2 * len(service.bp_t))

    def _earliest_running_start(self) -> float:
        return min(
            (record.start_time for service in self._active_services for record in service.running),
            default=math.inf,
        )

    def _snapshot(self, service: _Service) -> ServiceStats:
        if not self._measures:
            coverage = 0.0
        else:
            seen = service.covered + service.missing
            coverage = (service.covered / seen if seen > _EPS else 1.0) * self._measured_share
        return ServiceStats(
            service=service.name,
            task_count=service.task_count,
            active_tasks=service.active,
            gpu_ms=service.totals[_BUSY],
            gpu_util_ms=service.totals[_UTIL],
            energy_mj=service.totals[_ENERGY] if self._measures_energy else None,
            status=service.status,
            coverage=coverage,
        )
