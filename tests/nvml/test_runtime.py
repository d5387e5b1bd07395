"""NVML's life: initialised once, shut down after the last session, never under a read, and
initialised again in a forked child (the runtime, and the session's driver access)."""

from __future__ import annotations

import os
import threading
from typing import Any

import pytest

from gputime._backends.nvml import NvmlBackend, NvmlError, driver
from gputime._backends.nvml.runtime import RUNTIME, Runtime
from gputime.testing import FakeClock
from tests.nvml.support import START, P, open_session, values
from tests.nvml_double import UNKNOWN, FakeNvml


class TestLifecycle:
    def test_init_once_lazily_and_shutdown_after_the_last_session(
        self, nvml: FakeNvml, clock: FakeClock
    ):
        assert nvml.calls["nvmlInitWithFlags"] == 0
        backend = NvmlBackend(wall_clock_ns=nvml.wall_ns)
        first = backend.open(clock=clock, devices=None, attribution="device")
        second = backend.open(clock=clock, devices=[0], attribution="split")
        first.read(0, START)
        assert nvml.calls["nvmlInitWithFlags"] == 1
        first.close()
        first.close()  # idempotent
        assert nvml.calls["nvmlShutdown"] == 0
        second.close()
        assert nvml.calls["nvmlShutdown"] == 1
        assert nvml.refcount == 0

    def test_reopening_after_shutdown_initialises_again_and_looks_handles_up(
        self, nvml: FakeNvml, clock: FakeClock
    ):
        backend = NvmlBackend(wall_clock_ns=nvml.wall_ns)
        backend.open(clock=clock, devices=None, attribution="device").close()
        session = backend.open(clock=clock, devices=None, attribution="device")
        nvml.set_utilization(100)
        clock.advance(1)
        assert values(session.read(0, START)) == [100.0] * 6
        assert nvml.calls["nvmlInitWithFlags"] == 2

    def test_read_after_close_raises(self, nvml: FakeNvml, clock: FakeClock):
        session = open_session(nvml, clock)
        session.close()
        with pytest.raises(RuntimeError, match="closed"):
            session.read(0, START)

    def test_close_waits_for_a_read_inside_nvml(self, nvml: FakeNvml, clock: FakeClock):
        session = open_session(nvml, clock)
        reader, release = read_held_inside_nvml(nvml, session)
        closer = threading.Thread(target=session.close)
        closer.start()
        closer.join(0.05)
        assert closer.is_alive()
        assert nvml.calls["nvmlShutdown"] == 0  # not while a read is inside NVML
        release.set()
        reader.join(10)
        closer.join(10)
        assert nvml.calls["nvmlShutdown"] == 1

    def test_close_gives_up_waiting_and_leaves_nvml_running(
        self,
        nvml: FakeNvml,
        clock: FakeClock,
        caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch,
    ):
        session = open_session(nvml, clock)
        reader, release = read_held_inside_nvml(nvml, session)
        monkeypatch.setattr(driver, "CLOSE_WAIT", 0.01)
        session.close()  # the read does not return in time
        release.set()
        reader.join(10)
        assert nvml.calls["nvmlShutdown"] == 0
        assert "did not return" in caplog.text

    def test_shutdown_failure_is_logged_not_raised(
        self, nvml: FakeNvml, clock: FakeClock, caplog: pytest.LogCaptureFixture
    ):
        session = open_session(nvml, clock)
        nvml.fail("nvmlShutdown", UNKNOWN)
        session.close()
        assert "nvmlShutdown failed" in caplog.text

    @pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
    def test_forked_child_initialises_again_and_looks_devices_up_by_uuid(
        self, nvml: FakeNvml, clock: FakeClock
    ):
        session = open_session(nvml, clock)
        nvml.set_utilization(100)
        clock.advance(1)
        lookups = nvml.calls["nvmlDeviceGetHandleByUUID"]
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child; reported through the pipe
            status = 1
            try:
                session.after_fork()
                reading = session.read(0, START)
                ok = (
                    values(reading) == [100.0] * 6
                    and nvml.calls["nvmlDeviceGetHandleByUUID"] == lookups + 2
                    and nvml.calls["nvmlInitWithFlags"] == 2
                )
                session.close()
                status = 0 if ok and nvml.refcount == 1 else 2
            finally:
                os.write(write_fd, bytes([status]))
                os._exit(0)
        os.close(write_fd)
        answer = os.read(read_fd, 1)
        os.close(read_fd)
        os.waitpid(pid, 0)
        assert answer == b"\x00"
        # The parent's session is untouched.
        assert values(session.read(0, START)) == [100.0] * 6

    def test_a_forked_child_seen_from_inside(
        self, nvml: FakeNvml, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
    ):
        # What the child of the fork test runs, in this process so coverage sees it.
        session = open_session(nvml, clock)
        nvml.set_utilization(100)
        clock.advance(1)
        session.after_fork()
        RUNTIME.forget()  # the at-fork hook
        become_a_forked_child(monkeypatch)
        reading = session.read(0, START)
        assert values(reading) == [100.0] * 6
        assert nvml.calls["nvmlInitWithFlags"] == 2
        session.close()
        assert nvml.refcount == 1  # the child's own reference only

    def test_a_child_failing_to_initialise(
        self, nvml: FakeNvml, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
    ):
        session = open_session(nvml, clock)
        nvml.set_utilization(100)
        RUNTIME.forget()
        become_a_forked_child(monkeypatch)
        nvml.fail("nvmlInitWithFlags", UNKNOWN, times=1)
        with pytest.raises(NvmlError, match=r"nvmlInit failed: NVML_ERROR_UNKNOWN"):
            session.read(0, START)
        clock.advance(P)
        assert len(session.read(0, START).utilization) == 1

    def test_reinit_done_by_another_thread_is_not_repeated(self, nvml: FakeNvml):
        import pynvml

        runtime = Runtime()
        runtime.ensure(pynvml)
        seen = runtime.generation
        runtime.reinit(pynvml, seen)
        runtime.reinit(pynvml, seen)  # the second caller saw the same generation
        assert nvml.calls["nvmlInitWithFlags"] == 2

    def test_a_child_that_never_reads_does_not_shut_down(
        self, nvml: FakeNvml, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
    ):
        session = open_session(nvml, clock)
        become_a_forked_child(monkeypatch)
        session.close()
        assert nvml.calls["nvmlShutdown"] == 0

    def test_forget_is_what_a_forked_child_runs(self):
        # Registered with gputime._fork.in_child; exercised for real by the fork test.
        runtime = Runtime()
        generation = runtime.generation
        runtime.forget()
        assert runtime.generation == generation + 1


def read_held_inside_nvml(nvml: FakeNvml, session: Any) -> tuple[threading.Thread, threading.Event]:
    """A read on another thread, held inside its NVML call until the event is set."""
    inside, release = threading.Event(), threading.Event()
    main = threading.current_thread()

    def block(name: str) -> None:
        if name == "nvmlDeviceGetSamples" and threading.current_thread() is not main:
            inside.set()
            assert release.wait(10)

    nvml.before_call = block
    reader = threading.Thread(target=session.read, args=(0, START))
    reader.start()
    assert inside.wait(10)
    return reader, release


def become_a_forked_child(monkeypatch: pytest.MonkeyPatch) -> None:
    """From here on this process has another id, as a forked child has."""
    parent = os.getpid()
    monkeypatch.setattr(os, "getpid", lambda: parent + 1)
