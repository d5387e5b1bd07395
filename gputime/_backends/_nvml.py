"""The NVML backend: utilisation, energy and per-process samples of NVIDIA GPUs.

Everything goes through the ``pynvml`` module of the ``nvidia-ml-py`` distribution,
imported only when the backend is first used, so that importing gputime never
loads the NVML bindings.

Lifecycle: NVML is initialised once per process, when the backend is first
constructed (or :func:`list_devices` first called). Every open session holds a
reference; ``nvmlShutdown`` runs when the last session closes, which the tracker
does after its sampler stopped, and only once no read is in flight. A forked
child starts with NVML uninitialised: its sessions initialise again and look
their devices up by UUID on their first read.

Time: NVML stamps samples with the wall clock (``CLOCK_REALTIME``, µs). They are
mapped onto the tracker's clock through the tightest of several side-by-side
readings of ``time.time_ns()`` and the tracker clock, refreshed every second so
that a step of the wall clock is followed, and otherwise held fixed so that one
driver sample always maps to the same tracker time.
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import re
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gputime._backends._base import (
    Attribution,
    BackendUnavailable,
    Clock,
    DeviceInfo,
    DeviceSelector,
    Reading,
    Sample,
)

__all__ = [
    "NvmlBackend",
    "NvmlDeviceInfo",
    "NvmlDeviceLostError",
    "NvmlError",
    "NvmlUnavailableError",
    "list_devices",
]

_logger = logging.getLogger("gputime")

# NVML return codes (part of NVML's stable C ABI; kept here so this module can be
# imported, typed and tested without loading the bindings).
_SUCCESS = 0
_UNINITIALIZED = 1
_NOT_SUPPORTED = 3
_NO_PERMISSION = 4
_NOT_FOUND = 6
_INSUFFICIENT_SIZE = 7
_DRIVER_NOT_LOADED = 9
_LIBRARY_NOT_FOUND = 12
_FUNCTION_NOT_FOUND = 13
_GPU_IS_LOST = 15
_RESET_REQUIRED = 16
_LIB_RM_VERSION_MISMATCH = 18

_GPU_UTILIZATION_SAMPLES = 1
_MIG_ENABLE = 1

#: The driver samples every 1/6 s to 1 s depending on the product. Until a
#: device's samples tell, a sample is taken to reach back 1/6 s (a longer guess
#: would credit a busy value back across idle time) and a sample may still be
#: due for up to 1 s (a shorter guess would call time idle whose sample is yet
#: to come).
_DEFAULT_PERIOD = 1 / 6
_MAX_PERIOD = 1.0
_MIN_PERIOD = 1 / 60
#: The shortest period NVML documents (1/6 s), less a margin: an interval
#: between samples is never taken for a whole multiple of a shorter period.
_SHORTEST_PERIOD = 0.15
#: Consecutive samples lie a whole number of periods apart within this
#: fraction of a period (the driver's timestamps jitter by a few ms).
_PERIOD_TOLERANCE = 0.08
#: Intervals between samples kept to learn the period and the jitter from; the
#: oldest drop out, so one late sample does not keep exits careful for ever.
_CADENCE_WINDOW = 64
#: Fewer intervals than this teach no jitter (``_SLACK`` until then).
_JITTER_MIN_INTERVALS = 3
#: NVML timestamps jitter by a few milliseconds around the nominal period.
_SLACK = 0.02
#: The fewest samples a driver's ring buffer is assumed to hold (drivers keep
#: about 100): a reader fewer samples behind cannot have lost any to an overrun.
_MIN_RING = 32
#: Extra lookback when asking NVML for samples newer than ``since``, in µs, so
#: that rounding in the clock mapping never hides a sample.
_LOOKBACK_US = 1000
#: Samples stamped this far after "now" are garbage (or from before a wall-clock
#: step backwards) and are dropped.
_FUTURE_SLACK = 0.05
#: The wall-clock/tracker offset is re-measured this often (tracker seconds)...
_CLOCK_REFRESH = 1.0
#: ...and only adopted when it moved by more than this (a wall-clock step), so
#: one sample keeps mapping to one tracker time between steps.
_CLOCK_STEP = 0.002
#: NVML's timestamps have microsecond resolution: a sample that maps within this
#: of ``since`` is the one that ended there.
_RESOLUTION = 1e-6
#: The energy counter updates every ~100 ms; unchanged for this long, it is stuck.
_ENERGY_STALL = 1.0
#: Calibrating an energy counter (see _CounterClock): read it this often...
_CALIBRATE_STEP = 0.002
#: ...for at most this long (counters step every 10 to 100 ms on the GPUs seen)...
_CALIBRATE_FOR = 1.0
#: ...and again this often while tasks run, to follow the drift between the
#: GPU's timer and the host's clock.
_RECALIBRATE = 60.0
#: Counters that step this often or more need no correction (it would be below this).
_COUNTER_FINE = 0.005

#: How long ``close`` waits for reads still inside NVML before shutting it down.
_CLOSE_WAIT = 5.0
#: Where this process's PID namespace is named.
_PID_NAMESPACE = "/proc/self/ns/pid"
#: The inode number of the kernel's initial PID namespace (PROC_PID_INIT_INO).
_INIT_PID_NS = "pid:[4026531836]"

_SAMPLE_CALLS = ("nvmlDeviceGetSamples", "nvmlDeviceGetUtilizationRates")
_ENERGY_CALL = "nvmlDeviceGetTotalEnergyConsumption"
_PROCESS_CALLS = ("nvmlDeviceGetProcessesUtilizationInfo", "nvmlDeviceGetProcessUtilization")


# --------------------------------------------------------------------------- errors


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
        what = _code_name(code) if code is not None else detail
        super().__init__(f"NVML {call}{where} failed: {what}")


class NvmlDeviceLostError(NvmlError):
    """The GPU fell off the bus or needs a reset; the device is not read again."""


class NvmlUnavailableError(RuntimeError):
    """The device has no utilisation figure at all (MIG mode, or no NVML support)."""


_code_names: dict[int, str] = {}


def _code_name(code: int) -> str:
    if not _code_names:
        try:
            module = importlib.import_module("pynvml")
        except ImportError:  # pragma: no cover - the backend never runs without pynvml
            module = None
        for attr in dir(module):
            if attr.startswith("NVML_ERROR_"):
                _code_names.setdefault(int(getattr(module, attr)), attr)
        _code_names[_SUCCESS] = "NVML_SUCCESS"
    return f"{_code_names.get(code, 'unknown NVML error')} ({code})"


_logged: set[str] = set()
_logged_lock = threading.Lock()


def _log_once(kind: str, level: int, message: str, *args: object) -> None:
    with _logged_lock:
        if kind in _logged:
            return
        _logged.add(kind)
    _logger.log(level, message, *args)


def _code_of(exc: BaseException) -> int | None:
    value = getattr(exc, "value", None)
    return value if isinstance(value, int) else None


def _load_pynvml() -> Any:
    """Import the bindings; typed ``Any`` because ``pynvml`` ships no type information."""
    try:
        return importlib.import_module("pynvml")
    except ImportError as exc:
        raise BackendUnavailable(
            "the Python NVML bindings are not installed (pip install nvidia-ml-py)"
        ) from exc


def _unavailable(exc: BaseException) -> BackendUnavailable:
    code = _code_of(exc)
    reasons = {
        _LIBRARY_NOT_FOUND: "the NVML library libnvidia-ml.so.1 was not found "
        "(is the NVIDIA driver installed, and visible inside this container?)",
        _DRIVER_NOT_LOADED: "the NVIDIA kernel driver is not loaded",
        _NO_PERMISSION: "no permission to open the NVIDIA devices",
        _LIB_RM_VERSION_MISMATCH: "the NVML library does not match the loaded kernel driver "
        "(reboot or reload the driver after an upgrade)",
    }
    reason = reasons.get(code if code is not None else -1)
    if reason is None:
        reason = f"NVML could not start: {_code_name(code) if code is not None else repr(exc)}"
    return BackendUnavailable(reason)


# --------------------------------------------------------------------------- lifecycle


class _Runtime:
    """The process-wide NVML initialisation, shared by every backend and session.

    ``generation`` changes on every (re-)initialisation and in a forked child,
    telling sessions that their device handles must be looked up again.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._initialised = False
        self.generation = 0

    def ensure(self, nv: Any) -> None:
        """Initialise NVML unless it already is (raises ``pynvml.NVMLError``)."""
        with self._lock:
            self._ensure_locked(nv)

    def _ensure_locked(self, nv: Any) -> None:
        if not self._initialised:
            nv.nvmlInit()
            self._initialised = True
            self.generation += 1

    def acquire(self, nv: Any) -> None:
        with self._lock:
            self._ensure_locked(nv)
            self._users += 1

    def release(self, nv: Any) -> None:
        with self._lock:
            self._users = max(0, self._users - 1)
            if self._users or not self._initialised:
                return
            self._initialised = False
            try:
                nv.nvmlShutdown()
            except Exception as exc:  # noqa: BLE001 - shutdown failures are logged, never raised
                _log_once("shutdown", logging.WARNING, "gputime: nvmlShutdown failed: %s", exc)

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


_RUNTIME = _Runtime()
os.register_at_fork(after_in_child=_RUNTIME.forget)


# --------------------------------------------------------------------------- clock mapping


class _ClockMap:
    """Maps NVML's microseconds (of the wall clock, or of the clock a device
    stamps with, see :func:`_detect_base`) onto the tracker's clock.

    Holds one anchor pair ``(wall ns, tracker s)``; conversions use integer
    differences from it, so they keep sub-microsecond precision.
    """

    def __init__(self, clock: Clock, wall_ns: Callable[[], int]) -> None:
        self._clock = clock
        self._wall_ns = wall_ns
        self._lock = threading.Lock()
        self._anchor_ns, self._anchor_t, self.uncertainty = self._measure()
        self._checked = self._anchor_t
        #: How far the clock drifted from the anchor at the last refresh: held
        #: below ``_CLOCK_STEP``, it is what the mapping may be off by now.
        self.drift = 0.0

    @property
    def error(self) -> float:
        """What a mapped time may be off by: the measurement's and the drift since."""
        return self.uncertainty + abs(self.drift)

    def _measure(self) -> tuple[int, float, float]:
        best: tuple[int, float, float] | None = None
        for _ in range(5):
            before = self._clock()
            wall = self._wall_ns()
            after = self._clock()
            half = (after - before) / 2
            if best is None or half < best[2]:
                best = (wall, before + half, half)
        assert best is not None
        return best

    def refresh(self, now: float) -> None:
        """Re-measure at most every ``_CLOCK_REFRESH`` s; adopt it after a wall-clock step."""
        if now - self._checked < _CLOCK_REFRESH:
            return
        wall, mid, half = self._measure()
        with self._lock:
            self._checked = now
            drift = (mid - self._anchor_t) - (wall - self._anchor_ns) / 1e9
            if abs(drift) > _CLOCK_STEP + half + self.uncertainty:
                _logger.debug("gputime: wall clock moved by %.6f s; NVML times re-anchored", -drift)
                self._anchor_ns, self._anchor_t, self.uncertainty = wall, mid, half
                drift = 0.0
            self.drift = drift

    def to_tracker(self, wall_us: int) -> float:
        return self._anchor_t + (wall_us * 1000 - self._anchor_ns) / 1e9

    def to_raw_us(self, t: float) -> int:
        return (self._anchor_ns + round((t - self._anchor_t) * 1e9)) // 1000


# --------------------------------------------------------------------------- inventory


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
class _Gpu:
    """A physical GPU found at enumeration."""

    index: int
    uuid: str
    name: str
    handle: Any
    mig: bool
    error: str | None = None


def _enumerate(nv: Any) -> list[_Gpu]:
    """All GPUs NVML reports; per-device failures are recorded, not raised."""
    gpus: list[_Gpu] = []
    for index in range(nv.nvmlDeviceGetCount()):
        try:
            handle = nv.nvmlDeviceGetHandleByIndex(index)
            uuid = str(nv.nvmlDeviceGetUUID(handle))
        except Exception as exc:  # noqa: BLE001 - an unusable device is listed with its error
            gpus.append(_Gpu(index, f"nvml-index-{index}", "?", None, False, _describe(exc)))
            continue
        try:
            name = str(nv.nvmlDeviceGetName(handle))
        except Exception:  # noqa: BLE001 - the name is cosmetic
            name = "NVIDIA GPU"
        gpus.append(_Gpu(index, uuid, name, handle, _mig_enabled(nv, handle)))
    return gpus


def _mig_enabled(nv: Any, handle: Any) -> bool:
    try:
        current, _pending = nv.nvmlDeviceGetMigMode(handle)
    except Exception:  # noqa: BLE001 - NOT_SUPPORTED / old driver: not a MIG GPU
        return False
    return bool(current == _MIG_ENABLE)


def _describe(exc: BaseException) -> str:
    code = _code_of(exc)
    return _code_name(code) if code is not None else repr(exc)


def _probe(nv: Any, handle: Any, name: str, *args: object) -> tuple[str, Any]:
    """Call ``name`` once and classify the answer for :class:`NvmlDeviceInfo.calls`."""
    function = getattr(nv, name, None)
    if function is None:
        # Bindings older than the call (nvidia-ml-py < 12.550 has no
        # nvmlDeviceGetProcessesUtilizationInfo): missing, as in _call().
        return "missing", None
    try:
        return "supported", function(handle, *args)
    except Exception as exc:  # noqa: BLE001 - every answer is a finding here
        code = _code_of(exc)
        if code in (_NOT_FOUND, _SUCCESS):
            return "supported", None  # supported, just nothing buffered right now
        if code == _NOT_SUPPORTED:
            return "not supported", None
        if code == _FUNCTION_NOT_FOUND:
            return "missing", None
        return f"error: {_describe(exc)}", None


def _whole(interval: float, period: float) -> bool:
    """Whether ``interval`` is a whole number of ``period`` (within the tolerance)."""
    return abs(interval - round(interval / period) * period) <= _PERIOD_TOLERANCE * period


class _Cadence:
    """What one device's sample timestamps say about its driver's sampling.

    Real drivers record no sample while the GPU is idle, so consecutive
    recorded samples lie a whole number of periods apart, and most reads bring
    one sample: the period is learned from the intervals between consecutive
    timestamps, across reads. The smallest interval (the median of those
    close to it) is the period once it was seen twice. Seen once, it may
    itself span several periods (a GPU busy for single ticks only), so two
    bounds are kept, each used where it errs on the safe side:
    :attr:`shortest` for how far back a sample reaches (a longer guess would
    credit a busy value back across idle time) and :attr:`longest` for how
    long a sample may still be on its way (a shorter guess would call time
    idle whose sample is yet to come).
    """

    __slots__ = ("_intervals", "jitter", "longest", "newest_us", "shortest")

    def __init__(self) -> None:
        self._intervals: deque[float] = deque(maxlen=_CADENCE_WINDOW)
        #: The newest timestamp seen (driver microseconds), ``None`` before any.
        self.newest_us: int | None = None
        self.shortest: float | None = None
        self.longest: float | None = None
        #: The largest deviation of recent intervals from whole periods (s).
        self.jitter: float | None = None

    def observe(self, timestamps_us: Iterable[int]) -> None:
        """Learn from the timestamps (ascending) of the samples a read brought."""
        newest = self.newest_us
        learned = False
        for ts in timestamps_us:
            if newest is not None and ts > newest:
                interval = (ts - newest) / 1e6
                if interval >= _MIN_PERIOD:
                    self._intervals.append(interval)
                    learned = True
            if newest is None or ts > newest:
                newest = ts
        self.newest_us = newest
        if learned:
            self._estimate()

    def _estimate(self) -> None:
        intervals = self._intervals
        smallest = min(intervals)
        close = [i for i in intervals if i <= smallest * (1 + 2 * _PERIOD_TOLERANCE)]
        base = statistics.median(close)
        if len(close) >= 2:
            candidates = [base]
        else:
            # Seen once: any whole fraction of it down to the shortest period
            # that fits every interval may be the period.
            candidates = [
                base / m
                for m in range(1, max(1, int(base / _SHORTEST_PERIOD)) + 1)
                if all(_whole(i, base / m) for i in intervals)
            ] or [base]
        self.shortest = min(*candidates, _MAX_PERIOD)
        plausible = [c for c in candidates if c <= _MAX_PERIOD * (1 + _PERIOD_TOLERANCE)]
        self.longest = max(plausible) if plausible else _MAX_PERIOD
        if len(intervals) >= _JITTER_MIN_INTERVALS:
            period = self.shortest
            self.jitter = max(abs(i - round(i / period) * period) for i in intervals)

    @property
    def certain(self) -> bool:
        """Whether the period is known (seen twice), not just bounded."""
        return self.shortest is not None and self.shortest == self.longest

    @property
    def reach(self) -> float:
        """How far back a sample reaches: the period, or its shortest bound."""
        return self.shortest if self.shortest is not None else _DEFAULT_PERIOD

    @property
    def lag(self) -> float:
        """How long the next sample may take: the period, or its longest bound."""
        return self.longest if self.longest is not None else _MAX_PERIOD


#: The clocks NVML may stamp samples with, by name (see :func:`_detect_base`).
TimeBases = Mapping[str, Callable[[], int]]


def _boottime_ns() -> int:
    """``CLOCK_BOOTTIME`` in ns (Linux); the monotonic clock where there is none."""
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    return time.clock_gettime_ns(boottime) if boottime is not None else time.monotonic_ns()


def _time_bases(
    wall: Callable[[], int], boot: Callable[[], int] | None, mono: Callable[[], int] | None
) -> dict[str, Callable[[], int]]:
    return {
        "wall": wall,
        "boottime": boot if boot is not None else _boottime_ns,
        "monotonic": mono if mono is not None else time.monotonic_ns,
    }


def _detect_base(newest_us: int, bases: TimeBases) -> str:
    """Which clock a device stamps its samples with, from its newest timestamp.

    Drivers document the wall clock, but at least one platform stamps the time
    since boot. A timestamp lies in the past of its own clock, and the bases'
    ranges are far apart (the wall clock counts from 1970, the others from
    boot), so the base whose "now" is at or after the timestamp and closest to
    it is the one. The wall clock where none fits (a garbage timestamp).
    """
    best, best_age = "wall", math.inf
    for name, read_ns in bases.items():
        age = read_ns() / 1000 - newest_us
        if -_FUTURE_SLACK * 1e6 <= age < best_age:
            best, best_age = name, age
    return best


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
    bases = _time_bases(wall_clock_ns, boot_clock_ns, monotonic_clock_ns)
    nv = _load_pynvml()
    try:
        _RUNTIME.acquire(nv)
    except Exception as exc:
        raise _unavailable(exc) from exc
    try:
        gpus = _enumerate(nv)
        return tuple(_report(nv, gpu, bases) for gpu in gpus)
    except Exception as exc:
        raise _unavailable(exc) from exc
    finally:
        _RUNTIME.release(nv)


def _report(nv: Any, gpu: _Gpu, bases: TimeBases) -> NvmlDeviceInfo:
    if gpu.error is not None:
        return NvmlDeviceInfo(gpu.index, gpu.uuid, gpu.name, error=gpu.error)
    calls: dict[str, str] = {}
    state, answer = _probe(nv, gpu.handle, "nvmlDeviceGetSamples", _GPU_UTILIZATION_SAMPLES, 0)
    calls["nvmlDeviceGetSamples"] = state
    period = base = None
    if answer is not None:
        stamps = sorted(int(s.timeStamp) for s in answer[1] if s.timeStamp)
        cadence = _Cadence()
        cadence.observe(stamps)
        period = cadence.shortest
        base = _detect_base(stamps[-1], bases) if stamps else None
    calls["nvmlDeviceGetUtilizationRates"] = _probe(
        nv, gpu.handle, "nvmlDeviceGetUtilizationRates"
    )[0]
    calls[_ENERGY_CALL] = _probe(nv, gpu.handle, _ENERGY_CALL)[0]
    for call in _PROCESS_CALLS:
        calls[call] = _probe(nv, gpu.handle, call, 0)[0]
    return NvmlDeviceInfo(gpu.index, gpu.uuid, gpu.name, gpu.mig, period, base, calls)


# --------------------------------------------------------------------------- backend


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
        self._nv = _load_pynvml()
        self._child_pids = child_pids
        self._time_bases = _time_bases(wall_clock_ns, boot_clock_ns, monotonic_clock_ns)
        try:
            _RUNTIME.ensure(self._nv)
            self._generation = _RUNTIME.generation
            self._gpus = _enumerate(self._nv)
        except Exception as exc:
            raise _unavailable(exc) from exc
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
    ) -> _NvmlSession:
        """Bind to ``clock`` and the selected devices.

        Raises:
            ValueError: A device does not exist or is named twice, or
                ``attribution="process"`` where the driver has no per-process
                samples for a selected device.
            BackendUnavailable: NVML could not be initialised again.
        """
        if attribution not in ("device", "split", "process"):
            raise ValueError(f"attribution={attribution!r}: unknown attribution")
        nv = self._nv
        try:
            _RUNTIME.acquire(nv)
            if _RUNTIME.generation != self._generation:
                self._generation = _RUNTIME.generation
                self._gpus = _enumerate(nv)
        except Exception as exc:
            raise _unavailable(exc) from exc
        try:
            chosen = self._visible() if devices is None else [self._select(s) for s in devices]
            ids = [target.id for target in chosen]
            if len(set(ids)) != len(ids):
                raise ValueError(f"devices={list(devices or ())!r}: a device is named twice")
            return _NvmlSession(self, chosen, clock, attribution)
        except BaseException:
            _RUNTIME.release(nv)
            raise

    # -- device selection

    def _visible(self) -> list[_Target]:
        """The devices this process may use: ``CUDA_VISIBLE_DEVICES``, else all."""
        env = os.environ.get("CUDA_VISIBLE_DEVICES")
        usable = [gpu for gpu in self._gpus if gpu.error is None]
        if env is None:
            return [_Target.of_gpu(gpu) for gpu in usable]
        chosen: list[_Target] = []
        for entry in (part.strip() for part in env.split(",")):
            # CUDA stops at the first entry it cannot resolve.
            target = self._resolve(entry)
            if target is None:
                break
            if all(target.id != seen.id for seen in chosen):
                chosen.append(target)
        if not chosen:
            _log_once(
                "cvd-empty",
                logging.WARNING,
                "gputime: CUDA_VISIBLE_DEVICES=%r leaves no GPU visible; GPU figures are "
                "'unavailable'",
                env,
            )
        elif any(e.strip().isdigit() for e in env.split(",")) and self._order_may_differ():
            _log_once(
                "cvd-order",
                logging.WARNING,
                "gputime: CUDA_VISIBLE_DEVICES=%r uses indices and this machine has different GPU "
                "models: CUDA's default order (fastest first) may differ from NVML's; set "
                "CUDA_DEVICE_ORDER=PCI_BUS_ID or use GPU UUIDs",
                env,
            )
        return chosen

    def _order_may_differ(self) -> bool:
        if os.environ.get("CUDA_DEVICE_ORDER") == "PCI_BUS_ID":
            return False
        return len({gpu.name for gpu in self._gpus}) > 1

    def _select(self, selector: DeviceSelector) -> _Target:
        if isinstance(selector, bool) or not isinstance(selector, (int, str)):
            raise ValueError(f"devices: {selector!r} is not a device index or UUID")
        if isinstance(selector, int) and not 0 <= selector < len(self._gpus):
            raise ValueError(self._no_such(selector))
        for gpu in self._gpus:
            if gpu.error is not None and selector in (gpu.index, str(gpu.index)):
                raise ValueError(f"devices: GPU {selector!r} cannot be used: {gpu.error}")
        target = self._resolve(str(selector).strip())
        if target is None:
            raise ValueError(self._no_such(selector))
        return target

    def _no_such(self, selector: DeviceSelector) -> str:
        known = ", ".join(f"{gpu.index}={gpu.uuid}" for gpu in self._gpus)
        return f"devices: no GPU {selector!r} (NVML sees {known})"

    def _resolve(self, entry: str) -> _Target | None:
        """One device by NVML index, UUID, unique UUID prefix or MIG id; None if none."""
        usable = [gpu for gpu in self._gpus if gpu.error is None]
        if entry.isdigit():
            index = int(entry)
            return next((_Target.of_gpu(g) for g in usable if g.index == index), None)
        if entry.upper().startswith("GPU-"):
            matches = [g for g in usable if g.uuid.lower().startswith(entry.lower())]
            return _Target.of_gpu(matches[0]) if len(matches) == 1 else None
        if entry.upper().startswith("MIG-"):
            return self._resolve_mig(entry, usable)
        return None

    def _resolve_mig(self, entry: str, usable: list[_Gpu]) -> _Target | None:
        nv = self._nv
        legacy = re.fullmatch(r"MIG-(GPU-[^/]+)/\d+/\d+", entry, flags=re.IGNORECASE)
        if legacy:
            # Drivers before R470 name MIG instances by their parent GPU.
            parent = next((g for g in usable if g.uuid.lower() == legacy[1].lower()), None)
            return None if parent is None else _Target.of_mig(parent, entry, entry, parent.handle)
        try:
            handle = nv.nvmlDeviceGetHandleByUUID(entry)
            parent_uuid = str(
                nv.nvmlDeviceGetUUID(nv.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(handle))
            )
        except Exception:  # noqa: BLE001 - an identifier NVML does not know is not visible
            return None
        parent = next((g for g in usable if g.uuid == parent_uuid), None)
        return None if parent is None else _Target.of_mig(parent, entry, entry, handle)

    # -- used by sessions

    def _pids(self) -> frozenset[int]:
        extra = self._child_pids() if callable(self._child_pids) else self._child_pids
        return frozenset((os.getpid(), *extra))


@dataclass(slots=True)
class _Target:
    """A selected device: a whole GPU, or one MIG instance of one."""

    id: str
    gpu: _Gpu
    lookup: str
    handle: Any
    mig: bool

    @classmethod
    def of_gpu(cls, gpu: _Gpu) -> _Target:
        return cls(gpu.uuid, gpu, gpu.uuid, gpu.handle, gpu.mig)

    @classmethod
    def of_mig(cls, gpu: _Gpu, ident: str, lookup: str, handle: Any) -> _Target:
        lookup = gpu.uuid if lookup.upper().startswith("MIG-GPU-") else lookup
        return cls(ident, gpu, lookup, handle, True)


def in_initial_pid_namespace(link: str = _PID_NAMESPACE) -> bool | None:
    """Whether this process sees the host's process ids (``None``: cannot tell).

    NVML reports host process ids; inside a container with its own PID
    namespace they do not match ``os.getpid()``.
    """
    try:
        return os.readlink(link) == _INIT_PID_NS
    except OSError:
        return None


# --------------------------------------------------------------------------- session


class _CounterClock:
    """When a device's energy counter steps, learned by watching it closely.

    The counter does not count continuously: it moves in steps (every ~100 ms
    on many GPUs, every ~10 ms on others), and a read returns the value as of
    the newest step. So the energy between two reads belongs to the stretch
    between their steps, not between the reads, and a whole step's energy
    (70 J at 700 W and 100 ms) would land in the wrong task. Zeus-style
    begin/end reads carry that error at both ends of every window.
    :meth:`_NvmlSession.calibrate` watches the counter until it stepped three
    times, evenly; from then on a read at ``t`` counts as of the newest step
    at or before ``t``. Counters that step irregularly, or finer than
    ``_COUNTER_FINE``, are read as they are.
    """

    __slots__ = ("calibrated_at", "period", "step_at")

    def __init__(self) -> None:
        #: Seconds between steps; ``None``: read the counter as it is.
        self.period: float | None = None
        #: Tracker time of one step.
        self.step_at = 0.0
        self.calibrated_at = -math.inf

    def as_of(self, t: float) -> float:
        """The time the counter's value at ``t`` is from: its newest step at or before ``t``."""
        period = self.period
        if period is None:
            return t
        return self.step_at + math.floor((t - self.step_at) / period + 1e-9) * period

    def learn(self, steps: Sequence[float], now: float) -> None:
        """Adopt the steps seen while watching (at least three, evenly spaced), or none."""
        self.calibrated_at = now
        if len(steps) < 3:
            self.period = None
            return
        first, second = steps[1] - steps[0], steps[2] - steps[1]
        even = abs(first - second) <= 2 * _CALIBRATE_STEP + 0.05 * max(first, second)
        if not even or min(first, second) < _COUNTER_FINE:
            self.period = None
            return
        self.period = (steps[2] - steps[0]) / 2
        self.step_at = steps[2]


class _Device:
    """Per-device read state of one session."""

    __slots__ = (
        "base",
        "cadence",
        "counter",
        "dead",
        "energy_base",
        "energy_ok",
        "handle",
        "heard_at",
        "info",
        "lock",
        "lookup",
        "newest_end",
        "newest_value",
        "process_call",
        "rates_checked",
        "rates_ok",
        "samples_ok",
        "utilization",
    )

    def __init__(self, target: _Target, now: float) -> None:
        self.info = DeviceInfo(
            id=target.id,
            name=target.gpu.name,
            index=target.gpu.index,
            details={"uuid": target.gpu.uuid, "mig": target.mig},
        )
        self.lookup = target.lookup
        self.handle: Any = target.handle
        self.utilization = not target.mig
        self.samples_ok = True
        self.rates_ok = True
        self.energy_ok = not target.mig
        self.process_call: str | None = None
        self.cadence = _Cadence()
        self.counter = _CounterClock()
        #: The clock the driver stamps samples with; ``None`` until a sample told.
        self.base: str | None = None
        #: Tracker time and value of the newest sample read.
        self.newest_end: float | None = None
        self.newest_value: float | None = None
        #: Tracker time of the newest sample, or of the session's opening: the
        #: driver has been silent since (see _buffer_silent).
        self.heard_at = now
        self.rates_checked = -math.inf
        #: The last counter read: (tracker time of the read, mJ).
        self.energy_base: tuple[float, int] | None = None
        self.dead: NvmlDeviceLostError | None = None
        self.lock = threading.Lock()


class _NvmlSession:
    """A :class:`NvmlBackend` opened for one tracker."""

    def __init__(
        self,
        backend: NvmlBackend,
        targets: list[_Target],
        clock: Clock,
        attribution: Attribution,
    ) -> None:
        self._backend = backend
        self._nv = backend._nv
        self._clock = clock
        self._process = attribution == "process"
        self._state = threading.Condition(threading.Lock())
        self._reopen_lock = threading.Lock()
        self._inflight = 0
        self._closed = False
        self._acquired = True
        self._pid = os.getpid()
        self._generation = _RUNTIME.generation
        # One mapping per clock the devices stamp samples with, made on first use.
        self._maps: dict[str, _ClockMap] = {}
        now = clock()
        self._devs = [_Device(target, now) for target in targets]
        for dev in self._devs:
            self._probe(dev)
        if self._process:
            self._check_process_support()
        self.devices: Sequence[DeviceInfo] = tuple(dev.info for dev in self._devs)
        self.measures_utilization = any(dev.utilization for dev in self._devs)
        self.measures_energy = bool(self._devs) and all(dev.energy_ok for dev in self._devs)
        if not self.measures_energy:
            for dev in self._devs:
                dev.energy_ok = False
        for dev in self._devs:
            dev.info.details.update(utilization=dev.utilization, energy=dev.energy_ok)
        self._warn_unmeasurable()

    # -- Session protocol

    @property
    def sample_period(self) -> float:
        """The longest of the devices' sample periods (1/6 s until learned).

        Where a device's period is not yet certain, its shortest bound: task
        exits then read the driver as soon as a sample may be new.
        """
        return max((dev.cadence.reach for dev in self._devs), default=_DEFAULT_PERIOD)

    @property
    def sample_jitter(self) -> float:
        """How much later than one period after the newest sample the next may be visible.

        Learned per device from the driver's own timestamps (the largest
        deviation of recent intervals from whole periods), plus what the
        clock mapping may be off by now (its measurement, and the drift seen
        since it was anchored); ``_SLACK`` for a device not yet seen sampling.
        Task exits read the driver only once a new sample must be out, so at
        most about once per sample period.
        """
        learned = [
            (dev.cadence.jitter if dev.cadence.jitter is not None else _SLACK)
            + self._map(dev).error
            for dev in self._devs
        ]
        return max(learned, default=_SLACK)

    def read(self, device: int, since: float) -> Reading:
        """Read one device's samples newer than ``since`` (tracker seconds).

        Raises:
            IndexError: No such device in this session.
            NvmlError: An NVML call failed (``NvmlDeviceLostError`` once the GPU is gone).
            NvmlUnavailableError: The device has no utilisation figure (MIG).
            RuntimeError: The session is closed.
        """
        dev = self._devs[device]
        with self._state:
            if self._closed:
                raise RuntimeError("gputime: the NVML session is closed")
            self._inflight += 1
        try:
            self._ensure_current()
            return self._read(dev, since)
        finally:
            with self._state:
                self._inflight -= 1
                if not self._inflight:
                    self._state.notify_all()

    def close(self) -> None:
        """Release NVML once no read is inside it any more (idempotent)."""
        with self._state:
            if self._closed:
                return
            self._closed = True
            # Shutting NVML down under a thread that is inside it can crash.
            if not self._state.wait_for(lambda: not self._inflight, timeout=_CLOSE_WAIT):
                _log_once(
                    "close-timeout",
                    logging.WARNING,
                    "gputime: an NVML read did not return within %.0f s; NVML is left running",
                    _CLOSE_WAIT,
                )
                return
        if self._acquired and self._pid == os.getpid():
            self._acquired = False
            _RUNTIME.release(self._nv)

    def after_fork(self) -> None:
        """Forget the parent's NVML state; the first read initialises again."""
        self._state = threading.Condition(threading.Lock())
        self._reopen_lock = threading.Lock()
        self._inflight = 0
        for mapping in self._maps.values():
            mapping._lock = threading.Lock()
        for dev in self._devs:
            dev.lock = threading.Lock()

    # -- lifecycle helpers

    def _ensure_current(self) -> None:
        if self._pid == os.getpid() and self._generation == _RUNTIME.generation:
            return
        with self._reopen_lock:
            pid = os.getpid()
            if self._pid != pid:
                self._pid = pid
                self._acquired = False
                for dev in self._devs:
                    dev.newest_end = None
                    dev.energy_base = None
            try:
                if not self._acquired:
                    _RUNTIME.acquire(self._nv)
                    self._acquired = True
            except Exception as exc:
                raise NvmlError("nvmlInit", _code_of(exc), None, repr(exc)) from exc
            if self._generation != _RUNTIME.generation:
                self._relookup()

    def _recover(self, seen: int) -> None:
        """NVML said UNINITIALIZED: initialise once more and look handles up again."""
        with self._reopen_lock:
            try:
                _RUNTIME.reinit(self._nv, seen)
            except Exception as exc:
                raise NvmlError("nvmlInit", _code_of(exc), None, repr(exc)) from exc
            if self._generation != _RUNTIME.generation:
                self._relookup()

    def _relookup(self) -> None:
        for dev in self._devs:
            if dev.dead is not None:
                continue
            try:
                dev.handle = self._nv.nvmlDeviceGetHandleByUUID(dev.lookup)
            except Exception as exc:
                code = _code_of(exc)
                if code in (_GPU_IS_LOST, _RESET_REQUIRED, _NOT_FOUND):
                    dev.dead = NvmlDeviceLostError("nvmlDeviceGetHandleByUUID", code, dev.info.id)
                    continue
                raise NvmlError("nvmlDeviceGetHandleByUUID", code, dev.info.id, repr(exc)) from exc
        self._generation = _RUNTIME.generation

    def _call(self, dev: _Device, name: str, *args: object) -> Any:
        """Call ``pynvml.<name>(handle, *args)`` with the error rules applied.

        Raises:
            NvmlDeviceLostError: The GPU is lost or needs a reset (also every later call).
            NvmlError: Any other failure, including the routine NOT_FOUND and
                NOT_SUPPORTED, which callers handle by ``code``.
        """
        function = getattr(self._nv, name, None)
        if function is None:
            # Older nvidia-ml-py releases lack newer bindings: that is a driver
            # without the function, and callers fall back as they do for one.
            raise NvmlError(name, _FUNCTION_NOT_FOUND, dev.info.id)
        for attempt in (0, 1):
            if dev.dead is not None:
                # A fresh exception each time: re-raising one object grows its traceback.
                raise NvmlDeviceLostError(dev.dead.call, dev.dead.code, dev.dead.device)
            seen = _RUNTIME.generation
            try:
                return function(dev.handle, *args)
            except Exception as exc:
                code = _code_of(exc)
                if code == _UNINITIALIZED and attempt == 0:
                    self._recover(seen)
                    continue
                if code in (_GPU_IS_LOST, _RESET_REQUIRED):
                    dev.dead = NvmlDeviceLostError(name, code, dev.info.id)
                    _log_once(
                        f"lost {dev.info.id}",
                        logging.WARNING,
                        "gputime: %s: GPU figures for it are 'partial' from now on",
                        dev.dead,
                    )
                    raise dev.dead from exc
                raise NvmlError(name, code, dev.info.id, repr(exc)) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    # -- probing at open

    def _probe(self, dev: _Device) -> None:
        # Probe failures (a lost GPU included) are logged; reads will report them.
        if dev.utilization:
            self._probe_utilization(dev)
        if dev.utilization and dev.energy_ok:
            self._probe_energy(dev)

    def _probe_utilization(self, dev: _Device) -> None:
        try:
            value_type, rows = self._call(dev, "nvmlDeviceGetSamples", _GPU_UTILIZATION_SAMPLES, 0)
            # Whatever the buffer still holds (samples of earlier work, if
            # any) teaches the period and the clock the driver stamps with.
            kept = self._clean(
                ((int(r.timeStamp), _sample_value(value_type, r.sampleValue)) for r in rows),
                0,
                self._clock(),
                dev,
            )
            if kept:
                newest = self._map(dev).to_tracker(kept[-1][0])
                self._note_newest(dev, newest, kept[-1][1])
                dev.heard_at = newest  # silent since that sample, not since the opening
            return
        except NvmlError as exc:
            if exc.code == _NOT_FOUND:
                return
            if exc.code not in (_NOT_SUPPORTED, _FUNCTION_NOT_FOUND):
                self._log_error(exc)
                return
        dev.samples_ok = False
        try:
            self._call(dev, "nvmlDeviceGetUtilizationRates")
        except NvmlError as exc:
            if exc.code in (_NOT_SUPPORTED, _FUNCTION_NOT_FOUND):
                dev.rates_ok = False
                dev.utilization = False
                dev.energy_ok = False
            else:
                self._log_error(exc)

    def _probe_energy(self, dev: _Device) -> None:
        try:
            energy = int(self._call(dev, _ENERGY_CALL))
        except NvmlError as exc:
            if exc.code in (_NOT_SUPPORTED, _FUNCTION_NOT_FOUND):
                dev.energy_ok = False
            else:
                self._log_error(exc)
            return
        dev.energy_base = (self._clock(), energy)

    def _check_process_support(self) -> None:
        for dev in self._devs:
            if not dev.utilization:
                raise ValueError(
                    f"attribution='process': NVML has no per-process utilisation for "
                    f"{dev.info.id} ({'MIG mode' if dev.info.details['mig'] else 'unsupported'})"
                )
            for call in _PROCESS_CALLS:
                try:
                    self._call(dev, call, 0)
                except NvmlDeviceLostError:
                    pass
                except NvmlError as exc:
                    if exc.code in (_NOT_SUPPORTED, _FUNCTION_NOT_FOUND):
                        continue
                dev.process_call = call
                break
            if dev.process_call is None:
                raise ValueError(
                    f"attribution='process': the driver has no per-process utilisation for "
                    f"{dev.info.id} ({dev.info.name}); use 'device' or 'split'"
                )
        if in_initial_pid_namespace(_PID_NAMESPACE) is False:
            _log_once(
                "pidns",
                logging.WARNING,
                "gputime: attribution='process' inside a PID namespace (a container?): NVML "
                "reports host process ids, which may not match this process's; run the "
                "container with the host PID namespace if this process's figures stay 0",
            )

    def _warn_unmeasurable(self) -> None:
        mig = [d.info.id for d in self._devs if not d.utilization and d.info.details["mig"]]
        other = [d.info.id for d in self._devs if not d.utilization and not d.info.details["mig"]]
        if mig:
            _log_once(
                "mig " + ",".join(mig),
                logging.WARNING,
                "gputime: %s in MIG mode: NVML reports no utilisation for MIG devices, so "
                "their GPU figures are 'unavailable' (not 0)",
                ", ".join(mig),
            )
        if other:
            _log_once(
                "noutil " + ",".join(other),
                logging.WARNING,
                "gputime: %s: the driver supports neither utilisation samples nor "
                "utilisation rates; GPU figures are 'unavailable'",
                ", ".join(other),
            )

    def _log_error(self, exc: NvmlError) -> None:
        _log_once(
            f"{exc.call}:{exc.code}",
            logging.WARNING,
            "gputime: %s; that stretch counts nothing",
            exc,
        )

    # -- reading

    def _read(self, dev: _Device, since: float) -> Reading:
        if not dev.utilization:
            raise NvmlUnavailableError(
                f"gputime: {dev.info.id} has no utilisation figure "
                f"({'MIG mode' if dev.info.details['mig'] else 'not supported by the driver'})"
            )
        now = self._clock()
        self._map(dev).refresh(now)
        idle_until: float | None = None
        if self._process:
            utilization, idle_until, source = self._read_processes(dev, since, now)
        elif dev.samples_ok:
            utilization, idle_until, source = self._read_samples(dev, since, now)
        else:
            utilization, source = self._read_rates(dev, now), "utilization-rates"
        power = self._read_power(dev) if dev.energy_ok else ()
        return Reading(utilization=utilization, power=power, source=source, idle_until=idle_until)

    def _map(self, dev: _Device) -> _ClockMap:
        """The mapping of the clock ``dev`` stamps its samples with (the wall clock until known)."""
        base = dev.base or "wall"
        mapping = self._maps.get(base)
        if mapping is None:
            mapping = self._maps[base] = _ClockMap(self._clock, self._backend._time_bases[base])
        return mapping

    def _last_seen_us(self, dev: _Device, since: float) -> int:
        """NVML's ``lastSeenTimeStamp`` for samples newer than ``since``.

        0 (everything the buffer holds) until a sample showed which clock the
        driver stamps with: a guess in the wrong clock would hide every sample.
        """
        if dev.base is None:
            return 0
        return max(0, self._map(dev).to_raw_us(since) - _LOOKBACK_US)

    def _slack(self, dev: _Device) -> float:
        """How late a sample may be, and how far off its mapped time."""
        jitter = dev.cadence.jitter
        return (jitter if jitter is not None else _SLACK) + self._map(dev).uncertainty

    def _read_samples(
        self, dev: _Device, since: float, now: float
    ) -> tuple[list[Sample], float | None, str]:
        last_seen = self._last_seen_us(dev, since)
        rows = self._sample_rows(dev, last_seen, now)
        if rows is None:
            return self._read_rates(dev, now), None, "utilization-rates"
        samples = self._newer(dev, rows, since)
        if not samples and dev.rates_ok and self._buffer_silent(dev, now):
            # Silent for a while: an idle GPU, which the rates confirm with 0
            # (they report the newest sample the driver took, recorded or not).
            # Anything else is a busy GPU whose buffer records nothing, unless
            # a sample landed between the two calls: look once more.
            rates = self._read_rates(dev, now)
            if rates and rates[0][1]:
                rows = self._sample_rows(dev, last_seen, now) or []
                samples = self._newer(dev, rows, since)
                if not samples:
                    return self._buffer_not_filling(dev, since, now, rates[0][1])
        utilization, idle_until = self._assemble(dev, since, now, samples, check_overrun=True)
        if dev.rates_ok and self._unsure_after_busy(dev, now, idle_until):
            rates = self._read_rates(dev, now)
            if rates and not rates[0][1] and dev.newest_end is not None:
                # The newest sample was busy and the newest the driver took is
                # not: that one came a period later (at least a shortest one),
                # and the time up to it was idle.
                cadence = dev.cadence
                confirmed = dev.newest_end + (
                    cadence.reach if cadence.certain else _SHORTEST_PERIOD
                )
                if idle_until is None or confirmed > idle_until:
                    idle_until = confirmed
        return utilization, idle_until, "samples"

    def _unsure_after_busy(self, dev: _Device, now: float, claim: float | None) -> bool:
        """Whether to ask the rates if the busy newest sample is still the newest one.

        Until the driver's period and jitter are known, a claim waits for the
        longest period a sample may take, and meanwhile a task's tail takes the
        newest sample's busy value although the driver may since have taken
        an idle one (a freshly booted GPU after its first busy samples; any GPU
        in the jitter window after a tick). The rates tell at once. Asked only
        in that window, at most once a shortest period.
        """
        newest = dev.newest_end
        if newest is None or not dev.newest_value:
            return False
        reach = dev.cadence.reach
        next_tick = newest + (reach if dev.cadence.certain else _SHORTEST_PERIOD)
        claimed = claim is not None and claim >= next_tick
        if now < next_tick or claimed or now - dev.rates_checked < _SHORTEST_PERIOD:
            return False
        dev.rates_checked = now
        return True

    def _sample_rows(
        self, dev: _Device, last_seen: int, now: float
    ) -> list[tuple[int, float]] | None:
        """The buffer's samples newer than ``last_seen``; ``None`` if the device has no buffer."""
        try:
            value_type, raw = self._call(
                dev, "nvmlDeviceGetSamples", _GPU_UTILIZATION_SAMPLES, last_seen
            )
        except NvmlError as exc:
            if exc.code == _NOT_SUPPORTED:
                dev.samples_ok = False
                _log_once(
                    f"nosamples {dev.info.id}",
                    logging.INFO,
                    "gputime: %s has no utilisation sample buffer; using utilisation rates",
                    dev.info.id,
                )
                return None
            if exc.code != _NOT_FOUND:
                raise
            return []  # nothing newer: routine
        return self._clean(
            ((int(r.timeStamp), _sample_value(value_type, r.sampleValue)) for r in raw),
            last_seen,
            now,
            dev,
        )

    def _newer(self, dev: _Device, rows: Iterable[tuple[int, float]], since: float) -> list[Sample]:
        """Rows on the tracker's clock, newer than ``since``."""
        mapping = self._map(dev)
        # The lookback may bring back the sample ending at ``since``: leave it out.
        return [
            (end, value)
            for end, value in ((mapping.to_tracker(ts), v) for ts, v in rows)
            if end > since + _RESOLUTION
        ]

    def _assemble(
        self,
        dev: _Device,
        since: float,
        now: float,
        samples: list[Sample],
        *,
        check_overrun: bool,
    ) -> tuple[list[Sample], float | None]:
        """The reading: samples with the idle stretches between them, and the idle claim.

        A sample covers one period before its timestamp. Time before that back
        to the previous sample (or ``since``) that no sample covers is a stretch
        the driver took samples of and recorded none: idle, unless the ring
        buffer may have overrun since ``since`` (then lost, see
        :meth:`_first_gap`). After the newest sample, every sample stamped up
        to the read time less the jitter would be visible now: none newer means
        idle up to one (longest) period before that, and, once the period is
        known, up to the newest tick of the driver's grid visible by now (the
        claim).
        """
        reach = dev.cadence.reach
        slack = self._slack(dev)
        reading: list[Sample] = []
        previous = since
        for index, (end, value) in enumerate(samples):
            start = end - reach
            if start > previous + slack:
                gap = 0.0 if index or not check_overrun else self._first_gap(dev, since, now)
                reading.append((start, gap))
            reading.append((end, value))
            previous = end
        if samples:
            self._note_newest(dev, *samples[-1])
        claim = now - dev.cadence.lag - slack
        newest = dev.newest_end
        if dev.cadence.certain and newest is not None:
            # The period known, the driver's grid runs on from the newest
            # sample: every tick visible by now (at most the jitter ago) was
            # taken and recorded nothing, so idle up to the newest of them.
            ticks = math.floor((now - slack - newest) / reach)
            if ticks >= 1:
                claim = max(claim, newest + ticks * reach)
        if samples and claim <= previous:
            return reading, None  # the newest sample says more than the claim
        # Without new samples even a claim that reaches no further than
        # ``since`` says something: the newest reading is idleness, so a
        # task's tail is idle (a buffer that never held a sample included).
        return reading, claim

    def _first_gap(self, dev: _Device, since: float, now: float) -> float | None:
        """Idle (0.0) or lost (``None``): the stretch from ``since`` to the first new sample.

        Only evidence makes it lost: the driver's ring buffer no longer reaches
        back to ``since`` although it is full enough to have overrun. A reader
        fewer than ``_MIN_RING`` samples behind cannot have lost any, and a
        buffer that holds fewer than that never overran (a freshly booted,
        mostly idle GPU holds few or none).
        """
        if now - since < _MIN_RING * dev.cadence.reach:
            return 0.0
        try:
            _type, raw = self._call(dev, "nvmlDeviceGetSamples", _GPU_UTILIZATION_SAMPLES, 0)
        except NvmlError as exc:
            if isinstance(exc, NvmlDeviceLostError):
                raise
            return None  # cannot tell: count the stretch as lost, never as idle
        stamps = [int(r.timeStamp) for r in raw if int(r.timeStamp) > 0]
        if len(stamps) < _MIN_RING:
            return 0.0
        return 0.0 if min(stamps) <= self._map(dev).to_raw_us(since) else None

    def _buffer_silent(self, dev: _Device, now: float) -> bool:
        """Whether to confirm idleness with the rates: no sample for over two periods.

        At most once a period per device, so a long idle stretch inside a task
        costs one extra driver call a period, never one per read.
        """
        lag = dev.cadence.lag
        if now - dev.heard_at <= 2 * lag + _SLACK or now - dev.rates_checked < lag:
            return False
        dev.rates_checked = now
        return True

    def _buffer_not_filling(
        self, dev: _Device, since: float, now: float, value: float
    ) -> tuple[list[Sample], float | None, str]:
        """The rates say busy, the buffer stays empty: read the rates from now on.

        The stretch since ``since`` was not read (its idleness was only
        inferred from a buffer that does not record); the last period takes
        the rates' value.
        """
        dev.samples_ok = False
        _log_once(
            f"notfilling {dev.info.id}",
            logging.WARNING,
            "gputime: %s reports %d%% utilisation but records no samples; using "
            "utilisation rates from now on (figures are 'partial' until then)",
            dev.info.id,
            value,
        )
        start = now - dev.cadence.lag
        reading: list[Sample] = [(start, None)] if start > since else []
        reading.append((now, value))
        return reading, None, "utilization-rates"

    def _clean(
        self, rows: Iterable[tuple[int, float | None]], last_seen: int, now: float, dev: _Device
    ) -> list[tuple[int, float]]:
        """Drop garbage rows, sort, de-duplicate (the last row of a timestamp wins).

        Also learns the clock the driver stamps with (from the first samples
        ever seen) and the driver's cadence.
        """
        rows = list(rows)
        plausible = [(ts, v) for ts, v in rows if ts > 0 and v is not None and 0 <= v <= 100]
        dropped = len(rows) - len(plausible)
        if dev.base is None and plausible:
            dev.base = _detect_base(max(ts for ts, _ in plausible), self._backend._time_bases)
            if dev.base != "wall":
                _log_once(
                    f"base {dev.info.id}",
                    logging.INFO,
                    "gputime: %s stamps its samples with CLOCK_%s, not the wall clock; "
                    "mapping through that clock",
                    dev.info.id,
                    dev.base.upper(),
                )
        horizon = self._map(dev).to_raw_us(now + _FUTURE_SLACK)
        kept: dict[int, float] = {}
        for ts, value in plausible:
            if ts > horizon:
                dropped += 1
            elif ts > last_seen:
                kept[ts] = value
        if dropped:
            _log_once(
                f"garbage {dev.info.id}",
                logging.DEBUG,
                "gputime: dropped %d malformed NVML sample(s) from %s",
                dropped,
                dev.info.id,
            )
        ordered = sorted(kept.items())
        dev.cadence.observe(ts for ts, _ in ordered)
        return ordered

    def _note_newest(self, dev: _Device, end: float, value: float | None) -> None:
        with dev.lock:
            if dev.newest_end is None or end > dev.newest_end:
                dev.newest_end, dev.newest_value = end, value
            dev.heard_at = max(dev.heard_at, end)

    def _read_rates(self, dev: _Device, now: float) -> list[Sample]:
        try:
            value = int(self._call(dev, "nvmlDeviceGetUtilizationRates").gpu)
        except NvmlError as exc:
            if exc.code not in (_NOT_SUPPORTED, _FUNCTION_NOT_FOUND):
                raise
            dev.rates_ok = False
            if dev.samples_ok:
                return []
            dev.utilization = False
            dev.info.details["utilization"] = False
            raise NvmlUnavailableError(
                f"gputime: {dev.info.id}: the driver supports neither utilisation samples "
                "nor utilisation rates"
            ) from exc
        if not 0 <= value <= 100:
            raise NvmlError("nvmlDeviceGetUtilizationRates", None, dev.info.id, f"{value}%")
        return [(now, float(value))]

    def _read_processes(
        self, dev: _Device, since: float, now: float
    ) -> tuple[list[Sample], float | None, str]:
        """This process's (and its children's) utilisation, from per-process samples.

        The driver lists a process at a sample time only where its utilisation
        in that period was above zero: a sample time listing other processes
        only is 0 for us, and no row at all is idleness, as for device samples.
        """
        call = dev.process_call
        assert call is not None
        last_seen = self._last_seen_us(dev, since)
        try:
            try:
                raw = self._call(dev, call, last_seen)
            except NvmlError as exc:
                if exc.code != _INSUFFICIENT_SIZE:
                    raise
                # pynvml asks for the row count, then the rows: a process or a
                # sample that appeared in between outgrows the buffer. Once more.
                raw = self._call(dev, call, last_seen)
        except NvmlError as exc:
            if exc.code in (_NOT_SUPPORTED, _FUNCTION_NOT_FOUND) and call == _PROCESS_CALLS[0]:
                dev.process_call = _PROCESS_CALLS[1]
                return self._read_processes(dev, since, now)
            if exc.code not in (_NOT_FOUND, _SUCCESS):
                raise
            raw = ()
        ours = self._backend._pids()
        totals: dict[int, float] = {}
        for row in raw:
            ts, pid, sm = int(row.timeStamp), int(row.pid), int(row.smUtil)
            if pid == 0 or sm > 100:
                continue  # garbage
            totals[ts] = min(100.0, totals.get(ts, 0.0) + (sm if pid in ours else 0))
        rows = self._clean(totals.items(), last_seen, now, dev)
        source = "process-utilization-info" if call == _PROCESS_CALLS[0] else "process-utilization"
        samples = self._newer(dev, rows, since)
        utilization, idle_until = self._assemble(dev, since, now, samples, check_overrun=False)
        return utilization, idle_until, source

    def resume(self) -> None:
        """The first task after an idle spell began: take fresh energy baselines.

        Without this the first power figure after the spell would average over
        the whole spell and the task, crediting the task the idle draw.
        """
        with self._state:
            if self._closed:
                return
            self._inflight += 1
        try:
            self._ensure_current()
            for dev in self._devs:
                if dev.energy_ok and dev.dead is None:
                    try:
                        energy = int(self._call(dev, _ENERGY_CALL))
                    except NvmlError as exc:
                        self._log_error(exc)  # the next read's delta covers the spell
                        continue
                    with dev.lock:
                        dev.energy_base = (self._clock(), energy)
        finally:
            with self._state:
                self._inflight -= 1
                if not self._inflight:
                    self._state.notify_all()

    def calibration_due(self, now: float) -> bool:
        """Whether an energy counter has not been watched (see :meth:`calibrate`) for a while."""
        return any(
            dev.energy_ok and dev.dead is None and now - dev.counter.calibrated_at >= _RECALIBRATE
            for dev in self._devs
        )

    def calibrate(self, sleep: Callable[[float], object] = time.sleep) -> None:
        """Learn when each energy counter steps (see :class:`_CounterClock`).

        Reads each counter every ``_CALIBRATE_STEP`` seconds until it stepped
        three times, for at most ``_CALIBRATE_FOR``: a few hundred driver calls
        over a few hundred milliseconds, so only the sampler thread calls this,
        while tasks run, once a ``_RECALIBRATE`` period. Failures leave the
        counter read as it is.
        """
        with self._state:
            if self._closed:
                return
            self._inflight += 1
        try:
            self._ensure_current()
            for dev in self._devs:
                if dev.energy_ok and dev.dead is None:
                    self._watch_counter(dev, sleep)
        finally:
            with self._state:
                self._inflight -= 1
                if not self._inflight:
                    self._state.notify_all()

    def _watch_counter(self, dev: _Device, sleep: Callable[[float], object]) -> None:
        steps: list[float] = []
        try:
            before, value = self._clock(), int(self._call(dev, _ENERGY_CALL))
            deadline = before + _CALIBRATE_FOR
            # Bounded in reads too: a clock that does not move must not hold us.
            for _ in range(round(_CALIBRATE_FOR / _CALIBRATE_STEP)):
                sleep(_CALIBRATE_STEP)
                now, seen = self._clock(), int(self._call(dev, _ENERGY_CALL))
                if seen != value:
                    steps.append((before + now) / 2)  # it stepped between the two reads
                before, value = now, seen
                if len(steps) == 3 or now >= deadline:
                    break
        except NvmlError as exc:
            self._log_error(exc)
            steps = []
        dev.counter.learn(steps, self._clock())

    def _read_power(self, dev: _Device) -> list[Sample]:
        try:
            energy = int(self._call(dev, _ENERGY_CALL))
        except NvmlDeviceLostError:
            raise
        except NvmlError as exc:
            # The counter is cumulative: the next good read covers this stretch too.
            self._log_error(exc)
            return []
        read_at = self._clock()
        # Bases keep the read's own time, mapped when used: a calibration
        # learned since then applies to them too.
        as_of = dev.counter.as_of
        at = as_of(read_at)
        with dev.lock:
            base = dev.energy_base
            if base is None or at <= as_of(base[0]):
                if base is None:
                    dev.energy_base = (read_at, energy)
                return []
            elapsed = at - as_of(base[0])
            if energy < base[1]:
                dev.energy_base = (read_at, energy)  # counter restarted (driver reload)
                return [(at, None)]
            if energy == base[1]:
                if elapsed < _ENERGY_STALL:
                    # The counter updates every ~100 ms: wait for it rather than
                    # report 0 for a stretch shorter than its update period.
                    return []
                dev.energy_base = (read_at, energy)
                return [(at, None)]
            dev.energy_base = (read_at, energy)
        return [(at, (energy - base[1]) / elapsed)]  # mJ / s = mW


def _sample_value(value_type: int, value: Any) -> float | None:
    """The number in an ``nvmlValue_t`` union, by the value type NVML reported."""
    fields = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal", 6: "usVal"}
    name = fields.get(value_type)
    return None if name is None else float(getattr(value, name))
