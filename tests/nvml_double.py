"""A scripted stand-in for the NVML C library, installed as ``pynvml.nvmlLib``.

The real ``pynvml`` module looks every C function up with ``getattr(nvmlLib, name)``
and calls it with ctypes arguments (``byref`` out-parameters, string buffers,
``c_ulonglong`` timestamps). This double answers those lookups with genuine ctypes
function pointers (``CFUNCTYPE`` callbacks), so ctypes converts the arguments
exactly as it would for ``libnvidia-ml.so``, and the callbacks write their results
into the caller's memory and return NVML status codes, as the C library does.

What it models, per GPU, after what real drivers do (docs/nvml.md, "What real
drivers do"): a UUID and name; a driver that takes one utilisation sample every
``period`` seconds on a grid of its own (``phase``: never aligned with anybody's
polls), stamped in microseconds of the wall clock (or of the time since boot,
``timestamp_base``), whose value is the time-weighted mean utilisation over the
period (rounded, halves up); **no sample recorded while the GPU is idle** (a
sample of 0), so a buffer may hold nothing for minutes or never have held a
sample at all (``sample_when_idle=True`` is the other behaviour, for the tests
that run on both); a ring buffer of ``capacity`` samples that overruns;
``NOT_FOUND`` when no sample is newer than the caller's last-seen timestamp;
timestamps that jitter by up to ``stamp_jitter`` seconds; an energy counter in
mJ that only moves every 100 ms; per-process rows; MIG mode; calls a driver does
not support; and injected error codes for any call, any device, once or
repeatedly.

Time: the tracker's clock is a :class:`gputime.testing.FakeClock`; the wall clock
is that clock plus a fixed epoch (``wall_ns`` is what the backend is given as its
``wall_clock_ns``), and :meth:`FakeNvml.step_wall_clock` moves it like an NTP step.
"""

from __future__ import annotations

import ctypes
import math
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable
from ctypes import CFUNCTYPE, c_char_p, c_int, c_uint, c_ulonglong, c_void_p
from dataclasses import dataclass, field
from typing import Any

import pynvml

from gputime.testing import FakeClock

#: Wall-clock microseconds at tracker time 0 (November 2023).
EPOCH_US = 1_700_000_000_000_000
#: Microseconds since boot at tracker time 0 (the machine has been up 3 days).
BOOT_US = 3 * 86_400_000_000

#: The two driver models of idle time: real drivers record nothing while the
#: GPU is idle; the other model records samples of 0.
DRIVER_MODELS = ("no-idle-samples", "idle-samples")

SUCCESS = 0
UNINITIALIZED = 1
INVALID_ARGUMENT = 2
NOT_SUPPORTED = 3
NOT_FOUND = 6
INSUFFICIENT_SIZE = 7
DRIVER_NOT_LOADED = 9
GPU_IS_LOST = 15
RESET_REQUIRED = 16
ARGUMENT_VERSION_MISMATCH = 25
UNKNOWN = 999

#: Whether these nvidia-ml-py bindings have ``nvmlDeviceGetProcessesUtilizationInfo``
#: (12.550 and later). The declared floor, 12.535, has not: the backend then makes the
#: older ``nvmlDeviceGetProcessUtilization`` whatever the driver offers.
PROCESS_INFO_BOUND = hasattr(pynvml, "nvmlDeviceGetProcessesUtilizationInfo")
#: The per-process call the backend makes with these bindings, and its readings' source.
PROCESS_CALL, PROCESS_SOURCE = (
    ("nvmlDeviceGetProcessesUtilizationInfo", "process-utilization-info")
    if PROCESS_INFO_BOUND
    else ("nvmlDeviceGetProcessUtilization", "process-utilization")
)

#: Every device call the backend can make, for fault-injection sweeps.
DEVICE_CALLS = (
    "nvmlDeviceGetSamples",
    "nvmlDeviceGetUtilizationRates",
    "nvmlDeviceGetTotalEnergyConsumption",
    "nvmlDeviceGetProcessesUtilizationInfo",
    "nvmlDeviceGetProcessUtilization",
)

_P = c_void_p
_ENERGY_UPDATE = 0.1


class _Timeline:
    """A step function of time: ``set(at, value)``; integrals and means over intervals."""

    def __init__(self, value: float = 0.0) -> None:
        self.changes: list[tuple[float, float]] = [(-math.inf, value)]

    def set(self, at: float, value: float) -> None:
        while self.changes[-1][0] >= at and len(self.changes) > 1:
            self.changes.pop()
        self.changes.append((at, value))

    def integral(self, start: float, end: float) -> float:
        total = 0.0
        for i, (at, value) in enumerate(self.changes):
            nxt = self.changes[i + 1][0] if i + 1 < len(self.changes) else math.inf
            lo, hi = max(at, start), min(nxt, end)
            if hi > lo:
                total += value * (hi - lo)
        return total

    def mean(self, start: float, end: float) -> float:
        return self.integral(start, end) / (end - start)


def _round_half_up(value: float) -> int:
    return math.floor(value + 0.5 + 1e-9)


@dataclass
class FakeGpu:
    """One scripted GPU. Change its attributes freely between calls."""

    index: int
    uuid: str
    name: str = "NVIDIA H100 80GB HBM3"
    period: float = 1 / 6
    capacity: int = 100
    samples_supported: bool = True
    rates_supported: bool = True
    energy_supported: bool = True
    process_info_supported: bool = True
    process_legacy_supported: bool = True
    #: ``None``: not MIG-capable (``nvmlDeviceGetMigMode`` says NOT_SUPPORTED).
    mig: bool | None = False
    mig_instances: tuple[str, ...] = ()
    #: Real drivers record no sample while the GPU is idle (False); True
    #: records samples of 0 (the other behaviour, for tests that run on both).
    sample_when_idle: bool = False
    #: Where the driver's sample grid sits: sample k is taken at
    #: ``phase + k * period`` on the tracker's clock.
    phase: float = 0.0
    #: Each timestamp lands up to this many seconds after its grid time
    #: (deterministic per sample), as real drivers' do by a few ms.
    stamp_jitter: float = 0.0
    #: The clock samples are stamped with: ``"wall"`` or ``"boottime"``.
    timestamp_base: str = "wall"
    #: False: a broken driver whose buffer records nothing, busy or not.
    records_samples: bool = True
    util: _Timeline = field(default_factory=_Timeline)
    power: _Timeline = field(default_factory=lambda: _Timeline(60.0))
    processes: dict[int, _Timeline] = field(default_factory=dict)
    ring: deque[tuple[int, int]] = field(default_factory=deque)
    process_ring: deque[tuple[int, int, int]] = field(default_factory=deque)
    sampled_upto: int = 0
    #: Extra raw rows returned with the next sample read (garbage, duplicates).
    injected: list[tuple[int, int]] = field(default_factory=list)
    injected_processes: list[tuple[int, int, int]] = field(default_factory=list)
    energy_base_mj: int = 5_000_000
    #: The energy counter steps every this many seconds, at whole multiples
    #: from ``energy_phase``.
    energy_update: float = _ENERGY_UPDATE
    energy_phase: float = 0.0
    reverse_order: bool = False


@dataclass
class _Fault:
    call: str
    code: int
    device: int | None
    remaining: int | None


class FakeNvml:
    """The double: a set of GPUs behind ctypes entry points.

    Args:
        clock: The tracker's fake clock; the driver's time is this clock.
        gpus: How many GPUs (or ready-made :class:`FakeGpu` objects).
        period: Default sample period of the GPUs.
        model: One of :data:`DRIVER_MODELS` for GPUs made here: the real
            drivers' ``"no-idle-samples"`` (the default) or ``"idle-samples"``.
        gpu_options: Further :class:`FakeGpu` fields for GPUs made here.
    """

    def __init__(
        self,
        clock: FakeClock,
        gpus: int | Iterable[FakeGpu] = 2,
        *,
        period: float = 1 / 6,
        model: str = DRIVER_MODELS[0],
        **gpu_options: Any,
    ) -> None:
        self.clock = clock
        if model not in DRIVER_MODELS:
            raise ValueError(f"model={model!r}: one of {DRIVER_MODELS}")
        if isinstance(gpus, int):
            gpus = [
                FakeGpu(
                    i,
                    f"GPU-{i:08x}-aaaa-bbbb-cccc-{i:012x}",
                    period=period,
                    sample_when_idle=model == "idle-samples",
                    **gpu_options,
                )
                for i in range(gpus)
            ]
        self.gpus = list(gpus)
        self.wall_offset_us = EPOCH_US
        self.boot_offset_us = BOOT_US
        self.driver_loaded = True
        self.refcount = 0
        self.generation = 0
        self.calls: Counter[str] = Counter()
        self.log: list[tuple[str, int | None]] = []
        self.errors: list[BaseException] = []
        self._faults: list[_Fault] = []
        self._lock = threading.RLock()
        self._strings: dict[int, ctypes.Array[ctypes.c_char]] = {}
        self.functions: dict[str, Any] = {}
        #: Called (outside the double's lock) at the start of every C call.
        self.before_call: Callable[[str], None] | None = None
        self._define()

    # ------------------------------------------------------------------ scripting

    def wall_ns(self) -> int:
        """The wall clock the driver stamps samples with, in ns."""
        return self.wall_offset_us * 1000 + round(self.clock() * 1e9)

    def wall_us(self, t: float) -> int:
        return self.wall_offset_us + round(t * 1e6)

    def boot_ns(self) -> int:
        """``CLOCK_BOOTTIME`` of the machine the driver runs on, in ns."""
        return self.boot_offset_us * 1000 + round(self.clock() * 1e9)

    def monotonic_ns(self) -> int:
        """``CLOCK_MONOTONIC``: the machine was never suspended, so boottime."""
        return self.boot_ns()

    def backend_clocks(self) -> dict[str, Any]:
        """The clock hooks of ``NvmlBackend`` / ``list_devices`` that match this double."""
        return {
            "wall_clock_ns": self.wall_ns,
            "boot_clock_ns": self.boot_ns,
            "monotonic_clock_ns": self.monotonic_ns,
        }

    def stamp(self, gpu: FakeGpu, t: float) -> int:
        """The timestamp (µs) ``gpu`` gives a sample taken at tracker time ``t``."""
        offset = self.boot_offset_us if gpu.timestamp_base == "boottime" else self.wall_offset_us
        return offset + round(t * 1e6)

    def sample_time(self, gpu: FakeGpu, k: int) -> float:
        """Tracker time at which ``gpu`` takes sample ``k`` (its grid, plus jitter)."""
        jitter = 0.0
        if gpu.stamp_jitter:
            # Deterministic and spread over [0, stamp_jitter): a fixed hash of k.
            jitter = gpu.stamp_jitter * (((k * 2654435761) % 1000) / 1000)
        return gpu.phase + k * gpu.period + jitter

    def step_wall_clock(self, seconds: float) -> None:
        """Step the wall clock (not the tracker clock), like an NTP correction."""
        self.wall_offset_us += round(seconds * 1e6)

    def set_utilization(self, percent: float, device: int = 0) -> None:
        self._sample(self.gpus[device])
        self.gpus[device].util.set(self.clock(), percent)

    def worked_earlier(self, start: float = 5.0, end: float = 9.0, percent: float = 100.0) -> None:
        """Give every GPU a busy stretch in the past, before anything was read.

        Its samples are what a driver's buffer holds from earlier work: they
        show the sample period and the clock the driver stamps with. Call it
        before the first read (the double samples lazily).
        """
        for gpu in self.gpus:
            assert gpu.sampled_upto == 0, "worked_earlier() after the driver was read"
            gpu.util.set(start, percent)
            gpu.util.set(end, 0.0)

    def set_process_utilization(self, pid: int, percent: float, device: int = 0) -> None:
        gpu = self.gpus[device]
        self._sample(gpu)
        gpu.processes.setdefault(pid, _Timeline()).set(self.clock(), percent)

    def set_power(self, watts: float, device: int = 0) -> None:
        self.gpus[device].power.set(self.clock(), watts)

    def fail(
        self, call: str, code: int, *, device: int | None = None, times: int | None = None
    ) -> None:
        """Make ``call`` return ``code`` (for one device or all; ``times`` calls, or always)."""
        with self._lock:
            self._faults.append(_Fault(call, code, device, times))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def remove_function(self, name: str) -> None:
        """Act as a driver that predates ``name`` (pynvml: FUNCTION_NOT_FOUND)."""
        self.functions.pop(name)
        pynvml._nvmlGetFunctionPointer_cache.clear()

    def lose_initialisation(self) -> None:
        """NVML forgets it was initialised (every call answers UNINITIALIZED)."""
        with self._lock:
            self.refcount = 0

    def energy_mj(self, device: int = 0, at: float | None = None) -> int:
        """What the energy counter reads at ``at`` (it moves every 100 ms)."""
        gpu = self.gpus[device]
        now = self.clock() if at is None else at
        step, phase = gpu.energy_update, gpu.energy_phase
        updated = phase + math.floor((now - phase) / step + 1e-9) * step
        return gpu.energy_base_mj + round(gpu.power.integral(0.0, updated) * 1000)

    def install(self) -> None:
        pynvml.nvmlLib = _Library(self.functions)
        pynvml._nvmlGetFunctionPointer_cache.clear()

    @staticmethod
    def uninstall() -> None:
        pynvml.nvmlLib = None
        pynvml._nvmlGetFunctionPointer_cache.clear()

    # ------------------------------------------------------------------ the driver model

    def _sample(self, gpu: FakeGpu) -> None:
        """Take every sample due up to now (lazily, as if the driver ran all along)."""
        now = self.clock()
        newest = math.floor((now - gpu.phase) / gpu.period + 1e-9)
        while newest > gpu.sampled_upto and self.sample_time(gpu, newest) > now + 1e-9:
            newest -= 1  # taken late by its jitter: not yet
        for k in range(gpu.sampled_upto + 1, newest + 1):
            start, end = self.sample_time(gpu, k - 1), self.sample_time(gpu, k)
            value = _round_half_up(gpu.util.mean(start, end))
            stamp = self.stamp(gpu, end)
            if gpu.records_samples and (value or gpu.sample_when_idle):
                gpu.ring.append((stamp, value))
            for pid, timeline in gpu.processes.items():
                sm = _round_half_up(timeline.mean(start, end))
                if sm:
                    gpu.process_ring.append((stamp, pid, sm))
        gpu.sampled_upto = max(gpu.sampled_upto, newest)
        while len(gpu.ring) > gpu.capacity:
            gpu.ring.popleft()
        while len(gpu.process_ring) > 4 * gpu.capacity:
            gpu.process_ring.popleft()

    def _handle(self, gpu: FakeGpu, mig: int | None = None) -> int:
        return (self.generation << 32) | ((gpu.index + 1) << 16) | (0 if mig is None else mig + 1)

    def _gpu_of(self, handle: int | None) -> tuple[FakeGpu, int | None] | None:
        if not handle or handle >> 32 != self.generation:
            return None  # a handle from before the last initialisation
        index = ((handle >> 16) & 0xFFFF) - 1
        if not 0 <= index < len(self.gpus):
            return None
        low = handle & 0xFFFF
        return self.gpus[index], (low - 1 if low else None)

    def _fault(self, call: str, device: int | None) -> int | None:
        for fault in self._faults:
            if fault.call == call and fault.device in (None, device):
                if fault.remaining is not None:
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._faults.remove(fault)
                return fault.code
        return None

    # ------------------------------------------------------------------ entry points

    def _define(self) -> None:
        def entry(
            name: str, *argtypes: Any, restype: Any = c_int, device_arg: bool = True
        ) -> Callable[[Callable[..., int]], Callable[..., int]]:
            def register(impl: Callable[..., int]) -> Callable[..., int]:
                def guarded(*args: Any) -> int:
                    try:
                        if self.before_call is not None:
                            self.before_call(name)
                        with self._lock:
                            self.calls[name] += 1
                            target = self._gpu_of(args[0]) if device_arg else None
                            device = target[0].index if target else None
                            self.log.append((name, device))
                            code = self._fault(name, device)
                            if code is not None:
                                return code
                            if name.startswith("nvmlDevice") and not self.refcount:
                                return UNINITIALIZED
                            if device_arg and target is None:
                                return INVALID_ARGUMENT
                            return impl(*(target, *args[1:]) if device_arg else args)
                    except BaseException as exc:  # a bug in the double must fail the test
                        self.errors.append(exc)
                        return UNKNOWN

                self.functions[name] = CFUNCTYPE(restype, *argtypes)(guarded)
                return impl

            return register

        @entry("nvmlInitWithFlags", c_uint, device_arg=False)
        def init(flags: int) -> int:
            if not self.driver_loaded:
                return DRIVER_NOT_LOADED
            if not self.refcount:
                self.generation += 1
            self.refcount += 1
            return SUCCESS

        @entry("nvmlShutdown", device_arg=False)
        def shutdown() -> int:
            if not self.refcount:
                return UNINITIALIZED
            self.refcount -= 1
            return SUCCESS

        @entry("nvmlErrorString", c_int, restype=c_void_p, device_arg=False)
        def error_string(code: int) -> int:
            text = self._strings.setdefault(
                code, ctypes.create_string_buffer(f"fake NVML error {code}".encode())
            )
            return ctypes.addressof(text)

        @entry("nvmlDeviceGetCount_v2", _P, device_arg=False)
        def count(out: int) -> int:
            c_uint.from_address(out).value = len(self.gpus)
            return SUCCESS

        @entry("nvmlDeviceGetHandleByIndex_v2", c_uint, _P, device_arg=False)
        def by_index(index: int, out: int) -> int:
            if index >= len(self.gpus):
                return INVALID_ARGUMENT
            c_void_p.from_address(out).value = self._handle(self.gpus[index])
            return SUCCESS

        @entry("nvmlDeviceGetHandleByUUID", c_char_p, _P, device_arg=False)
        def by_uuid(uuid: bytes, out: int) -> int:
            wanted = uuid.decode()
            for gpu in self.gpus:
                if gpu.uuid == wanted:
                    c_void_p.from_address(out).value = self._handle(gpu)
                    return SUCCESS
                if wanted in gpu.mig_instances:
                    mig = gpu.mig_instances.index(wanted)
                    c_void_p.from_address(out).value = self._handle(gpu, mig)
                    return SUCCESS
            return NOT_FOUND

        def write_string(buffer: int, size: int, text: str) -> int:
            data = text.encode() + b"\0"
            if len(data) > size:
                return INSUFFICIENT_SIZE
            ctypes.memmove(buffer, data, len(data))
            return SUCCESS

        @entry("nvmlDeviceGetUUID", _P, _P, c_uint)
        def uuid(target: tuple[FakeGpu, int | None], buffer: int, size: int) -> int:
            gpu, mig = target
            return write_string(buffer, size, gpu.uuid if mig is None else gpu.mig_instances[mig])

        @entry("nvmlDeviceGetName", _P, _P, c_uint)
        def name(target: tuple[FakeGpu, int | None], buffer: int, size: int) -> int:
            gpu, mig = target
            return write_string(buffer, size, gpu.name if mig is None else f"{gpu.name} MIG 1g")

        @entry("nvmlDeviceGetMigMode", _P, _P, _P)
        def mig_mode(target: tuple[FakeGpu, int | None], current: int, pending: int) -> int:
            gpu, _ = target
            if gpu.mig is None:
                return NOT_SUPPORTED
            c_uint.from_address(current).value = int(gpu.mig)
            c_uint.from_address(pending).value = int(gpu.mig)
            return SUCCESS

        @entry("nvmlDeviceGetDeviceHandleFromMigDeviceHandle", _P, _P)
        def mig_parent(target: tuple[FakeGpu, int | None], out: int) -> int:
            gpu, mig = target
            if mig is None:
                return INVALID_ARGUMENT
            c_void_p.from_address(out).value = self._handle(gpu)
            return SUCCESS

        def whole(target: tuple[FakeGpu, int | None]) -> FakeGpu | None:
            gpu, mig = target
            return None if mig is not None or gpu.mig else gpu

        @entry("nvmlDeviceGetSamples", _P, c_uint, c_ulonglong, _P, _P, _P)
        def samples(
            target: tuple[FakeGpu, int | None],
            kind: int,
            last_seen: int,
            value_type: int,
            count: int,
            out: int | None,
        ) -> int:
            gpu = whole(target)
            if gpu is None or not gpu.samples_supported or kind != 1:
                return NOT_SUPPORTED
            self._sample(gpu)
            c_uint.from_address(value_type).value = 1  # NVML_VALUE_TYPE_UNSIGNED_INT
            if out is None:
                # The size query: the buffer the caller should allocate.
                c_uint.from_address(count).value = gpu.capacity + len(gpu.injected)
                return SUCCESS
            rows = [row for row in gpu.ring if row[0] > last_seen]
            rows += gpu.injected
            gpu.injected = []
            if not rows:
                return NOT_FOUND
            if gpu.reverse_order:
                rows.reverse()
            rows = rows[: c_uint.from_address(count).value]
            array = (pynvml.c_nvmlSample_t * len(rows)).from_address(out)
            for slot, (stamp, value) in zip(array, rows, strict=True):
                slot.timeStamp = stamp
                slot.sampleValue.uiVal = value
            c_uint.from_address(count).value = len(rows)
            return SUCCESS

        @entry("nvmlDeviceGetUtilizationRates", _P, _P)
        def rates(target: tuple[FakeGpu, int | None], out: int) -> int:
            gpu = whole(target)
            if gpu is None or not gpu.rates_supported:
                return NOT_SUPPORTED
            self._sample(gpu)
            k = gpu.sampled_upto  # the newest sample taken: what the rates report
            value = _round_half_up(
                gpu.util.mean(self.sample_time(gpu, k - 1), self.sample_time(gpu, k))
            )
            result = pynvml.c_nvmlUtilization_t.from_address(out)
            result.gpu = value
            result.memory = value // 2
            return SUCCESS

        @entry("nvmlDeviceGetTotalEnergyConsumption", _P, _P)
        def energy(target: tuple[FakeGpu, int | None], out: int) -> int:
            gpu, mig = target
            if mig is not None or not gpu.energy_supported:
                return NOT_SUPPORTED
            c_ulonglong.from_address(out).value = self.energy_mj(gpu.index)
            return SUCCESS

        def process_rows(gpu: FakeGpu, last_seen: int) -> list[tuple[int, int, int]]:
            self._sample(gpu)
            rows = [row for row in gpu.process_ring if row[0] > last_seen]
            return rows + gpu.injected_processes

        @entry("nvmlDeviceGetProcessUtilization", _P, _P, _P, c_ulonglong)
        def process_legacy(
            target: tuple[FakeGpu, int | None], out: int | None, count: int, last_seen: int
        ) -> int:
            gpu = whole(target)
            if gpu is None or not gpu.process_legacy_supported:
                return NOT_SUPPORTED
            rows = process_rows(gpu, last_seen)
            if not rows:
                return NOT_FOUND
            room = c_uint.from_address(count)
            if out is None or room.value < len(rows):
                room.value = len(rows)
                return INSUFFICIENT_SIZE
            gpu.injected_processes = []
            array = (pynvml.c_nvmlProcessUtilizationSample_t * len(rows)).from_address(out)
            for slot, (stamp, pid, sm) in zip(array, rows, strict=True):
                slot.pid, slot.timeStamp, slot.smUtil, slot.memUtil = pid, stamp, sm, sm // 2
            room.value = len(rows)
            return SUCCESS

        @entry("nvmlDeviceGetProcessesUtilizationInfo", _P, _P)
        def process_info(target: tuple[FakeGpu, int | None], info_address: int) -> int:
            gpu = whole(target)
            if gpu is None or not gpu.process_info_supported:
                return NOT_SUPPORTED
            info = pynvml.c_nvmlProcessesUtilizationInfo_v1_t.from_address(info_address)
            if info.version != pynvml.ProcessesUtilizationInfo_v1:
                return ARGUMENT_VERSION_MISMATCH
            pending = process_rows(gpu, int(info.lastSeenTimeStamp))
            if not pending:
                return NOT_FOUND
            array_address = ctypes.cast(info.procUtilArray, c_void_p).value
            if not array_address or info.processSamplesCount < len(pending):
                info.processSamplesCount = len(pending)
                return INSUFFICIENT_SIZE
            gpu.injected_processes = []
            array = (pynvml.c_nvmlProcessUtilizationInfo_v1_t * len(pending)).from_address(
                array_address
            )
            for slot, (stamp, pid, sm) in zip(array, pending, strict=True):
                slot.pid, slot.timeStamp, slot.smUtil, slot.memUtil = pid, stamp, sm, sm // 2
            info.processSamplesCount = len(pending)
            return SUCCESS


class _Library:
    """What ``pynvml`` finds in ``nvmlLib``: an attribute per C function."""

    def __init__(self, functions: dict[str, Any]) -> None:
        self._functions = functions

    def __getattr__(self, name: str) -> Any:
        try:
            return self._functions[name]
        except KeyError:
            raise AttributeError(name) from None
