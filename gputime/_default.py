"""The process-wide default tracker behind ``gpu_task(...)`` without ``tracker=``."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, overload

from gputime import _fork
from gputime._figures import ServiceStats
from gputime._types import Attribution, Clock, DeviceSelector

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider

    from gputime._backends import Backend
    from gputime._handle import TaskHandle
    from gputime._timeline import Timeline
    from gputime._tracker import Tracker

_lock = threading.Lock()
_default: Tracker | None = None


def configure(
    backend: str | Backend = "auto",
    *,
    interval: float = 0.5,
    threshold: float = 0.0,
    attribution: Attribution = "device",
    devices: Sequence[DeviceSelector] | None = None,
    clock: Clock | None = None,
    threaded: bool = True,
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
    metrics_per_device: bool = False,
    timeline: bool | Timeline = False,
) -> Tracker:
    """Replace the process-wide default tracker, closing the old one.

    Takes the arguments of :class:`~gputime.Tracker`, spelled out so that a
    type checker catches a misspelt one. Tasks already running finish on the
    tracker they started on. Listeners registered on the old default tracker
    (``gputime.get_tracker().on_task_end(...)``) carry over to the new one, so
    that code registering them at import time keeps working whenever the
    application configures gputime.

    Returns:
        The new default tracker.
    """
    global _default
    from gputime._tracker import Tracker  # noqa: PLC0415 - see gputime/__init__.py

    tracker = Tracker(
        backend,
        interval=interval,
        threshold=threshold,
        attribution=attribution,
        devices=devices,
        clock=clock,
        threaded=threaded,
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        metrics_per_device=metrics_per_device,
        timeline=timeline,
    )
    with _lock:
        old, _default = _default, tracker
    if old is not None:
        tracker._adopt_listeners(old)
        old.close()
    return tracker


def get_tracker() -> Tracker:
    """The process-wide default tracker, made with ``Tracker()`` on first use."""
    tracker = _default
    if tracker is not None:
        return tracker
    return _create_default()


def _create_default() -> Tracker:
    # Built outside the lock (NVML can take a while to start, and a fork
    # meanwhile must not leave the child a held lock), then published once.
    global _default
    from gputime._tracker import Tracker  # noqa: PLC0415 - see gputime/__init__.py

    tracker = Tracker()
    with _lock:
        if _default is None:
            _default = tracker
            return tracker
        winner = _default
    tracker.close()  # another thread published one first
    return winner


def _reinit_lock_in_child() -> None:
    global _lock
    _lock = threading.Lock()


_fork.in_child(_reinit_lock_in_child)


def start_task(
    service: str,
    *,
    name: str | None = None,
    span: bool = True,
    attributes: Mapping[str, Any] | None = None,
) -> TaskHandle:
    """Start a task on the default tracker; see :meth:`Tracker.start_task`."""
    return get_tracker().start_task(service, name=name, span=span, attributes=attributes)


@overload
def stats() -> dict[str, ServiceStats]: ...


@overload
def stats(service: str) -> ServiceStats: ...


def stats(service: str | None = None) -> dict[str, ServiceStats] | ServiceStats:
    """The default tracker's per-service figures; see :meth:`Tracker.stats`."""
    tracker = get_tracker()
    return tracker.stats() if service is None else tracker.stats(service)


def reset(service: str | None = None) -> None:
    """Zero the default tracker's figures for ``service`` (or all services)."""
    get_tracker().reset(service)
