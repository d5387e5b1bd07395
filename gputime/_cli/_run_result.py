"""What ``gputime run`` measured, and how it is shown: the summary on stderr, ``--json``.

Apart from running the command (:mod:`gputime._cli.run`: the tracker, the
child process, the signals it is sent) because it changes for other reasons:
what the figures are called and how they are laid out is the command's
interface, read by people (:func:`summary`) and by programs (:func:`write_json`,
whose fields docs/cli.md lists).
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gputime import TaskHandle, Tracker
    from gputime._backends import Attribution


@dataclass
class RunResult:
    """What ``gputime run`` measured (``--json`` writes :meth:`to_json`).

    Attributes:
        service: The service the command ran as a task of.
        command: The command and its arguments.
        exit_code: gputime's exit status: the command's, 128+N for signal N.
        wall_s: Seconds from starting the command to its end.
        gpu_ms: The task's GPU-busy milliseconds, summed over devices.
        gpu_util_ms: The same, weighted by utilisation.
        energy_mj: Energy in millijoules, ``None`` where not measured.
        status: ``ok``, ``partial`` or ``unavailable``.
        coverage: The fraction of the task (times devices) readings covered.
        devices: Per device id: ``name``, ``index`` and the same figures
            (``None`` where not known per device).
        attribution: How GPU time was attributed, ``None`` where not measured.
        notes: Warnings about the measurement (a fallback, no GPU).
        tracker: The tracker that measured the command, still open while
            outputs are written.
    """

    service: str
    command: list[str]
    exit_code: int
    wall_s: float
    gpu_ms: float
    gpu_util_ms: float
    energy_mj: float | None
    status: str
    coverage: float
    devices: dict[str, dict[str, Any]]
    attribution: Attribution | None
    notes: list[str] = field(default_factory=list)
    tracker: Tracker | None = None

    @property
    def title(self) -> str:
        """What a picture of the run is titled."""
        return f"gputime run -s {self.service} -- {_quote(self.command)}"

    def to_json(self) -> dict[str, Any]:
        """The fields of ``--json``, exactly these (docs/cli.md, ``--json``)."""
        return {
            "service": self.service,
            "command": self.command,
            "exit_code": self.exit_code,
            "wall_s": self.wall_s,
            "gpu_ms": self.gpu_ms,
            "gpu_util_ms": self.gpu_util_ms,
            "energy_mj": self.energy_mj,
            "status": self.status,
            "coverage": self.coverage,
            "devices": self.devices,
        }


def write_json(path: str, result: RunResult) -> None:
    """``--json PATH``: the figures as one JSON object."""
    with open(path, "w", encoding="utf-8") as file:
        json.dump(result.to_json(), file, indent=2)
        file.write("\n")


def device_figures(task: TaskHandle, tracker: Tracker) -> dict[str, dict[str, Any]]:
    """Per tracked device: its name, index and figures for the task."""
    names = {device.id: device for device in tracker.devices}
    result: dict[str, dict[str, Any]] = {}
    for device_id, figures in task.devices.items():
        info = names[device_id]  # the task's devices are the tracker's
        result[device_id] = {
            "name": info.name,
            "index": info.index,
            "gpu_ms": figures.gpu_ms,
            "gpu_util_ms": figures.gpu_util_ms,
            "energy_mj": figures.energy_mj,
            "status": figures.status,
            "coverage": figures.coverage,
        }
    return result


def summary(result: RunResult) -> str:
    """The report on stderr, like ``time``'s."""
    lines = [f"gputime run: {result.service}: {_quote(result.command)}"]
    add = lines.append
    add(f"  exit status   {result.exit_code}")
    add(f"  wall time     {result.wall_s:.3f} s")
    if result.attribution is None:
        add("  GPU time      unavailable (no GPU measured; see the warning above)")
        return "\n".join(lines)
    add(f"  GPU time      {result.gpu_ms:.1f} ms")
    add(f"  util time     {result.gpu_util_ms:.1f} ms")
    add(f"  energy        {_energy(result.energy_mj)}")
    add(
        f"  status        {result.status} (coverage {result.coverage:.3f}, "
        f"attribution {result.attribution})"
    )
    for device_id, figures in result.devices.items():
        where = f"[{figures['index']}] {figures['name']} {device_id}"
        add(
            f"  {where}: {figures['gpu_ms']:.1f} GPU ms, {figures['gpu_util_ms']:.1f} util ms, "
            f"{_energy(figures['energy_mj'])}, {figures['status']}"
        )
    return "\n".join(lines)


def _energy(energy_mj: float | None) -> str:
    return "not measured" if energy_mj is None else f"{energy_mj / 1000:.3f} J"


def _quote(command: Sequence[str]) -> str:
    return shlex.join(command)
