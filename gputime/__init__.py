"""gputime: how much GPU time each service's tasks really used.

Wrap job functions or blocks with :func:`gpu_task`; read per-service figures
with :func:`stats`; spans and metrics go through OpenTelemetry.

Importing gputime loads neither OpenTelemetry nor a backend: the tracker's
machinery is imported with the first tracker (see ``docs/performance.md``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from gputime._default import configure, get_tracker, reset, start_task, stats
from gputime._figures import DeviceFigures, ServiceStats
from gputime._handle import TaskHandle
from gputime._task import gpu_task
from gputime._types import BackendUnavailable
from gputime._version import __version__

if TYPE_CHECKING:
    from gputime._timeline import DeviceSample, TaskWindow, Timeline
    from gputime._tracker import Tracker

__all__ = [
    "BackendUnavailable",
    "DeviceFigures",
    "DeviceSample",
    "ServiceStats",
    "TaskHandle",
    "TaskWindow",
    "Timeline",
    "Tracker",
    "__version__",
    "configure",
    "get_tracker",
    "gpu_task",
    "reset",
    "start_task",
    "stats",
]


#: Names imported on first use, by the module that defines them.
_LAZY = {
    # Tracker brings OpenTelemetry and the backends with it.
    "Tracker": "gputime._tracker",
    # The timeline comes with the tracker that records it.
    "Timeline": "gputime._timeline",
    "TaskWindow": "gputime._timeline",
    "DeviceSample": "gputime._timeline",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'gputime' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
