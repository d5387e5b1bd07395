"""Fixtures of the NVML tests: a clock at 10 s, each driver model, two GPUs that worked earlier."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gputime.testing import FakeClock
from tests.nvml.support import START, installed
from tests.nvml_double import DRIVER_MODELS, FakeNvml


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture(params=DRIVER_MODELS)
def model(request: pytest.FixtureRequest) -> str:
    """Each driver model of idle time: real drivers record no sample while idle."""
    return str(request.param)


@pytest.fixture
def nvml(clock: FakeClock, model: str) -> Iterator[FakeNvml]:
    """Two GPUs that were busy from 5 s to 9 s, before the test begins at 10 s."""
    double = FakeNvml(clock, 2, model=model)
    double.worked_earlier()
    with installed(double):
        yield double
