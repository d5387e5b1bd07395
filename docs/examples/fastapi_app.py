"""A FastAPI service whose path operations are measured by gputime.

The service of docs/examples/starlette_app.py in FastAPI's terms, with what FastAPI adds:
the parameters and dependencies it reads from a path operation's signature, which gputime's
decorator keeps (docs/recipes/starlette.md).

- ``GET /translate?text=...``: an async path operation measuring its model call with
  ``async with gpu_task("nmt")``; a dependency names the model; the response carries this
  request's GPU figures.
- ``GET /speak?text=...``: token streaming, a ``StreamingResponse`` whose body is a decorated
  async generator: one ``tts`` task from the first chunk to the last, or to the moment the
  client hangs up.
- ``GET /caption?image=...``: a sync path operation decorated whole, below ``@app.get``, with a
  query parameter and a dependency: FastAPI reads both from the measured function's signature,
  and runs it in its thread pool.
- ``GET /stats``: every service's figures since start (or the last reset).

Serve it on a machine with an NVIDIA GPU: ``uvicorn fastapi_app:app`` (needs
``pip install gputime fastapi uvicorn``). ``python fastapi_app.py`` runs the demo below
instead: the app on a simulated GPU, a few requests (one client hangs up in the middle of a
stream), the figures.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import threading
import time
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from fastapi import Depends, FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

import gputime
from gputime import TaskHandle, gpu_task
from gputime.testing import SimulatedGpu

# -- Stand-ins for the models. A real model call keeps the GPU busy; here a
# -- simulated GPU is set busy for as long as the call runs.

GPU = SimulatedGpu()
_busy = 0
_busy_lock = threading.Lock()

WORD_S = 0.05  # GPU time to synthesise one word


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


def translation_model() -> str:
    """A dependency: which model serves the request (from configuration, say)."""
    return "nllb-600m"


def caption_model() -> str:
    return "blip-base"


# -- The application: this is all gputime asks of a FastAPI service.

app = FastAPI()


@app.get("/translate")
async def translate(text: str, model: str = Depends(translation_model)) -> dict[str, Any]:
    async with gpu_task("nmt", attributes={"http.route": "/translate"}) as task:
        # Blocking model code goes to a thread, so the event loop keeps serving.
        await run_in_threadpool(run_model, 0.2)
        result = text[::-1]
    # The task's figures are final once the block is left.
    return {
        "translation": result,
        "model": model,
        "gpu_ms": round(task.gpu_ms, 1),
        "status": task.status,
    }


@gpu_task("tts")
async def synthesise(text: str) -> AsyncIterator[bytes]:
    """The streamed body: one ``tts`` task from the first chunk to the last."""
    for word in text.split():
        await run_in_threadpool(run_model, WORD_S, 60.0)
        yield f"<audio for {word!r}>\n".encode()


@app.get("/speak")
async def speak(text: str) -> StreamingResponse:
    return StreamingResponse(synthesise(text), media_type="text/plain")


@app.get("/caption")
@gpu_task("caption")  # below the route: FastAPI registers the measured function
def caption(image: str, model: str = Depends(caption_model)) -> dict[str, str]:
    """A sync path operation decorated whole: FastAPI runs it in its thread pool."""
    run_model(0.1)
    return {"image": image, "model": model, "caption": "a cat on a GPU"}


@app.get("/stats")
async def stats() -> dict[str, Any]:
    return {service: dataclasses.asdict(figures) for service, figures in gputime.stats().items()}


# -- The demo: the app on a simulated GPU, served by uvicorn on a free port.


def get(port: int, path: str) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as response:
        body: bytes = response.read()
        return body


def hang_up(port: int, path: str) -> bytes:
    """A streaming client that reads the first chunk, then hangs up."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path)
        return connection.getresponse().read1()  # what has arrived so far
    finally:
        connection.close()


def ended_task(ended: list[TaskHandle], n: int) -> TaskHandle:
    """The ``n``-th ``tts`` task to end (from 1), once it has."""
    deadline = time.monotonic() + 10
    while len(ended) < n:
        if time.monotonic() > deadline:
            raise SystemExit(f"tts task {n} did not end")
        time.sleep(0.01)
    return ended[n - 1]


def main() -> None:
    # Measure the simulated GPU; on a GPU machine leave this out (backend="auto").
    tracker = gputime.configure(backend=GPU)
    # The demo watches the streams' tasks end (the listener runs in the server's threads).
    ended: list[TaskHandle] = []
    tracker.on_task_end(lambda task: ended.append(task) if task.service == "tts" else None)

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
        print("caption:", get(port, "/caption?image=cat.jpg").decode())

        print("speak:", get(port, "/speak?text=one+two+three").decode().strip().splitlines())
        task = ended_task(ended, 1)
        print(f"  tts task ended: {task.duration * 1000:.0f} ms long, {task.status}")

        words = "+".join(f"w{i}" for i in range(20))  # a second of speech
        print("speak, hung up:", hang_up(port, f"/speak?text={words}").decode().splitlines())
        task = ended_task(ended, 2)  # the server stopped the generator: its task ended
        print(f"  tts task ended: {task.duration * 1000:.0f} ms long, {task.status}")

        # Service totals take the driver's samples only: they settle once the
        # sample covering the last task's end is out (one sample period later)
        # and read (the sampler's next tick, or a poll). Live servers need not wait.
        time.sleep(2 * GPU.sample_period)
        tracker.poll()
        print(f"tts tasks ended: {len(ended)}")  # each stream's task ends once
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
