"""NVML's process-wide life: loading the bindings, initialising, shutting down.

NVML is initialised once per process, when the backend is first constructed
(or :func:`~gputime._backends.nvml.list_devices` first called). Every open
session holds a reference; ``nvmlShutdown`` runs when the last one is released.
A forked child starts with NVML uninitialised (the parent's state means nothing
there): its sessions initialise again on their first read.
"""

from __future__ import annotations

import importlib
import logging
import threading
from typing import Any

from gputime import _fork
from gputime._backends._base import BackendUnavailable
from gputime._faults import log_once


def load_pynvml() -> Any:
    """Import the bindings; typed ``Any`` because ``pynvml`` ships no type information.

    Raises:
        BackendUnavailable: ``nvidia-ml-py`` is not installed.
    """
    try:
        return importlib.import_module("pynvml")
    except ImportError as exc:
        raise BackendUnavailable(
            "the Python NVML bindings are not installed (pip install nvidia-ml-py)"
        ) from exc


class Runtime:
    """The process-wide NVML initialisation, shared by every backend and session.

    ``generation`` changes on every (re-)initialisation and in a forked child,
    telling sessions that their device handles must be looked up again. The
    methods that call NVML raise what the bindings raise (``pynvml.NVMLError``).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._initialised = False
        self.generation = 0

    def ensure(self, nv: Any) -> None:
        """Initialise NVML unless it already is."""
        with self._lock:
            self._ensure_locked(nv)

    def _ensure_locked(self, nv: Any) -> None:
        if not self._initialised:
            nv.nvmlInit()
            self._initialised = True
            self.generation += 1

    def acquire(self, nv: Any) -> None:
        """Initialise NVML unless it already is, and hold a reference to it."""
        with self._lock:
            self._ensure_locked(nv)
            self._users += 1

    def release(self, nv: Any) -> None:
        """Drop a reference; shut NVML down with the last (failures are logged)."""
        with self._lock:
            self._users = max(0, self._users - 1)
            if self._users or not self._initialised:
                return
            self._initialised = False
            try:
                nv.nvmlShutdown()
            except Exception as exc:  # noqa: BLE001 - shutdown failures are logged, never raised
                log_once("shutdown", logging.WARNING, "gputime: nvmlShutdown failed: %s", exc)

    def reinit(self, nv: Any, seen: int) -> None:
        """Initialise again after NVML answered UNINITIALIZED (once per generation)."""
        with self._lock:
            if self.generation != seen:
                return  # another thread already did it
            nv.nvmlInit()
            self._initialised = True
            self.generation += 1

    def forget(self) -> None:
        """Start over as if NVML was never initialised (a forked child; tests)."""
        # In a child the parent's NVML state means nothing, and the lock may have
        # been held by a thread that does not exist there.
        self._lock = threading.Lock()
        self._users = 0
        self._initialised = False
        self.generation += 1


#: The one NVML initialisation of this process.
RUNTIME = Runtime()
_fork.in_child(RUNTIME.forget)
