"""The recipes' example files (docs/examples/*.py) run, and print what their pages say.

Each file is a complete program a user can copy: ``python docs/examples/X.py``
runs its demo on a simulated GPU (``gputime.testing.SimulatedGpu``) in real
time, a second or two. They run here as users run them, each in its own
interpreter, all at once; each file's output is then checked against what its
recipe page explains. The figures come from real sleeps, so the checks leave
room for a slow machine (the figures only grow when a sleep overshoots).
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.scripts import run_python

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "docs" / "examples").glob("*.py"))

#: Modules an example may need that an environment may lack: the floor job has
#: no exporters, and no FastAPI (the e2e extra's: its releases require an
#: opentelemetry-api far above the floor). Every other need is in the test extra.
#: An example is skipped only where the module it misses is absent here too.
OPTIONAL = ("starlette", "uvicorn", "opentelemetry.sdk", "fastapi", "gunicorn")


def missing_optional(stderr: str) -> str | None:
    """The optional module an example stopped for want of, where it is absent here too.

    The examples run in this interpreter, so a module of OPTIONAL that can be
    found here is installed: an example that misses it (or a part of it) failed.
    """
    missing = re.search(r"ModuleNotFoundError: No module named '([\w.]+)'", stderr)
    if missing is None:
        return None
    for module in OPTIONAL:
        if missing[1] == module or missing[1].startswith(f"{module}."):
            try:
                found = importlib.util.find_spec(module) is not None
            except ModuleNotFoundError:  # its parent package is missing
                found = False
            return None if found else missing[1]
    return None


@pytest.fixture(scope="module")
def outputs(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Future[subprocess.CompletedProcess[str]]]]:
    base = tmp_path_factory.mktemp("examples")
    with ThreadPoolExecutor(max_workers=len(EXAMPLES) or 1) as pool:
        yield {path.name: pool.submit(run_python, path, base / path.stem) for path in EXAMPLES}


def figures(out: str, service: str) -> tuple[int, float]:
    """Tasks and GPU ms of ``service`` from a line ``service  tasks N  GPU X ms``."""
    match = re.search(rf"^{re.escape(service)} +tasks (\d+) +GPU +([\d.]+) ms", out, re.M)
    assert match, f"no figures for {service!r} in:\n{out}"
    return int(match[1]), float(match[2])


def check_starlette_app(out: str) -> None:
    assert out.count('"status":"ok"') == 2, out  # the two /translate responses
    assert "speak: [\"<audio for 'one'>\", \"<audio for 'two'>\", \"<audio for 'three'>\"]" in out
    tasks, gpu_ms = figures(out, "nmt")
    assert tasks == 2
    assert gpu_ms >= 2 * 200 * 0.9  # two requests with 200 ms of model time each
    assert figures(out, "tts")[0] == 1  # one stream, one task
    assert figures(out, "caption")[0] == 1
    assert re.search(r"^nmt .* ok$", out, re.M), out


def check_fastapi_app(out: str) -> None:
    assert out.count('"model":"nllb-600m","gpu_ms":') == 2, out  # the dependency's value
    assert out.count('"status":"ok"') == 2, out  # the two /translate responses
    # The decorated sync path operation: FastAPI saw its query parameter and its
    # dependency through the decorator (a lost signature answers 422).
    assert 'caption: {"image":"cat.jpg","model":"blip-base","caption":"a cat on a GPU"}' in out
    assert "speak: [\"<audio for 'one'>\", \"<audio for 'two'>\", \"<audio for 'three'>\"]" in out
    hung_up = re.search(r"^speak, hung up: (\[.*\])$", out, re.M)
    assert hung_up, out
    assert hung_up[1].startswith("[\"<audio for 'w0'>\""), out  # what came before it hung up
    assert "w19" not in hung_up[1], out
    ended = re.findall(r"^  tts task ended: (\d+) ms long, (\w+)$", out, re.M)
    assert [status for _, status in ended] == ["ok", "ok"], out  # a hang-up is no error
    assert int(ended[0][0]) >= 3 * 50 * 0.9  # three words of 50 ms
    # The hang-up ended the task long before the 20 words of the whole reply.
    assert 50 * 0.9 <= int(ended[1][0]) < 20 * 50 * 0.75
    assert "tts tasks ended: 2" in out  # each stream's task ended once
    tasks, gpu_ms = figures(out, "nmt")
    assert tasks == 2
    assert gpu_ms >= 2 * 200 * 0.9  # two requests with 200 ms of model time each
    tasks, gpu_ms = figures(out, "caption")
    assert tasks == 1
    assert gpu_ms >= 100 * 0.9
    tasks, gpu_ms = figures(out, "tts")
    assert tasks == 2  # the whole stream and the one hung up
    assert gpu_ms >= (3 + 1) * 50 * 0.9
    assert re.search(r"^tts .* ok$", out, re.M), out


def check_gunicorn_app(out: str) -> None:
    rows = {
        int(pid): (int(tasks), float(gpu_ms))
        for pid, tasks, gpu_ms in re.findall(
            r"^worker (\d+): nmt tasks (\d+) +GPU +([\d.]+) ms$", out, re.M
        )
    }
    assert len(rows) >= 2, out  # two worker processes served requests
    served = re.findall(r"^translate: worker (\d+), its nmt tasks so far (\d+)$", out, re.M)
    sent = re.search(r"^requests sent: (\d+)$", out, re.M)
    assert sent, out
    assert len(served) == int(sent[1]) >= 8
    # Each worker counts its own tasks, from 1: its last answer is its /stats count.
    assert {int(pid) for pid, _ in served} == set(rows)
    for pid, (tasks, gpu_ms) in rows.items():
        counts = [int(n) for p, n in served if int(p) == pid]
        assert sorted(counts) == list(range(1, tasks + 1)), (pid, counts)
        assert gpu_ms >= tasks * 100 * 0.9  # 100 ms of model time per request
    # The server's figure is the sum of the workers'.
    tasks, gpu_ms = figures(out, "nmt")
    assert tasks == sum(t for t, _ in rows.values()) == int(sent[1])
    assert gpu_ms == pytest.approx(sum(g for _, g in rows.values()), abs=0.2)
    assert f"(the sum over {len(rows)} workers)" in out


def check_worker_processes(out: str) -> None:
    rows = re.findall(r"^w(\d) +(\d+) +(\d+) +([\d.]+) +([\d.]+)$", out, re.M)
    assert [(w, int(t)) for w, _, t, _, _ in rows] == [("0", 2), ("1", 3), ("2", 4)], out
    assert len({pid for _, pid, _, _, _ in rows}) == 3  # three processes
    for _, _, tasks, gpu_ms, exported_s in rows:
        # What a worker exports is its stats(), in seconds.
        assert float(exported_s) == pytest.approx(float(gpu_ms) / 1000, abs=0.001)
        assert float(gpu_ms) >= int(tasks) * 50 * 0.9
    total = re.search(r"^server +\(sum\) +9 +([\d.]+)", out, re.M)
    assert total, out
    assert float(total[1]) == pytest.approx(sum(float(r[3]) for r in rows), abs=0.2)


def check_asyncio_and_threads(out: str) -> None:
    tree = out[: out.index("embed ")].splitlines()
    assert tree == [
        "request",
        "    gpu_task embed",
        "    gpu_task embed",
        "    gpu_task translate",  # asyncio.to_thread
        "    gpu_task translate",  # run_in_executor in a copied context
        "gpu_task translate",  # run_in_executor without the context: a root
        "batch",
        "    gpu_task translate",  # submit in a copied context
    ], out
    assert figures(out, "embed")[0] == 2
    tasks, gpu_ms = figures(out, "translate")
    assert tasks == 4
    assert gpu_ms >= 4 * 50 * 0.9


def check_token_streaming(out: str) -> None:
    ended = re.findall(r"task ended: ([\w-]+), (\d+) ms long, (\d+) GPU ms, (\d+) util ms", out)
    assert [service for service, *_ in ended] == ["llm", "llm", "llm-async"], out
    # b) stopped after three tokens of 20 ms: the task ended at the close.
    assert 3 * 20 * 0.9 <= int(ended[1][1]) < 8 * 20
    assert figures(out, "llm")[0] == 2
    # c) the consumer as slow as the GPU: busy in every sample period, half utilised.
    service = re.search(r"^llm-async +tasks 1 +GPU +([\d.]+) ms +util +([\d.]+) ms", out, re.M)
    assert service, out
    assert float(service[2]) < 0.8 * float(service[1])


def check_pytorch_style(out: str) -> None:
    without = re.search(r"without synchronize\(\): task +([\d.]+) ms, +([\d.]+) GPU ms", out)
    with_ = re.search(r"with synchronize\(\): +task +([\d.]+) ms, +([\d.]+) GPU ms", out)
    assert without, out
    assert with_, out
    assert float(without[2]) < 100  # the kernels ran after the task ended
    assert float(with_[2]) >= 300 * 0.9  # three 100 ms kernels inside the task
    assert figures(out, "nmt-unsynchronised")[1] < 200
    assert figures(out, "nmt")[1] >= 2 * 300 * 0.9


CHECKS: dict[str, Callable[[str], None]] = {
    "starlette_app.py": check_starlette_app,
    "fastapi_app.py": check_fastapi_app,
    "gunicorn_app.py": check_gunicorn_app,
    "worker_processes.py": check_worker_processes,
    "asyncio_and_threads.py": check_asyncio_and_threads,
    "token_streaming.py": check_token_streaming,
    "pytorch_style.py": check_pytorch_style,
}


def test_every_example_is_checked() -> None:
    assert sorted(CHECKS) == sorted(path.name for path in EXAMPLES)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(
    path: Path, outputs: dict[str, Future[subprocess.CompletedProcess[str]]]
) -> None:
    done = outputs[path.name].result()
    missing = missing_optional(done.stderr)
    if done.returncode != 0 and missing:
        pytest.skip(f"{path.name} needs {missing}, not installed here")
    assert done.returncode == 0, f"{path.name} failed:\n{done.stdout}\n--- stderr:\n{done.stderr}"
    CHECKS[path.name](done.stdout)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_is_shown_on_a_page(path: Path) -> None:
    include = f'--8<-- "docs/examples/{path.name}"'
    pages = [p for p in (ROOT / "docs").rglob("*.md") if include in p.read_text(encoding="utf-8")]
    assert pages, f"no page of docs/ includes {path.name} ({include})"
