"""The timeline: task windows and device readings as users read them, its trace, its API.

The recording side's bounds, faults and fork: tests/test_recorder.py.

On a FakeClock and a SimulatedGpu, with no sampler thread: nothing here sleeps.
Every trace written is checked with the format validator (tests/trace_format.py).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

import pytest

import gputime
from gputime import DeviceSample, TaskWindow, Timeline, Tracker
from gputime._backends import Reading
from gputime._timeline import DEFAULT_MAX_SAMPLES, DEFAULT_MAX_TASKS
from gputime.testing import FakeClock, SimulatedGpu
from tests.conftest import P, timeline_of
from tests.trace_format import validate, validate_file


class JobError(Exception):
    """A user's exception, with a module-qualified error.type."""


def slices(trace: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in trace["traceEvents"] if e["ph"] == "X"]


def counters(trace: dict[str, Any], name: str = "utilization") -> list[dict[str, Any]]:
    return [e for e in trace["traceEvents"] if e["ph"] == "C" and e["name"] == name]


def names(trace: dict[str, Any], kind: str) -> dict[int, str]:
    """``process_name`` by pid, or ``thread_name`` by tid."""
    key = "pid" if kind == "process_name" else "tid"
    return {
        e[key]: e["args"]["name"]
        for e in trace["traceEvents"]
        if e["ph"] == "M" and e["name"] == kind
    }


# --------------------------------------------------------------------------- off by default


def test_off_by_default_nothing_is_installed(gpu: SimulatedGpu):
    with Tracker(backend=gpu, threaded=False) as tracker:
        assert tracker.timeline is None
        # Nothing on the task path and nothing in the channels: no cost.
        assert tracker._start_listeners == ()
        assert tracker._end_listeners == ()
        assert tracker._ledger.channels.on_sample is None
        with tracker.gpu_task("nmt"):
            pass


def test_on_it_is_fed_by_the_listeners_and_the_sink(recorded: Tracker):
    timeline = timeline_of(recorded)
    assert len(recorded._start_listeners) == len(recorded._end_listeners) == 1
    assert recorded._ledger.channels.on_sample is not None
    assert timeline.max_tasks == DEFAULT_MAX_TASKS
    assert timeline.max_samples == DEFAULT_MAX_SAMPLES
    assert [d.id for d in timeline.devices] == ["SIM-0"]
    assert repr(timeline) == "<Timeline tasks=0/10000 samples=0/50000 running=0>"


# --------------------------------------------------------------------------- task windows


def test_task_windows_carry_their_figures(recorded: Tracker, gpu: SimulatedGpu, clock: FakeClock):
    handles = []
    recorded.on_task_end(handles.append)

    @recorded.gpu_task("tts", name="synth")
    def synth(seconds: float) -> None:
        clock.advance(seconds)
        raise JobError

    @recorded.gpu_task("tts")
    def builtin(seconds: float) -> None:
        clock.advance(seconds)
        raise ValueError("builtin")

    gpu.set_utilization(60)
    with recorded.gpu_task("nmt"):
        clock.advance(1.0)
    clock.advance(0.5)
    with pytest.raises(JobError):
        synth(0.5)
    with pytest.raises(ValueError, match="builtin"):
        builtin(0.25)
    tasks = timeline_of(recorded).tasks()
    assert [(w.service, w.name) for w in tasks] == [
        ("nmt", "gpu_task nmt"),
        ("tts", "synth"),
        ("tts", "gpu_task tts"),
    ]
    for window, handle in zip(tasks, handles, strict=True):
        assert isinstance(window, TaskWindow)
        assert not window.running
        assert (window.start, window.end) == (handle.start_time, handle.end_time)
        assert tuple(window[4:9]) == tuple(handle.figures)
        assert window.concurrency == 1
    assert tasks[0].gpu_ms == pytest.approx(1000.0)
    assert tasks[0].status == "ok"
    assert [w.error for w in tasks] == [None, f"{__name__}.JobError", "ValueError"]
    trace = timeline_of(recorded).to_trace()
    validate(trace)
    errors = [e["args"].get("error.type") for e in slices(trace)]
    assert errors == [None, f"{__name__}.JobError", "ValueError"]


def test_cancellation_is_no_error(recorded: Tracker, clock: FakeClock):
    @recorded.gpu_task("nmt")
    def interrupted() -> None:
        clock.advance(0.1)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        interrupted()
    (window,) = timeline_of(recorded).tasks()
    assert window.error is None


def test_a_task_begun_before_recording_is_recorded_when_it_ends(gpu, clock: FakeClock):
    with Tracker(backend=gpu, threaded=False) as tracker:
        task = tracker.start_task("nmt")
        clock.advance(0.5)
        timeline = tracker.record_timeline()
        assert timeline.tasks() == []  # not seen starting
        task.end()
        (window,) = timeline.tasks()
        assert (window.start, window.end) == (0.0, 0.5)


def test_running_tasks_show_live_and_end_at_export(
    recorded: Tracker, gpu: SimulatedGpu, clock: FakeClock
):
    gpu.set_utilization(100)
    task = recorded.start_task("nmt")
    clock.advance(1.0)
    recorded.poll()
    (window,) = timeline_of(recorded).tasks()
    assert window.running
    assert window.end is None
    assert window.gpu_ms == pytest.approx(task.gpu_ms) == pytest.approx(1000.0)
    trace = timeline_of(recorded).to_trace()
    validate(trace)
    (slice_,) = slices(trace)
    assert slice_["args"]["running"] is True
    assert (slice_["ts"], slice_["dur"]) == (0, 1_000_000)  # up to the clock now
    task.end()
    (window,) = timeline_of(recorded).tasks()
    assert not window.running
    assert "running" not in slices(timeline_of(recorded).to_trace())[0]["args"]


def test_ends_recorded_inside_a_collection_are_recorded(recorded: Tracker, clock: FakeClock):
    task = recorded.start_task("nmt")
    clock.advance(0.25)
    recorded._defer_end(task, None)  # what a finaliser run by the collector does
    assert not timeline_of(recorded)._recorder.tasks  # no listener may run there
    recorded.stats()  # applies and emits it, listeners included
    (window,) = timeline_of(recorded).tasks()  # once, no longer as running
    assert (window.end, window.running) == (0.25, False)


def test_tasks_on_the_none_backend_are_windows_without_gpu_figures(clock: FakeClock):
    with Tracker(backend="none", clock=clock, threaded=False, timeline=True) as tracker:
        with tracker.gpu_task("nmt"):
            clock.advance(0.5)
        timeline = timeline_of(tracker)
        assert timeline.devices == ()
        assert timeline.samples() == []
        (window,) = timeline.tasks()
        assert window.status == "unavailable"
        assert window.energy_mj is None
        trace = timeline.to_trace()
        validate(trace)
        assert names(trace, "process_name") == {1: "nmt"}
        assert "energy_mj" not in slices(trace)[0]["args"]


def test_reset_keeps_the_history_and_clear_empties_it(recorded: Tracker, clock: FakeClock):
    with recorded.gpu_task("nmt"):
        clock.advance(0.5)
    recorded.reset()
    timeline = timeline_of(recorded)
    assert len(timeline.tasks()) == 1
    assert timeline.samples()
    timeline.clear()
    assert timeline.tasks() == []
    assert timeline.samples() == []
    assert timeline.dropped_tasks == timeline.dropped_samples == 0


# --------------------------------------------------------------------------- device readings


def test_readings_are_recorded_once_each(recorded: Tracker, gpu: SimulatedGpu, clock: FakeClock):
    gpu.set_utilization(40)
    with recorded.gpu_task("nmt"):
        for _ in range(12):
            clock.advance(0.1)
            recorded.poll()  # reads overlap the task exits' reads
            with recorded.gpu_task("tts"):
                clock.advance(0.05)
    clock.advance(1.0)
    recorded.poll()  # the settle
    samples = timeline_of(recorded).samples()
    assert all(isinstance(s, DeviceSample) for s in samples)
    ends = [s.end for s in samples]
    assert ends == sorted(set(ends))  # none twice, in order
    for before, after in itertools.pairwise(samples):
        assert after.start == before.end  # contiguous: each stretch credited once
    assert samples[0].start == 0.0
    assert ends[-1] == pytest.approx(math.floor(2.8 / P) * P)  # read up to the settle
    assert {s.value for s in samples} == {40.0}
    assert {(s.device, s.quantity, s.inferred) for s in samples} == {
        ("SIM-0", "utilization", False)
    }


def test_nothing_is_read_between_tasks(recorded: Tracker, gpu: SimulatedGpu, clock: FakeClock):
    gpu.set_utilization(100)
    with recorded.gpu_task("nmt"):
        clock.advance(0.5)
    clock.advance(1.0)
    recorded.poll()  # settles the first window
    clock.advance(2.0)
    with recorded.gpu_task("nmt"):
        clock.advance(0.5)
    clock.advance(1.0)
    recorded.poll()
    samples = timeline_of(recorded).samples()
    gaps = [(a.end, b.start) for a, b in itertools.pairwise(samples) if b.start > a.end]
    assert len(gaps) == 1
    assert gaps[0][1] == 3.5  # reading starts again with the second task
    trace = timeline_of(recorded).to_trace()
    validate(trace)
    values = [(c["ts"], c["args"]["percent"]) for c in counters(trace)]
    # 0 from the end of the first stretch to the second task's start, and at the end.
    assert (round(gaps[0][0] * 1e6), 0) in [(round(ts), v) for ts, v in values]
    assert (3_500_000, 100.0) in values
    assert values[-1][1] == 0


def test_a_lost_stretch_is_a_reading_without_value(
    recorded: Tracker, gpu: SimulatedGpu, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
):
    gpu.set_utilization(70)
    session = recorded._reader.session
    real = session.read

    def losing(device: int, since: float) -> Reading:
        reading = real(device, since)
        return Reading(utilization=[(end, None) for end, _ in reading.utilization])

    with recorded.gpu_task("nmt"):
        clock.advance(0.5)
        recorded.poll()
        monkeypatch.setattr(session, "read", losing)
        clock.advance(0.5)
    samples = timeline_of(recorded).samples()
    assert [s.value for s in samples] == [70.0] * 3 + [None] * 3
    trace = timeline_of(recorded).to_trace()
    validate(trace)
    assert [c["args"]["percent"] for c in counters(trace)] == [70.0] * 3 + [0] * 4
    plot_runs = __import__("gputime._plot", fromlist=["_runs"])._runs(samples)
    assert [len(values) for _, values in plot_runs] == [3]  # the lost stretch: a gap


def test_an_idle_claim_is_an_inferred_reading_of_zero(
    recorded: Tracker, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
):
    session = recorded._reader.session
    # A driver that records no sample while idle: its reads claim idleness.
    monkeypatch.setattr(session, "read", lambda device, since: Reading(idle_until=clock() - P))
    with recorded.gpu_task("nmt"):
        clock.advance(1.0)
    (sample,) = timeline_of(recorded).samples()
    assert sample == DeviceSample("SIM-0", "utilization", 0.0, 1.0 - P, 0.0, inferred=True)


def test_two_devices_two_counter_tracks(clock: FakeClock):
    gpu = SimulatedGpu(devices=2, clock=clock)
    with Tracker(backend=gpu, threaded=False, timeline=True) as tracker:
        gpu.set_utilization(30, device=0)
        gpu.set_utilization(90, device=1)
        with tracker.gpu_task("nmt"):
            clock.advance(0.5)
        timeline = timeline_of(tracker)
        assert {s.value for s in timeline.samples("SIM-0")} == {30.0}
        assert {s.value for s in timeline.samples("SIM-1")} == {90.0}
        with pytest.raises(ValueError, match="SIM-7"):
            timeline.samples("SIM-7")
        trace = timeline.to_trace()
        validate(trace)
        processes = names(trace, "process_name")
        assert processes == {
            1: "GPU 0: Simulated GPU (SIM-0)",
            2: "GPU 1: Simulated GPU (SIM-1)",
            3: "nmt",
        }
        by_pid: dict[int, set[float]] = {}
        for event in counters(trace):
            by_pid.setdefault(event["pid"], set()).add(event["args"]["percent"])
        assert by_pid == {1: {30.0, 0}, 2: {90.0, 0}}


def test_per_device_figures_of_each_task(clock: FakeClock):
    gpu = SimulatedGpu(devices=2, clock=clock)
    with Tracker(backend=gpu, threaded=False, timeline=True) as tracker:
        gpu.set_utilization(100, device=0)
        gpu.set_utilization(50, device=1)
        with tracker.gpu_task("nmt") as task:
            clock.advance(0.5)
            gpu.fail_reads(1, device=1)  # the exit read of SIM-1 fails
        running = tracker.start_task("tts")
        clock.advance(0.5)
        timeline = timeline_of(tracker)
        done, live = timeline.tasks()
        assert done.devices == task.devices
        assert done.devices["SIM-0"].status == "ok"
        assert done.devices["SIM-1"].status == "partial"
        assert live.running
        assert live.devices == running.devices
        trace = timeline.to_trace()
        validate(trace)
        args = slices(trace)[0]["args"]
        assert args["devices"] == {
            "SIM-0": {
                "gpu_ms": pytest.approx(500.0),
                "gpu_util_ms": pytest.approx(500.0),
                "status": "ok",
                "coverage": 1.0,
            },
            "SIM-1": {
                "gpu_ms": task.devices["SIM-1"].gpu_ms,
                "gpu_util_ms": task.devices["SIM-1"].gpu_util_ms,
                "status": "partial",
                "coverage": task.devices["SIM-1"].coverage,
            },
        }
        running.end()


def test_one_device_has_no_per_device_arguments(recorded: Tracker, clock: FakeClock):
    with recorded.gpu_task("nmt") as task:
        clock.advance(0.5)
    (window,) = timeline_of(recorded).tasks()
    assert window.devices == task.devices
    assert list(window.devices) == ["SIM-0"]
    assert "devices" not in slices(timeline_of(recorded).to_trace())[0]["args"]


def test_energy_per_device_in_the_arguments(clock: FakeClock):
    gpu = SimulatedGpu(devices=2, clock=clock, measure_energy=True)
    with Tracker(backend=gpu, threaded=False, timeline=True) as tracker:
        gpu.set_power(100.0, device=0)
        gpu.set_power(200.0, device=1)
        with tracker.gpu_task("nmt"):
            clock.advance(0.5)
        args = slices(timeline_of(tracker).to_trace())[0]["args"]
    assert args["devices"]["SIM-0"]["energy_mj"] == pytest.approx(50_000.0)
    assert args["devices"]["SIM-1"]["energy_mj"] == pytest.approx(100_000.0)


def test_power_in_watts_on_a_counter_track_of_its_own(clock: FakeClock):
    gpu = SimulatedGpu(clock=clock, measure_energy=True)
    with Tracker(backend=gpu, threaded=False, timeline=True) as tracker:
        gpu.set_utilization(50)
        gpu.set_power(250.0)
        with tracker.gpu_task("nmt"):
            clock.advance(0.5)
        timeline = timeline_of(tracker)
        power = [s for s in timeline.samples() if s.quantity == "power"]
        assert power
        assert [s.value for s in power] == [pytest.approx(250.0)] * len(power)
        trace = timeline.to_trace()
        validate(trace)
        watts = [e["args"]["W"] for e in counters(trace, "power")]
        assert watts == [pytest.approx(250.0)] * (len(watts) - 1) + [0]
        assert slices(trace)[0]["args"]["energy_mj"] == pytest.approx(125_000.0)


# --------------------------------------------------------------------------- the trace


def test_trace_times_are_microseconds_on_the_tracker_clock():
    clock = FakeClock(start=100.0)
    gpu = SimulatedGpu(clock=clock)
    with Tracker(backend=gpu, threaded=False, timeline=True) as tracker:
        gpu.set_utilization(50)
        clock.advance(0.25)
        with tracker.gpu_task("nmt"):
            clock.advance(0.5)
        trace = timeline_of(tracker).to_trace()
    validate(trace)
    (slice_,) = slices(trace)
    assert (slice_["ts"], slice_["dur"]) == (100_250_000, 500_000)
    assert slice_["name"] == "gpu_task nmt"
    assert slice_["cat"] == "gputime.task"
    assert slice_["args"] == {
        "service": "nmt",
        "gpu_ms": pytest.approx(500.0),
        "gpu_util_ms": pytest.approx(250.0),
        "status": "ok",
        "coverage": 1.0,
        "concurrency": 1,
    }
    first = counters(trace)[0]
    assert (first["ts"], first["args"]) == (100_250_000, {"percent": 50.0})
    other = trace["otherData"]
    assert other["clock_shift_s"] == 0.0
    assert other["generator"] == f"gputime {gputime.__version__}"
    assert trace["displayTimeUnit"] == "ms"


def test_overlapping_tasks_of_a_service_are_on_separate_threads(
    recorded: Tracker, clock: FakeClock
):
    # nmt: A 0-3, B 1-2, C 1.5-4, D 3-3.5 (A's lane is free again at 3).
    a = recorded.start_task("nmt")
    clock.advance(1.0)
    b = recorded.start_task("nmt")
    clock.advance(0.5)
    c = recorded.start_task("nmt")
    with recorded.gpu_task("tts"):
        clock.advance(0.5)
    b.end()
    clock.advance(1.0)
    a.end()
    d = recorded.start_task("nmt")
    clock.advance(0.5)
    d.end()
    clock.advance(0.5)
    c.end()
    trace = timeline_of(recorded).to_trace()
    validate(trace)
    threads = names(trace, "thread_name")
    lanes = {(s["ts"], s["dur"]): threads[s["tid"]] for s in slices(trace)}
    assert lanes == {
        (0, 3_000_000): "nmt #1",
        (1_000_000, 1_000_000): "nmt #2",
        (1_500_000, 2_500_000): "nmt #3",
        (1_500_000, 500_000): "tts #1",
        (3_000_000, 500_000): "nmt #1",
    }
    concurrency = sorted(s["args"]["concurrency"] for s in slices(trace))
    assert concurrency == [1, 1, 2, 2, 3]
    # Every id is unique across the file: processes first, then lanes.
    pids = set(names(trace, "process_name"))
    assert not pids & set(threads)
    sort = [e for e in trace["traceEvents"] if e["name"] == "process_sort_index"]
    assert [e["args"]["sort_index"] for e in sort] == [1, 2, 3]


def test_touching_tasks_share_a_thread(recorded: Tracker, clock: FakeClock):
    for _ in range(3):
        with recorded.gpu_task("nmt"):
            clock.advance(P / 3)  # not a whole number of microseconds
    trace = timeline_of(recorded).to_trace()
    validate(trace)
    assert len({s["tid"] for s in slices(trace)}) == 1


def test_a_clock_below_zero_is_shifted():
    clock = FakeClock(start=-5.0)
    gpu = SimulatedGpu(clock=clock)
    with Tracker(backend=gpu, threaded=False, timeline=True) as tracker:
        with tracker.gpu_task("nmt"):
            clock.advance(1.0)
        trace = timeline_of(tracker).to_trace()
    validate(trace)
    assert slices(trace)[0]["ts"] == 0
    assert trace["otherData"]["clock_shift_s"] == 5.0


def test_a_failing_clock_at_export_ends_running_tasks_at_the_newest_record(
    recorded: Tracker,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
):
    def failing() -> float:
        raise RuntimeError("clock gone")

    with recorded.gpu_task("nmt"):
        clock.advance(1.0)
    recorded.start_task("tts")
    monkeypatch.setattr(timeline_of(recorded), "_clock", failing)
    with caplog.at_level(logging.WARNING, logger="gputime"):
        trace = timeline_of(recorded).to_trace()
    validate(trace)
    assert "timeline failed" in caplog.text
    running = [s for s in slices(trace) if s["args"].get("running")]
    assert running[0]["ts"] + running[0]["dur"] == 1_000_000


def test_write_trace_writes_strict_json(recorded: Tracker, clock: FakeClock, tmp_path: Path):
    with recorded.gpu_task("nmt"):
        clock.advance(0.5)
    path = tmp_path / "trace.json"
    timeline_of(recorded).write_trace(path)
    events = validate_file(path)
    assert {e["ph"] for e in events} == {"M", "C", "X"}
    written = json.loads(path.read_text())
    assert (
        written["traceEvents"]
        == json.loads(json.dumps(timeline_of(recorded).to_trace()))["traceEvents"]
    )
    with pytest.raises(FileNotFoundError):
        timeline_of(recorded).write_trace(tmp_path / "missing" / "trace.json")


def test_wall_clock_offset_maps_trace_time_to_unix_time(recorded: Tracker, clock: FakeClock):
    import time

    clock.advance(2.0)
    with recorded.gpu_task("nmt"):
        clock.advance(0.5)
    trace = timeline_of(recorded).to_trace()
    end_us = slices(trace)[0]["ts"] + slices(trace)[0]["dur"]
    unix = end_us / 1e6 + trace["otherData"]["wall_clock_offset_s"]
    assert unix == pytest.approx(time.time(), abs=5.0)  # the export was "now" on the fake clock


# --------------------------------------------------------------------------- the API


def test_record_timeline_on_a_running_tracker_then_stop(gpu: SimulatedGpu, clock: FakeClock):
    with Tracker(backend=gpu, threaded=False) as tracker:
        listener = tracker.on_task_end(lambda task: None)
        timeline = tracker.record_timeline(max_tasks=10, max_samples=100)
        assert tracker.record_timeline() is timeline  # one at a time: the same
        assert timeline.max_tasks == 10
        with tracker.gpu_task("nmt"):
            clock.advance(0.5)
        assert tracker.stop_timeline() is timeline
        assert tracker.stop_timeline() is None
        assert tracker.timeline is None
        assert tracker._start_listeners == ()
        assert tracker._end_listeners == (listener,)  # the user's own stay
        assert tracker._ledger.channels.on_sample is None
        with tracker.gpu_task("nmt"):
            clock.advance(0.5)
        assert len(timeline.tasks()) == 1  # still readable, no longer recording
        assert tracker.record_timeline() is not timeline  # a new one


def test_a_task_running_when_recording_stops_is_let_go(recorded: Tracker, clock: FakeClock):
    task = recorded.start_task("nmt")
    timeline = timeline_of(recorded)
    assert timeline.tasks()[0].running
    assert recorded.stop_timeline() is timeline
    assert timeline.tasks() == []  # not shown running for ever
    clock.advance(0.5)
    task.end()
    assert timeline.tasks() == []


def test_configure_carries_listeners_over_but_not_a_timeline(clock: FakeClock):
    gpu = SimulatedGpu(clock=clock)
    seen: list[str] = []
    old = gputime.configure(backend=gpu, threaded=False, timeline=True)
    old.on_task_end(lambda task: seen.append(task.service))
    new = gputime.configure(backend=gpu, threaded=False)
    with gputime.gpu_task("nmt"):
        clock.advance(0.5)
    assert seen == ["nmt"]  # the user's listener came along
    assert new.timeline is None
    assert timeline_of(old).tasks() == []  # the old tracker's timeline saw nothing
    assert new._ledger.channels.on_sample is None
    newest = gputime.configure(backend=gpu, threaded=False, timeline=True)
    with gputime.gpu_task("tts"):
        clock.advance(0.5)
    assert [w.service for w in timeline_of(newest).tasks()] == ["tts"]
    assert seen == ["nmt", "tts"]


def test_a_timeline_records_one_tracker(gpu: SimulatedGpu):
    timeline = Timeline()
    with (
        Tracker(backend=gpu, threaded=False, timeline=timeline),
        pytest.raises(ValueError, match="another tracker"),
    ):
        Tracker(backend=gpu, threaded=False, timeline=timeline)


def test_configure_and_the_default_tracker(clock: FakeClock):
    gpu = SimulatedGpu(clock=clock)
    tracker = gputime.configure(backend=gpu, threaded=False, timeline=True)
    with gputime.gpu_task("nmt"):
        clock.advance(0.5)
    assert [w.service for w in timeline_of(tracker).tasks()] == ["nmt"]
    gputime.configure(backend=gpu, threaded=False)
    assert gputime.get_tracker().timeline is None
    assert gputime.get_tracker().record_timeline() is gputime.get_tracker().timeline


@pytest.mark.parametrize("value", ["yes", 1, None, Timeline])
def test_bad_timeline_argument(gpu: SimulatedGpu, value: object):
    with pytest.raises(ValueError, match="timeline="):
        Tracker(backend=gpu, threaded=False, timeline=value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_tasks": 0}, "max_tasks=0"),
        ({"max_tasks": True}, "max_tasks=True"),
        ({"max_samples": -1}, "max_samples=-1"),
        ({"max_samples": 1.5}, "max_samples=1.5"),
    ],
)
def test_bad_bounds(kwargs: dict[str, Any], message: str):
    with pytest.raises(ValueError, match=message):
        Timeline(**kwargs)


def test_public_names():
    assert {"Timeline", "TaskWindow", "DeviceSample"} <= set(gputime.__all__)
    empty = Timeline()
    assert empty.tasks() == []
    assert empty.devices == ()
    validate(empty.to_trace())


# --------------------------------------------------------------------------- the plot extra


def test_plot_without_matplotlib_names_the_extra(
    recorded: Tracker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"pip install 'gputime\[plot\]'") as failure:
        timeline_of(recorded).plot(tmp_path / "timeline.png")
    assert failure.value.name == "matplotlib"
    assert not (tmp_path / "timeline.png").exists()
