"""A validator of Chrome Trace Event format files, as Perfetto UI and chrome://tracing read them.

Written from the format's documentation (the "Trace Event Format" document
that chrome://tracing and Perfetto's JSON importer follow), independent of
gputime's writer, so that a test of the writer can fail. What it checks:

- the document: strict JSON (no ``NaN``/``Infinity``), an object with a
  ``traceEvents`` list (or the bare list form); ``displayTimeUnit``, if
  present, ``"ms"`` or ``"ns"``;
- each event: an object with a known ``ph`` and the keys that phase requires;
  ``pid`` and ``tid`` integers (not booleans); ``ts`` and ``dur`` finite
  numbers of microseconds, not negative; ``args`` an object;
- counters (``C``): a name and at least one series, every value a finite number;
- metadata (``M``): a known name, with ``args.name`` a string for the
  ``*_name`` records and ``args.sort_index`` an integer for the ``*_sort_index`` ones;
- per track, in file order: timestamps never go back (a thread's slices by
  ``(pid, tid)``, a counter by ``(pid, name)``);
- per thread: slices nest properly: a complete slice (``X``) lies inside every
  slice still open at its start or starts after it ended; an ``E`` closes the
  innermost ``B``, never crossing a complete slice that is still open; every
  ``B`` is closed.

Times are compared in whole nanoseconds, as the viewers store them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: Keys each phase requires besides ``ph`` (those this validator knows).
REQUIRED: dict[str, tuple[str, ...]] = {
    "X": ("name", "ts", "dur", "pid", "tid"),
    "B": ("name", "ts", "pid", "tid"),
    "E": ("ts", "pid", "tid"),
    "C": ("name", "ts", "pid", "args"),
    "i": ("name", "ts", "pid", "tid"),
    "I": ("name", "ts", "pid", "tid"),
    "M": ("name", "pid", "args"),
}
METADATA_NAMES = ("process_name", "process_labels", "process_sort_index")
METADATA_NAMES += ("thread_name", "thread_sort_index")


class TraceFormatError(ValueError):
    """A document that is not a valid trace; ``problems`` lists what is wrong."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("; ".join(problems[:10]) + (" ..." if len(problems) > 10 else ""))
        self.problems = list(problems)


def load(path: str | Path) -> Any:
    """Parse ``path`` as strict JSON (``NaN``, ``Infinity`` rejected)."""

    def reject(constant: str) -> None:
        raise TraceFormatError([f"not JSON: {constant}"])

    return json.loads(Path(path).read_text(encoding="utf-8"), parse_constant=reject)


def validate_file(path: str | Path) -> list[dict[str, Any]]:
    """Validate the trace in ``path``; returns its events.

    Raises:
        TraceFormatError: What is wrong with it.
    """
    return validate(load(path))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _ns(microseconds: float) -> int:
    return round(microseconds * 1000)


def validate(document: object) -> list[dict[str, Any]]:
    """Validate a parsed trace document; returns its events.

    Raises:
        TraceFormatError: What is wrong with it.
    """
    problems: list[str] = []
    if isinstance(document, list):
        events: object = document
    elif isinstance(document, dict):
        events = document.get("traceEvents")
        unit = document.get("displayTimeUnit", "ms")
        if unit not in ("ms", "ns"):
            problems.append(f"displayTimeUnit {unit!r}: must be 'ms' or 'ns'")
    else:
        raise TraceFormatError(["the document is neither an object nor a list"])
    if not isinstance(events, list):
        raise TraceFormatError(["traceEvents is missing or not a list"])
    checked: list[dict[str, Any]] = []
    for number, event in enumerate(events):
        where = f"event {number}"
        if not isinstance(event, dict):
            problems.append(f"{where}: not an object")
            continue
        before = len(problems)
        _check_event(event, where, problems)
        if len(problems) == before:
            checked.append(event)
    _check_tracks(checked, problems)
    if problems:
        raise TraceFormatError(problems)
    return checked


def _check_event(event: dict[str, Any], where: str, problems: list[str]) -> None:
    phase = event.get("ph")
    if phase not in REQUIRED:
        problems.append(f"{where}: unknown or missing ph {phase!r}")
        return
    where = f"{where} ({phase} {event.get('name')!r})"
    for key in REQUIRED[phase]:
        if key not in event:
            problems.append(f"{where}: no {key!r}")
    for key in ("pid", "tid"):
        if key in event and not _is_int(event[key]):
            problems.append(f"{where}: {key} {event[key]!r} is not an integer")
    for key in ("ts", "dur"):
        if key in event:
            value = event[key]
            if not _is_number(value):
                problems.append(f"{where}: {key} {value!r} is not a finite number")
            elif value < 0:
                problems.append(f"{where}: {key} {value!r} is negative")
    if "name" in event and not isinstance(event["name"], str):
        problems.append(f"{where}: name {event['name']!r} is not a string")
    if "args" in event and not isinstance(event["args"], dict):
        problems.append(f"{where}: args is not an object")
        return
    if phase == "C":
        args = event.get("args")
        if isinstance(args, dict):
            if not args:
                problems.append(f"{where}: a counter without a series")
            for series, value in args.items():
                if not _is_number(value):
                    problems.append(f"{where}: counter {series!r} = {value!r} is not a number")
    elif phase == "M":
        _check_metadata(event, where, problems)
    elif phase in ("i", "I") and event.get("s", "t") not in ("g", "p", "t"):
        problems.append(f"{where}: instant scope {event.get('s')!r}")


def _check_metadata(event: dict[str, Any], where: str, problems: list[str]) -> None:
    name = event.get("name")
    args = event.get("args")
    if name not in METADATA_NAMES:
        problems.append(f"{where}: unknown metadata {name!r}")
    elif not isinstance(args, dict):
        return
    elif str(name).endswith("_sort_index"):
        if not _is_int(args.get("sort_index")):
            problems.append(f"{where}: sort_index {args.get('sort_index')!r} is not an integer")
    elif name.endswith("_name") and not isinstance(args.get("name"), str):
        problems.append(f"{where}: args.name {args.get('name')!r} is not a string")


def _check_tracks(events: list[dict[str, Any]], problems: list[str]) -> None:
    last: dict[tuple[object, ...], int] = {}
    # Per thread: the ends of the slices open now, innermost last (None: a B).
    stacks: dict[tuple[int, int], list[int | None]] = {}
    for event in events:
        phase = event["ph"]
        if phase == "M":
            continue
        ts = _ns(event["ts"])
        if phase == "C":
            track: tuple[object, ...] = ("counter", event["pid"], event["name"])
        else:
            track = ("thread", event["pid"], event["tid"])
        label = f"{phase} {event.get('name')!r} at ts {event['ts']} on {track[0]} {track[1:]}"
        if ts < last.get(track, ts):
            problems.append(f"{label}: before the track's previous event (not monotonic)")
        last[track] = max(ts, last.get(track, ts))
        if phase not in ("X", "B", "E"):
            continue
        stack = stacks.setdefault((event["pid"], event["tid"]), [])
        # Complete slices that ended by now are closed.
        while stack and stack[-1] is not None and stack[-1] <= ts:
            stack.pop()
        if phase == "X":
            end = ts + _ns(event["dur"])
            enclosing = next((e for e in reversed(stack) if e is not None), None)
            if enclosing is not None and end > enclosing:
                problems.append(f"{label}: overlaps a slice it is not inside (improper nesting)")
            stack.append(end)
        elif phase == "B":
            stack.append(None)
        elif not stack:
            problems.append(f"{label}: an end without a begin")
        elif stack[-1] is not None:
            problems.append(f"{label}: ends across a complete slice still open")
        else:
            stack.pop()
    for (pid, tid), stack in stacks.items():
        if any(end is None for end in stack):
            problems.append(f"thread ({pid}, {tid}): a begin (B) never ended")
