"""What NVML's return codes mean to gputime, and the errors a read raises.

NVML answers every call with a return code; ``pynvml`` turns a code other than
success into an exception carrying it as ``value``. :data:`CODES` is the one
table of the codes gputime gives a meaning to; the named groups below it are
derived from it, so a meaning is decided in one place. The codes are part of
NVML's stable C ABI, kept here so that the package can be imported, typed and
tested without loading the bindings.
"""

from __future__ import annotations

import enum
import importlib
import logging
from dataclasses import dataclass

from gputime._backends._base import BackendUnavailable
from gputime._faults import log_once


class Meaning(enum.Enum):
    """What a return code says about the call that got it."""

    #: Routine: nothing newer to report (an idle driver's empty sample buffer).
    NOTHING_NEW = "nothing new"
    #: The device cannot do this: remembered, and the fallback used from then on.
    NOT_SUPPORTED = "not supported"
    #: The driver lacks the function: handled exactly like ``NOT_SUPPORTED``.
    MISSING = "missing"
    #: The GPU fell off the bus or needs a reset: it is not called again.
    DEVICE_LOST = "device lost"
    #: NVML was shut down under the caller: initialise again, retry once.
    UNINITIALISED = "uninitialised"
    #: A row appeared between pynvml's size query and its read: read again.
    OUTGROWN = "outgrown"
    #: NVML cannot start here; the user is told why.
    CANNOT_START = "cannot start"


@dataclass(frozen=True, slots=True)
class Code:
    """One NVML return code: its name, its meaning, and what to tell the user.

    Attributes:
        name: NVML's name for it.
        meaning: What it says about the call that got it.
        reason: For codes that stop NVML from starting, the sentence
            ``BackendUnavailable`` carries; ``None`` otherwise.
    """

    name: str
    meaning: Meaning
    reason: str | None = None


SUCCESS = 0
UNINITIALIZED = 1
NOT_SUPPORTED = 3
NO_PERMISSION = 4
NOT_FOUND = 6
INSUFFICIENT_SIZE = 7
DRIVER_NOT_LOADED = 9
LIBRARY_NOT_FOUND = 12
FUNCTION_NOT_FOUND = 13
GPU_IS_LOST = 15
RESET_REQUIRED = 16
LIB_RM_VERSION_MISMATCH = 18

#: Every return code gputime gives a meaning to. Any other code fails the call
#: that got it (the read counts nothing and is logged once per kind).
CODES: dict[int, Code] = {
    # pynvml raises success itself where a per-process call's size query found no row.
    SUCCESS: Code("NVML_SUCCESS", Meaning.NOTHING_NEW),
    UNINITIALIZED: Code("NVML_ERROR_UNINITIALIZED", Meaning.UNINITIALISED),
    NOT_SUPPORTED: Code("NVML_ERROR_NOT_SUPPORTED", Meaning.NOT_SUPPORTED),
    NO_PERMISSION: Code(
        "NVML_ERROR_NO_PERMISSION",
        Meaning.CANNOT_START,
        "no permission to open the NVIDIA devices",
    ),
    NOT_FOUND: Code("NVML_ERROR_NOT_FOUND", Meaning.NOTHING_NEW),
    INSUFFICIENT_SIZE: Code("NVML_ERROR_INSUFFICIENT_SIZE", Meaning.OUTGROWN),
    DRIVER_NOT_LOADED: Code(
        "NVML_ERROR_DRIVER_NOT_LOADED",
        Meaning.CANNOT_START,
        "the NVIDIA kernel driver is not loaded",
    ),
    LIBRARY_NOT_FOUND: Code(
        "NVML_ERROR_LIBRARY_NOT_FOUND",
        Meaning.CANNOT_START,
        "the NVML library libnvidia-ml.so.1 was not found "
        "(is the NVIDIA driver installed, and visible inside this container?)",
    ),
    FUNCTION_NOT_FOUND: Code("NVML_ERROR_FUNCTION_NOT_FOUND", Meaning.MISSING),
    GPU_IS_LOST: Code("NVML_ERROR_GPU_IS_LOST", Meaning.DEVICE_LOST),
    RESET_REQUIRED: Code("NVML_ERROR_RESET_REQUIRED", Meaning.DEVICE_LOST),
    LIB_RM_VERSION_MISMATCH: Code(
        "NVML_ERROR_LIB_RM_VERSION_MISMATCH",
        Meaning.CANNOT_START,
        "the NVML library does not match the loaded kernel driver "
        "(reboot or reload the driver after an upgrade)",
    ),
}


def _group(*meanings: Meaning) -> frozenset[int]:
    return frozenset(code for code, row in CODES.items() if row.meaning in meanings)


#: An empty answer: the call works, there is just nothing newer.
NOTHING_NEW = _group(Meaning.NOTHING_NEW)
#: The device or the driver cannot make the call: use the fallback from now on.
UNSUPPORTED = _group(Meaning.NOT_SUPPORTED, Meaning.MISSING)
#: The device is gone for good.
DEVICE_LOST = _group(Meaning.DEVICE_LOST)
#: A device NVML no longer finds by its UUID after initialising again is gone too.
GONE = DEVICE_LOST | {NOT_FOUND}


class NvmlError(RuntimeError):
    """An NVML call failed while reading a device.

    The tracker catches it, logs it once per kind and marks the affected figures
    ``partial``. The message is the same for every occurrence of one kind.

    Attributes:
        call: The NVML function that failed.
        code: The NVML return code, or ``None`` where the bindings failed otherwise.
        device: The device's id (UUID), or ``None`` for process-wide calls.
    """

    def __init__(self, call: str, code: int | None, device: str | None, detail: str = "") -> None:
        self.call = call
        self.code = code
        self.device = device
        where = f" on {device}" if device else ""
        what = code_name(code) if code is not None else detail
        super().__init__(f"NVML {call}{where} failed: {what}")


class NvmlDeviceLostError(NvmlError):
    """The GPU fell off the bus or needs a reset; the device is not read again."""


class NvmlUnavailableError(RuntimeError):
    """The device has no utilisation figure at all (MIG mode, or no NVML support)."""


# Names of the codes the table leaves out, from the bindings (NVML adds codes
# over time, and the bindings know the ones of their release).
_binding_names: dict[int, str] = {}


def code_name(code: int) -> str:
    """``"NVML_ERROR_GPU_IS_LOST (15)"``: the code's name and number."""
    row = CODES.get(code)
    if row is not None:
        return f"{row.name} ({code})"
    if not _binding_names:
        try:
            module = importlib.import_module("pynvml")
        except ImportError:  # pragma: no cover - the backend never runs without pynvml
            module = None
        for attr in dir(module):
            if attr.startswith("NVML_ERROR_"):
                _binding_names.setdefault(int(getattr(module, attr)), attr)
    return f"{_binding_names.get(code, 'unknown NVML error')} ({code})"


def code_of(exc: BaseException) -> int | None:
    """The NVML return code an exception of the bindings carries, if any."""
    value = getattr(exc, "value", None)
    return value if isinstance(value, int) else None


def describe(exc: BaseException) -> str:
    """The code's name where ``exc`` carries one, else its ``repr``."""
    code = code_of(exc)
    return code_name(code) if code is not None else repr(exc)


def unavailable(exc: BaseException) -> BackendUnavailable:
    """Why NVML cannot start, in the user's terms, from what starting it raised."""
    code = code_of(exc)
    row = CODES.get(code) if code is not None else None
    if row is not None and row.reason is not None:
        return BackendUnavailable(row.reason)
    return BackendUnavailable(f"NVML could not start: {describe(exc)}")


def log_failure(exc: NvmlError) -> None:
    """Log a call that failed outside a read's result (probes, energy), once per kind."""
    log_once(
        f"{exc.call}:{exc.code}",
        logging.WARNING,
        "gputime: %s; that stretch counts nothing",
        exc,
    )
