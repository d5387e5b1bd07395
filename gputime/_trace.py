"""A timeline as a Chrome Trace Event / Perfetto JSON document.

The layout (docs/timeline.md):

- one *process* per device, named after it, with a counter track of its
  utilisation (``ph: "C"``, percent) and, where measured, one of its power
  (watts);
- one *process* per service, with one *thread* per lane: a task is a complete
  slice (``ph: "X"``) on the lowest-numbered lane free at its start, so tasks
  of a service that overlap sit on separate threads and the slices of one
  thread never overlap (both viewers require slices on a thread to nest);
- names and order as metadata (``ph: "M"``): ``process_name``,
  ``thread_name``, ``process_sort_index`` (devices first), ``thread_sort_index``.

Timestamps are microseconds on the tracker's clock. They are rounded to whole
nanoseconds once, as integers, before anything is compared, so a slice that
ends where the next begins never overlaps it after rounding. Every id is
unique across the file (process ids first, then lane thread ids), since
Perfetto keys threads by thread id.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from gputime._version import __version__

if TYPE_CHECKING:
    from gputime._backends import DeviceInfo
    from gputime._timeline import DeviceSample, TaskWindow

#: ``cat`` of the task slices and of the device counters.
TASK_CATEGORY = "gputime.task"
DEVICE_CATEGORY = "gputime.device"
#: Counter names and their one series each (Perfetto names a track "name series").
UTILIZATION = ("utilization", "percent")
POWER = ("power", "W")


def chrome_trace(
    tasks: Sequence[TaskWindow],
    samples: Sequence[DeviceSample],
    devices: Sequence[DeviceInfo],
    *,
    now: float,
    wall_offset: float,
    dropped: tuple[int, int] = (0, 0),
) -> dict[str, Any]:
    """The JSON object of a trace (``json.dump`` it).

    Args:
        tasks: Task windows; running ones (``end`` ``None``) end at ``now``.
        samples: Device readings, oldest first per device and quantity.
        devices: The recorded devices, in order.
        now: The tracker's clock at export (``NaN`` if it failed: running
            tasks then end at the newest instant recorded).
        wall_offset: Unix time minus the tracker's clock, so that a viewer's
            reader can put a timestamp on the wall clock.
        dropped: Task windows and readings the rings dropped (in ``otherData``).
    """
    times = [w.start for w in tasks] + [w.end for w in tasks if w.end is not None]
    times += [s.end for s in samples]
    if not math.isfinite(now):
        now = max(times, default=0.0)
    times.append(now)
    # Trace timestamps must not be negative: a clock that reads below 0 (a
    # FakeClock(start=-5)) is shifted, and the shift is written down.
    shift = -min(times) if min(times) < 0 else 0.0

    def ns(t: float) -> int:
        return round((t + shift) * 1e9)

    metadata: list[dict[str, Any]] = []
    events: list[tuple[int, int, dict[str, Any]]] = []  # (ts in ns, order, event)
    pid = 0
    device_pids: dict[str, int] = {}
    for device in devices:
        pid += 1
        device_pids[device.id] = pid
        label = f"GPU {device.index}: {device.name} ({device.id})"
        metadata += _process(pid, label, sort_index=pid)
    services = _services_in_order(tasks)
    service_pids: dict[str, int] = {}
    for service in services:
        pid += 1
        service_pids[service] = pid
        metadata += _process(pid, service, sort_index=pid)

    # Counters: a value from each reading's start; 0 after the last reading
    # and where nothing was read (between tasks no reading is made at all,
    # and a lost stretch counts nothing), so no value is carried across.
    order = 0
    series: dict[tuple[str, str], list[DeviceSample]] = {}
    for sample in samples:
        series.setdefault((sample.device, sample.quantity), []).append(sample)
    for (device_id, quantity), readings in series.items():
        name, key = UTILIZATION if quantity == "utilization" else POWER
        pid_ = device_pids[device_id]
        last_end = ns(readings[0].start)  # a series has one reading at least
        for sample in readings:
            start, end = ns(sample.start), ns(sample.end)
            if start > last_end:
                events.append((last_end, order, _counter(pid_, name, key, last_end, 0)))
                order += 1
            value = sample.value if sample.value is not None else 0
            events.append((start, order, _counter(pid_, name, key, start, value)))
            order += 1
            last_end = max(end, last_end)
        events.append((last_end, order, _counter(pid_, name, key, last_end, 0)))
        order += 1

    # Slices, lane by lane.
    tid = pid  # lane thread ids follow every process id
    for service in services:
        windows = sorted(
            (
                (start, max(ns(w.end if w.end is not None else now), start), w)
                for w in tasks
                if w.service == service
                for start in (ns(w.start),)
            ),
            key=lambda item: (item[0], -item[1]),
        )
        lanes: list[int] = []  # thread id of each lane, lane 1 first
        busy: list[tuple[int, int]] = []  # (end in ns, lane index) of occupied lanes
        free: list[int] = []  # lane indices free now (a heap: lowest first)
        for start, end, window in windows:
            while busy and busy[0][0] <= start:
                heapq.heappush(free, heapq.heappop(busy)[1])
            if free:
                lane = heapq.heappop(free)
            else:
                lane = len(lanes)
                tid += 1
                lanes.append(tid)
                metadata += _thread(service_pids[service], tid, f"{service} #{lane + 1}", lane)
            heapq.heappush(busy, (end, lane))
            events.append(
                (start, order, _slice(service_pids[service], lanes[lane], start, end, window))
            )
            order += 1

    events.sort(key=lambda item: (item[0], item[1]))
    return {
        "traceEvents": metadata + [event for _, _, event in events],
        "displayTimeUnit": "ms",
        "otherData": {
            "generator": f"gputime {__version__}",
            "clock": "the tracker's clock, in microseconds",
            "clock_shift_s": shift,
            "wall_clock_offset_s": wall_offset - shift,
            "dropped_tasks": dropped[0],
            "dropped_samples": dropped[1],
        },
    }


def _us(ns: int) -> float | int:
    """Microseconds from nanoseconds: exact decimals, and an int where whole."""
    whole, rest = divmod(ns, 1000)
    return whole if rest == 0 else ns / 1000


def _services_in_order(tasks: Sequence[TaskWindow]) -> list[str]:
    """Services by their first task's start (the order people read the trace in)."""
    first: dict[str, float] = {}
    for window in tasks:
        if window.service not in first or window.start < first[window.service]:
            first[window.service] = window.start
    return sorted(first, key=lambda service: (first[service], service))


def _process(pid: int, name: str, *, sort_index: int) -> list[dict[str, Any]]:
    return _named("process", pid, pid, name, sort_index)


def _thread(pid: int, tid: int, name: str, sort_index: int) -> list[dict[str, Any]]:
    return _named("thread", pid, tid, name, sort_index)


def _named(kind: str, pid: int, tid: int, name: str, sort_index: int) -> list[dict[str, Any]]:
    """A track's name and place: metadata events ``{kind}_name`` and ``{kind}_sort_index``."""
    return [
        {"ph": "M", "name": f"{kind}_name", "pid": pid, "tid": tid, "args": {"name": name}},
        {
            "ph": "M",
            "name": f"{kind}_sort_index",
            "pid": pid,
            "tid": tid,
            "args": {"sort_index": sort_index},
        },
    ]


def _counter(pid: int, name: str, key: str, ts: int, value: float) -> dict[str, Any]:
    return {
        "ph": "C",
        "name": name,
        "cat": DEVICE_CATEGORY,
        "ts": _us(ts),
        "pid": pid,
        "tid": pid,
        "args": {key: value},
    }


def _slice(pid: int, tid: int, start: int, end: int, window: TaskWindow) -> dict[str, Any]:
    args: dict[str, Any] = {
        "service": window.service,
        "gpu_ms": window.gpu_ms,
        "gpu_util_ms": window.gpu_util_ms,
        "status": window.status,
        "coverage": window.coverage,
        "concurrency": window.concurrency,
    }
    if window.energy_mj is not None:
        args["energy_mj"] = window.energy_mj
    if window.error is not None:
        args["error.type"] = window.error
    if len(window.devices) > 1:
        # Per device where there are several (with one, they are the totals).
        args["devices"] = {
            device: {
                "gpu_ms": figures.gpu_ms,
                "gpu_util_ms": figures.gpu_util_ms,
                **({} if figures.energy_mj is None else {"energy_mj": figures.energy_mj}),
                "status": figures.status,
                "coverage": figures.coverage,
            }
            for device, figures in window.devices.items()
        }
    if window.end is None:
        args["running"] = True
    return {
        "ph": "X",
        "name": window.name,
        "cat": TASK_CATEGORY,
        "ts": _us(start),
        "dur": _us(end - start),
        "pid": pid,
        "tid": tid,
        "args": args,
    }
