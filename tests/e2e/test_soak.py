"""Soak: a real uvicorn server with measured streaming endpoints under concurrent load.

The server (``tests/e2e/streaming_app.py``) runs in its own process with an
OpenTelemetry SDK whose periodic metric reader collects every 50 ms, and with
frequent garbage collections. Fifty client threads stream from it for
``GPUTIME_SOAK_S`` seconds (default 40), half of them hanging up after the
first chunk. The server must stay up and answer every request, and its counts
must be exact: one task per stream that started, none left running.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from tests.e2e.conftest import free_port, get_json, installed, require, stream_request, wait_for

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = 50
KINDS = ("sync-decorated", "sync-with", "async-decorated", "async-with")


def test_server_stays_up_and_counts_are_exact(tmp_path: Path):
    require(installed("uvicorn") and installed("starlette"), "uvicorn and starlette (dev)")
    seconds = float(os.environ.get("GPUTIME_SOAK_S", "40"))
    port = free_port()
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "tests.e2e.streaming_app", "--port", str(port)],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        # Ready once it answers; /stats runs no task, so a retried probe counts nothing.
        wait_for("the server to answer", lambda: get_json(port, "/stats", timeout=2) is not None)
        started: Counter[str] = Counter()
        failures: list[BaseException] = []
        lock = threading.Lock()
        deadline = time.monotonic() + seconds

        def client(seed: int) -> None:
            rng = random.Random(seed)
            while time.monotonic() < deadline and not failures:
                try:
                    if rng.random() < 0.1:
                        get_json(port, "/compute", timeout=10)
                        kind = "compute"
                    else:
                        kind = rng.choice(KINDS)
                        stream_request(
                            port, f"/stream/{kind}", hang_up=rng.random() < 0.5, timeout=10
                        ) or pytest_fail(f"/stream/{kind} sent no chunk")
                except BaseException as exc:
                    with lock:
                        failures.append(exc)
                    return
                with lock:
                    started[kind] += 1

        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(CLIENTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=seconds + 60)
        assert not any(thread.is_alive() for thread in threads), "a client hung"
        assert server.poll() is None, f"the server died ({server.returncode}): {log.read_text()}"
        assert not failures, f"{len(failures)} requests failed, first: {failures[0]!r}"
        reported = get_json(port, "/stats", timeout=60)
        for kind, count in started.items():
            assert reported[kind] == {"task_count": count, "active_tasks": 0}, kind
        assert sum(started.values()) > 10 * CLIENTS  # the load really ran
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=15)
    text = log.read_text()
    assert "Failed to detach context" not in text
    assert "Traceback" not in text, text[-4000:]


def pytest_fail(message: str) -> bool:
    raise AssertionError(message)
