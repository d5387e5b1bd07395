"""Backends: where utilisation samples come from (NVML, simulated, none)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from gputime._backends._base import (
    Backend,
    BackendUnavailable,
    DeviceInfo,
    Reading,
    Sample,
    Session,
)
from gputime._backends._none import NoGpu
from gputime._faults import log_once
from gputime._types import Attribution, Clock, DeviceSelector

__all__ = [
    "Attribution",
    "Backend",
    "BackendUnavailable",
    "Clock",
    "DeviceInfo",
    "DeviceSelector",
    "NoGpu",
    "Reading",
    "Sample",
    "Session",
    "open_backend",
    "resolve_backend",
]

BACKEND_NAMES = ("auto", "nvml", "none")


def resolve_backend(spec: str | Backend) -> Backend:
    """Turn the ``backend=`` argument of :class:`~gputime.Tracker` into a backend.

    Raises:
        ValueError: An unknown backend name or an object that is not a backend.
        BackendUnavailable: ``"nvml"`` where NVML cannot start; the message
            says what is missing.
    """
    if isinstance(spec, str):
        if spec == "none":
            return NoGpu()
        if spec == "nvml":
            return _nvml_backend()
        if spec == "auto":
            try:
                return _nvml_backend()
            except BackendUnavailable as exc:
                return _fallback(str(exc))
        raise ValueError(
            f"backend={spec!r}: unknown backend name (expected one of "
            f"{', '.join(repr(n) for n in BACKEND_NAMES)}, or a backend object)"
        )
    if isinstance(spec, Backend):
        return spec
    raise ValueError(
        f"backend={spec!r}: not a backend (expected one of "
        f"{', '.join(repr(n) for n in BACKEND_NAMES)}, or an object with name and open())"
    )


def open_backend(
    spec: str | Backend,
    *,
    clock: Clock | None,
    devices: Sequence[DeviceSelector] | None,
    attribution: Attribution,
) -> tuple[Backend, Session, Clock]:
    """Resolve and open the ``backend=`` argument for one tracker.

    ``"auto"`` falls back to ``"none"`` (one warning per process) where NVML
    cannot start, or starts but cannot be opened.

    Returns:
        The backend, its session, and the clock: ``clock``, else the backend's
        own (a ``SimulatedGpu``'s), else ``time.monotonic``.

    Raises:
        ValueError: A bad backend, device or attribution.
        BackendUnavailable: ``"nvml"`` where NVML cannot start.
    """
    backend = resolve_backend(spec)
    if clock is None:
        own = getattr(backend, "clock", None)
        clock = own if callable(own) else time.monotonic
    try:
        session = backend.open(clock=clock, devices=devices, attribution=attribution)
    except BackendUnavailable as exc:
        if spec != "auto":
            raise
        backend = _fallback(str(exc))
        session = backend.open(clock=clock, devices=devices, attribution=attribution)
    return backend, session, clock


def _nvml_backend() -> Backend:
    # Imported here so that importing gputime never loads the NVML bindings.
    from gputime._backends.nvml import NvmlBackend  # noqa: PLC0415 - see above

    return NvmlBackend()


def _fallback(reason: str) -> NoGpu:
    """``"auto"`` found no GPU it can measure: no GPU figures, one warning per process."""
    log_once(
        "auto-fallback",
        logging.WARNING,
        "gputime: no NVIDIA GPU can be measured (%s); tasks are still counted, "
        "GPU figures stay 0 with status 'unavailable'",
        reason,
    )
    return NoGpu(reason=reason)
