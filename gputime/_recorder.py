"""A timeline's recording side: what the tracker's hooks feed, in bounded rings.

A :class:`Recorder` keeps each task's window and every device reading the
ledger credits, each in a ring of its own (so a burst of tiny tasks never
pushes the utilisation history out), and the tasks running now. Its three
hooks (:meth:`Recorder.hooks`) are what a tracker installs while a timeline
records: a start listener, an end listener and the channels' sample sink.
Reading what was recorded, and exporting it, is the public
:class:`~gputime.Timeline`'s job (:mod:`gputime._timeline`), which owns one
recorder; apart because the two sides have different rules: recording runs on
every task and under the ledger lock, reading runs rarely, on copies.

Data still flows one way: the ledger hands the recorder each reading it
credits, exactly once, under its lock (:data:`gputime._channels.SampleSink`);
the tracker hands it each task that started or ended, outside every lock. The
recorder never calls back into the ledger or the tracker, and it never raises
into either: a fault is reported once on logger ``gputime`` (kind
``timeline``).

Recording takes no lock of its own: each change is one operation the GIL
makes atomic, and readings come in under the ledger's lock. Readers take
copies of the rings (:meth:`Recorder.task_rows` and the like), so recording
goes on meanwhile.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, TypeVar

from gputime._emitter import error_type
from gputime._figures import INHERITED, FiguresTuple, PerDevice

if TYPE_CHECKING:
    from gputime._channels import SampleSink
    from gputime._faults import FaultLog
    from gputime._handle import TaskHandle

#: The figures of a task whose end met a fault in the ledger.
_UNKNOWN: FiguresTuple = (0.0, 0.0, None, "partial", 0.0)

# What the rings hold: plain tuples, cheapest to make on the recording paths.
#: A task window: its number (1, 2, ..., which counts what the ring dropped),
#: service, name (``None``: the default), start, end, final figures, figures
#: per device, concurrency and ``error.type``.
TaskRow = tuple[int, str, "str | None", float, float, FiguresTuple, PerDevice, int, "str | None"]
#: A device reading: the device's channel index, whether it is power
#: (milliwatts; else utilisation percent), start, end, value, idle claim.
SampleRow = tuple[int, bool, float, float, "float | None", bool]


class Recorder:
    """The rings of one timeline, and the hooks that fill them.

    Args:
        max_tasks: Task windows kept (checked by the timeline).
        max_samples: Device readings kept (checked by the timeline).

    Attributes:
        faults: Where faults are reported, once attached to a tracker.
    """

    __slots__ = (
        "faults",
        "pending_fault",
        "running",
        "samples",
        "samples_seen",
        "task_numbers",
        "tasks",
    )

    def __init__(self, max_tasks: int, max_samples: int) -> None:
        # No lock on the recording paths (one costs more than the rest of a
        # task's recording): each change is one operation the GIL makes atomic
        # (deque.append, which also drops the oldest; set.add, set.discard;
        # next() of a counter), and readings are appended under the ledger's
        # lock, which orders them. Readers copy (see _copy).
        self.tasks: deque[TaskRow] = deque(maxlen=max_tasks)
        self.task_numbers = itertools.count(1)
        self.samples: deque[SampleRow] = deque(maxlen=max_samples)
        self.samples_seen = 0
        # Running tasks: their live figures are read at export.
        self.running: set[TaskHandle] = set()
        self.faults: FaultLog | None = None
        # A fault met under the ledger lock, where nothing may be logged:
        # reported at the next task event or export.
        self.pending_fault: BaseException | None = None

    def hooks(
        self,
    ) -> tuple[Callable[[TaskHandle], None], Callable[[TaskHandle], None], SampleSink]:
        """What a tracker installs: start listener, end listener, sample sink.

        Made once per attachment, so that they can be removed again by identity
        (each attribute access makes a new bound method).
        """
        return self.task_started, self.task_ended, self.sample

    # -- the hooks -------------------------------------------------------------------------

    def task_started(self, handle: TaskHandle) -> None:
        """A start listener: the task shows as running until it ends."""
        try:
            self.running.add(handle)
        except Exception as exc:  # noqa: BLE001 - the recorder never breaks a task
            self.report(exc)

    def task_ended(self, handle: TaskHandle) -> None:
        """An end listener (figures final): the task's window goes into the ring."""
        try:
            self.running.discard(handle)
            final = handle._final
            start, end = handle.start_time, handle.end_time
            # Not begun before a fork (the child starts empty), and opened (a
            # start that met a fault has no time: NaN is not equal to itself).
            if final is not INHERITED and end is not None and start == start:  # noqa: PLR0124
                error = handle.error
                self.tasks.append(
                    (
                        next(self.task_numbers),
                        handle.service,
                        handle._spec.name,
                        start,
                        end,
                        _UNKNOWN if final is None else final,  # None: its end met a fault
                        handle._final_devices,
                        handle.concurrency,
                        None if error is None else error_type(error),
                    )
                )
        except Exception as exc:  # noqa: BLE001 - the recorder never breaks a task
            self.report(exc)
        if self.pending_fault is not None:
            self.report_pending()

    def sample(
        self,
        device: int,
        is_power: bool,
        start: float,
        end: float,
        value: float | None,
        inferred: bool,
    ) -> None:
        """The channels' sample sink: runs under the ledger lock; must not raise or log."""
        try:
            self.samples.append((device, is_power, start, end, value, inferred))
            self.samples_seen += 1  # the ledger lock orders every sink call
        except Exception as exc:  # noqa: BLE001 - reported later, outside the ledger lock
            self.pending_fault = exc

    # -- what the timeline calls -----------------------------------------------------------

    def task_rows(self) -> list[TaskRow]:
        """A copy of the task ring, oldest first."""
        return _copy(self.tasks)

    def sample_rows(self) -> list[SampleRow]:
        """A copy of the sample ring, oldest first."""
        return _copy(self.samples)

    def running_tasks(self) -> list[TaskHandle]:
        """The tasks seen starting and not yet ending."""
        return _copy(self.running)

    @property
    def dropped_tasks(self) -> int:
        """Task windows recorded but since dropped from the ring (the oldest)."""
        rows = self.task_rows()
        return max(row[0] for row in rows) - len(rows) if rows else 0

    @property
    def dropped_samples(self) -> int:
        """Device readings recorded but since dropped from the ring (the oldest)."""
        return max(self.samples_seen - len(self.samples), 0)

    def clear(self) -> None:
        """Forget what was recorded; running tasks stay, and are recorded when they end."""
        self.tasks.clear()
        self.task_numbers = itertools.count(1)
        self.samples.clear()
        self.samples_seen = 0

    def stop(self) -> None:
        """Recording stopped: tasks running now will not be seen ending, so they are let go."""
        self.running.clear()

    def after_fork_in_child(self) -> None:
        """A forked child starts empty: tasks of the parent's other threads never end here."""
        self.tasks = deque(maxlen=self.tasks.maxlen)
        self.task_numbers = itertools.count(1)
        self.samples = deque(maxlen=self.samples.maxlen)
        self.samples_seen = 0
        self.running = set()
        self.pending_fault = None

    def report(self, exc: BaseException) -> None:
        """Log a fault once per kind (``timeline``); nowhere before the timeline is attached."""
        faults = self.faults
        if faults is not None:
            faults.report("timeline", exc)

    def report_pending(self) -> None:
        """Log the fault the sample sink met under the ledger lock, if any."""
        exc = self.pending_fault
        if exc is not None:
            self.pending_fault = None
            self.report(exc)


_T = TypeVar("_T")


def _copy(items: Iterable[_T]) -> list[_T]:
    """A copy of a ring or set that other threads append to without a lock.

    With the GIL, ``list()`` of a deque or a set runs in C without a switch
    of thread, so it sees no change halfway; where another thread could
    change it meanwhile (a build without the GIL), the copy is taken again.
    """
    while True:
        try:
            return list(items)
        except RuntimeError:  # pragma: no cover - changed during the copy (no GIL)
            continue
