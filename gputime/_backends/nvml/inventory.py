"""The GPUs NVML sees and the calls gputime makes on them (what ``gputime devices`` lists).

Enumeration records a device that cannot be opened with its error instead of
failing: such a device is listed, never measured.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gputime._backends.nvml.cadence import Cadence
from gputime._backends.nvml.clocks import TimeBases, detect_base, time_bases
from gputime._backends.nvml.errors import (
    FUNCTION_NOT_FOUND,
    NOT_SUPPORTED,
    NOTHING_NEW,
    code_of,
    describe,
    unavailable,
)
from gputime._backends.nvml.runtime import RUNTIME, load_pynvml

# The NVML calls gputime makes on a device, as the bindings name them.
SAMPLES_CALL = "nvmlDeviceGetSamples"
RATES_CALL = "nvmlDeviceGetUtilizationRates"
ENERGY_CALL = "nvmlDeviceGetTotalEnergyConsumption"
#: Per-process samples: the newer call first, the older one its fallback.
PROCESS_CALLS = ("nvmlDeviceGetProcessesUtilizationInfo", "nvmlDeviceGetProcessUtilization")
#: ``nvmlSamplingType_t`` of the utilisation samples.
GPU_UTILIZATION_SAMPLES = 1
_MIG_ENABLE = 1


@dataclass(frozen=True, slots=True)
class NvmlDeviceInfo:
    """One GPU as NVML sees it, with what it supports (for ``gputime devices``).

    Attributes:
        index: NVML's index (``nvidia-smi`` numbering; CUDA's may differ).
        uuid: The device's UUID (``GPU-...``), gputime's id for it.
        name: The product name.
        mig_enabled: Whether MIG mode is on (NVML has no utilisation then).
        sample_period: The driver's utilisation sample period in seconds,
            estimated from its sample buffer; ``None`` where the buffer held
            too few samples (an idle driver records none).
        timestamp_base: The clock the driver stamps samples with: ``"wall"``
            (documented), ``"boottime"`` or ``"monotonic"``; ``None`` where the
            buffer was empty.
        calls: For each NVML call gputime uses, ``"supported"``,
            ``"not supported"``, ``"missing"`` (the driver lacks the function)
            or ``"error: ..."``.
        error: Why the device cannot be used at all, or ``None``.
    """

    index: int
    uuid: str
    name: str
    mig_enabled: bool = False
    sample_period: float | None = None
    timestamp_base: str | None = None
    calls: dict[str, str] = field(default_factory=dict)
    error: str | None = None


@dataclass(slots=True)
class Gpu:
    """A physical GPU found at enumeration; ``error`` says why it cannot be used."""

    index: int
    uuid: str
    name: str
    handle: Any
    mig: bool
    error: str | None = None


def enumerate_gpus(nv: Any) -> list[Gpu]:
    """All GPUs NVML reports; per-device failures are recorded, not raised.

    Raises:
        pynvml.NVMLError: NVML could not count its devices.
    """
    gpus: list[Gpu] = []
    for index in range(nv.nvmlDeviceGetCount()):
        try:
            handle = nv.nvmlDeviceGetHandleByIndex(index)
            uuid = str(nv.nvmlDeviceGetUUID(handle))
        except Exception as exc:  # noqa: BLE001 - an unusable device is listed with its error
            gpus.append(Gpu(index, f"nvml-index-{index}", "?", None, False, describe(exc)))
            continue
        try:
            name = str(nv.nvmlDeviceGetName(handle))
        except Exception:  # noqa: BLE001 - the name is cosmetic
            name = "NVIDIA GPU"
        gpus.append(Gpu(index, uuid, name, handle, _mig_enabled(nv, handle)))
    return gpus


def _mig_enabled(nv: Any, handle: Any) -> bool:
    try:
        current, _pending = nv.nvmlDeviceGetMigMode(handle)
    except Exception:  # noqa: BLE001 - NOT_SUPPORTED / old driver: not a MIG GPU
        return False
    return bool(current == _MIG_ENABLE)


def list_devices(
    *,
    wall_clock_ns: Callable[[], int] = time.time_ns,
    boot_clock_ns: Callable[[], int] | None = None,
    monotonic_clock_ns: Callable[[], int] | None = None,
) -> tuple[NvmlDeviceInfo, ...]:
    """List the GPUs NVML sees and which of gputime's NVML calls each supports.

    Args:
        wall_clock_ns: The wall clock; tests replace it (as the clocks below).
        boot_clock_ns: ``CLOCK_BOOTTIME``; ``None`` for the system's.
        monotonic_clock_ns: ``CLOCK_MONOTONIC``; ``None`` for the system's.

    Returns:
        One entry per GPU, in NVML index order.

    Raises:
        BackendUnavailable: NVML cannot start; the message says what is missing.
    """
    bases = time_bases(wall_clock_ns, boot_clock_ns, monotonic_clock_ns)
    nv = load_pynvml()
    try:
        RUNTIME.acquire(nv)
    except Exception as exc:
        raise unavailable(exc) from exc
    try:
        gpus = enumerate_gpus(nv)
        return tuple(_report(nv, gpu, bases) for gpu in gpus)
    except Exception as exc:
        raise unavailable(exc) from exc
    finally:
        RUNTIME.release(nv)


def _report(nv: Any, gpu: Gpu, bases: TimeBases) -> NvmlDeviceInfo:
    if gpu.error is not None:
        return NvmlDeviceInfo(gpu.index, gpu.uuid, gpu.name, error=gpu.error)
    calls: dict[str, str] = {}
    state, answer = _probe(nv, gpu.handle, SAMPLES_CALL, GPU_UTILIZATION_SAMPLES, 0)
    calls[SAMPLES_CALL] = state
    period = base = None
    if answer is not None:
        stamps = sorted(int(s.timeStamp) for s in answer[1] if s.timeStamp)
        cadence = Cadence()
        cadence.observe(stamps)
        period = cadence.shortest
        base = detect_base(stamps[-1], bases) if stamps else None
    calls[RATES_CALL] = _probe(nv, gpu.handle, RATES_CALL)[0]
    calls[ENERGY_CALL] = _probe(nv, gpu.handle, ENERGY_CALL)[0]
    for call in PROCESS_CALLS:
        calls[call] = _probe(nv, gpu.handle, call, 0)[0]
    return NvmlDeviceInfo(gpu.index, gpu.uuid, gpu.name, gpu.mig, period, base, calls)


def _probe(nv: Any, handle: Any, name: str, *args: object) -> tuple[str, Any]:
    """Call ``name`` once and classify the answer for :attr:`NvmlDeviceInfo.calls`."""
    function = getattr(nv, name, None)
    if function is None:
        # Bindings older than the call (nvidia-ml-py < 12.550 has no
        # nvmlDeviceGetProcessesUtilizationInfo): missing, as for a driver without it.
        return "missing", None
    try:
        return "supported", function(handle, *args)
    except Exception as exc:  # noqa: BLE001 - every answer is a finding here
        code = code_of(exc)
        if code in NOTHING_NEW:
            return "supported", None  # supported, just nothing buffered right now
        if code == NOT_SUPPORTED:
            return "not supported", None
        if code == FUNCTION_NOT_FOUND:
            return "missing", None
        return f"error: {describe(exc)}", None
