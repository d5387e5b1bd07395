"""The project's declared dependencies and the floor constraints CI installs agree."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = {"nvidia-ml-py", "wrapt", "opentelemetry-api"}
#: Extras whose own floor the floor job installs too: the tests of what they add run there.
EXTRAS_AT_FLOOR = {"celery": "celery", "plot": "matplotlib"}
#: Pins that hold an extra's floor release to what it was built against.
BUILT_AGAINST = {"numpy"}


def _project() -> dict[str, Any]:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11 and later
    with (ROOT / "pyproject.toml").open("rb") as file:
        project: dict[str, Any] = tomllib.load(file)["project"]
    return project


def _floors(requirements: list[str] | None = None) -> dict[str, str]:
    floors = {}
    for requirement in _project()["dependencies"] if requirements is None else requirements:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9.]+)", requirement)
        # A name and a floor, nothing else: no upper bound, no pin, no marker.
        assert match, f"{requirement!r}: a runtime dependency is a name and a floor"
        floors[match[1]] = match[2]
    return floors


def _pins() -> dict[str, str]:
    pins = {}
    for raw in (ROOT / ".ci" / "constraints-floor.txt").read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[name.strip()] = version.strip()
    return pins


def test_the_runtime_dependencies_are_exactly_these():
    assert set(_floors()) == RUNTIME


def test_the_floor_constraints_pin_the_declared_floors():
    floors, pins = _floors(), _pins()
    for name, floor in floors.items():
        assert name in pins, f"{name} has no pin in .ci/constraints-floor.txt"
        # The first release of the declared series: 12.535 -> 12.535.77, 1.20 -> 1.20.0.
        declared = floor.split(".")
        assert pins[name].split(".")[: len(declared)] == declared, (name, floor, pins[name])
    # The tests' SDK at the API's floor: each SDK release requires its own API release.
    assert pins["opentelemetry-sdk"] == pins["opentelemetry-api"]
    assert set(pins) == (
        RUNTIME | {"opentelemetry-sdk"} | set(EXTRAS_AT_FLOOR.values()) | BUILT_AGAINST
    )


@pytest.mark.parametrize(("extra", "name"), sorted(EXTRAS_AT_FLOOR.items()))
def test_the_floor_constraints_pin_an_extras_declared_floor(extra: str, name: str):
    optional = _project()["optional-dependencies"]
    floor = _floors(optional[extra])[name]
    # The test extra installs it in every CI job, with the same floor.
    assert _floors([r for r in optional["test"] if r.startswith(f"{name}>=")]) == {name: floor}
    declared = floor.split(".")
    assert _pins()[name].split(".")[: len(declared)] == declared, (name, floor, _pins()[name])


def _names(requirements: list[str]) -> set[str]:
    names = set()
    for requirement in requirements:
        match = re.match(r"[A-Za-z0-9_.-]+", requirement)
        assert match, requirement
        names.add(match[0])
    return names


def test_fastapi_is_left_out_of_the_floor_job():
    # FastAPI's releases from 0.142 (the extra's floor) require
    # opentelemetry-api>=1.44, which cannot install beside the API's floor
    # (1.20): the floor job installs the test extra, the other
    # jobs the e2e extra too (.ci/run), and docs/examples/fastapi_app.py is
    # skipped only where FastAPI is absent (tests/test_docs_examples.py).
    optional = _project()["optional-dependencies"]
    assert "fastapi" not in _names(optional["test"])
    assert "fastapi" in _names(optional["e2e"])
    assert {"gunicorn", "starlette", "uvicorn"} <= _names(optional["test"])
