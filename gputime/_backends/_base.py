"""The small interface every backend implements.

A *backend* is configuration: which driver to talk to and how. Opening it for a
tracker yields a *session*, bound to the tracker's clock and to the devices the
tracker tracks. The sampler and the task-exit path call :meth:`Session.read`,
one call per device; everything downstream (the ledger) only ever sees
:class:`Reading` objects, so data flows one way: backend -> sampler -> ledger.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from gputime._types import Attribution, BackendUnavailable, Clock, DeviceSelector

__all__ = [
    "Attribution",
    "Backend",
    "BackendUnavailable",
    "Clock",
    "DeviceInfo",
    "DeviceSelector",
    "Reading",
    "Sample",
    "Session",
]

#: One timestamped value: ``(end, value)`` on the tracker's clock. The value
#: covers the stretch from the previous sample's end (or the channel's ingest
#: horizon) up to ``end``. ``None`` means the backend knows this stretch is
#: lost (for example a driver buffer that overflowed); it then counts nothing.
Sample = tuple[float, float | None]


@dataclass(frozen=True, slots=True)
class Reading:
    """What one successful read of one device returned.

    Attributes:
        utilization: Utilisation samples in percent, ascending by end time,
            newer than the ``since`` the read was asked for (older ones are
            allowed and ignored by the ledger).
        power: Mean power in milliwatts over each stretch, in the same form;
            empty where the backend does not measure energy.
        source: Where the utilisation came from, for diagnostics (for example
            ``"samples"`` or ``"utilization-rates"``).
        idle_until: Where the driver records no sample while the GPU is idle,
            the absence of newer samples is itself a reading: the device was
            idle from the newest sample (or ``since``) up to this time, on the
            tracker's clock. ``None`` claims nothing. Unlike a sample of value
            0 it says nothing of when the driver's next sample is due.
    """

    utilization: Sequence[Sample] = ()
    power: Sequence[Sample] = ()
    source: str = "samples"
    idle_until: float | None = None


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """A tracked device as reported to users (``gputime.gpu.ids``, CLI)."""

    id: str
    name: str
    index: int
    details: dict[str, object] = field(default_factory=dict)


@runtime_checkable
class Session(Protocol):
    """A backend opened for one tracker.

    ``read`` may be called from the sampler thread and from task-exit paths on
    other threads at the same time; implementations must tolerate that. A read
    that fails raises any exception: the tracker catches it, logs it once per
    kind and counts nothing for the time it would have covered.
    """

    @property
    def devices(self) -> Sequence[DeviceInfo]:
        """The tracked devices, in read order (``read(i, ...)`` reads ``devices[i]``)."""

    @property
    def measures_utilization(self) -> bool:
        """False where no GPU figure can exist at all (status ``unavailable``)."""

    @property
    def measures_energy(self) -> bool:
        """True where readings carry power samples."""

    @property
    def sample_period(self) -> float:
        """The driver's sample period in seconds (the longest of the devices)."""

    def read(self, device: int, since: float) -> Reading:
        """Read one device's samples newer than ``since`` (tracker clock seconds)."""

    def close(self) -> None:
        """Release driver resources; called once, after the sampler stopped."""

    # Optional: ``resume()``, called on the task path (outside every lock) when
    # the first task after an idle spell began, so that a session refreshes the
    # baselines it differences against (NVML's energy counter). See docs/design.md.

    def after_fork(self) -> None:
        """Re-initialise in a forked child (driver handles are not inherited)."""


@runtime_checkable
class Backend(Protocol):
    """A source of GPU utilisation samples, opened once per tracker."""

    @property
    def name(self) -> str:
        """Short name: ``"nvml"``, ``"simulated"``, ``"none"``."""

    def open(
        self,
        *,
        clock: Clock,
        devices: Sequence[DeviceSelector] | None,
        attribution: Attribution,
    ) -> Session:
        """Bind to ``clock`` and ``devices``.

        Raises:
            ValueError: A device does not exist, or the attribution is one this
                backend cannot measure (``"process"`` on most backends).
        """
