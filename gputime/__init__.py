"""gputime: how much GPU time each service's tasks really used.

Wrap job functions or blocks with :func:`gpu_task`; read per-service figures
with :func:`stats`; spans and metrics go through OpenTelemetry.

Importing gputime loads neither OpenTelemetry nor a backend: the tracker's
machinery is imported with the first tracker (see ``docs/performance.md``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gputime._default import configure, get_tracker, reset, start_task, stats
from gputime._figures import DeviceFigures, ServiceStats
from gputime._handle import TaskHandle
from gputime._task import gpu_task
from gputime._types import BackendUnavailable
from gputime._version import __version__

if TYPE_CHECKING:
    from gputime._tracker import Tracker

__all__ = [
    "BackendUnavailable",
    "DeviceFigures",
    "ServiceStats",
    "TaskHandle",
    "Tracker",
    "__version__",
    "configure",
    "get_tracker",
    "gpu_task",
    "reset",
    "start_task",
    "stats",
]


def __getattr__(name: str) -> object:
    # Tracker on first use: it brings OpenTelemetry and the backends with it.
    if name == "Tracker":
        from gputime._tracker import Tracker  # noqa: PLC0415 - imported lazily, on purpose

        globals()["Tracker"] = Tracker  # later look-ups skip this function
        return Tracker
    raise AttributeError(f"module 'gputime' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
