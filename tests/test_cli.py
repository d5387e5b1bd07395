"""The ``gputime`` command line: ``demo`` and ``devices``."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest

from gputime._cli import main
from gputime._demo import print_table, run_demo
from gputime._ledger import ServiceStats
from tests.nvml_double import FakeGpu, FakeNvml
from tests.test_nvml_backend import installed


def test_demo_runs_every_service_and_prints_a_table():
    out = io.StringIO()
    stats = run_demo(0.6, seed=3, out=out)
    assert set(stats) == {"nmt", "tts", "yourtts", "rust"}
    for s in stats.values():
        assert s.task_count > 0
        assert s.active_tasks == 0
        assert s.gpu_ms > 0
        assert s.gpu_util_ms <= s.gpu_ms
        assert s.status == "ok"
    table = out.getvalue().splitlines()
    assert table[0].split() == ["service", "tasks", "GPU", "ms", "util", "ms", "status", "coverage"]
    assert [line.split()[0] for line in table[2:6]] == ["nmt", "rust", "tts", "yourtts"]
    assert table[6].startswith("GPU ms: ")


def test_print_table_formats_figures():
    out = io.StringIO()
    print_table({"a": ServiceStats("a", 2, 0, 1234.56, 789.01, None, "partial", 0.5)}, out=out)
    assert out.getvalue().splitlines()[2].split() == [
        "a",
        "2",
        "1234.6",
        "789.0",
        "partial",
        "0.500",
    ]


def test_demo_command(capsys: pytest.CaptureFixture[str]):
    assert main(["demo", "--seconds", "0.3"]) == 0
    output = capsys.readouterr().out
    assert "simulated GPU" in output
    assert "yourtts" in output


def test_demo_rejects_a_bad_duration(capsys: pytest.CaptureFixture[str]):
    assert main(["demo", "--seconds", "0"]) == 2
    assert "--seconds" in capsys.readouterr().err


def test_module_entry_point_and_version():
    result = subprocess.run(
        [sys.executable, "-m", "gputime", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0
    assert result.stdout.startswith("gputime ")


def test_devices_without_a_driver_says_why(capsys: pytest.CaptureFixture[str]):
    from gputime._backends import resolve_backend

    if resolve_backend("auto").name == "nvml":  # pragma: no cover - only with a GPU
        pytest.skip("an NVIDIA driver is present")
    assert main(["devices"]) == 1
    assert "no NVIDIA GPU can be measured" in capsys.readouterr().out


def test_devices_lists_what_nvml_sees(capsys: pytest.CaptureFixture[str]):
    from gputime.testing import FakeClock

    gpus = [FakeGpu(0, "GPU-aaaa"), FakeGpu(1, "GPU-bbbb", mig=True, mig_instances=("MIG-1",))]
    with installed(FakeNvml(FakeClock(1000.0), gpus)):
        assert main(["devices"]) == 0
    output = capsys.readouterr().out
    assert "GPU-aaaa" in output
    assert "MIG enabled" in output
    assert "nvmlDeviceGetSamples" in output


def test_devices_with_no_gpu(capsys: pytest.CaptureFixture[str]):
    from gputime.testing import FakeClock

    with installed(FakeNvml(FakeClock(1000.0), [])):
        assert main(["devices"]) == 1
    assert "sees no GPU" in capsys.readouterr().out
