"""``gputime watch``: a real process exporting through opentelemetry-exporter-prometheus.

The exporting process is ``tests/exporting_app.py`` (tasks on a simulated GPU on a
fake clock, so the figures it exports are exact); ``gputime watch`` runs as a user
runs it, in a subprocess. The table's arithmetic (rates, restarts, missing series)
is checked in this process on hand-made scrapes.
"""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from gputime._cli import main
from gputime._cli.watch import (
    DEFAULT_URL,
    ServiceRow,
    Snapshot,
    WatchError,
    normalise_url,
    parse,
    rate,
    render,
    state,
)
from tests.test_cli import TIMEOUT, gputime

APP = Path(__file__).with_name("exporting_app.py")


class App:
    """The exporting process: its port, and commands sent to it (``advance S``, ``reset``)."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(APP)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line.startswith("port "), line
        self.url = f"http://127.0.0.1:{int(line.split()[1])}/metrics"

    def tell(self, command: str) -> None:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        assert self.process.stdout.readline() == "ok\n"

    def stop(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            self.process.wait(timeout=TIMEOUT)
        assert self.process.stdout is not None
        self.process.stdout.close()


@pytest.fixture
def app() -> Iterator[App]:
    app = App()
    yield app
    app.stop()


def rows(table: str) -> dict[str, list[str]]:
    """The table's rows by service: every column after the name."""
    lines = table.splitlines()
    assert lines[0].split() == [
        "service", "tasks", "active", "GPU", "ms", "GPU", "ms/s", "util", "ms", "energy", "J",
        "state",
    ]  # fmt: skip
    assert set(lines[1]) == {"-"}
    return {line.split()[0]: line.split()[1:] for line in lines[2:] if line.strip()}


# --------------------------------------------------------------------------- a real exporter


def test_once_shows_the_exported_services(app: App):
    result = gputime("watch", app.url, "--once")
    assert result.returncode == 0
    assert result.stderr == ""
    assert rows(result.stdout) == {
        "nmt": ["2", "0", "1250.0", "-", "1250.0", "-", "idle"],
        "tts": ["0", "1", "2000.0", "-", "1000.0", "-", "running"],
    }


def test_host_and_port_are_enough(app: App):
    host_port = app.url.removeprefix("http://").removesuffix("/metrics")
    result = gputime("watch", host_port, "--once")
    assert result.returncode == 0
    assert "tts" in result.stdout


def test_live_refreshes_with_rates_until_ctrl_c(app: App):
    with subprocess.Popen(
        [sys.executable, "-m", "gputime", "watch", app.url, "--interval", "0.2"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as watch:
        frames = Frames(watch)
        first = frames.next_with(lambda table: "tts" in table)
        assert first["tts"][2] == "2000.0"
        app.tell("advance 1")  # tts: one more second at 50 %
        later = frames.next_with(lambda table: rows(table)["tts"][2] == "3000.0")
        assert later["tts"][4] == "1500.0"
        # 1000 GPU ms since the previous scrape, about 0.2 s earlier.
        assert float(later["tts"][3]) > 1000
        app.tell("reset")  # gputime's reset: the exported counters go on
        calm = frames.next_with(lambda table: rows(table)["tts"][3] == "0.0")
        assert calm["nmt"][6] == "idle"
        app.stop()  # the exporting process is gone: watch says so and goes on
        frames.next_with(lambda table: "cannot read" in table, table=False)
        watch.send_signal(signal.SIGINT)
        _, stderr = watch.communicate(timeout=TIMEOUT)
    assert watch.returncode == 130
    assert "Traceback" not in stderr


class Frames:
    """Frames of a live ``gputime watch`` writing to a pipe (blank-line separated)."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self._frames: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, args=(process,), daemon=True).start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        frame: list[str] = []
        for line in process.stdout:
            if line == "\n":
                self._frames.put("".join(frame))
                frame = []
            else:
                frame.append(line)

    def next_with(self, wanted: object, *, table: bool = True) -> dict[str, list[str]]:
        """The next frame whose body satisfies ``wanted`` (waits at most ``TIMEOUT``)."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            frame = self._frames.get(timeout=max(0.0, deadline - time.monotonic()))
            header, _, body = frame.partition("\n")
            assert header.startswith("gputime watch http://127.0.0.1:")
            assert header.endswith("(Ctrl-C to quit)")
            if wanted(body):  # type: ignore[operator]
                return rows(body) if table else {}


# --------------------------------------------------------------------------- bad endpoints


def test_an_unreachable_endpoint(unused_url: str):
    result = gputime("watch", unused_url, "--once")
    assert result.returncode == 4
    assert result.stdout == ""
    assert result.stderr.startswith(f"gputime watch: cannot read {unused_url}: ")
    assert "refused" in result.stderr


@pytest.fixture
def unused_url() -> str:
    from tests.e2e.conftest import free_port

    return f"http://127.0.0.1:{free_port()}/metrics"


class Serve:
    """An HTTP server on 127.0.0.1 answering every GET with one status and body."""

    def __init__(self, status: int, body: bytes) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/metrics"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=TIMEOUT)


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (200, b"<html><body>a dashboard</body></html>\n", "not Prometheus's text format"),
        (404, b"no such page\n", "HTTP 404"),
    ],
)
def test_an_endpoint_that_is_not_a_metrics_endpoint(
    capsys: pytest.CaptureFixture[str], status: int, body: bytes, message: str
):
    server = Serve(status, body)
    try:
        assert main(["watch", server.url, "--once"]) == 4
    finally:
        server.close()
    output = capsys.readouterr()
    assert output.out == ""
    assert message in output.err


def test_an_endpoint_without_gputime_metrics(capsys: pytest.CaptureFixture[str]):
    server = Serve(200, b"# TYPE up gauge\nup 1\n")
    try:
        assert main(["watch", server.url, "--once"]) == 0
    finally:
        server.close()
    output = capsys.readouterr()
    assert rows(output.out) == {}
    assert "no gputime services at" in output.err


def test_a_slow_endpoint_times_out(monkeypatch: pytest.MonkeyPatch):
    from gputime._cli import watch

    class Silent(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            time.sleep(2)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Silent)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with pytest.raises(WatchError, match=r"no answer within 0\.2 s"):
            watch.fetch(f"http://127.0.0.1:{server.server_address[1]}/", timeout=0.2)
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("url", ["ftp://example.com/metrics", "http://", "file:///etc/passwd"])
def test_a_url_that_is_not_http_is_a_usage_error(url: str):
    result = gputime("watch", url, "--once")
    assert result.returncode == 2
    assert "usage: gputime watch" in result.stderr
    assert "is not an http(s) URL" in result.stderr


def test_without_prometheus_client_it_says_which_extra(tmp_path: Path):
    script = (
        "import sys; sys.modules['prometheus_client'] = None; "
        "from gputime._cli import main; sys.exit(main(['watch', '--once']))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 3
    assert result.stderr == (
        "gputime watch: needs the prometheus-client package: pip install 'gputime[watch]'\n"
    )


# --------------------------------------------------------------------------- the table


@pytest.mark.parametrize(
    ("given", "url"),
    [
        ("localhost:9464", DEFAULT_URL),
        ("http://10.0.0.5:9100", "http://10.0.0.5:9100/metrics"),
        ("https://host/custom/path?x=1", "https://host/custom/path?x=1"),
    ],
)
def test_normalise_url(given: str, url: str):
    assert normalise_url(given) == url


def test_parse_sums_series_per_service_and_reads_every_spelling():
    text = """\
# TYPE gputime_gpu_busy_time_seconds counter
gputime_gpu_busy_time_seconds_total{gputime_service="nmt",hw_id="GPU-a"} 1.5
gputime_gpu_busy_time_seconds_total{gputime_service="nmt",hw_id="GPU-b"} 0.5
# TYPE gputime_gpu_util_time counter
gputime_gpu_util_time_total{gputime_service="nmt"} 0.25
# TYPE gputime_gpu_energy_joules counter
gputime_gpu_energy_joules_total{gputime_service="nmt"} 12.5
# TYPE gputime_task_duration_seconds histogram
gputime_task_duration_seconds_bucket{gputime_service="nmt",le="+Inf"} 3
gputime_task_duration_seconds_count{gputime_service="nmt"} 3
gputime_task_duration_seconds_count{gputime_service="nmt",error_type="ValueError"} 1
gputime_task_duration_seconds_sum{gputime_service="nmt"} 9
# TYPE gputime_task_active gauge
gputime_task_active{gputime_service="nmt"} 2
# TYPE other_total counter
other_total{gputime_service="nmt"} 99
# TYPE gputime_gpu_busy_time_seconds_created gauge
gputime_gpu_busy_time_seconds_created{gputime_service="nmt"} 1700000000
gputime_gpu_busy_time_seconds_total 7
"""
    assert parse(text) == {
        "nmt": ServiceRow("nmt", tasks=4, active=2, busy_s=2.0, util_s=0.25, energy_j=12.5)
    }


def snapshot(at: float, **rows: ServiceRow) -> Snapshot:
    return Snapshot(at, dict(rows))


def test_rate_over_the_last_interval():
    before = snapshot(10.0, a=ServiceRow("a", busy_s=1.0), b=ServiceRow("b"))
    now = snapshot(
        12.0,
        a=ServiceRow("a", busy_s=4.0),
        b=ServiceRow("b", busy_s=1.0),
        c=ServiceRow("c", busy_s=1.0),
    )
    assert rate(now, None, "a") is None  # one scrape: no rate yet
    assert rate(now, before, "a") == 1500.0  # 3 s of GPU time in 2 s: 1.5 GPUs
    assert rate(now, before, "b") is None  # no series before
    assert rate(now, before, "c") is None  # a new service
    assert rate(now, snapshot(12.0, a=ServiceRow("a", busy_s=1.0)), "a") is None  # no time
    restarted = snapshot(14.0, a=ServiceRow("a", busy_s=0.5))
    assert rate(restarted, now, "a") == 250.0  # as Prometheus's rate(): from zero


def test_state():
    assert state(ServiceRow("a", active=1), None) == "running"
    assert state(ServiceRow("a", active=0), None) == "idle"
    assert state(ServiceRow("a"), None) == "idle"
    before = ServiceRow("a", tasks=5, busy_s=2.0)
    assert state(ServiceRow("a", tasks=6, busy_s=2.5, active=1), before) == "running"
    assert state(ServiceRow("a", tasks=1, busy_s=2.5), before) == "restarted"
    assert state(ServiceRow("a", tasks=6, busy_s=0.1, active=1), before) == "restarted"


def test_render():
    before = snapshot(0.0, nmt=ServiceRow("nmt", busy_s=1.0))
    now = snapshot(
        2.0,
        nmt=ServiceRow("nmt", tasks=3, active=1, busy_s=2.0, util_s=1.5, energy_j=7.25),
        **{"a-long-service-name": ServiceRow("a-long-service-name", active=0, busy_s=0.0)},
    )
    table = render(now, before)
    lines = table.splitlines()
    # The first column is as wide as the longest name.
    assert lines[0].startswith("service".ljust(len("a-long-service-name")) + "   tasks")
    assert rows(table) == {
        "a-long-service-name": ["0", "0", "0.0", "-", "-", "-", "idle"],
        "nmt": ["3", "1", "2000.0", "500.0", "1500.0", "7.250", "running"],
    }
    uncounted = snapshot(0.0, x=ServiceRow("x", busy_s=1.0))
    assert rows(render(uncounted, None))["x"][0] == "-"  # no task series anywhere


# --------------------------------------------------------------------------- in this process


class Terminal:
    """A stdout that is a terminal, recording what was written."""

    def __init__(self) -> None:
        self.written: list[str] = []

    def isatty(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.written.append(text)
        return len(text)

    def flush(self) -> None:
        pass


def stop_after(monkeypatch: pytest.MonkeyPatch, frames: int) -> list[float]:
    """Make the live loop's sleep raise KeyboardInterrupt (Ctrl-C) at its ``frames``-th call."""
    from gputime._cli import watch

    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) >= frames:
            raise KeyboardInterrupt

    monkeypatch.setattr(watch.time, "sleep", sleep)
    return slept


def test_live_on_a_terminal_redraws_in_place(monkeypatch: pytest.MonkeyPatch):
    from gputime._cli import watch

    server = Serve(200, b'gputime_task_active{gputime_service="nmt"} 1\n')
    slept = stop_after(monkeypatch, 2)
    terminal = Terminal()
    try:
        with pytest.raises(KeyboardInterrupt):
            watch._live(server.url, 0.5, terminal)  # type: ignore[arg-type]
    finally:
        server.close()
    assert slept == [0.5, 0.5]
    assert len(terminal.written) == 2
    for frame in terminal.written:
        assert frame.startswith("\x1b[H\x1b[2J")  # home, clear
        assert not frame.endswith("\n\n")
        assert rows(frame.split("\n", 1)[1])["nmt"][-1] == "running"


def test_live_goes_on_while_the_endpoint_is_unreachable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], unused_url: str
):
    stop_after(monkeypatch, 2)
    assert main(["watch", unused_url, "--interval", "0.1"]) == 130
    output = capsys.readouterr()
    frames = output.out.split("\n\n")
    assert [frame.count(f"cannot read {unused_url}") for frame in frames[:2]] == [1, 1]
    assert output.err == "gputime watch: interrupted\n"


def test_live_with_no_services_yet(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    server = Serve(200, b"up 1\n")
    stop_after(monkeypatch, 1)
    try:
        assert main(["watch", server.url]) == 130
    finally:
        server.close()
    assert "(no gputime services yet)" in capsys.readouterr().out


def test_in_process_once_and_usage(capsys: pytest.CaptureFixture[str], unused_url: str):
    assert main(["watch", unused_url, "--once"]) == 4
    assert "cannot read" in capsys.readouterr().err
    assert main(["watch", "gopher://x", "--once"]) == 2
    assert "is not an http(s) URL" in capsys.readouterr().err


def test_missing_extra_in_process(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    monkeypatch.setitem(sys.modules, "prometheus_client.parser", None)
    assert main(["watch", "--once"]) == 3
    assert "pip install 'gputime[watch]'" in capsys.readouterr().err


def test_an_endpoint_that_hangs_up():
    """The connection closes without an answer: a read error, not a crash."""
    import socket

    from gputime._cli import watch

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def hang_up() -> None:
        connection, _ = listener.accept()
        connection.recv(1024)
        connection.close()

    thread = threading.Thread(target=hang_up, daemon=True)
    thread.start()
    try:
        with pytest.raises(WatchError, match="cannot read"):
            watch.fetch(f"http://127.0.0.1:{listener.getsockname()[1]}/metrics")
    finally:
        thread.join(timeout=TIMEOUT)
        listener.close()
