"""gputime: how much GPU time each service's tasks really used.

Wrap job functions or blocks with :func:`gpu_task`; read per-service figures
with :func:`stats`; spans and metrics go through OpenTelemetry.
"""

from __future__ import annotations

from gputime._backends import BackendUnavailable
from gputime._default import configure, get_tracker, reset, start_task, stats
from gputime._figures import DeviceFigures, ServiceStats
from gputime._handle import TaskHandle
from gputime._task import gpu_task
from gputime._tracker import Tracker
from gputime._version import __version__

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
