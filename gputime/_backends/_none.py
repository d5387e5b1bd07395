"""The ``"none"`` backend: no GPU figure at all, tasks are still counted."""

from __future__ import annotations

from collections.abc import Sequence

from gputime._backends._base import DeviceInfo, Reading
from gputime._types import Attribution, Clock, DeviceSelector


class NoGpu:
    """A backend that measures nothing; every figure reads ``unavailable``.

    Args:
        reason: Why there is no GPU figure, shown by diagnostics.
    """

    name = "none"

    def __init__(self, reason: str = "backend 'none' was chosen") -> None:
        self.reason = reason

    def open(
        self,
        *,
        clock: Clock,
        devices: Sequence[DeviceSelector] | None,
        attribution: Attribution,
    ) -> _NoGpuSession:
        if devices:
            raise ValueError(
                f"devices={list(devices)!r}: the 'none' backend has no devices ({self.reason})"
            )
        return _NoGpuSession()

    def __repr__(self) -> str:
        return f"NoGpu(reason={self.reason!r})"


class _NoGpuSession:
    devices: Sequence[DeviceInfo] = ()
    measures_utilization: bool = False
    measures_energy: bool = False
    sample_period: float = 1.0

    def read(self, device: int, since: float) -> Reading:  # pragma: no cover - no devices to read
        raise IndexError(device)

    def close(self) -> None:
        pass

    def after_fork(self) -> None:
        pass
