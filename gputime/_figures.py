"""What users read: a task's and a service's figures, and what a tracker's devices measure.

The figure types (:class:`Figures`, :class:`DeviceFigures`,
:class:`ServiceStats`), the layout of the ledger's sums they come from, and
:class:`Profile`: what the tracked devices can measure, which decides status
and coverage. How the figures are computed from the sums is
:mod:`gputime._tally`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from gputime._types import Attribution, Status

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
class DeviceFigures:
    """One device's part of a task's or a service's figures.

    Attributes:
        gpu_ms: GPU-busy milliseconds of this device inside the window.
        gpu_util_ms: The same integral weighted by utilisation / 100.
        energy_mj: Energy this device drew, in millijoules; ``None`` where
            not measured.
        status: ``"ok"``, ``"partial"`` (a reading of this device that the
            figure needed failed or was lost) or ``"unavailable"`` (this
            device cannot report utilisation, e.g. MIG, or nothing can).
        coverage: Fraction of the window for which this device's readings
            arrived.
    """

    gpu_ms: float = 0.0
    gpu_util_ms: float = 0.0
    energy_mj: float | None = None
    status: Status = "ok"
    coverage: float = 1.0


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
        devices: Each tracked device's part, by device id (NVML UUID), in
            the tracker's device order; ``gpu_ms``, ``gpu_util_ms`` and
            ``energy_mj`` above are their sums. Empty without devices.
    """

    service: str
    task_count: int = 0
    active_tasks: int = 0
    gpu_ms: float = 0.0
    gpu_util_ms: float = 0.0
    energy_mj: float | None = None
    status: Status = "ok"
    coverage: float = 1.0
    # Left out of the hash (a dict has none), kept in equality.
    devices: Mapping[str, DeviceFigures] = field(default_factory=dict, hash=False)


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

#: The part of a device that is tracked but cannot be read (MIG), or of every
#: device where no GPU figure can exist.
DEVICE_UNAVAILABLE = DeviceFigures(0.0, 0.0, None, "unavailable", 0.0)

#: Per read device, a figure (``None``: one device, whose figure is the total).
PerDevice = tuple[FiguresTuple, ...] | None


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
        layout: Every tracked device in the tracker's order: its id, and the
            channel that reads it (``None``: never read).
        per_device: Figures are kept per device (more than one tracked
            device); with one, its figure is the total.
    """

    measures: bool
    measures_energy: bool
    partial_devices: bool
    measured_share: float
    threshold: float
    split: bool
    layout: tuple[tuple[str, int | None], ...] = ()
    per_device: bool = False

    @classmethod
    def of(
        cls,
        devices: int,
        unmeasured: int,
        measures_utilization: bool,
        measures_energy: bool,
        threshold: float,
        attribution: Attribution,
        layout: Sequence[tuple[str, int | None]] = (),
    ) -> Profile:
        """The profile of ``devices`` read and ``unmeasured`` tracked but never read (MIG).

        ``layout`` names the tracked devices (see the attribute); without it,
        the read devices are named by their channel number.
        """
        if not layout:
            layout = [(str(channel), channel) for channel in range(devices)]
        return cls(
            measures=measures_utilization and bool(devices),
            measures_energy=measures_energy,
            partial_devices=bool(devices and unmeasured),
            measured_share=devices / (devices + unmeasured) if devices else 1.0,
            threshold=threshold,
            split=attribution == "split",
            layout=tuple(layout),
            per_device=devices + unmeasured > 1,
        )

    @property
    def base_status(self) -> Status:
        """The status of a figure that needed no reading (or whose readings all came)."""
        if not self.measures:
            return "unavailable"
        return "partial" if self.partial_devices else "ok"

    def devices(self, total: FiguresTuple, per_device: PerDevice) -> dict[str, DeviceFigures]:
        """Each tracked device's figures by id, from what :func:`task_figures` returned."""
        if not self.measures:
            return dict.fromkeys((device for device, _ in self.layout), DEVICE_UNAVAILABLE)
        # None: one device, whose figure is the total, or a figure that is
        # the same on every device (a task a forked child inherited).
        figures = (total,) * len(self.layout) if per_device is None else per_device
        return {
            device: DEVICE_UNAVAILABLE if channel is None else DeviceFigures(*figures[channel])
            for device, channel in self.layout
        }
