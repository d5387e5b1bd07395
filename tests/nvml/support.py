"""What the NVML tests share: installing the double, opening a session, reading a reading.

Every test installs :class:`tests.nvml_double.FakeNvml` as ``pynvml.nvmlLib``: the
backend's calls go through the unmodified ``pynvml`` wrappers and ctypes into the
double's C-callable entry points. The tracker clock is a FakeClock starting at
10 s, so every GPU already has a buffer of samples when a test begins.
"""

from __future__ import annotations

from typing import Any

import pytest

from gputime import _faults
from gputime._backends._base import Reading
from gputime._backends.nvml import NvmlBackend
from gputime._backends.nvml.runtime import RUNTIME
from gputime.testing import FakeClock
from tests.nvml_double import DEVICE_CALLS, PROCESS_INFO_BOUND, FakeNvml

P = 1 / 6
START = 10.0

#: Tests of the newer per-process call itself: the bindings at the declared floor
#: (nvidia-ml-py 12.535) cannot make it, so there they are not applicable.
needs_process_info = pytest.mark.skipif(
    not PROCESS_INFO_BOUND,
    reason="these nvidia-ml-py bindings lack nvmlDeviceGetProcessesUtilizationInfo",
)
#: DEVICE_CALLS, with the newer per-process call marked as above.
SWEPT_CALLS = [
    pytest.param(call, marks=needs_process_info)
    if call == "nvmlDeviceGetProcessesUtilizationInfo"
    else call
    for call in DEVICE_CALLS
]


class installed:  # noqa: N801 - used like a function, as a context manager
    """Install a double with a fresh process-wide NVML state; check it on the way out.

    NVML's warnings are logged once per process: each use starts a fresh
    record of them, so that a test sees the warnings its own double provokes.
    """

    def __init__(self, double: FakeNvml) -> None:
        self.double = double
        self._logged = _faults.PROCESS

    def __enter__(self) -> FakeNvml:
        RUNTIME.forget()
        self._logged = _faults.PROCESS
        _faults.PROCESS = _faults.OnceLog()
        self.double.install()
        return self.double

    def __exit__(self, *exc: object) -> None:
        FakeNvml.uninstall()
        RUNTIME.forget()
        _faults.PROCESS = self._logged
        assert not self.double.errors, self.double.errors


def open_session(
    nvml: FakeNvml,
    clock: FakeClock,
    devices: Any = None,
    attribution: Any = "device",
    **kwargs: Any,
) -> Any:
    backend = NvmlBackend(**nvml.backend_clocks(), **kwargs)
    return backend.open(clock=clock, devices=devices, attribution=attribution)


def at(k: int, period: float = P) -> float:
    """Tracker time of driver sample ``k``."""
    return k * period


def is_empty(reading: Reading, source: str) -> bool:
    return not reading.utilization and reading.source == source


def values(reading: Reading) -> list[float | None]:
    return [value for _, value in reading.utilization]


def ends(reading: Reading) -> list[float]:
    return [end for end, _ in reading.utilization]


def heard(reading: Reading) -> bool:
    """Whether a read told anything: samples, or (an idle real driver) an idle claim."""
    return bool(reading.utilization) or reading.idle_until is not None
