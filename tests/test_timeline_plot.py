"""Timeline.plot: a picture of utilisation per device and task windows, with matplotlib.

Skipped where matplotlib is not installed (it is the optional extra ``plot``,
which the test extra includes); the error without it is tested in
tests/test_timeline.py, which does not need it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gputime import Tracker
from gputime.testing import FakeClock, SimulatedGpu

pytest.importorskip("matplotlib")

from matplotlib.figure import Figure

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from the PNG's IHDR chunk."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def busy_timeline(clock: FakeClock) -> Tracker:
    gpu = SimulatedGpu(devices=2, clock=clock, measure_energy=True)
    tracker = Tracker(backend=gpu, threaded=False, timeline=True)
    for step in range(6):
        gpu.set_utilization(20 + 15 * step, device=0)
        gpu.set_utilization(90 - 10 * step, device=1)
        gpu.set_power(100.0 + 20 * step)
        with tracker.gpu_task("nmt"):
            clock.advance(0.3)
            with tracker.gpu_task("nmt"):  # overlapping: a second lane
                clock.advance(0.2)
        try:
            with tracker.gpu_task("tts"):
                clock.advance(0.1)
                if step % 3 == 0:
                    raise ValueError("a task that raised")
        except ValueError:
            pass
        clock.advance(0.4)  # idle between rounds: gaps in the readings
        tracker.poll()
    gpu.fail_reads(1)
    with tracker.gpu_task("rust"):  # partial: its read failed
        clock.advance(0.3)
    tracker.start_task("yourtts")  # still running
    clock.advance(0.2)
    tracker.poll()
    return tracker


def test_plot_writes_a_png(tmp_path: Path):
    clock = FakeClock()
    with busy_timeline(clock) as tracker:
        timeline = tracker.timeline
        assert timeline is not None
        path = tmp_path / "timeline.png"
        figure = timeline.plot(path, title="a test")
    assert isinstance(figure, Figure)
    width, height = png_size(path)
    assert width == 1000  # 10 in at 100 dpi
    assert 300 < height < 1000
    assert 10_000 < path.stat().st_size < 200_000
    utilisation, tasks = figure.axes[:2]
    assert figure._suptitle.get_text() == "a test"
    assert utilisation.get_ylabel() == "GPU utilisation %"
    assert [label.get_text() for label in tasks.get_yticklabels()] == [
        "nmt",
        "nmt #2",
        "tts",
        "rust",
        "yourtts",
    ]
    assert len(figure.axes) == 3  # with the power axis
    legend = utilisation.get_legend()
    assert legend is not None
    assert [t.get_text() for t in legend.get_texts()] == [
        "GPU 0 (SIM-0)",
        "GPU 1 (SIM-1)",
        "GPU 0 (SIM-0) power",
        "GPU 1 (SIM-1) power",
    ]
    status_legend = tasks.get_legend()
    assert status_legend is not None
    assert {t.get_text() for t in status_legend.get_texts()} == {"raised", "partial"}


def test_plot_without_a_path_only_returns_the_figure(tmp_path: Path):
    clock = FakeClock()
    with busy_timeline(clock) as tracker:
        assert tracker.timeline is not None
        figure = tracker.timeline.plot()
    assert isinstance(figure, Figure)
    assert figure._suptitle.get_text() == "gputime timeline"
    assert list(tmp_path.iterdir()) == []


def test_the_format_follows_the_suffix(tmp_path: Path):
    clock = FakeClock()
    with busy_timeline(clock) as tracker:
        assert tracker.timeline is not None
        tracker.timeline.plot(tmp_path / "timeline.svg")
    assert (tmp_path / "timeline.svg").read_text().lstrip().startswith("<?xml")


def test_an_empty_timeline_still_draws(tmp_path: Path):
    with Tracker(backend="none", threaded=False, timeline=True) as tracker:
        assert tracker.timeline is not None
        figure = tracker.timeline.plot(tmp_path / "empty.png")
    png_size(tmp_path / "empty.png")
    texts = [t.get_text() for axes in figure.axes for t in axes.texts]
    assert texts == ["no device readings", "no tasks"]


def test_gaps_and_a_failing_clock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    clock = FakeClock()
    gpu = SimulatedGpu(clock=clock)
    with Tracker(backend=gpu, threaded=False, timeline=True) as tracker:
        gpu.set_utilization(80)
        for _ in range(2):
            with tracker.gpu_task("nmt"):
                clock.advance(0.5)
            clock.advance(1.0)
            tracker.poll()
            clock.advance(2.0)  # nothing is read until the next task
        tracker.start_task("tts")  # running: ends at the newest record
        timeline = tracker.timeline
        assert timeline is not None

        def failing() -> float:
            raise RuntimeError("clock gone")

        monkeypatch.setattr(timeline, "_clock", failing)
        figure = timeline.plot(tmp_path / "gaps.png")
    utilisation = figure.axes[0]
    assert len(utilisation.patches) == 2  # two stretches of readings: two stairs
    png_size(tmp_path / "gaps.png")


def test_devices_without_readings(tmp_path: Path):
    with Tracker(backend=SimulatedGpu(), threaded=False, timeline=True) as tracker:
        assert tracker.timeline is not None
        figure = tracker.timeline.plot(tmp_path / "idle.png")
    assert figure.axes[0].get_legend() is None  # nothing drawn, nothing to name
