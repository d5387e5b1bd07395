"""One session's access to NVML: every device call, with the error rules, and a safe close.

Every NVML call a session makes on a device goes through :meth:`Driver.call`,
which applies the rules of :mod:`~gputime._backends.nvml.errors` in one place:
a lost GPU is not called again, UNINITIALIZED initialises NVML once more and
retries, a binding missing from ``pynvml`` is a driver without the function.
Reads, calibrations and energy baselines are *in flight* between
:meth:`Driver.begin` and :meth:`Driver.end`: shutting NVML down under a thread
that is inside it can crash, so :meth:`Driver.close` waits for them. A forked
child initialises NVML again and looks its devices up again by UUID.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

from gputime._backends.nvml.device import Device
from gputime._backends.nvml.errors import (
    DEVICE_LOST,
    FUNCTION_NOT_FOUND,
    GONE,
    UNINITIALIZED,
    NvmlDeviceLostError,
    NvmlError,
    code_of,
)
from gputime._backends.nvml.runtime import RUNTIME
from gputime._faults import log_once

#: How long ``close`` waits for calls still inside NVML before shutting it down.
CLOSE_WAIT = 5.0


class Driver:
    """The NVML calls of one session, holding its reference on the NVML runtime.

    Args:
        nv: The bindings (``pynvml``).
        devices: The session's devices (their handles are looked up again here).
    """

    def __init__(self, nv: Any, devices: Sequence[Device]) -> None:
        self.nv = nv
        self._devs = devices
        self._state = threading.Condition(threading.Lock())
        self._reopen_lock = threading.Lock()
        self._inflight = 0
        self._closed = False
        self._acquired = True
        self._pid = os.getpid()
        self._generation = RUNTIME.generation

    # -- in flight

    def begin(self) -> bool:
        """Start a piece of work that calls NVML; False (and nothing started) once closed.

        In a forked child, or after NVML was initialised again, NVML is
        initialised and the devices looked up again first.

        Raises:
            NvmlError: Initialising or a look-up failed (nothing started).
        """
        with self._state:
            if self._closed:
                return False
            self._inflight += 1
        if self._pid != os.getpid() or self._generation != RUNTIME.generation:
            try:
                self._reopen()
            except BaseException:
                self.end()
                raise
        return True

    def end(self) -> None:
        """End what :meth:`begin` started."""
        with self._state:
            self._inflight -= 1
            if not self._inflight:
                self._state.notify_all()

    def close(self) -> None:
        """Release NVML once nothing is inside it any more (idempotent)."""
        with self._state:
            if self._closed:
                return
            self._closed = True
            # Shutting NVML down under a thread that is inside it can crash.
            if not self._state.wait_for(lambda: not self._inflight, timeout=CLOSE_WAIT):
                log_once(
                    "close-timeout",
                    logging.WARNING,
                    "gputime: an NVML read did not return within %.0f s; NVML is left running",
                    CLOSE_WAIT,
                )
                return
        if self._acquired and self._pid == os.getpid():
            self._acquired = False
            RUNTIME.release(self.nv)

    def after_fork(self) -> None:
        """Forget the parent's threads; the first call in the child initialises again."""
        self._state = threading.Condition(threading.Lock())
        self._reopen_lock = threading.Lock()
        self._inflight = 0

    # -- initialising again

    def _reopen(self) -> None:
        with self._reopen_lock:
            pid = os.getpid()
            if self._pid != pid:
                # A forked child: the parent's reference and baselines are not ours.
                self._pid = pid
                self._acquired = False
                for dev in self._devs:
                    dev.newest_end = None
                    dev.energy_base = None
            self._initialise(self._acquire)

    def _acquire(self) -> None:
        if not self._acquired:
            RUNTIME.acquire(self.nv)
            self._acquired = True

    def _recover(self, seen: int) -> None:
        """NVML said UNINITIALIZED: initialise once more and look handles up again."""
        with self._reopen_lock:
            self._initialise(functools.partial(RUNTIME.reinit, self.nv, seen))

    def _initialise(self, start: Callable[[], object]) -> None:
        """Initialise NVML with ``start``; look the handles up again if that made a new one.

        Raises:
            NvmlError: Initialising or a look-up failed.
        """
        try:
            start()
        except Exception as exc:
            raise NvmlError("nvmlInit", code_of(exc), None, repr(exc)) from exc
        if self._generation != RUNTIME.generation:
            self._relookup()

    def _relookup(self) -> None:
        for dev in self._devs:
            if dev.dead is not None:
                continue
            try:
                dev.handle = self.nv.nvmlDeviceGetHandleByUUID(dev.lookup)
            except Exception as exc:
                code = code_of(exc)
                if code in GONE:
                    dev.dead = NvmlDeviceLostError("nvmlDeviceGetHandleByUUID", code, dev.info.id)
                    continue
                raise NvmlError("nvmlDeviceGetHandleByUUID", code, dev.info.id, repr(exc)) from exc
        self._generation = RUNTIME.generation

    # -- calls

    def call(self, dev: Device, name: str, *args: object) -> Any:
        """Call ``pynvml.<name>(handle, *args)`` with the error rules applied.

        Raises:
            NvmlDeviceLostError: The GPU is lost or needs a reset (also every later call).
            NvmlError: Any other failure, including the routine NOT_FOUND and
                NOT_SUPPORTED, which callers handle by ``code``.
        """
        function = getattr(self.nv, name, None)
        if function is None:
            # Older nvidia-ml-py releases lack newer bindings: that is a driver
            # without the function, and callers fall back as they do for one.
            raise NvmlError(name, FUNCTION_NOT_FOUND, dev.info.id)
        for attempt in (0, 1):
            if dev.dead is not None:
                # A fresh exception each time: re-raising one object grows its traceback.
                raise NvmlDeviceLostError(dev.dead.call, dev.dead.code, dev.dead.device)
            seen = RUNTIME.generation
            try:
                return function(dev.handle, *args)
            except Exception as exc:
                code = code_of(exc)
                if code == UNINITIALIZED and attempt == 0:
                    self._recover(seen)
                    continue
                if code in DEVICE_LOST:
                    dev.dead = NvmlDeviceLostError(name, code, dev.info.id)
                    log_once(
                        f"lost {dev.info.id}",
                        logging.WARNING,
                        "gputime: %s: GPU figures for it are 'partial' from now on",
                        dev.dead,
                    )
                    raise dev.dead from exc
                raise NvmlError(name, code, dev.info.id, repr(exc)) from exc
        raise AssertionError("unreachable")  # pragma: no cover
