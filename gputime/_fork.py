"""One at-fork registry: what a forked child re-initialises, in order.

A child process inherits gputime's state: locks another thread may have held,
a sampler thread that does not exist there, driver handles that mean nothing
there, figures that are the parent's. One ``os.register_at_fork`` hook (where
the platform forks at all) runs, in the child, the callbacks registered with
:func:`in_child` in registration order, then ``_after_fork_in_child()`` of each
object registered with :func:`register` that is still alive. Objects are held
weakly: a tracker that was garbage collected needs nothing in the child, and
the hook must not keep it alive.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable
from typing import Any, Protocol


class Forkable(Protocol):
    """An object that re-initialises itself in a forked child."""

    def _after_fork_in_child(self) -> None: ...


_callbacks: list[Callable[[], object]] = []
_objects: weakref.WeakSet[Any] = weakref.WeakSet()


def in_child(callback: Callable[[], object]) -> None:
    """Run ``callback`` in every forked child (module state: held strongly)."""
    _callbacks.append(callback)


def register(obj: Forkable) -> None:
    """Call ``obj._after_fork_in_child()`` in every forked child while ``obj`` lives."""
    _objects.add(obj)


def _run_in_child() -> None:
    for callback in list(_callbacks):
        callback()
    for obj in list(_objects):
        obj._after_fork_in_child()


if hasattr(os, "register_at_fork"):  # pragma: no branch - POSIX; Windows has no fork
    os.register_at_fork(after_in_child=_run_in_child)
