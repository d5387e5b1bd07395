"""The trace validator itself (tests/trace_format.py): it passes valid traces and fails broken ones.

A validator that passes everything would make the timeline tests worthless,
so each rule it checks is broken here on purpose, one at a time.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.trace_format import TraceFormatError, load, validate, validate_file


def valid() -> dict[str, Any]:
    """A small valid trace: metadata, a counter, nested and sequential slices, B/E."""
    return {
        "displayTimeUnit": "ms",
        "traceEvents": [
            {"ph": "M", "name": "process_name", "pid": 1, "tid": 1, "args": {"name": "GPU"}},
            {
                "ph": "M",
                "name": "process_sort_index",
                "pid": 1,
                "tid": 1,
                "args": {"sort_index": 0},
            },
            {"ph": "M", "name": "thread_name", "pid": 2, "tid": 3, "args": {"name": "nmt #1"}},
            {
                "ph": "C",
                "name": "utilization",
                "ts": 0,
                "pid": 1,
                "tid": 1,
                "args": {"percent": 50},
            },
            {"ph": "X", "name": "outer", "ts": 0, "dur": 100.5, "pid": 2, "tid": 3, "args": {}},
            {"ph": "X", "name": "inner", "ts": 10, "dur": 20, "pid": 2, "tid": 3},
            {"ph": "X", "name": "inner 2", "ts": 30, "dur": 70.5, "pid": 2, "tid": 3},
            {
                "ph": "C",
                "name": "utilization",
                "ts": 50.25,
                "pid": 1,
                "tid": 1,
                "args": {"percent": 0},
            },
            {"ph": "X", "name": "next", "ts": 100.5, "dur": 0, "pid": 2, "tid": 3},
            {"ph": "B", "name": "open", "ts": 200, "pid": 2, "tid": 3},
            {"ph": "X", "name": "in B", "ts": 210, "dur": 5, "pid": 2, "tid": 3},
            {"ph": "E", "ts": 220, "pid": 2, "tid": 3},
            {"ph": "i", "name": "mark", "ts": 230, "pid": 2, "tid": 3, "s": "t"},
        ],
    }


def test_a_valid_trace_passes(tmp_path: Path):
    events = validate(valid())
    assert len(events) == len(valid()["traceEvents"])
    assert validate(valid()["traceEvents"])  # the bare list form
    path = tmp_path / "trace.json"
    path.write_text(json.dumps(valid()))
    assert validate_file(path) == events


def _event(trace: dict[str, Any], name: str) -> dict[str, Any]:
    return next(e for e in trace["traceEvents"] if e.get("name") == name)


def _set(name: str, key: str, value: object) -> Callable[[dict[str, Any]], None]:
    def change(trace: dict[str, Any]) -> None:
        _event(trace, name)[key] = value

    return change


def _drop(name: str, key: str) -> Callable[[dict[str, Any]], None]:
    def change(trace: dict[str, Any]) -> None:
        del _event(trace, name)[key]

    return change


def _append(event: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    def change(trace: dict[str, Any]) -> None:
        trace["traceEvents"].append(event)

    return change


def _swap(first: str, second: str) -> Callable[[dict[str, Any]], None]:
    def change(trace: dict[str, Any]) -> None:
        events = trace["traceEvents"]
        i = events.index(_event(trace, first))
        j = events.index(_event(trace, second))
        events[i], events[j] = events[j], events[i]

    return change


def _set_counter_value(value: object) -> Callable[[dict[str, Any]], None]:
    def change(trace: dict[str, Any]) -> None:
        trace["traceEvents"][3]["args"]["percent"] = value

    return change


def _set_counter_ts(first: float, second: float) -> Callable[[dict[str, Any]], None]:
    def change(trace: dict[str, Any]) -> None:
        trace["traceEvents"][3]["ts"] = first
        trace["traceEvents"][7]["ts"] = second

    return change


BROKEN: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "no ph": (_drop("outer", "ph"), "unknown or missing ph"),
    "unknown ph": (_set("outer", "ph", "Q"), "unknown or missing ph"),
    "no ts": (_drop("outer", "ts"), "no 'ts'"),
    "no dur on a complete slice": (_drop("inner", "dur"), "no 'dur'"),
    "no pid": (_drop("inner", "pid"), "no 'pid'"),
    "no tid on a slice": (_drop("inner", "tid"), "no 'tid'"),
    "pid a string": (_set("inner", "pid", "2"), "pid '2' is not an integer"),
    "tid a float": (_set("inner", "tid", 3.0), "tid 3.0 is not an integer"),
    "tid a bool": (_set("inner", "tid", True), "tid True is not an integer"),
    "ts a string": (_set("outer", "ts", "0"), "ts '0' is not a finite number"),
    "negative ts": (_set("outer", "ts", -1), "ts -1 is negative"),
    "negative dur": (_set("inner", "dur", -5), "dur -5 is negative"),
    "name not a string": (_set("inner", "name", 7), "is not a string"),
    "args not an object": (_set("inner", "args", [1]), "args is not an object"),
    "counter value a string": (_set_counter_value("50"), "is not a number"),
    "counter value a bool": (_set_counter_value(True), "is not a number"),
    "counter without series": (
        lambda trace: trace["traceEvents"][3].update(args={}),
        "a counter without a series",
    ),
    "counter without args": (
        lambda trace: trace["traceEvents"][3].pop("args"),
        "no 'args'",
    ),
    "overlapping slices on one thread": (
        _set("inner", "dur", 95),  # 10..105 crosses outer's end at 100.5
        "improper nesting",
    ),
    "slice not in time order on its thread": (_swap("inner", "inner 2"), "not monotonic"),
    "counter not in time order": (_set_counter_ts(first=60, second=0), "not monotonic"),
    "end without begin": (_append({"ph": "E", "ts": 300, "pid": 2, "tid": 9}), "without a begin"),
    "begin never ended": (
        _append({"ph": "B", "name": "b", "ts": 300, "pid": 2, "tid": 9}),
        "never ended",
    ),
    "end across an open complete slice": (_set("in B", "dur", 50), "across a complete slice"),
    "unknown metadata": (_set("process_name", "name", "process_colour"), "unknown metadata"),
    "metadata name not a string": (
        lambda trace: trace["traceEvents"][0]["args"].update(name=5),
        "args.name 5 is not a string",
    ),
    "sort index not an integer": (
        lambda trace: trace["traceEvents"][1]["args"].update(sort_index="0"),
        "sort_index '0' is not an integer",
    ),
    "bad instant scope": (_set("mark", "s", "x"), "instant scope"),
    "bad display unit": (lambda trace: trace.update(displayTimeUnit="s"), "displayTimeUnit"),
    "event not an object": (_append(["X"]), "not an object"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_trace_fails(case: str):
    change, message = BROKEN[case]
    trace = copy.deepcopy(valid())
    change(trace)
    with pytest.raises(TraceFormatError) as failure:
        validate(trace)
    assert any(message in problem for problem in failure.value.problems), failure.value.problems


@pytest.mark.parametrize(
    "document", [None, 3, "trace", {"events": []}, {"traceEvents": {}}], ids=repr
)
def test_not_a_trace_at_all(document: object):
    with pytest.raises(TraceFormatError):
        validate(document)


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_json_that_is_not_strict_fails(tmp_path: Path, constant: str):
    path = tmp_path / "trace.json"
    path.write_text(
        '{"traceEvents": [{"ph": "C", "name": "u", "ts": 0, "pid": 1, "args": {"v": '
        + constant
        + "}}]}"
    )
    with pytest.raises(TraceFormatError, match="not JSON"):
        load(path)


def test_many_problems_are_all_listed():
    trace = copy.deepcopy(valid())
    for event in trace["traceEvents"]:
        event["pid"] = "x"
    with pytest.raises(TraceFormatError) as failure:
        validate(trace)
    assert len(failure.value.problems) == len(trace["traceEvents"])
    assert str(failure.value).endswith("...")
