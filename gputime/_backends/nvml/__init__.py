"""The NVML backend: utilisation, energy and per-process samples of NVIDIA GPUs.

Everything goes through the ``pynvml`` module of the ``nvidia-ml-py``
distribution, imported only when the backend is first used (constructed, or
:func:`list_devices` called), so that importing this package, like importing
gputime, never loads the NVML bindings.

The package is cut by what each module owns, and imports flow one way, from
the leaves up:

- ``errors``: what NVML's return codes mean (one table), the error classes;
- ``runtime``: loading the bindings, the process-wide init/shutdown;
- ``clocks``: which clock a device stamps with, mapping it onto the tracker's;
- ``cadence``: the driver's sample period and jitter, the energy counter's steps;
- ``inventory``: the GPUs NVML sees, :func:`list_devices`;
- ``selection``: which of them a tracker measures (``CUDA_VISIBLE_DEVICES``, MIG);
- ``device``: one tracked device's read state;
- ``driver``: every NVML call of a session, with the error rules, and its close;
- ``timeline``: driver rows onto the tracker's clock, samples and idle claims;
- ``utilization``, ``processes``, ``energy``: the readers;
- ``session``: the tracker's session, composing the above;
- ``backend``: :class:`NvmlBackend`, which opens sessions.
"""

from __future__ import annotations

from gputime._backends.nvml.backend import NvmlBackend
from gputime._backends.nvml.errors import NvmlDeviceLostError, NvmlError, NvmlUnavailableError
from gputime._backends.nvml.inventory import NvmlDeviceInfo, list_devices

__all__ = [
    "NvmlBackend",
    "NvmlDeviceInfo",
    "NvmlDeviceLostError",
    "NvmlError",
    "NvmlUnavailableError",
    "list_devices",
]
