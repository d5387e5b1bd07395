"""Shared fixtures: a fake clock, a simulated GPU on it, a tracker on both (one recording a
timeline too), and an SDK."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gputime import Timeline, Tracker
from gputime.testing import FakeClock, SimulatedGpu

# The OpenTelemetry SDK fixtures (sdk, traced, busy, fresh_globals), for every module.
from tests.otel_sdk import busy, fresh_globals, sdk, traced

__all__ = ["busy", "fresh_globals", "sdk", "traced"]

#: The simulated driver's default sample period.
P = 1 / 6


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def gpu(clock: FakeClock) -> SimulatedGpu:
    return SimulatedGpu(clock=clock)


@pytest.fixture
def tracker(gpu: SimulatedGpu) -> Iterator[Tracker]:
    with Tracker(backend=gpu, threaded=False) as tracker:
        yield tracker


@pytest.fixture
def recorded(gpu: SimulatedGpu) -> Iterator[Tracker]:
    """A tracker recording a timeline (tests/test_timeline.py, tests/test_recorder.py)."""
    with Tracker(backend=gpu, threaded=False, timeline=True) as tracker:
        yield tracker


def timeline_of(tracker: Tracker) -> Timeline:
    timeline = tracker.timeline
    assert timeline is not None
    return timeline


@pytest.fixture(autouse=True)
def _isolated_default_tracker() -> Iterator[None]:
    """Each test starts without a default tracker and leaves none behind."""
    from gputime import _default

    saved = _default._default
    _default._default = None
    yield
    current = _default._default
    if current is not None and current is not saved:
        current.close()
    _default._default = saved
