"""Which devices a tracker measures: ``devices=``, else ``CUDA_VISIBLE_DEVICES``, else all.

Selectors are NVML indices, ``GPU-`` UUIDs or unique prefixes of them, and MIG
identifiers (``MIG-<uuid>``, and the older ``MIG-GPU-<uuid>/<gi>/<ci>``).
``CUDA_VISIBLE_DEVICES`` is read the way CUDA reads it: up to the first entry
that does not resolve.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gputime._backends.nvml.inventory import Gpu
from gputime._faults import log_once
from gputime._types import DeviceSelector


@dataclass(slots=True)
class Target:
    """A selected device: a whole GPU, or one MIG instance of one.

    Attributes:
        id: gputime's id for it: the GPU's UUID, or the MIG identifier.
        gpu: The physical GPU.
        lookup: What to look its handle up by again (NVML's handles do not
            survive a re-initialisation or a fork).
        handle: The NVML handle.
        mig: Whether it is (on) a MIG-enabled GPU.
    """

    id: str
    gpu: Gpu
    lookup: str
    handle: Any
    mig: bool

    @classmethod
    def of_gpu(cls, gpu: Gpu) -> Target:
        """The whole GPU."""
        return cls(gpu.uuid, gpu, gpu.uuid, gpu.handle, gpu.mig)

    @classmethod
    def of_mig(cls, gpu: Gpu, ident: str, handle: Any) -> Target:
        """The MIG instance ``ident`` of ``gpu``."""
        # Identifiers of the older form name no instance NVML can look up: the parent.
        lookup = gpu.uuid if ident.upper().startswith("MIG-GPU-") else ident
        return cls(ident, gpu, lookup, handle, True)


def choose(nv: Any, gpus: Sequence[Gpu], devices: Sequence[DeviceSelector] | None) -> list[Target]:
    """The devices ``devices`` selects (``None``: those this process may use).

    Raises:
        ValueError: A device does not exist, cannot be used, or is named twice.
    """
    chosen = _visible(nv, gpus) if devices is None else [_select(nv, gpus, s) for s in devices]
    ids = [target.id for target in chosen]
    if len(set(ids)) != len(ids):
        raise ValueError(f"devices={list(devices or ())!r}: a device is named twice")
    return chosen


def _visible(nv: Any, gpus: Sequence[Gpu]) -> list[Target]:
    """The devices this process may use: ``CUDA_VISIBLE_DEVICES``, else all."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is None:
        return [Target.of_gpu(gpu) for gpu in gpus if gpu.error is None]
    chosen: list[Target] = []
    for entry in (part.strip() for part in env.split(",")):
        # CUDA stops at the first entry it cannot resolve.
        target = _resolve(nv, gpus, entry)
        if target is None:
            break
        if all(target.id != seen.id for seen in chosen):
            chosen.append(target)
    if not chosen:
        log_once(
            "cvd-empty",
            logging.WARNING,
            "gputime: CUDA_VISIBLE_DEVICES=%r leaves no GPU visible; GPU figures are 'unavailable'",
            env,
        )
    elif any(e.strip().isdigit() for e in env.split(",")) and _order_may_differ(gpus):
        log_once(
            "cvd-order",
            logging.WARNING,
            "gputime: CUDA_VISIBLE_DEVICES=%r uses indices and this machine has different GPU "
            "models: CUDA's default order (fastest first) may differ from NVML's; set "
            "CUDA_DEVICE_ORDER=PCI_BUS_ID or use GPU UUIDs",
            env,
        )
    return chosen


def _order_may_differ(gpus: Sequence[Gpu]) -> bool:
    if os.environ.get("CUDA_DEVICE_ORDER") == "PCI_BUS_ID":
        return False
    return len({gpu.name for gpu in gpus}) > 1


def _select(nv: Any, gpus: Sequence[Gpu], selector: DeviceSelector) -> Target:
    if isinstance(selector, bool) or not isinstance(selector, (int, str)):
        raise ValueError(f"devices: {selector!r} is not a device index or UUID")
    if isinstance(selector, int) and not 0 <= selector < len(gpus):
        raise ValueError(_no_such(gpus, selector))
    for gpu in gpus:
        if gpu.error is not None and selector in (gpu.index, str(gpu.index)):
            raise ValueError(f"devices: GPU {selector!r} cannot be used: {gpu.error}")
    target = _resolve(nv, gpus, str(selector).strip())
    if target is None:
        raise ValueError(_no_such(gpus, selector))
    return target


def _no_such(gpus: Sequence[Gpu], selector: DeviceSelector) -> str:
    known = ", ".join(f"{gpu.index}={gpu.uuid}" for gpu in gpus)
    return f"devices: no GPU {selector!r} (NVML sees {known})"


def _resolve(nv: Any, gpus: Sequence[Gpu], entry: str) -> Target | None:
    """One device by NVML index, UUID, unique UUID prefix or MIG id; None if none."""
    usable = [gpu for gpu in gpus if gpu.error is None]
    if entry.isdigit():
        index = int(entry)
        return next((Target.of_gpu(g) for g in usable if g.index == index), None)
    if entry.upper().startswith("GPU-"):
        matches = [g for g in usable if g.uuid.lower().startswith(entry.lower())]
        return Target.of_gpu(matches[0]) if len(matches) == 1 else None
    if entry.upper().startswith("MIG-"):
        return _resolve_mig(nv, usable, entry)
    return None


def _resolve_mig(nv: Any, usable: list[Gpu], entry: str) -> Target | None:
    legacy = re.fullmatch(r"MIG-(GPU-[^/]+)/\d+/\d+", entry, flags=re.IGNORECASE)
    if legacy:
        # Drivers before R470 name MIG instances by their parent GPU.
        parent = next((g for g in usable if g.uuid.lower() == legacy[1].lower()), None)
        return None if parent is None else Target.of_mig(parent, entry, parent.handle)
    try:
        handle = nv.nvmlDeviceGetHandleByUUID(entry)
        parent_uuid = str(
            nv.nvmlDeviceGetUUID(nv.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(handle))
        )
    except Exception:  # noqa: BLE001 - an identifier NVML does not know is not visible
        return None
    parent = next((g for g in usable if g.uuid == parent_uuid), None)
    return None if parent is None else Target.of_mig(parent, entry, handle)
