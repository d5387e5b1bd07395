"""``gputime run``: a real command as one task, measured on the NVML double, like ``time``.

The command is always a real child process. GPU figures come from the NVML
double (``tests/nvml_double.py``) installed under the real ``pynvml``, on the
real monotonic clock: a hook before every NVML call finds the test's
descendants in ``/proc`` (its own walk, independent of gputime's) and gives each
one whose arguments carry ``gpu=N`` a per-process utilisation of N %. Signals,
exit statuses and the machine without a GPU are checked in subprocesses, as a
user runs the command.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gputime._backends.nvml import NvmlBackend
from gputime._cli import main
from gputime._cli import run as run_command
from gputime._cli._proctree import ProcessTree
from tests.nvml.support import installed
from tests.nvml_double import FakeGpu, FakeNvml
from tests.test_cli import TIMEOUT, gputime, nvml_present
from tests.trace_format import validate_file

SPEC_FIELDS = {
    "service",
    "command",
    "exit_code",
    "wall_s",
    "gpu_ms",
    "gpu_util_ms",
    "energy_mj",
    "status",
    "coverage",
    "devices",
}
#: A process that is not the command's, busy on the GPU the whole time.
STRANGER = 999_999
#: The double's GPUs draw 60 W unless told otherwise.
WATTS = 60.0


def python(script: str, *tags: str) -> list[str]:
    """A Python child running ``script``; ``gpu=N`` tags give it N % of the GPU."""
    return [sys.executable, "-c", script, *tags]


def descendants(root: int) -> list[int]:
    """Every process below ``root``, from every ``/proc/PID/stat`` (the test's own walk)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as file:
                    stat = file.read()
            except OSError:
                continue
            children.setdefault(int(stat.rpartition(")")[2].split()[1]), []).append(int(entry))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            found.append(child)
            todo.append(child)
    return found


class Driver:
    """The NVML double on the real clock, giving tagged descendants their utilisation."""

    def __init__(self, gpus: list[FakeGpu]) -> None:
        self.double = FakeNvml(time.monotonic, gpus)  # type: ignore[arg-type]
        now = time.monotonic()
        for gpu in self.double.gpus:
            # The driver "ran" since boot: start its sample grid now, not at 0.
            gpu.sampled_upto = math.floor(now / gpu.period)
        self.marked: dict[int, float] = {}
        self._lock = threading.Lock()
        self.double.before_call = self._mark

    def _mark(self, call: str) -> None:
        if call.startswith("nvmlDeviceGetProcess"):
            # pynvml asks for the number of rows, then for the rows: a process
            # marked in between would make the second call INSUFFICIENT_SIZE.
            return
        with self._lock, self.double._lock:
            for pid in descendants(os.getpid()):
                if pid in self.marked:
                    continue
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as file:
                        argv = file.read().split(b"\0")
                except OSError:
                    continue
                tags = [arg for arg in argv if arg.startswith(b"gpu=")]
                if tags:  # exec'd (before exec it still has pytest's arguments)
                    self.marked[pid] = float(tags[0][4:])
                    for device in range(len(self.double.gpus)):
                        self.double.set_process_utilization(pid, self.marked[pid], device)

    def backend(self, child_pids: Callable[[], Any]) -> NvmlBackend:
        return NvmlBackend(child_pids=child_pids, **self.double.backend_clocks())


@pytest.fixture
def gpus() -> list[FakeGpu]:
    return [FakeGpu(0, "GPU-00000000-aaaa-bbbb-cccc-000000000000")]


@pytest.fixture
def driver(gpus: list[FakeGpu], monkeypatch: pytest.MonkeyPatch) -> Iterator[Driver]:
    driver = Driver(gpus)
    monkeypatch.setattr(run_command, "nvml_backend", driver.backend)
    monkeypatch.setattr(run_command, "own_pid_namespace", lambda: False)
    with installed(driver.double):
        yield driver


def gputime_run(tmp_path: Path, *options: str, command: list[str]) -> tuple[int, dict[str, Any]]:
    """``gputime run`` in this process, with ``--json``; the exit status and the JSON."""
    path = tmp_path / "run.json"
    status = main(["run", "--interval", "0.05", "--json", str(path), *options, "--", *command])
    return status, json.loads(path.read_text())


# --------------------------------------------------------------------------- figures


def test_only_the_command_counts(
    driver: Driver, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    driver.double.set_process_utilization(STRANGER, 100)
    command = python("import time; time.sleep(0.8)", "gpu=40")
    status, result = gputime_run(tmp_path, "-s", "nmt", command=command)
    assert status == 0
    assert set(result) == SPEC_FIELDS
    assert result["service"] == "nmt"
    assert result["command"] == command
    assert result["exit_code"] == 0
    wall_ms = result["wall_s"] * 1000
    assert 800 <= wall_ms < 10_000
    # Busy from its first read on (the hook marks it at the first read after exec).
    assert 0.5 * wall_ms < result["gpu_ms"] <= wall_ms + 200
    # Its 40 %, not the stranger's 100 % (edge samples are partial: a little less).
    assert 0.3 < result["gpu_util_ms"] / result["gpu_ms"] <= 0.401
    assert result["energy_mj"] == pytest.approx(WATTS * wall_ms, rel=0.3)
    assert result["status"] == "ok"
    assert result["coverage"] == 1.0
    ((uuid, device),) = result["devices"].items()
    assert uuid == "GPU-00000000-aaaa-bbbb-cccc-000000000000"
    assert device["gpu_ms"] == result["gpu_ms"]
    assert device["status"] == "ok"
    summary = capsys.readouterr().err.splitlines()
    assert summary[0].startswith("gputime run: nmt: ")
    assert summary[1].split() == ["exit", "status", "0"]
    assert summary[3].split() == ["GPU", "time", f"{result['gpu_ms']:.1f}", "ms"]
    assert summary[6].split()[:3] == ["status", "ok", "(coverage"]
    assert "attribution process" in summary[6]
    assert summary[7].startswith(f"  [0] NVIDIA H100 80GB HBM3 {uuid}: ")


def test_descendants_started_later_count(driver: Driver, tmp_path: Path):
    script = (
        "import subprocess, sys, time; time.sleep(0.2); "
        "subprocess.run([sys.executable, '-c', 'import time; time.sleep(0.8)', 'gpu=50'])"
    )
    status, result = gputime_run(tmp_path, "-s", "nmt", command=python(script))
    assert status == 0
    assert len(driver.marked) == 1  # the grandchild
    assert 400 < result["gpu_ms"] <= result["wall_s"] * 1000
    assert 0.4 < result["gpu_util_ms"] / result["gpu_ms"] <= 0.501


def test_device_attribution_counts_the_whole_gpu(driver: Driver, tmp_path: Path):
    driver.double.set_process_utilization(STRANGER, 100)
    driver.double.set_utilization(100)
    command = python("import time; time.sleep(0.5)", "gpu=40")
    status, result = gputime_run(tmp_path, "-s", "nmt", "--attribution", "device", command=command)
    assert status == 0
    # The device's 100 %, not the command's 40 % (the first sample is partly from before).
    assert result["gpu_util_ms"] / result["gpu_ms"] > 0.85
    assert result["gpu_ms"] == pytest.approx(result["wall_s"] * 1000, abs=200)


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("pass", 0),
        ("import sys; sys.exit(3)", 3),
        ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", 128 + 9),
        ("import os, signal; os.kill(os.getpid(), signal.SIGTERM)", 128 + 15),
    ],
    ids=["ok", "exit-3", "killed", "terminated"],
)
def test_the_exit_status_is_the_commands(
    driver: Driver, tmp_path: Path, script: str, expected: int
):
    status, result = gputime_run(tmp_path, "-s", "nmt", command=python(script))
    assert status == expected
    assert result["exit_code"] == expected


# --------------------------------------------------------------------------- fallbacks


@pytest.mark.parametrize(
    "gpus",
    [[FakeGpu(0, "GPU-a", process_info_supported=False, process_legacy_supported=False)]],
)
def test_without_per_process_samples_the_whole_gpu_counts_with_a_warning(
    driver: Driver, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    driver.double.set_utilization(50)
    status, result = gputime_run(
        tmp_path, "-s", "nmt", command=python("import time; time.sleep(0.5)")
    )
    assert status == 0
    err = capsys.readouterr().err
    assert "gputime run: warning: attribution='process': the driver has no per-process" in err
    assert "counting the whole GPU instead (attribution 'device')" in err
    assert "attribution device" in err
    assert result["status"] == "ok"
    # The device's 50 % (the first sample is partly from before it was set).
    assert 0.4 < result["gpu_util_ms"] / result["gpu_ms"] <= 0.501


@pytest.mark.parametrize(
    "gpus",
    [[FakeGpu(0, "GPU-a", process_info_supported=False, process_legacy_supported=False)]],
)
def test_an_explicit_process_attribution_is_honoured(
    driver: Driver, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    driver.double.set_utilization(50)
    command = python("import sys; sys.exit(5)")
    status, result = gputime_run(tmp_path, "-s", "nmt", "--attribution", "process", command=command)
    assert status == 5
    err = capsys.readouterr().err
    assert "warning: GPU figures unavailable: attribution='process'" in err
    assert "GPU time      unavailable" in err
    assert result["status"] == "unavailable"
    assert result["gpu_ms"] == 0.0
    assert result["devices"] == {}


@pytest.mark.parametrize("gpus", [[FakeGpu(0, "GPU-a", mig=True, mig_instances=("MIG-1",))]])
def test_a_mig_gpu_runs_the_command_and_says_unavailable(
    driver: Driver, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    status, result = gputime_run(tmp_path, "-s", "nmt", command=python("pass"))
    assert status == 0
    err = capsys.readouterr().err
    assert "MIG mode" in err
    assert result["status"] == "unavailable"
    assert result["devices"]["GPU-a"]["status"] == "unavailable"


def test_in_a_pid_namespace_of_its_own_the_whole_gpu_counts(
    driver: Driver,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
):
    monkeypatch.setattr(run_command, "own_pid_namespace", lambda: True)
    driver.double.set_utilization(100)
    status, result = gputime_run(
        tmp_path, "-s", "nmt", command=python("import time; time.sleep(0.3)")
    )
    assert status == 0
    err = capsys.readouterr().err
    assert "own PID namespace" in err
    assert "attribution device" in err
    assert result["gpu_ms"] > 100


def test_own_pid_namespace(tmp_path: Path):
    host, container = tmp_path / "host", tmp_path / "container"
    host.symlink_to("pid:[4026531836]")
    container.symlink_to("pid:[4026532999]")
    assert run_command.own_pid_namespace(str(host)) is False
    assert run_command.own_pid_namespace(str(container)) is True
    assert run_command.own_pid_namespace(str(tmp_path / "missing")) is False


@pytest.mark.parametrize(
    ("backend", "message"),
    [
        (
            lambda pids: (_ for _ in ()).throw(RuntimeError("driver fell over")),
            "NVML failed to start",
        ),
        (lambda pids: object(), "not a backend"),
    ],
    ids=["raises", "not-a-backend"],
)
def test_a_measurement_that_cannot_start_never_stops_the_command(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    backend: Callable[[Any], Any],
    message: str,
):
    monkeypatch.setattr(run_command, "nvml_backend", backend)
    monkeypatch.setattr(run_command, "own_pid_namespace", lambda: False)
    status, result = gputime_run(tmp_path, "-s", "nmt", command=python("import sys; sys.exit(6)"))
    assert status == 6
    assert message in capsys.readouterr().err
    assert result["status"] == "unavailable"


def test_no_visible_gpu(
    driver: Driver,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    status, result = gputime_run(tmp_path, "-s", "nmt", command=python("pass"))
    assert status == 0
    assert "no GPU is visible to this process" in capsys.readouterr().err
    assert result["status"] == "unavailable"


@pytest.mark.skipif(nvml_present(), reason="an NVIDIA driver is present")
def test_without_a_gpu_the_command_still_runs(tmp_path: Path):
    json_path = tmp_path / "run.json"
    result = gputime(
        "run", "-s", "nmt", "--json", str(json_path), "--",
        *python("import sys; print('from the command'); sys.exit(4)"),
    )  # fmt: skip
    assert result.returncode == 4
    assert result.stdout == "from the command\n"
    err = result.stderr.splitlines()
    assert err[0].startswith("gputime run: warning: GPU figures unavailable: the NVML library")
    assert err[2].split() == ["exit", "status", "4"]
    assert err[4] == "  GPU time      unavailable (no GPU measured; see the warning above)"
    figures = json.loads(json_path.read_text())
    assert figures["status"] == "unavailable"
    assert figures["exit_code"] == 4
    assert figures["energy_mj"] is None
    assert figures["devices"] == {}


# --------------------------------------------------------------------------- per device


@pytest.fixture
def two_gpus_driver(monkeypatch: pytest.MonkeyPatch) -> Iterator[Driver]:
    driver = Driver([FakeGpu(0, "GPU-a"), FakeGpu(1, "GPU-b")])
    monkeypatch.setattr(run_command, "nvml_backend", driver.backend)
    monkeypatch.setattr(run_command, "own_pid_namespace", lambda: False)
    with installed(driver.double):
        yield driver


def test_two_gpus(two_gpus_driver: Driver, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    command = python("import time; time.sleep(0.5)", "gpu=100")
    status, result = gputime_run(tmp_path, "-s", "nmt", command=command)
    assert status == 0
    assert list(result["devices"]) == ["GPU-a", "GPU-b"]
    assert result["gpu_ms"] > result["wall_s"] * 1000  # both GPUs busy: up to 2 per second
    total = sum(device["gpu_ms"] for device in result["devices"].values())
    assert total == pytest.approx(result["gpu_ms"])
    assert result["devices"]["GPU-b"]["gpu_ms"] > 0
    assert {device["status"] for device in result["devices"].values()} == {result["status"]}
    err = capsys.readouterr().err
    assert "GPU-a:" in err
    assert "GPU-b:" in err


# --------------------------------------------------------------------------- the command


def test_a_command_not_found_is_127(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    status, result = gputime_run(tmp_path, "-s", "nmt", command=["no-such-command-gputime"])
    assert status == 127
    assert result["exit_code"] == 127
    assert "gputime run: no-such-command-gputime: command not found" in capsys.readouterr().err


def test_a_command_that_cannot_execute_is_126(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    status, _ = gputime_run(tmp_path, "-s", "nmt", command=[str(script)])
    assert status == 126
    assert "cannot execute: Permission denied" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--json", "/no/such/folder/run.json"], "no such directory /no/such/folder"),
        (["--json", "."], "is a directory"),
        (["-s", " "], "a service name cannot be blank"),
        (["--interval", "-1"], "must be a number of seconds > 0"),
        (["--attribution", "mine"], "invalid choice: 'mine'"),
    ],
)
def test_usage_errors_come_before_the_command_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[str], message: str
):
    marker = tmp_path / "ran"
    command = python(f"open({str(marker)!r}, 'w')")
    assert main(["run", "-s", "nmt", *options, "--", *command]) == 2
    err = capsys.readouterr().err
    assert "usage: gputime run" in err
    assert message in err
    assert not marker.exists()


def test_a_json_that_cannot_be_written_is_reported_and_the_status_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    folder = tmp_path / "out"
    folder.mkdir()
    # The command removes the folder the JSON was to go to.
    command = python(f"import shutil, sys; shutil.rmtree({str(folder)!r}); sys.exit(9)")
    assert main(["run", "-s", "nmt", "--json", str(folder / "run.json"), "--", *command]) == 9
    assert f"cannot write --json {folder / 'run.json'}: No such file" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["run", "-s", "x", "--", "echo", "--", "-s", "y"], ["echo", "--", "-s", "y"]),
        (["run", "-s", "x", "echo", "-s", "--", "y"], ["echo", "-s", "--", "y"]),
        (["run", "-s", "x", "--", "--json", "y"], ["--json", "y"]),
    ],
    ids=["after-dashes", "no-dashes", "option-like-command"],
)
def test_the_command_is_taken_as_given(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], command: list[str]
):
    seen: list[list[str]] = []
    monkeypatch.setattr(run_command, "run", lambda args, parser: seen.append(args.command) or 0)
    assert main(argv) == 0
    assert seen == [command]


# --------------------------------------------------------------------------- signals

TRAP = """
import signal, sys, time
def caught(signum, frame):
    print(f"got {signum}", flush=True)
    sys.exit(SIGNUM + 27)
signal.signal(SIGNUM, caught)
print("ready", flush=True)
time.sleep(30)
"""


def started(args: list[str], **kwargs: Any) -> subprocess.Popen[str]:
    """``python -m gputime ARGS`` as a user starts it, once its command printed ``ready``."""
    process = subprocess.Popen(
        [sys.executable, "-m", "gputime", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )
    assert process.stdout is not None
    assert process.stdout.readline() == "ready\n"
    return process


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signals_to_gputime_reach_the_command(signum: int):
    script = TRAP.replace("SIGNUM", f"signal.{signal.Signals(signum).name}")
    # A new session: no controlling terminal, so the SIGINT can only come from kill().
    process = started(["run", "-s", "nmt", "--", *python(script)], start_new_session=True)
    with process:
        process.send_signal(signum)
        stdout, stderr = process.communicate(timeout=TIMEOUT)
    assert stdout == f"got {signum}\n"
    assert process.returncode == signum + 27  # the command's own exit status
    assert "Traceback" not in stderr


def test_a_command_ended_by_a_forwarded_signal_is_128_plus_n():
    script = "import time; print('ready', flush=True); time.sleep(30)"
    with started(["run", "-s", "nmt", "--", *python(script)]) as process:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=TIMEOUT)
    assert process.returncode == 128 + signal.SIGTERM


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs a pseudo-terminal")
def test_ctrl_c_at_a_terminal_reaches_the_command_once():
    """The terminal sends SIGINT to gputime and the command: gputime adds no second one."""
    import pty

    script = """
import signal, sys, time
count = 0
def caught(signum, frame):
    global count
    count += 1
signal.signal(signal.SIGINT, caught)
print("ready", flush=True)
deadline = time.monotonic() + 20
while not count and time.monotonic() < deadline:
    time.sleep(0.01)
time.sleep(0.5)  # a forwarded second SIGINT would land now
print(f"count {count}", flush=True)
sys.exit(7)
"""
    argv = [sys.executable, "-m", "gputime", "run", "-s", "nmt", "--", *python(script)]
    pid, terminal = pty.fork()
    if pid == 0:  # pragma: no cover - the child execs at once
        os.execv(sys.executable, argv)
    output = b""
    try:
        deadline = time.monotonic() + TIMEOUT
        while b"ready" not in output and time.monotonic() < deadline:
            output += os.read(terminal, 1024)
        os.write(terminal, b"\x03")  # Ctrl-C
        while time.monotonic() < deadline:
            try:
                chunk = os.read(terminal, 1024)
            except OSError:  # EIO: every process on the terminal is gone
                break
            if not chunk:
                break
            output += chunk
    finally:
        _, wait_status = os.waitpid(pid, 0)
        os.close(terminal)
    assert b"count 1" in output
    assert os.waitstatus_to_exitcode(wait_status) == 7


def test_a_signal_before_the_command_exists_reaches_it_once_it_does():
    forwarder = run_command._Forwarder()
    forwarder(signal.SIGTERM, None)
    assert forwarder.pending == [signal.SIGTERM]
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) as child:
        forwarder.attach(child)
        assert child.wait(timeout=TIMEOUT) == -signal.SIGTERM
    assert forwarder.pending == []


def test_terminal_reached_without_a_controlling_terminal(tmp_path: Path):
    assert not run_command.terminal_reached(os.getpid(), tty=str(tmp_path / "no-tty"))
    primary, secondary = os.openpty()
    try:
        # A terminal, but not this process's controlling one.
        assert not run_command.terminal_reached(os.getpid(), tty=os.ttyname(secondary))
    finally:
        os.close(primary)
        os.close(secondary)


def test_descendants_are_looked_for_between_reads(
    driver: Driver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """With cheap child lists the main thread rescans every ``TREE_TICK`` while it waits."""
    refreshed: list[float] = []
    original = ProcessTree.refresh

    def refresh(self: ProcessTree) -> frozenset[int]:
        refreshed.append(time.monotonic())
        return original(self)

    monkeypatch.setattr(ProcessTree, "refresh", refresh)
    status, _ = gputime_run(tmp_path, "-s", "nmt", command=python("import time; time.sleep(0.5)"))
    assert status == 0
    assert len(refreshed) >= 2


def test_a_signal_after_the_command_started_is_passed_on():
    forwarder = run_command._Forwarder()
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) as child:
        forwarder.attach(child)
        forwarder(signal.SIGTERM, None)
        assert child.wait(timeout=TIMEOUT) == -signal.SIGTERM


def test_a_sigint_the_terminal_already_sent_is_not_sent_again(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(run_command, "terminal_reached", lambda pid: True)
    forwarder = run_command._Forwarder()
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) as child:
        forwarder.attach(child)
        forwarder(signal.SIGINT, None)
        with pytest.raises(subprocess.TimeoutExpired):
            child.wait(timeout=0.3)  # still running: it got no SIGINT from gputime
        forwarder(signal.SIGTERM, None)  # SIGTERM always goes
        assert child.wait(timeout=TIMEOUT) == -signal.SIGTERM


# --------------------------------------------------------------------------- --trace, --plot


def test_trace_of_a_run_on_a_gpu(driver: Driver, tmp_path: Path):
    trace_path = tmp_path / "run.json.trace"
    command = python("import time; time.sleep(0.6)", "gpu=40")
    status, result = gputime_run(tmp_path, "-s", "nmt", "--trace", str(trace_path), command=command)
    assert status == 0
    events = validate_file(trace_path)
    (task,) = [e for e in events if e["ph"] == "X"]
    assert task["name"] == "gpu_task nmt"
    assert task["args"]["gpu_ms"] == result["gpu_ms"]
    assert task["args"]["status"] == result["status"]
    assert task["dur"] == pytest.approx(result["wall_s"] * 1e6, rel=0.2)
    util = [e["args"]["percent"] for e in events if e["ph"] == "C" and e["name"] == "utilization"]
    assert 40.0 in util  # the command's own utilisation (process attribution)
    power = [e for e in events if e["ph"] == "C" and e["name"] == "power"]
    assert power
    processes = {
        e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "process_name"
    }
    assert processes == {
        "GPU 0: NVIDIA H100 80GB HBM3 (GPU-00000000-aaaa-bbbb-cccc-000000000000)",
        "nmt",
    }


def test_trace_and_plot_without_a_gpu(tmp_path: Path):
    """As a user runs it: the command runs, the trace has its task, the picture is drawn."""
    pytest.importorskip("matplotlib")
    trace_path, plot_path = tmp_path / "run.json", tmp_path / "run.png"
    result = gputime(
        "run", "-s", "nmt", "--trace", str(trace_path), "--plot", str(plot_path), "--",
        *python("import time; time.sleep(0.1)"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    events = validate_file(trace_path)
    (task,) = [e for e in events if e["ph"] == "X"]
    assert task["args"]["status"] == "unavailable"
    assert not [e for e in events if e["ph"] == "C"]
    assert plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_is_3_and_the_command_does_not_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    marker = tmp_path / "ran"
    status = main(
        ["run", "-s", "nmt", "--plot", str(tmp_path / "run.png"), "--",
         *python(f"open({str(marker)!r}, 'w')")]
    )  # fmt: skip
    assert status == 3
    assert not marker.exists()
    assert capsys.readouterr().err == (
        "gputime run: --plot: drawing a timeline needs matplotlib: pip install 'gputime[plot]'\n"
    )


def test_a_plot_that_fails_is_reported_and_the_status_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    pytest.importorskip("matplotlib")
    json_path = tmp_path / "run.json"
    # matplotlib knows no such format: the plot fails, the other outputs are written.
    status = main(
        ["run", "-s", "nmt", "--plot", str(tmp_path / "run.nosuchformat"),
         "--json", str(json_path), "--", *python("import sys; sys.exit(5)")]
    )  # fmt: skip
    assert status == 5
    assert json.loads(json_path.read_text())["exit_code"] == 5
    assert "gputime run: cannot write --plot " in capsys.readouterr().err
