"""Fixtures that start real servers on 127.0.0.1 and always stop them.

A server whose binary or library is missing skips its tests with the reason,
except in CI (the ``CI`` environment variable set), where ``.ci/install-e2e.sh``
has installed everything and a missing piece is a failure.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import struct
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

#: Upper bound for any one wait on a server (start-up, a scrape to show).
WAIT_S = 30.0


def require(ok: bool, reason: str) -> None:
    """Skip when ``ok`` is false, or fail in CI, where everything must be installed."""
    if ok:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: .ci/install-e2e.sh should have installed it)")
    pytest.skip(reason)


def installed(module: str) -> bool:
    """Whether ``module`` can be imported (its parents too)."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(what: str, check: Callable[[], Any], timeout: float = WAIT_S) -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except OSError as exc:  # the server is not up yet
            last = exc
        if last and not isinstance(last, BaseException):
            return last
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")


class Prometheus:
    """A real Prometheus server scraping one target every 250 ms."""

    def __init__(
        self, binary: str, workdir: Path, target: str, labels: dict[str, str] | None = None
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = workdir / "prometheus.yml"
        # ``labels``: added to every series scraped (as a collector adds resource attributes).
        extra = "".join(f"          {name}: '{value}'\n" for name, value in (labels or {}).items())
        config.write_text(
            "global:\n"
            "  scrape_interval: 250ms\n"
            "  scrape_timeout: 200ms\n"
            "scrape_configs:\n"
            "  - job_name: gputime\n"
            "    static_configs:\n"
            f"      - targets: ['{target}']\n" + (f"        labels:\n{extra}" if extra else "")
        )
        self.log = workdir / "prometheus.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        wait_for("Prometheus to be ready", self._ready)

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            pytest.fail(f"prometheus exited with {self.process.returncode}: {self.log.read_text()}")
        with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
            return bool(response.status == 200)

    def query(self, promql: str) -> dict[tuple[tuple[str, str], ...], float]:
        """An instant query: {sorted label pairs without __name__: value}."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=5) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        out = {}
        for series in body["data"]["result"]:
            labels = tuple(sorted((k, v) for k, v in series["metric"].items() if k != "__name__"))
            out[labels] = float(series["value"][1])
        return out

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture
def prometheus_binary() -> str:
    binary = shutil.which("prometheus")
    require(binary is not None, "the prometheus server is not installed (.ci/install-e2e.sh)")
    assert binary is not None
    return binary


@pytest.fixture
def start_prometheus(prometheus_binary: str, tmp_path: Path) -> Iterator[Callable[..., Prometheus]]:
    """Start a Prometheus server scraping ``host:port`` (and adding ``labels``); stopped after."""
    started: list[Prometheus] = []

    def start(target: str, labels: dict[str, str] | None = None) -> Prometheus:
        server = Prometheus(prometheus_binary, tmp_path, target, labels)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


class OtlpReceiver:
    """An OTLP/HTTP (protobuf) receiver decoding with the official messages.

    No OTLP server (an OpenTelemetry Collector, Jaeger) comes from the package
    registries this project can use, so this is the test's own receiver. It
    speaks the protocol as specified: POST ``/v1/traces`` and ``/v1/metrics``
    with ``application/x-protobuf`` bodies, answered with the matching
    ``Export*ServiceResponse``.
    """

    def __init__(self) -> None:
        from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

        self.traces: list[Any] = []
        self.metrics: list[Any] = []
        self.content_types: list[str] = []
        messages = {
            "/v1/traces": (
                trace_service_pb2.ExportTraceServiceRequest,
                trace_service_pb2.ExportTraceServiceResponse,
                self.traces,
            ),
            "/v1/metrics": (
                metrics_service_pb2.ExportMetricsServiceRequest,
                metrics_service_pb2.ExportMetricsServiceResponse,
                self.metrics,
            ),
        }
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                found = messages.get(self.path)
                if found is None:
                    self.send_error(404)
                    return
                request_type, response_type, into = found
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    import gzip

                    body = gzip.decompress(body)
                receiver.content_types.append(self.headers.get("Content-Type", ""))
                request = request_type()
                request.ParseFromString(body)
                into.append(request)
                payload = response_type().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet: the test reports what matters

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def otlp_receiver() -> Iterator[OtlpReceiver]:
    for module in ("opentelemetry.exporter.otlp.proto.http", "opentelemetry.proto"):
        require(installed(module), f"{module} is not installed (dev dependencies)")
    receiver = OtlpReceiver()
    yield receiver
    receiver.stop()


def stream_request(port: int, path: str, *, hang_up: bool, timeout: float = 10.0) -> bool:
    """GET ``path`` from a streaming endpoint; True once the first chunk arrived.

    With ``hang_up`` the client resets the connection right after the first
    chunk, as a browser tab that is closed does; otherwise it reads to the end.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
        )
        received = b""
        while b"chunk 0" not in received:
            data = sock.recv(65536)
            if not data:
                return False
            received += data
        if hang_up:
            # SO_LINGER 0: close() sends a reset, the server's next send fails.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return True
        while sock.recv(65536):
            pass
        return True


def get_json(port: int, path: str, timeout: float = 30.0) -> Any:
    """GET ``path`` and decode its JSON body."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as response:
        return json.load(response)
