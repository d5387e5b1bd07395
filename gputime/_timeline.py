"""The timeline: what one tracker saw, over time, in bounded memory; read and exported.

A :class:`Timeline` is what users hold: it reads the task windows (start, end,
figures, status, error, concurrency) and the device readings (utilisation,
and power where measured) that its :class:`~gputime._recorder.Recorder`
keeps in bounded rings, as :class:`TaskWindow` and :class:`DeviceSample`
records, and exports them (:meth:`Timeline.to_trace`, :meth:`Timeline.plot`,
with :mod:`gputime._trace` and :mod:`gputime._plot`). It is off unless asked
for (``Tracker(timeline=True)``, ``tracker.record_timeline()``), and off it
costs nothing: the recorder is fed through the tracker's task listeners (empty
tuples otherwise) and the channels' sample sink (``None`` otherwise).

Reading works on copies of the rings, so recording goes on meanwhile; the
rules of the recording side (no lock, nothing raised into the tracker or the
ledger) are the recorder's (:mod:`gputime._recorder`).
"""

from __future__ import annotations

import math
import os
import time
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from gputime import _validate
from gputime._figures import DeviceFigures, Figures, Profile
from gputime._recorder import Recorder
from gputime._types import Clock, Status

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from gputime._backends import DeviceInfo
    from gputime._channels import SampleSink
    from gputime._faults import FaultLog
    from gputime._handle import TaskHandle

#: Task windows kept by default (about 300 bytes each: 3 MB; docs/timeline.md).
DEFAULT_MAX_TASKS = 10_000
#: Device readings kept by default (about 140 bytes each: 7 MB): 2 h 20 min of
#: one GPU's utilisation at NVML's 1/6 s sample period.
DEFAULT_MAX_SAMPLES = 50_000

#: What a device reading measures: utilisation (percent) or power (watts).
Quantity = Literal["utilization", "power"]


class TaskWindow(NamedTuple):
    """One task as the timeline recorded it.

    Attributes:
        service: The service the task belongs to.
        name: The task's name (its span name: ``gpu_task {service}`` unless
            ``name=`` was given).
        start: When it began, in seconds on the tracker's clock.
        end: When it ended; ``None`` while it runs.
        gpu_ms: GPU-busy milliseconds (final once ended, live while running).
        gpu_util_ms: Utilisation-weighted GPU milliseconds.
        energy_mj: Millijoules, ``None`` where not measured.
        status: ``ok``, ``partial`` or ``unavailable``.
        coverage: Fraction of the window (times devices) readings covered.
        concurrency: Running tasks of its service when it began, itself included.
        error: ``error.type`` of the exception the task raised (the fully
            qualified class name), ``None`` if it returned or was cancelled.
        devices: The task's figures per tracked device id (``TaskHandle.devices``).
    """

    service: str
    name: str
    start: float
    end: float | None
    gpu_ms: float
    gpu_util_ms: float
    energy_mj: float | None
    status: Status
    coverage: float
    concurrency: int
    error: str | None
    devices: dict[str, DeviceFigures]

    @property
    def running(self) -> bool:
        """True while the task runs (``end`` is ``None``)."""
        return self.end is None


class DeviceSample(NamedTuple):
    """One device reading as the ledger credited it.

    Attributes:
        device: The device id (NVML UUID; ``SIM-n`` for a simulated GPU).
        quantity: ``"utilization"`` (percent) or ``"power"`` (watts).
        start: Start of the stretch it was credited for, tracker clock seconds
            (the previous reading's end, or the moment reading resumed after
            an idle spell).
        end: The reading's end (the driver's sample timestamp).
        value: Percent or watts; ``None`` for a stretch the driver lost.
        inferred: True for an idle claim: the driver records no sample while
            the GPU is idle, and the absence of one was read as 0 %.
    """

    device: str
    quantity: Quantity
    start: float
    end: float
    value: float | None
    inferred: bool


class Timeline:
    """A bounded record of one tracker's task windows and device readings.

    Make one with ``Tracker(timeline=True)`` (or ``configure(timeline=True)``),
    ``Tracker(timeline=Timeline(max_tasks=...))`` for other bounds, or
    ``tracker.record_timeline()`` on a tracker already running (the default
    tracker: ``gputime.get_tracker().record_timeline()``). It records from the
    moment it is attached until :meth:`Tracker.stop_timeline`; a task that
    began before is recorded when it ends. Export with :meth:`write_trace`
    (Chrome Trace Event / Perfetto JSON) or :meth:`plot` (a PNG, with the
    ``plot`` extra).

    Each kind of record is kept in a ring: past ``max_tasks`` task windows
    or ``max_samples`` readings, the oldest are dropped (counted in
    :attr:`dropped_tasks`, :attr:`dropped_samples`). Thread-safe. A forked
    child starts with an empty timeline. ``Tracker.reset()`` does not clear
    it: it is a history, not a total (:meth:`clear` does).

    Args:
        max_tasks: Task windows kept, at least 1.
        max_samples: Device readings kept (utilisation and power together),
            at least 1.

    Raises:
        ValueError: A bound that is not a positive integer.
    """

    def __init__(
        self, *, max_tasks: int = DEFAULT_MAX_TASKS, max_samples: int = DEFAULT_MAX_SAMPLES
    ) -> None:
        self._max_tasks = _validate.count("max_tasks", max_tasks, minimum=1)
        self._max_samples = _validate.count("max_samples", max_samples, minimum=1)
        # What the tracker's hooks feed (tasks, readings, running tasks).
        self._recorder = Recorder(self._max_tasks, self._max_samples)
        # Set when attached (see _bind): the tracker's devices, clock, faults.
        self._owner: weakref.ref[object] | None = None
        self._devices: tuple[DeviceInfo, ...] = ()
        self._profile: Profile | None = None
        self._clock: Clock = time.monotonic

    # -- what users read -----------------------------------------------------------------

    @property
    def max_tasks(self) -> int:
        """How many task windows are kept."""
        return self._max_tasks

    @property
    def max_samples(self) -> int:
        """How many device readings are kept."""
        return self._max_samples

    @property
    def dropped_tasks(self) -> int:
        """Task windows recorded but since dropped from the ring (the oldest)."""
        return self._recorder.dropped_tasks

    @property
    def dropped_samples(self) -> int:
        """Device readings recorded but since dropped from the ring (the oldest)."""
        return self._recorder.dropped_samples

    @property
    def devices(self) -> tuple[DeviceInfo, ...]:
        """The devices whose readings are recorded (those the tracker reads)."""
        return self._devices

    def tasks(self) -> list[TaskWindow]:
        """The task windows kept, running tasks included (``end`` ``None``), by start."""
        recorder = self._recorder
        rows = recorder.task_rows()
        running = recorder.running_tasks()
        recorder.report_pending()
        windows = []
        profile = self._profile
        for _, service, name, start, end, final, per_device, concurrency, error in rows:
            gpu_ms, gpu_util_ms, energy_mj, status, coverage = final
            windows.append(
                TaskWindow(
                    service,
                    name if name is not None else f"gpu_task {service}",
                    start,
                    end,
                    gpu_ms,
                    gpu_util_ms,
                    energy_mj,
                    status,
                    coverage,
                    concurrency,
                    error,
                    {} if profile is None else profile.devices(final, per_device),
                )
            )
        for handle in running:
            window = self._live_window(handle)
            if window is not None:
                windows.append(window)
        windows.sort(key=_by_start)
        return windows

    def samples(self, device: str | None = None) -> list[DeviceSample]:
        """The device readings kept, oldest first (of one device id, or of all).

        Raises:
            ValueError: ``device`` is not one of :attr:`devices`.
        """
        ids = [info.id for info in self._devices]
        if device is not None and device not in ids:
            raise ValueError(f"device={device!r}: not a recorded device ({', '.join(ids)})")
        rows = self._recorder.sample_rows()
        self._recorder.report_pending()
        samples = []
        for index, is_power, start, end, value, inferred in rows:
            device_id = ids[index]
            if device is not None and device_id != device:
                continue
            if is_power:
                # The ledger keeps milliwatts; people read watts.
                samples.append(
                    DeviceSample(
                        device_id,
                        "power",
                        start,
                        end,
                        None if value is None else value / 1000.0,
                        inferred,
                    )
                )
            else:
                samples.append(DeviceSample(device_id, "utilization", start, end, value, inferred))
        return samples

    def clear(self) -> None:
        """Forget what was recorded; running tasks stay, and are recorded when they end."""
        self._recorder.clear()

    def to_trace(self) -> dict[str, Any]:
        """The timeline as a Chrome Trace Event / Perfetto JSON object.

        One process per device with its utilisation (and power) as counter
        tracks, one process per service with a slice per task (figures,
        status and error in ``args``) on as many threads as it had tasks
        running at once; timestamps in microseconds on the tracker's clock.
        See docs/timeline.md for the layout.
        """
        from gputime import _trace  # noqa: PLC0415 - only an export needs it

        tasks = self.tasks()
        samples = self.samples()
        now = self._now()
        return _trace.chrome_trace(
            tasks,
            samples,
            self._devices,
            now=now,
            wall_offset=time.time() - now,
            dropped=(self.dropped_tasks, self.dropped_samples),
        )

    def write_trace(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`to_trace` to ``path`` as JSON (opens in Perfetto UI, chrome://tracing).

        Raises:
            OSError: The file cannot be written.
        """
        import json  # noqa: PLC0415 - only an export needs it (import gputime stays lean)

        document = self.to_trace()
        with open(path, "w", encoding="utf-8") as file:
            # Strict JSON: no NaN or Infinity, which the viewers reject.
            json.dump(document, file, separators=(",", ":"), allow_nan=False)
            file.write("\n")

    def plot(
        self, path: str | os.PathLike[str] | None = None, *, title: str | None = None
    ) -> Figure:
        """Draw utilisation per device over time, each service's task windows beneath.

        Needs matplotlib (``pip install 'gputime[plot]'``); it is imported
        here, not before, and draws without pyplot (no window, no global
        state), so it works on a headless server.

        Args:
            path: Where to save the picture; the format follows the suffix
                (``.png``, ``.svg``, ``.pdf``). ``None``: only return it.
            title: The figure's title (default ``gputime timeline``).

        Returns:
            The matplotlib ``Figure``.

        Raises:
            ImportError: matplotlib is not installed; the message names the extra.
            OSError: The file cannot be written.
        """
        from gputime import _plot  # noqa: PLC0415 - matplotlib is an optional extra

        return _plot.plot(
            self.tasks(), self.samples(), self._devices, now=self._now(), path=path, title=title
        )

    def __repr__(self) -> str:
        recorder = self._recorder
        tasks, samples, running = len(recorder.tasks), len(recorder.samples), len(recorder.running)
        return (
            f"<Timeline tasks={tasks}/{self._max_tasks} samples={samples}/{self._max_samples} "
            f"running={running}>"
        )

    # -- what the tracker and the ledger call --------------------------------------------

    def _taken(self) -> bool:
        """Whether a tracker was given this timeline already (one tracker's for life)."""
        return self._owner is not None

    def _bind(
        self,
        owner: object,
        devices: Sequence[DeviceInfo],
        profile: Profile,
        clock: Clock,
        faults: FaultLog,
    ) -> None:
        """Attach to one tracker: its devices (in channel order), profile, clock and fault log.

        A timeline is one tracker's for life (devices and clocks differ between
        trackers): the tracker refuses one that :meth:`_taken` says is another's.
        """
        self._owner = weakref.ref(owner)
        self._devices = tuple(devices)
        self._profile = profile
        self._clock = clock
        self._recorder.faults = faults

    def _unbind(self) -> None:
        """Recording stopped: tasks running now will not be seen ending, so they are let go."""
        self._recorder.stop()

    def _after_fork_in_child(self) -> None:
        """A forked child starts with an empty timeline."""
        self._recorder.after_fork_in_child()

    # -- helpers -------------------------------------------------------------------------

    def _live_window(self, handle: TaskHandle) -> TaskWindow | None:
        try:
            start = handle.start_time
            if math.isnan(start):
                return None
            figures: Figures = handle.figures
            return TaskWindow(
                handle.service,
                handle.name,
                start,
                handle.end_time,
                figures.gpu_ms,
                figures.gpu_util_ms,
                figures.energy_mj,
                figures.status,
                figures.coverage,
                handle.concurrency,
                None,
                handle.devices,
            )
        except Exception as exc:  # noqa: BLE001 - an export must not fail for one task
            self._recorder.report(exc)
            return None

    def _now(self) -> float:
        try:
            return float(self._clock())
        except Exception as exc:  # noqa: BLE001 - a failing clock: the newest record's time
            self._recorder.report(exc)
            return math.nan


def _by_start(window: TaskWindow) -> float:
    return window.start


def hooks(
    timeline: Timeline,
) -> tuple[Callable[[TaskHandle], None], Callable[[TaskHandle], None], SampleSink]:
    """What a tracker installs: its recorder's start listener, end listener and sample sink.

    Made once per attachment, so that they can be removed again by identity
    (each attribute access makes a new bound method).
    """
    return timeline._recorder.hooks()
