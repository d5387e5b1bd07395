"""The process-wide default tracker behind ``gpu_task(...)`` without ``tracker=``."""

from __future__ import annotations

import os
import threading
from typing import Any, overload

from gputime._ledger import ServiceStats
from gputime._tracker import Tracker

_lock = threading.Lock()
_default: Tracker | None = None


def configure(**tracker_kwargs: Any) -> Tracker:
    """Replace the process-wide default tracker, closing the old one.

    Takes the keyword arguments of :class:`~gputime.Tracker`. Tasks already
    running finish on the tracker they started on.

    Returns:
        The new default tracker.
    """
    global _default
    tracker = Tracker(**tracker_kwargs)
    with _lock:
        old, _default = _default, tracker
    if old is not None:
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


if hasattr(os, "register_at_fork"):  # pragma: no branch - POSIX; Windows has no fork
    os.register_at_fork(after_in_child=_reinit_lock_in_child)


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
