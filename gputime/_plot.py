"""A timeline as a picture: utilisation per device, each service's task windows beneath.

matplotlib is the optional extra ``gputime[plot]``, imported only when a
picture is asked for. The figure is made with ``matplotlib.figure.Figure``,
not pyplot: no GUI backend is chosen, no global figure is left behind, and it
draws on a server without a display.
"""

from __future__ import annotations

import heapq
import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from gputime._backends import DeviceInfo
    from gputime._timeline import DeviceSample, TaskWindow

#: What the error says when matplotlib is missing.
MISSING = "drawing a timeline needs matplotlib: pip install 'gputime[plot]'"

#: How opaque a task's bar is, by status (a task that raised is also outlined in red).
_STATUS_ALPHA = {"ok": 0.9, "partial": 0.45, "unavailable": 0.3}
#: Service colours: matplotlib's default cycle without its red, which marks errors.
_SERVICE_COLOURS = ("C2", "C4", "C1", "C9", "C5", "C6", "C8", "C7", "C0")


def require_matplotlib() -> None:
    """Import matplotlib, or fail with an error that names the extra.

    Raises:
        ImportError: matplotlib is not installed.
    """
    try:
        import matplotlib  # noqa: F401, PLC0415 - the optional extra
    except ImportError as exc:
        raise ImportError(MISSING, name="matplotlib") from exc


def plot(
    tasks: Sequence[TaskWindow],
    samples: Sequence[DeviceSample],
    devices: Sequence[DeviceInfo],
    *,
    now: float,
    path: str | os.PathLike[str] | None = None,
    title: str | None = None,
) -> Figure:
    """Draw the timeline; save it to ``path`` if given (see ``Timeline.plot``)."""
    require_matplotlib()
    from matplotlib.figure import Figure  # noqa: PLC0415 - the optional extra

    times = [w.start for w in tasks] + [s.start for s in samples]
    origin = min(times) if times else 0.0
    if not math.isfinite(now):
        now = max([*(w.end or w.start for w in tasks), *(s.end for s in samples)], default=0.0)
    rows = _lanes(tasks, now)
    lane_count = sum(len(lanes) for _, lanes in rows)
    figure = Figure(figsize=(10.0, 2.6 + 0.32 * max(lane_count, 1)), layout="constrained")
    util_axes, task_axes = figure.subplots(
        2,
        1,
        sharex=True,
        height_ratios=(2.2, 0.32 * max(lane_count, 1) + 0.4),
    )
    _draw_devices(util_axes, samples, devices, origin)
    _draw_tasks(task_axes, rows, origin, now)
    task_axes.set_xlabel("seconds since the first record (tracker clock)")
    figure.suptitle(title if title is not None else "gputime timeline")
    if path is not None:
        figure.savefig(path, dpi=100)
    return figure


def _draw_devices(
    axes: Axes, samples: Sequence[DeviceSample], devices: Sequence[DeviceInfo], origin: float
) -> None:
    axes.set_ylabel("GPU utilisation %")
    axes.set_ylim(0, 105)
    axes.grid(visible=True, axis="y", alpha=0.3)
    power_axes: Axes | None = None
    for number, device in enumerate(devices):
        colour = f"C{number % 10}"
        label = f"GPU {device.index} ({device.id})"
        for quantity in ("utilization", "power"):
            runs = _runs([s for s in samples if s.device == device.id and s.quantity == quantity])
            if not runs:
                continue
            if quantity == "power":
                if power_axes is None:
                    power_axes = axes.twinx()
                    power_axes.set_ylabel("power W")
                target, linestyle, linewidth = power_axes, "--", 1.0
            else:
                target, linestyle, linewidth = axes, "-", 1.2
            for index, (edges, values) in enumerate(runs):
                target.stairs(
                    values,
                    [edge - origin for edge in edges],
                    color=colour,
                    fill=quantity == "utilization",
                    alpha=0.35 if quantity == "utilization" else 1.0,
                    label=(f"{label} power" if quantity == "power" else label)
                    if index == 0
                    else None,
                    linestyle=linestyle,
                    linewidth=linewidth,
                )
    if power_axes is not None:
        power_axes.set_ylim(bottom=0)  # after drawing: the top follows the data
    if devices:
        handles, labels = axes.get_legend_handles_labels()
        if power_axes is not None:
            more = power_axes.get_legend_handles_labels()
            handles, labels = handles + more[0], labels + more[1]
        if handles:
            # Above the plot, in a row: inside it would hide readings.
            axes.legend(
                handles,
                labels,
                loc="lower left",
                bbox_to_anchor=(0.0, 1.0),
                ncols=min(len(labels), 4),
                fontsize="small",
                frameon=False,
            )
    else:
        axes.text(
            0.5, 0.5, "no device readings", ha="center", va="center", transform=axes.transAxes
        )


def _runs(samples: Sequence[DeviceSample]) -> list[tuple[list[float], list[float]]]:
    """Contiguous stretches of readings as stairs: edges and values (gaps left blank)."""
    runs: list[tuple[list[float], list[float]]] = []
    edges: list[float] = []
    values: list[float] = []
    for sample in samples:
        if sample.value is None:  # a lost stretch: a gap
            if values:
                runs.append((edges, values))
            edges, values = [], []
            continue
        if not edges or sample.start > edges[-1] + 1e-9:
            if values:
                runs.append((edges, values))
            edges, values = [sample.start], []
        edges.append(sample.end)
        values.append(sample.value)
    if values:
        runs.append((edges, values))
    return runs


def _lanes(tasks: Sequence[TaskWindow], now: float) -> list[tuple[str, list[list[TaskWindow]]]]:
    """Per service, by first start: its tasks on lanes, overlapping ones on separate lanes."""
    by_service: dict[str, list[TaskWindow]] = {}
    for window in sorted(tasks, key=lambda w: w.start):
        by_service.setdefault(window.service, []).append(window)
    rows: list[tuple[str, list[list[TaskWindow]]]] = []
    for service, windows in by_service.items():
        lanes: list[list[TaskWindow]] = []
        busy: list[tuple[float, int]] = []
        free: list[int] = []
        for window in windows:
            while busy and busy[0][0] <= window.start:
                heapq.heappush(free, heapq.heappop(busy)[1])
            lane = heapq.heappop(free) if free else len(lanes)
            if lane == len(lanes):
                lanes.append([])
            lanes[lane].append(window)
            heapq.heappush(busy, (window.end if window.end is not None else now, lane))
        rows.append((service, lanes))
    return rows


def _draw_tasks(
    axes: Axes, rows: Sequence[tuple[str, list[list[TaskWindow]]]], origin: float, now: float
) -> None:
    from matplotlib.patches import Patch  # noqa: PLC0415 - the optional extra

    ticks: list[float] = []
    marks: dict[str, Patch] = {}
    labels: list[str] = []
    y = 0.0
    for number, (service, lanes) in enumerate(rows):
        colour = _SERVICE_COLOURS[number % len(_SERVICE_COLOURS)]
        for lane_number, lane in enumerate(lanes):
            for window in lane:
                end = window.end if window.end is not None else now
                failed = window.error is not None
                if failed:
                    marks["raised"] = Patch(facecolor="white", edgecolor="red", hatch="//")
                if window.status != "ok":
                    marks[window.status] = Patch(
                        facecolor="grey", alpha=_STATUS_ALPHA.get(window.status, 0.9)
                    )
                axes.broken_barh(
                    [(window.start - origin, max(end - window.start, 0.0))],
                    (y + 0.1, 0.8),
                    facecolors=colour,
                    alpha=_STATUS_ALPHA.get(window.status, 0.9),
                    edgecolors="red" if failed else colour,
                    linewidth=1.2 if failed else 0.3,
                    hatch="//" if failed else None,
                )
            ticks.append(y + 0.5)
            labels.append(service if lane_number == 0 else f"{service} #{lane_number + 1}")
            y += 1.0
    axes.set_yticks(ticks, labels)
    axes.set_ylim(y if y else 1.0, 0.0)  # the first service on top
    axes.set_ylabel("tasks")
    axes.grid(visible=True, axis="x", alpha=0.3)
    if marks:
        # Beside the plot: inside it would hide tasks.
        axes.legend(
            list(marks.values()),
            list(marks),
            loc="upper left",
            bbox_to_anchor=(1.0, 1.0),
            fontsize="small",
            frameon=False,
        )
    if not rows:
        axes.text(0.5, 0.5, "no tasks", ha="center", va="center", transform=axes.transAxes)
