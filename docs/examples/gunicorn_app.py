"""A WSGI service under gunicorn with two worker processes, measured by gputime.

Every gunicorn worker is a process of its own, with its own default tracker, its own
``gputime.stats()`` and its own metric series, starting at zero: a service's figure for the
whole server is the sum over the workers (docs/recipes/workers.md).

This file is the application and gunicorn's configuration both: ``-c python:gunicorn_app``
makes gunicorn read its settings (``workers``, ``wsgi_app``, the ``post_fork`` hook) from the
module's names, ignoring the others. ``post_fork`` runs in each worker after the fork and
sets gputime up there: a tracker's sampler thread does not survive a fork, and each worker
measures for itself. The OpenTelemetry SDK's set-up goes there too, with a resource naming
the worker (the recipe page has it).

- ``GET /translate?text=...``: a sync handler decorated with ``@gpu_task("nmt")``; the
  response names the worker that served it (its pid) and that worker's figures so far.
- ``GET /stats``: the figures of the one worker that answers, with its pid. ``?settle=1``
  waits for the service totals to take the last task's end first (the demo asks for that).

Serve it on a machine with an NVIDIA GPU, from the directory holding this file:
``gunicorn -c python:gunicorn_app`` (needs ``pip install gputime gunicorn``), after changing
the ``gputime.configure`` line of ``post_fork`` as its comment says. ``python gunicorn_app.py``
runs the demo below instead: gunicorn with two workers on simulated GPUs, a few requests
from two clients at once, and each worker's figures with their sum.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from gunicorn.arbiter import Arbiter
from gunicorn.workers.base import Worker

import gputime
from gputime import gpu_task
from gputime.testing import SimulatedGpu

# -- gunicorn's settings: the lower-case names gunicorn knows, read by
# -- `gunicorn -c python:gunicorn_app`; command-line options override them.

wsgi_app = "gunicorn_app:app"
workers = 2
bind = "127.0.0.1:8000"
graceful_timeout = 10  # seconds a worker has to finish its request on SIGTERM

GPU: SimulatedGpu | None = None  # the worker's simulated GPU (post_fork)
MODEL_S = 0.1  # GPU time of one request


def post_fork(server: Arbiter, worker: Worker) -> None:
    """In each worker, after the fork: gputime (and the OpenTelemetry SDK) set up afresh."""
    global GPU
    # A simulated GPU of the worker's own: one cannot be shared between processes.
    GPU = SimulatedGpu()
    # On a GPU machine, where the workers share the GPU: gputime.configure(attribution="process").
    gputime.configure(backend=GPU)


# -- Stand-in for the model. A real model call keeps the GPU busy; here the
# -- worker's simulated GPU is set busy for as long as the call runs.


def run_model(seconds: float) -> None:
    """Stand-in for a blocking model call (a PyTorch forward pass, say)."""
    assert GPU is not None, "post_fork did not run: serve with gunicorn -c python:gunicorn_app"
    GPU.set_utilization(80)
    time.sleep(seconds)
    GPU.set_utilization(0)


# -- The application: a sync worker serves one request at a time.


@gpu_task("nmt")
def translate(text: str) -> str:
    run_model(MODEL_S)
    return text[::-1]


def worker_figures(service: str) -> dict[str, Any]:
    """This worker's figures of ``service`` (every worker has its own)."""
    figures = gputime.stats(service)
    return {"pid": os.getpid(), "tasks": figures.task_count, "gpu_ms": round(figures.gpu_ms, 1)}


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    query = parse_qs(environ.get("QUERY_STRING", ""))
    if environ["PATH_INFO"] == "/translate":
        translation = translate(query.get("text", [""])[0])
        # The worker's task count is exact at once; its GPU ms settle later (/stats).
        body = {"translation": translation, **worker_figures("nmt")}
    elif environ["PATH_INFO"] == "/stats":
        if query.get("settle"):
            # Service totals take the driver's samples only: they settle once the
            # sample covering the last task's end is out (one sample period later)
            # and read (the sampler's next tick, or this poll). Exported metrics
            # need none of this.
            assert GPU is not None
            time.sleep(2 * GPU.sample_period)
            gputime.get_tracker().poll()
        body = worker_figures("nmt")
    else:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps(body).encode()]


# -- The demo: gunicorn started as it is in production, on a socket bound here.


def get(port: int, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as response:
        body: dict[str, Any] = json.loads(response.read())
        return body


def ask_every_worker(port: int, path: str, pids: set[int]) -> dict[int, dict[str, Any]]:
    """One answer from each worker in ``pids``.

    Which worker takes a request is the kernel's choice; a sync worker takes one
    at a time, so requests sent together, each keeping its worker busy a while,
    go to different workers.
    """
    answers: dict[int, dict[str, Any]] = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in range(20):
            for answer in pool.map(lambda _: get(port, path), range(workers)):
                answers[answer["pid"]] = answer
            if pids <= answers.keys():
                return answers
    raise SystemExit(f"no answer from workers {pids - answers.keys()}")


def main() -> None:
    # The listening socket, bound to a free port here and handed to gunicorn
    # (--bind fd://N): no port to guess, and requests wait until a worker is up.
    with socket.create_server(("127.0.0.1", 0)) as listener:  # gunicorn gets its own copy
        port = listener.getsockname()[1]
        server = subprocess.Popen(
            [
                *(sys.executable, "-m", "gunicorn", "-c", "python:gunicorn_app"),
                *("--bind", f"fd://{listener.fileno()}", "--log-level", "warning"),
                # No control socket (gunicornc's): it would go in ~/.gunicorn,
                # one path for every demo running at once.
                "--no-control-socket",
            ],
            cwd=Path(__file__).resolve().parent,  # where gunicorn imports this module from
            pass_fds=[listener.fileno()],
        )
    try:
        # Requests from two clients at once, until both workers have served some.
        served: list[dict[str, Any]] = []
        with ThreadPoolExecutor(max_workers=2) as pool:
            while len(served) < 8 or len({r["pid"] for r in served}) < workers:
                if len(served) >= 40:
                    raise SystemExit("the requests all went to one worker")
                served += pool.map(lambda n: get(port, f"/translate?text=hello{n}"), range(2))
        for response in served:
            print(f"translate: worker {response['pid']}, its nmt tasks so far {response['tasks']}")
        # Each worker's own figures, as its /stats says: one worker's view each.
        answers = ask_every_worker(port, "/stats?settle=1", {r["pid"] for r in served})
        for pid, answer in sorted(answers.items()):
            print(f"worker {pid}: nmt tasks {answer['tasks']}  GPU {answer['gpu_ms']:7.1f} ms")
        # The server's figure is the sum over its workers (in production: in the
        # metrics backend, sum by service of each worker's rate()).
        tasks = sum(answer["tasks"] for answer in answers.values())
        gpu_ms = sum(answer["gpu_ms"] for answer in answers.values())
        print(f"requests sent: {len(served)}")
        print(
            f"nmt      tasks {tasks}  GPU {gpu_ms:7.1f} ms  (the sum over {len(answers)} workers)"
        )
    finally:
        # SIGTERM: gunicorn's graceful stop; its workers finish their requests first.
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=graceful_timeout + 5)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    if server.returncode != 0:
        raise SystemExit(f"gunicorn exited with status {server.returncode}")


if __name__ == "__main__":
    main()
