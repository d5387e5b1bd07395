"""The Celery app a prefork worker of tests/test_celery.py runs, in a process of its own.

Set up as a user would: ``instrument(app)`` when the worker imports the app (in
the worker's main process, before it forks its pool), gputime configured in
each child as it starts. The broker and the result backend are folders under
``GPUTIME_CELERY_FOLDER``, shared with the test that sends the tasks.
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery, signals

import gputime
from gputime.integrations.celery import instrument
from gputime.testing import SimulatedGpu

FOLDER = os.environ["GPUTIME_CELERY_FOLDER"]


def make_app(name: str) -> Celery:
    """An app on the folders (tests/test_celery.py's client of it is made the same way)."""
    app = Celery(name, broker="filesystem://", backend=f"file://{FOLDER}/results")
    app.conf.update(
        broker_transport_options={
            "data_folder_in": f"{FOLDER}/queue",
            "data_folder_out": f"{FOLDER}/queue",
            "control_folder": f"{FOLDER}/control",  # not ./control
            "polling_interval": 0.02,
        },
        broker_connection_retry_on_startup=False,
        worker_hijack_root_logger=False,
    )
    return app


app = make_app("prefork")
instrument(app)  # in the main process: the pool's children inherit it


@signals.worker_process_init.connect(weak=False)
def _configure_in_child(**_: Any) -> None:
    gpu = SimulatedGpu()
    gpu.set_utilization(100)
    gputime.configure(backend=gpu, threaded=False)


@app.task(name="prefork.work")
def work(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


@app.task(name="prefork.report")
def report() -> dict[str, Any]:
    """What this child process measured so far."""
    return {
        "pid": os.getpid(),
        "parent": os.getppid(),
        "tasks": {name: stats.task_count for name, stats in gputime.stats().items()},
        "gpu_ms": {name: stats.gpu_ms for name, stats in gputime.stats().items()},
    }
