"""Fork under load and multiprocessing (fork, spawn, forkserver), each in a fresh interpreter.

Every case runs a script under a timeout, so a deadlocked child fails the test
instead of hanging the run. Children report through their exit status or a
result queue, never by printing (a stream lock held by a parent thread at fork
time is not gputime's to fix).
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

HEAVY = os.environ.get("GPUTIME_HEAVY") == "1"
TIMEOUT_S = 300 if HEAVY else 120

FORK_UNDER_LOAD = textwrap.dedent(
    """
    import os, signal, sys, threading, time
    import gputime
    from gputime import Tracker
    from gputime.testing import SimulatedGpu

    FORKS = int(sys.argv[1])
    gpu = SimulatedGpu(2, sample_period=0.02)
    gpu.set_utilization(100)
    tracker = Tracker(backend=gpu, interval=0.005)
    default = gputime.configure(backend=gpu, interval=0.005)
    stop = threading.Event()
    done = {}

    def load(name):
        n = 0
        while not stop.is_set():
            with tracker.gpu_task(name):
                if n % 50 == 0:
                    time.sleep(0.001)
            with gputime.gpu_task(name):
                pass
            n += 1
        done[name] = n

    workers = [threading.Thread(target=load, args=(f"svc{i}",)) for i in range(8)]
    for w in workers:
        w.start()
    held_block = tracker.gpu_task("held")
    held = held_block.__enter__()  # running across every fork
    time.sleep(0.05)
    failures = []
    for i in range(FORKS):
        pid = os.fork()
        if pid == 0:
            signal.alarm(30)  # a deadlocked child dies instead of hanging
            code = 0
            try:
                if tracker.stats() or gputime.stats():
                    code = 3  # a new process starts at zero
                with tracker.gpu_task("child") as task:
                    time.sleep(0.03)
                with gputime.gpu_task("child"):
                    pass
                if tracker.stats("child").task_count != 1 or gputime.stats("child").task_count != 1:
                    code = 4
                if not any(t.name.startswith("gputime-sampler") for t in threading.enumerate()):
                    code = 5  # a fresh sampler, started lazily
                if task.status != "ok" or task.gpu_ms <= 0:
                    code = 6
                held_block.__exit__(None, None, None)  # the parent's task: ignored here
                if "held" in tracker.stats():
                    code = 7
            except BaseException:
                code = 8
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            failures.append((i, os.waitstatus_to_exitcode(status)))
        time.sleep(0.002)
    stop.set()
    for w in workers:
        w.join(30)
    held_block.__exit__(None, None, None)
    assert not held.running
    stats = tracker.stats()
    assert all(stats[name].task_count == n for name, n in done.items()), (stats, done)
    assert stats["held"].task_count == 1
    assert all(gputime.stats(name).task_count == n for name, n in done.items())
    assert all(s.active_tasks == 0 for s in stats.values())
    print("failures", failures, "tasks", sum(done.values()), flush=True)
    """
)

MULTIPROCESSING = textwrap.dedent(
    """
    import multiprocessing, sys, threading, time
    import gputime
    from gputime.testing import SimulatedGpu

    def child(tasks):
        for _ in range(tasks):
            with gputime.gpu_task("child"):
                pass
        return {name: (s.task_count, s.active_tasks) for name, s in gputime.stats().items()}

    if __name__ == "__main__":
        method = sys.argv[1]
        gpu = SimulatedGpu(sample_period=0.02)
        gpu.set_utilization(100)
        gputime.configure(backend=gpu, interval=0.005)
        stop = threading.Event()

        def load():
            while not stop.is_set():
                with gputime.gpu_task("parent"):
                    pass

        loader = threading.Thread(target=load)
        loader.start()
        held_block = gputime.gpu_task("held")
        held_block.__enter__()  # running while the children start
        context = multiprocessing.get_context(method)
        with context.Pool(4) as pool:
            results = pool.map(child, [5] * 8, chunksize=1)
        process = context.Process(target=child, args=(3,))
        process.start()
        process.join(60)
        stop.set()
        loader.join(30)
        held_block.__exit__(None, None, None)
        # Each worker runs two of the eight calls on average: counts accumulate per
        # worker process, and only the child's own service is ever seen there.
        assert all(set(r) == {"child"} for r in results), results
        assert all(r["child"][1] == 0 and r["child"][0] % 5 == 0 for r in results), results
        assert process.exitcode == 0
        stats = gputime.stats()
        assert "child" not in stats
        assert stats["held"].task_count == 1
        assert stats["parent"].active_tasks == 0
        print("ok", method, flush=True)
    """
)


def run(script: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, script if cwd else "-c", *([] if cwd else [script]), *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
        cwd=cwd,
    )


@pytest.mark.heavy
@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX-only")
def test_fork_under_load_children_start_clean_and_never_hang():
    forks = 100 if HEAVY else 20
    result = run(FORK_UNDER_LOAD, str(forks))
    assert result.returncode == 0, result.stderr
    assert "failures [] " in result.stdout, result.stdout + result.stderr


@pytest.mark.parametrize(
    "method",
    [m for m in ("fork", "spawn", "forkserver") if m in multiprocessing.get_all_start_methods()],
)
def test_multiprocessing_children_start_at_zero(method: str, tmp_path: Path):
    script = tmp_path / "mp_script.py"
    script.write_text(MULTIPROCESSING)
    result = run(str(script), method, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"ok {method}" in result.stdout
