"""The ``gputime`` command line: conventions, ``demo`` and ``devices``.

Commands run as a user runs them (``python -m gputime ...`` in a subprocess)
wherever what is checked is what a user sees: exit status, stdout against
stderr, usage text, a terminal against a pipe, Ctrl-C. ``gputime run`` and
``gputime watch`` have their own files.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gputime._cli import COMMANDS, main
from gputime._cli._progress import Progress
from gputime._demo import print_table, run_demo
from gputime._ledger import ServiceStats
from gputime.testing import FakeClock
from tests.nvml.support import installed
from tests.nvml_double import FakeGpu, FakeNvml
from tests.trace_format import validate_file

#: Upper bound for one command run in a subprocess.
TIMEOUT = 60


def gputime(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """``python -m gputime ARGS`` as a user runs it; stdin closed, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "gputime", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
        stdin=subprocess.DEVNULL,
        **kwargs,  # type: ignore[call-overload]
    )


def nvml_present() -> bool:
    from gputime._backends import resolve_backend

    return resolve_backend("auto").name == "nvml"


# --------------------------------------------------------------------------- conventions


def test_version():
    for flag in ("-V", "--version"):
        result = gputime(flag)
        assert result.returncode == 0
        assert result.stdout.startswith("gputime ")
        assert result.stderr == ""


@pytest.mark.parametrize("command", [None, *(module.NAME for module in COMMANDS)])
def test_every_help_has_an_example(command: str | None):
    result = gputime(*([command] if command else []), "--help")
    assert result.returncode == 0
    assert "examples:" in result.stdout
    example = result.stdout.split("examples:", 1)[1]
    assert f"gputime {command or ''}".strip() in example
    assert result.stderr == ""


def test_no_command_is_a_usage_error():
    result = gputime()
    assert result.returncode == 2
    assert result.stdout == ""
    assert "usage: gputime" in result.stderr


def test_an_unknown_command_shows_the_top_level_usage():
    result = gputime("frobnicate")
    assert result.returncode == 2
    assert "invalid choice: 'frobnicate'" in result.stderr
    assert "usage: gputime [-h] [-V] COMMAND" in result.stderr


@pytest.mark.parametrize(
    ("args", "usage", "message"),
    [
        (["demo", "--bogus"], "usage: gputime demo", "unrecognized arguments: --bogus"),
        (["devices", "--jsn"], "usage: gputime devices", "unrecognized arguments: --jsn"),
        (["demo", "--seconds", "abc"], "usage: gputime demo", "invalid float value"),
        (["demo", "--seconds", "0"], "usage: gputime demo", "--seconds must be in (0, 3600]"),
        (["watch", "--interval", "0"], "usage: gputime watch", "must be a number of seconds > 0"),
        (["watch", "--bogus"], "usage: gputime watch", "unrecognized arguments: --bogus"),
        (["run", "--bogus", "-s", "x", "--", "true"], "usage: gputime run", "--bogus"),
        (["run", "-s", "x"], "usage: gputime run", "no command given"),
    ],
)
def test_a_bad_subcommand_option_shows_that_subcommands_usage(
    args: list[str], usage: str, message: str
):
    result = gputime(*args)
    assert result.returncode == 2
    assert result.stdout == ""
    assert usage in result.stderr
    assert "usage: gputime [-h]" not in result.stderr
    assert message in result.stderr


def test_main_returns_the_usage_status_rather_than_exiting(capsys: pytest.CaptureFixture[str]):
    assert main(["demo", "--seconds", "nan"]) == 2
    assert "usage: gputime demo" in capsys.readouterr().err
    assert main(["--help"]) == 0
    assert "examples:" in capsys.readouterr().out


def test_a_keyboard_interrupt_anywhere_is_status_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    from gputime._cli import devices

    def interrupted(*args: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(devices, "run", interrupted)
    assert main(["devices"]) == 130
    assert capsys.readouterr().err == "gputime devices: interrupted\n"


# --------------------------------------------------------------------------- devices


@pytest.mark.skipif(nvml_present(), reason="an NVIDIA driver is present")
def test_devices_without_a_gpu_exits_1_with_the_reason_on_stderr():
    for args in (["devices"], ["devices", "--json"]):
        result = gputime(*args)
        assert result.returncode == 1
        assert result.stdout == ""
        assert result.stderr.startswith("gputime devices: no NVIDIA GPU can be measured: ")
        assert "libnvidia-ml" in result.stderr


@pytest.fixture
def two_gpus() -> Iterator[FakeNvml]:
    """One GPU stamping boot time, with samples in its buffer; one in MIG mode."""
    clock = FakeClock(10.0)
    gpus = [
        FakeGpu(0, "GPU-aaaa", timestamp_base="boottime"),
        FakeGpu(1, "GPU-bbbb", mig=True, mig_instances=("MIG-1",)),
    ]
    double = FakeNvml(clock, gpus)
    double.worked_earlier()
    with installed(double):
        yield double


def list_with_double_clocks(double: FakeNvml, monkeypatch: pytest.MonkeyPatch) -> None:
    """``gputime devices`` reads the double's clocks (to tell which one it stamps with)."""
    from gputime._backends import nvml

    real = nvml.list_devices
    monkeypatch.setattr(
        nvml, "list_devices", lambda **kwargs: real(**double.backend_clocks(), **kwargs)
    )


def test_devices_lists_what_nvml_sees(
    two_gpus: FakeNvml, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    list_with_double_clocks(two_gpus, monkeypatch)
    assert main(["devices"]) == 0
    output = capsys.readouterr()
    assert output.err == ""
    lines = output.out.splitlines()
    assert lines[0] == "[0] NVIDIA H100 80GB HBM3  GPU-aaaa"
    assert lines[1].split() == ["sample", "period", "0.167", "s"]
    assert lines[2].split(None, 1) == ["timestamps", "time since boot (CLOCK_BOOTTIME)"]
    assert "nvmlDeviceGetSamples" in lines[3]
    assert lines[3].endswith("supported")
    mig = lines.index("[1] NVIDIA H100 80GB HBM3  GPU-bbbb  MIG enabled: utilisation unavailable")
    assert lines[mig + 2].split(None, 1) == ["timestamps", "unknown (no sample buffered)"]


def test_devices_json(
    two_gpus: FakeNvml, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    list_with_double_clocks(two_gpus, monkeypatch)
    assert main(["devices", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    first, second = document["devices"]
    assert document["gputime_version"]
    assert first["uuid"] == "GPU-aaaa"
    assert first["index"] == 0
    assert first["mig_enabled"] is False
    assert first["sample_period"] == pytest.approx(1 / 6, abs=1e-5)  # µs timestamps
    assert first["timestamp_base"] == "boottime"
    assert first["calls"]["nvmlDeviceGetSamples"] == "supported"
    assert first["calls"]["nvmlDeviceGetTotalEnergyConsumption"] == "supported"
    assert first["error"] is None
    assert second["mig_enabled"] is True
    assert second["sample_period"] is None
    assert second["timestamp_base"] is None
    assert second["calls"]["nvmlDeviceGetSamples"] == "not supported"


def test_devices_shows_a_device_nvml_cannot_open(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    double = FakeNvml(FakeClock(10.0), [FakeGpu(0, "GPU-aaaa")])
    double.fail("nvmlDeviceGetUUID", 15)  # GPU_IS_LOST
    with installed(double):
        assert main(["devices"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("[0] ?  nvml-index-0")
    assert lines[1].startswith("    error: NVML_ERROR_GPU_IS_LOST")
    assert len(lines) == 2


def test_devices_with_no_gpu(capsys: pytest.CaptureFixture[str]):
    with installed(FakeNvml(FakeClock(1000.0), [])):
        assert main(["devices"]) == 1
    output = capsys.readouterr()
    assert output.out == ""
    assert output.err == "gputime devices: NVML runs but sees no GPU\n"


# --------------------------------------------------------------------------- demo


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


def test_demo_reports_progress_and_stops_when_told():
    import threading

    stop = threading.Event()
    seen: list[tuple[float, int]] = []

    def progress(elapsed: float, stats: object) -> None:
        seen.append((elapsed, len(stats)))  # type: ignore[arg-type]
        if elapsed > 0.5:
            stop.set()

    out = io.StringIO()
    began = time.monotonic()
    stats = run_demo(30, out=out, stop=stop, progress=progress)
    assert time.monotonic() - began < 5  # not the 30 s asked for
    assert len(seen) >= 3
    assert [elapsed for elapsed, _ in seen] == sorted(elapsed for elapsed, _ in seen)
    assert out.getvalue() == ""  # interrupted: no table
    assert stats  # the figures so far


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


def test_demo_command_prints_the_table_on_stdout_and_no_progress_when_piped():
    result = gputime("demo", "--seconds", "0.5")
    assert result.returncode == 0
    assert result.stdout.startswith("gputime demo: 4 services on a simulated GPU for 0.5 s")
    assert "yourtts" in result.stdout
    assert result.stderr == ""  # no progress bar into a pipe


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_demo_shows_progress_on_a_terminal():
    """stderr a terminal: a progress line, redrawn in place, erased before the table."""
    primary, secondary = os.openpty()
    try:
        with subprocess.Popen(
            [sys.executable, "-m", "gputime", "demo", "--seconds", "1"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=secondary,
        ) as process:
            os.close(secondary)
            stdout, _ = process.communicate(timeout=TIMEOUT)
            terminal = read_all(primary)
    finally:
        os.close(primary)
    assert process.returncode == 0
    assert b"yourtts" in stdout
    assert b"\r[" in terminal
    assert b"tasks" in terminal
    assert b"% " in terminal
    assert terminal.endswith(b"\r")  # erased at the end


def read_all(fd: int) -> bytes:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the other side closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def test_progress_draws_only_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    piped = io.StringIO()
    Progress(10, piped).update(5)
    assert piped.getvalue() == ""
    terminal = Terminal()
    progress = Progress(10, terminal)
    progress.update(5, "12 tasks")
    progress.update(20)
    progress.close()
    drawn = terminal.getvalue().split("\r")
    assert drawn[1] == f"[{'#' * 12}{'.' * 12}]  50% 5.0/10 s  12 tasks"
    assert drawn[2].startswith(f"[{'#' * 24}] 100% 20.0/10 s")
    assert len(drawn[2]) == len(drawn[1])  # padded over the longer line
    assert drawn[3].strip() == ""
    assert drawn[4] == ""


def test_progress_on_a_closed_stream_is_off():
    closed = io.StringIO()
    closed.close()
    assert not Progress(1, closed).enabled


def test_ctrl_c_ends_the_demo_at_once_with_130_and_no_traceback():
    with subprocess.Popen(
        [sys.executable, "-m", "gputime", "demo", "--seconds", "60"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        assert process.stdout is not None
        assert process.stdout.readline().startswith("gputime demo: ")
        time.sleep(0.3)  # the workload is running
        sent = time.monotonic()
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=TIMEOUT)
        took = time.monotonic() - sent
    assert process.returncode == 130
    assert took < 3  # at once, not at the end of the 60 s
    assert stderr == "gputime demo: interrupted\n"


# --------------------------------------------------------------------------- in this process


def test_demo_command_in_process(capsys: pytest.CaptureFixture[str]):
    assert main(["demo", "--seconds", "0.3"]) == 0
    output = capsys.readouterr()
    assert output.out.startswith("gputime demo: 4 services on a simulated GPU for 0.3 s")
    assert "yourtts" in output.out
    assert output.err == ""


def test_sigint_in_process_ends_the_demo_and_restores_the_handler(
    capsys: pytest.CaptureFixture[str],
):
    import threading

    before = signal.getsignal(signal.SIGINT)
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    began = time.monotonic()
    try:
        assert main(["demo", "--seconds", "30"]) == 130
    finally:
        timer.cancel()
    assert time.monotonic() - began < 5
    assert capsys.readouterr().err == "gputime demo: interrupted\n"
    assert signal.getsignal(signal.SIGINT) is before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["demo", "--bogus"], "unrecognized arguments: --bogus"),
        (["watch", "--interval", "abc"], "'abc' is not a number of seconds"),
        (["run", "-s", "x"], "no command given"),
    ],
)
def test_usage_errors_in_process(capsys: pytest.CaptureFixture[str], args: list[str], message: str):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"usage: gputime {args[0]}" in err
    assert message in err


def test_an_output_folder_that_cannot_be_written(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    # As root every folder is writable: os.access says what it would say to a user.
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    assert main(["run", "-s", "x", "--json", str(tmp_path / "run.json"), "--", "true"]) == 2
    assert f"cannot write in {tmp_path}" in capsys.readouterr().err


@pytest.mark.skipif(nvml_present(), reason="an NVIDIA driver is present")
def test_devices_without_a_gpu_in_process(capsys: pytest.CaptureFixture[str]):
    assert main(["devices", "--json"]) == 1
    output = capsys.readouterr()
    assert output.out == ""
    assert "no NVIDIA GPU can be measured" in output.err


def test_demo_writes_a_trace_and_a_picture(tmp_path: Path):
    """As a user runs it; the trace opens in Perfetto UI and chrome://tracing as it is."""
    pytest.importorskip("matplotlib")
    trace_path, plot_path = tmp_path / "demo.json", tmp_path / "demo.png"
    result = gputime(
        "demo",
        "--seconds",
        "1",
        "--seed",
        "3",
        "--trace",
        str(trace_path),
        "--plot",
        str(plot_path),
    )
    assert result.returncode == 0, result.stderr
    assert "nmt" in result.stdout
    events = validate_file(trace_path)
    processes = {e["args"]["name"] for e in events if e["name"] == "process_name"}
    assert processes == {"GPU 0: Simulated GPU (SIM-0)", "nmt", "tts", "yourtts", "rust"}
    threads = {e["args"]["name"] for e in events if e["name"] == "thread_name"}
    assert "nmt #2" in threads  # two workers: overlapping tasks on a second thread
    assert [e for e in events if e["ph"] == "C" and e["args"]["percent"] > 0]
    tasks = [e for e in events if e["ph"] == "X"]
    assert {e["args"]["service"] for e in tasks} == {"nmt", "tts", "yourtts", "rust"}
    assert "rust job-1" in {e["name"] for e in tasks}
    assert plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert 10_000 < plot_path.stat().st_size < 200_000


def test_demo_plot_without_matplotlib_is_3_before_the_workload(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["demo", "--seconds", "0.2", "--plot", str(tmp_path / "demo.png")]) == 3
    output = capsys.readouterr()
    assert output.out == ""  # the workload never started
    assert output.err == (
        "gputime demo: --plot: drawing a timeline needs matplotlib: pip install 'gputime[plot]'\n"
    )
    assert not (tmp_path / "demo.png").exists()


def test_demo_trace_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    path = tmp_path / "demo.json"
    assert main(["demo", "--seconds", "0.3", "--trace", str(path)]) == 0
    validate_file(path)
    assert "gputime demo" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["demo", "run"])
def test_an_output_is_one_entry(
    command: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
):
    """How ``--trace`` and ``--plot`` are to be added: an option, a writer, tracker options."""
    from gputime._cli import demo, run
    from gputime._cli._common import Output

    module = {"demo": demo, "run": run}[command]
    seen: list[tuple[float, bool]] = []

    def write(path: str, result: object) -> None:
        tracker = result.tracker  # type: ignore[attr-defined]
        seen.append((tracker.threshold, tracker.closed))
        Path(path).write_text("written")

    dump = Output("--dump-it", "a test output", write, tracker_options={"threshold": 5.0})
    monkeypatch.setattr(module, "OUTPUTS", (*module.OUTPUTS, dump))
    path = tmp_path / "out.txt"
    args = ["--seconds", "0.2"] if command == "demo" else ["-s", "x", "--", "true"]
    assert main([command, "--dump-it", str(path), *args]) == 0
    assert path.read_text() == "written"
    assert seen == [(5.0, False)]  # the tracker had the output's options, and was open
    capsys.readouterr()
    assert main([command, "--help"]) == 0
    assert "--dump-it PATH" in capsys.readouterr().out
