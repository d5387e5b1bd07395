"""Test helpers, public so users can test their own instrumentation without a GPU.

``FakeClock`` drives time by hand; ``SimulatedGpu`` models the driver's sample
buffer on that clock, with fault injection::

    clock = FakeClock()
    gpu = SimulatedGpu(clock=clock)
    tracker = Tracker(backend=gpu, threaded=False)
    with tracker.gpu_task("nmt") as task:
        gpu.set_utilization(100)
        clock.advance(1.0)
    assert task.gpu_ms == 1000.0
"""

from __future__ import annotations

import math
import threading

from gputime import _validate
from gputime._backends._simulated import SimulatedGpu, SimulatedReadError

__all__ = ["FakeClock", "SimulatedGpu", "SimulatedReadError"]


class FakeClock:
    """A monotonic clock that only moves when told to.

    Args:
        start: The first reading, in seconds.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = _validate.finite("start", start)
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self._now

    def advance(self, seconds: float) -> float:
        """Move forward by ``seconds`` (>= 0); returns the new time."""
        if not _validate.is_real(seconds) or not 0 <= seconds < math.inf:
            raise ValueError(f"seconds={seconds!r}: a monotonic clock only moves forward")
        with self._lock:
            self._now += seconds
            return self._now

    def __repr__(self) -> str:
        return f"FakeClock({self._now!r})"
