"""A Starlette web service whose endpoints are measured by gputime.

FastAPI is built on Starlette: the same decorators and ``async with`` blocks work on
FastAPI path operations (docs/examples/fastapi_app.py is this service in FastAPI).

- ``GET /translate?text=...``: an async handler measuring its model call with
  ``async with gpu_task("nmt")``; the response carries this request's GPU figures.
- ``GET /speak?text=...``: a streaming response whose body is a decorated async
  generator: one ``tts`` task from the first chunk to the last, or to the moment
  the client hangs up.
- ``GET /caption``: a sync handler decorated whole (Starlette runs it in a thread).
- ``GET /stats``: every service's figures since start (or the last reset).

Serve it on a machine with an NVIDIA GPU: ``uvicorn starlette_app:app`` (needs
``pip install gputime starlette uvicorn``). ``python starlette_app.py`` runs the
demo below instead: the app on a simulated GPU, a few requests, the figures.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import urllib.request
from collections.abc import AsyncIterator

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

import gputime
from gputime import gpu_task
from gputime.testing import SimulatedGpu

# -- Stand-ins for the models. A real model call keeps the GPU busy; here a
# -- simulated GPU is set busy for as long as the call runs.

GPU = SimulatedGpu()
_busy = 0
_busy_lock = threading.Lock()


def run_model(seconds: float, percent: float = 80.0) -> None:
    """Stand-in for a blocking model call (a PyTorch forward pass, say)."""
    global _busy
    with _busy_lock:
        _busy += 1
        GPU.set_utilization(percent)
    time.sleep(seconds)
    with _busy_lock:
        _busy -= 1
        if _busy == 0:
            GPU.set_utilization(0)


# -- The application: this is all gputime asks of a web service.


async def translate(request: Request) -> JSONResponse:
    text = request.query_params.get("text", "")
    async with gpu_task("nmt", attributes={"http.route": "/translate"}) as task:
        # Blocking model code goes to a thread, so the event loop keeps serving.
        await run_in_threadpool(run_model, 0.2)
        result = text[::-1]
    # The task's figures are final once the block is left.
    return JSONResponse(
        {"translation": result, "gpu_ms": round(task.gpu_ms, 1), "status": task.status}
    )


@gpu_task("tts")
async def synthesise(text: str) -> AsyncIterator[bytes]:
    """The streamed body: one ``tts`` task from the first chunk to the last."""
    for word in text.split():
        await run_in_threadpool(run_model, 0.05, 60.0)
        yield f"<audio for {word!r}>\n".encode()


async def speak(request: Request) -> StreamingResponse:
    return StreamingResponse(synthesise(request.query_params.get("text", "")))


@gpu_task("caption")
def caption(request: Request) -> JSONResponse:
    """A sync endpoint decorated whole: Starlette runs it in its thread pool."""
    run_model(0.1)
    return JSONResponse({"caption": "a cat on a GPU"})


async def stats(request: Request) -> JSONResponse:
    return JSONResponse(
        {service: dataclasses.asdict(figures) for service, figures in gputime.stats().items()}
    )


app = Starlette(
    routes=[
        Route("/translate", translate),
        Route("/speak", speak),
        Route("/caption", caption),
        Route("/stats", stats),
    ]
)


# -- The demo: the app on a simulated GPU, served by uvicorn on a free port.


def get(port: int, path: str) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as response:
        body: bytes = response.read()
        return body


def main() -> None:
    # Measure the simulated GPU; on a GPU machine leave this out (backend="auto").
    gputime.configure(backend=GPU)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise SystemExit("uvicorn did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        print("translate:", get(port, "/translate?text=hello").decode())
        print("translate:", get(port, "/translate?text=world").decode())
        print("speak:", get(port, "/speak?text=one+two+three").decode().strip().splitlines())
        print("caption:", get(port, "/caption").decode())
        # Service totals take the driver's samples only: they settle once the
        # sample covering the last task's end is out (one sample period later)
        # and read (the sampler's next tick, or a poll). Live servers need not wait.
        time.sleep(2 * GPU.sample_period)
        gputime.get_tracker().poll()
        for service, figures in json.loads(get(port, "/stats")).items():
            print(
                f"{service:8} tasks {figures['task_count']}  GPU {figures['gpu_ms']:7.1f} ms  "
                f"util {figures['gpu_util_ms']:7.1f} ms  {figures['status']}"
            )
    finally:
        server.should_exit = True
        thread.join(timeout=10)


if __name__ == "__main__":
    main()
