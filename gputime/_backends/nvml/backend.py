"""The NVML backend: configuration, the devices NVML sees, and opening sessions."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Collection, Iterable, Sequence

from gputime import _validate
from gputime._backends._base import BackendUnavailable
from gputime._backends.nvml.clocks import time_bases
from gputime._backends.nvml.errors import unavailable
from gputime._backends.nvml.inventory import enumerate_gpus
from gputime._backends.nvml.runtime import RUNTIME, load_pynvml
from gputime._backends.nvml.selection import choose
from gputime._backends.nvml.session import NvmlSession
from gputime._types import Attribution, Clock, DeviceSelector


class NvmlBackend:
    """Measures NVIDIA GPUs through NVML (``backend="nvml"``; ``"auto"`` tries it first).

    Args:
        child_pids: For ``attribution="process"``: further process ids whose
            utilisation counts as this process's (the children of
            ``gputime run``), or a callable returning the current set.
        wall_clock_ns: The wall clock NVML stamps its samples with; tests
            replace it to stay consistent with a fake tracker clock.
        boot_clock_ns: ``CLOCK_BOOTTIME``, which some platforms stamp samples
            with instead (detected per device); ``None`` for the system's.
        monotonic_clock_ns: ``CLOCK_MONOTONIC``, likewise.

    Raises:
        BackendUnavailable: The bindings, the NVML library or the driver is
            missing, or NVML sees no GPU; the message says which.
    """

    name = "nvml"

    def __init__(
        self,
        *,
        child_pids: Collection[int] | Callable[[], Iterable[int]] = (),
        wall_clock_ns: Callable[[], int] = time.time_ns,
        boot_clock_ns: Callable[[], int] | None = None,
        monotonic_clock_ns: Callable[[], int] | None = None,
    ) -> None:
        self._nv = load_pynvml()
        self._child_pids = child_pids
        self._time_bases = time_bases(wall_clock_ns, boot_clock_ns, monotonic_clock_ns)
        try:
            RUNTIME.ensure(self._nv)
            self._generation = RUNTIME.generation
            self._gpus = enumerate_gpus(self._nv)
        except Exception as exc:
            raise unavailable(exc) from exc
        if not self._gpus:
            raise BackendUnavailable("NVML is running but reports no GPU")

    def __repr__(self) -> str:
        return f"NvmlBackend(gpus={[gpu.uuid for gpu in self._gpus]!r})"

    def open(
        self,
        *,
        clock: Clock,
        devices: Sequence[DeviceSelector] | None,
        attribution: Attribution,
    ) -> NvmlSession:
        """Bind to ``clock`` and the selected devices.

        Raises:
            ValueError: An unknown attribution, a device that does not exist or
                is named twice, or ``attribution="process"`` where the driver
                has no per-process samples for a selected device.
            BackendUnavailable: NVML could not be initialised again.
        """
        attribution = _validate.attribution_(attribution)
        nv = self._nv
        try:
            RUNTIME.acquire(nv)
            if RUNTIME.generation != self._generation:
                # NVML was shut down and started again: the handles are new.
                self._generation = RUNTIME.generation
                self._gpus = enumerate_gpus(nv)
        except Exception as exc:
            raise unavailable(exc) from exc
        try:
            targets = choose(nv, self._gpus, devices)
            return NvmlSession(
                nv, targets, clock, attribution, bases=self._time_bases, pids=self._pids
            )
        except BaseException:
            RUNTIME.release(nv)
            raise

    def _pids(self) -> frozenset[int]:
        """This process and the ``child_pids`` now."""
        extra = self._child_pids() if callable(self._child_pids) else self._child_pids
        return frozenset((os.getpid(), *extra))
