"""The benchmark scripts run (on the NVML double where they need a GPU), so they do not rot.

Their figures are reported, never asserted: these tests check that each script
completes and writes what it promises.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from tests.nvml.support import installed
from tests.nvml_double import FakeNvml

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture
def scripts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))


@pytest.mark.usefixtures("scripts")
def test_accuracy_runs_every_configuration(capsys: pytest.CaptureFixture[str]):
    import accuracy

    assert accuracy.main(["--duration", "15", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    labels = [config["label"] for config in summary["configurations"]]
    assert len(labels) == len(accuracy.CONFIGS)
    assert all(config["targets"] for config in summary["configurations"])


@pytest.mark.usefixtures("scripts")
def test_gpu_check_answers_what_it_can_without_kernels(tmp_path: Path):
    import gpu_check

    # A real clock: the script sleeps and polls as it would on hardware.
    start = time.monotonic()
    double = FakeNvml(lambda: time.monotonic() - start, 1)  # type: ignore[arg-type]
    with installed(double):
        assert gpu_check.main(["--json", str(tmp_path / "report.json"), "--quick"]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["devices"][0]["uuid"] == double.gpus[0].uuid
    assert report["count_query_idle"]["last_seen=0"]["count"] == double.gpus[0].capacity
    assert report["idle_buffer"]["new_samples"] == 0  # a real driver's idle GPU
    # On a real clock: a loaded machine delays the reads by some milliseconds.
    assert report["energy_counter"]["gputime_calibration"]["period_s"] == pytest.approx(
        0.1, abs=0.03
    )
    assert report["kernels"] in (None, "torch", "cupy")


@pytest.mark.usefixtures("scripts")
def test_memory_runs_every_workload(capsys: pytest.CaptureFixture[str]):
    import memory

    assert memory.main(["--tasks", "220", "--checkpoints", "2"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in memory.WORKLOADS)


def test_gpu_check_without_a_gpu_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import gpu_check

        assert gpu_check.main(["--json", str(tmp_path / "report.json")]) == 0
    finally:
        sys.path.remove(str(BENCHMARKS))
    assert "no GPU" in json.loads((tmp_path / "report.json").read_text())["error"]
    assert "nothing to check here" in capsys.readouterr().out
