"""The task handle: what ``with gpu_task(...) as task`` binds, and the ledger's record of it."""

from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING, Any

from gputime._figures import DeviceFigures, Figures
from gputime._sums import TaskRecord
from gputime._types import Status

if TYPE_CHECKING:
    from types import TracebackType

    from gputime._task import gpu_task
    from gputime._tracker import Tracker


class TaskHandle(TaskRecord):
    """One running or finished task, as bound by ``with gpu_task(...) as task``.

    Figures are live while the task runs (real samples so far) and final once
    it ended (including the stretch after the newest sample: docs/semantics.md).
    The handle is also the ledger's record of the task: one object per task.
    """

    __slots__ = ("_cm_token", "_otel", "_span_token", "_spec", "_tracker", "error", "service")

    _cm_token: object  # set by gpu_task.__enter__ only: one store fewer per call
    _span_token: object  # set by __enter__ only (start_task used with ``with``)

    def __init__(self, tracker: Tracker, spec: gpu_task) -> None:
        self._values = None
        self._done = False
        self.end_time: float | None = None
        self._final = None
        self._final_devices = None
        self._tracker = tracker
        self._spec = spec
        self._otel: object = None
        #: The service this task belongs to (as it was when the task began).
        self.service: str = spec.service
        #: The exception the task raised (``None`` if it returned or was cancelled).
        self.error: BaseException | None = None

    @property
    def name(self) -> str:
        """The span name: ``gpu_task {service}`` unless ``name=`` was given."""
        name = self._spec.name
        return name if name is not None else f"gpu_task {self.service}"

    @property
    def span(self) -> bool:
        """Whether this task makes its own span."""
        return self._spec.span

    @property
    def attributes(self) -> dict[str, Any] | None:
        """Extra span attributes given to ``gpu_task``."""
        return self._spec.attributes

    @property
    def tracker(self) -> Tracker:
        """The tracker that measures this task."""
        return self._tracker

    @property
    def running(self) -> bool:
        """True until the task ended."""
        return self.end_time is None

    @property
    def duration(self) -> float:
        """Seconds on the tracker's clock, so far if still running."""
        end = self.end_time
        if end is None:
            try:
                end = self._tracker.clock()
            except Exception:  # noqa: BLE001 - a failing clock must not break the job
                return 0.0
        duration = end - self.start_time
        return duration if duration > 0.0 else 0.0  # also 0 for a start the clock failed

    @property
    def figures(self) -> Figures:
        """All GPU figures at once, consistent with each other."""
        return self._tracker._ledger.figures(self)

    @property
    def devices(self) -> dict[str, DeviceFigures]:
        """This task's figures per tracked device, by device id (NVML UUID).

        In the tracker's device order; :attr:`gpu_ms`, :attr:`gpu_util_ms` and
        :attr:`energy_mj` are their sums. A device that cannot report
        utilisation (MIG) reads ``unavailable``.
        """
        return self._tracker._ledger.device_figures(self)

    @property
    def gpu_ms(self) -> float:
        """GPU-busy milliseconds inside the task window, summed over devices."""
        return self.figures.gpu_ms

    @property
    def gpu_util_ms(self) -> float:
        """Utilisation-weighted GPU milliseconds inside the task window."""
        return self.figures.gpu_util_ms

    @property
    def energy_mj(self) -> float | None:
        """Energy in millijoules during the task; ``None`` where not measured."""
        return self.figures.energy_mj

    @property
    def status(self) -> Status:
        """``ok``, ``partial`` or ``unavailable``: live while running, final afterwards."""
        return self.figures.status

    @property
    def coverage(self) -> float:
        """Fraction of the task window (times devices) for which readings arrived."""
        return self.figures.coverage

    def end(self, error: BaseException | None = None) -> None:
        """End the task now (a task from ``start_task``); idempotent, never raises.

        Args:
            error: The exception the job raised, if any: an ``Exception`` marks
                the span as failed (``error.type``); cancellation and other
                ``BaseException``s end it without.

        May be called from any thread, and more than once: the first call
        ends the task, later ones change nothing.
        """
        # _end_task reports its own faults; this is the backstop of "never raises".
        with contextlib.suppress(Exception):
            self._tracker._end_task(self, error)

    def __enter__(self) -> TaskHandle:
        """Make the task's span current until the block ends (then the task ends)."""
        self._span_token = self._tracker._activate(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        token = getattr(self, "_span_token", None)
        if token is not None:
            self._span_token = None
            self._tracker._deactivate(token)
        self.end(exc)

    def __repr__(self) -> str:
        f = self.figures
        state = "running" if self.running else "ended"
        return (
            f"<TaskHandle {self.service!r} {state} gpu_ms={f.gpu_ms:.1f} "
            f"gpu_util_ms={f.gpu_util_ms:.1f} status={f.status}>"
        )


def unrecorded(handle: TaskHandle) -> None:
    """A handle the ledger never opened: its end changes nothing, its figures read partial."""
    handle._generation = -1
    handle._fail_epoch = 0
    handle.start_time = math.nan
    handle.concurrency = 0
