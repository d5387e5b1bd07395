"""Backends: where utilisation samples come from (NVML, simulated, none)."""

from __future__ import annotations

import logging

from gputime._backends._base import (
    Attribution,
    Backend,
    BackendUnavailable,
    Clock,
    DeviceInfo,
    DeviceSelector,
    Reading,
    Sample,
    Session,
)
from gputime._backends._none import NoGpu

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
    "resolve_backend",
    "warn_auto_fallback",
]

_logger = logging.getLogger("gputime")
_warned_auto_fallback = False

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
                warn_auto_fallback(str(exc))
                return NoGpu(reason=str(exc))
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


def _nvml_backend() -> Backend:
    # Imported here so that importing gputime never loads the NVML bindings.
    from gputime._backends._nvml import NvmlBackend  # noqa: PLC0415 - see above

    return NvmlBackend()


def warn_auto_fallback(reason: str) -> None:
    """Log, once per process, that ``"auto"`` found no GPU it can measure."""
    global _warned_auto_fallback
    if not _warned_auto_fallback:
        _warned_auto_fallback = True
        _logger.warning(
            "gputime: no NVIDIA GPU can be measured (%s); tasks are still counted, "
            "GPU figures stay 0 with status 'unavailable'",
            reason,
        )
