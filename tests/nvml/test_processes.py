"""``attribution="process"``: this process's and its children's per-process samples."""

from __future__ import annotations

import os
from typing import Any

import pytest

from gputime._backends.nvml import NvmlDeviceLostError, NvmlError, processes
from gputime.testing import FakeClock
from tests.nvml.support import (
    START,
    P,
    at,
    ends,
    installed,
    is_empty,
    needs_process_info,
    open_session,
    values,
)
from tests.nvml_double import GPU_IS_LOST, PROCESS_CALL, PROCESS_SOURCE, UNKNOWN, FakeGpu, FakeNvml


class TestProcessAttribution:
    def test_this_process_and_its_children(self, nvml: FakeNvml, clock: FakeClock):
        children = {4242}
        session = open_session(nvml, clock, attribution="process", child_pids=lambda: children)
        me = os.getpid()
        nvml.set_utilization(90)
        nvml.set_process_utilization(me, 30)
        nvml.set_process_utilization(4242, 20)
        nvml.set_process_utilization(777, 40)  # someone else's
        clock.advance(0.5)
        nvml.gpus[0].injected_processes = [
            (nvml.wall_us(START + at(3)), 0, 50),  # no pid
            (nvml.wall_us(START + at(3)), me, 150),  # impossible
            (0, me, 10),  # no timestamp
        ]
        reading = session.read(0, START)
        assert reading.source == PROCESS_SOURCE
        assert values(reading) == [50.0, 50.0, 50.0]
        assert ends(reading) == pytest.approx([START + at(k) for k in (1, 2, 3)], abs=1e-6)
        children.clear()
        clock.advance(0.5)
        assert values(session.read(0, START + 0.5)) == [30.0, 30.0, 30.0]

    def test_only_other_processes_means_zero_for_us(self, nvml: FakeNvml, clock: FakeClock):
        session = open_session(nvml, clock, attribution="process", child_pids=[1])
        nvml.set_process_utilization(777, 100)
        clock.advance(0.5)
        assert values(session.read(0, START)) == [0.0, 0.0, 0.0]

    def test_sums_are_capped_at_100(self, nvml: FakeNvml, clock: FakeClock):
        session = open_session(nvml, clock, attribution="process", child_pids=[4242])
        nvml.set_process_utilization(os.getpid(), 80)
        nvml.set_process_utilization(4242, 80)
        clock.advance(P)
        assert values(session.read(0, START)) == [100.0]

    def test_no_process_rows_for_a_while_is_idle(self, nvml: FakeNvml, clock: FakeClock):
        session = open_session(nvml, clock, attribution="process")
        clock.advance(0.2)
        reading = session.read(0, START)
        assert is_empty(reading, PROCESS_SOURCE)
        # No row for any process of ours: idle, up to the driver's newest tick.
        assert reading.idle_until == pytest.approx(START + P, abs=1e-5)
        clock.advance(0.5)
        assert session.read(0, START).idle_until == pytest.approx(START + 4 * P, abs=1e-5)

    def test_rows_after_a_pause_start_after_it(self, nvml: FakeNvml, clock: FakeClock):
        session = open_session(nvml, clock, attribution="process")
        clock.advance(1)
        nvml.set_process_utilization(os.getpid(), 60)
        clock.advance(P)
        reading = session.read(0, START)
        assert values(reading) == [0.0, 60.0]
        assert ends(reading) == pytest.approx([START + 1, START + 1 + P], abs=1e-6)

    @pytest.mark.parametrize("missing", ["driver", "bindings"])
    def test_falls_back_to_the_older_call(
        self, nvml: FakeNvml, clock: FakeClock, monkeypatch: pytest.MonkeyPatch, missing: str
    ):
        if missing == "driver":
            nvml.remove_function("nvmlDeviceGetProcessesUtilizationInfo")
        else:
            # nvidia-ml-py releases older than the call lack the binding itself
            # (the declared floor, 12.535, has no ProcessesUtilizationInfo).
            import pynvml

            monkeypatch.delattr(pynvml, "nvmlDeviceGetProcessesUtilizationInfo", raising=False)
        session = open_session(nvml, clock, attribution="process")
        nvml.set_process_utilization(os.getpid(), 25)
        clock.advance(2 * P)
        reading = session.read(0, START)
        assert reading.source == "process-utilization"
        assert values(reading) == [25.0, 25.0]

    @needs_process_info
    def test_switches_to_the_older_call_when_the_newer_stops_working(
        self, nvml: FakeNvml, clock: FakeClock
    ):
        session = open_session(nvml, clock, attribution="process")
        nvml.gpus[0].process_info_supported = False
        nvml.set_process_utilization(os.getpid(), 25)
        clock.advance(P)
        assert session.read(0, START).source == "process-utilization"

    def test_rejected_where_the_driver_cannot(self, clock: FakeClock):
        gpus = [
            FakeGpu(0, "GPU-a"),
            FakeGpu(1, "GPU-b", process_info_supported=False, process_legacy_supported=False),
        ]
        with installed(FakeNvml(clock, gpus)) as double:
            open_session(double, clock, [0], attribution="process").close()
            with pytest.raises(ValueError, match=r"attribution='process'.*GPU-b"):
                open_session(double, clock, attribution="process")
            assert double.refcount == 0  # released again

    def test_rejected_where_there_is_no_utilization(self, clock: FakeClock):
        gpu = FakeGpu(0, "GPU-a", samples_supported=False, rates_supported=False)
        with (
            installed(FakeNvml(clock, [gpu])) as double,
            pytest.raises(ValueError, match="unsupported"),
        ):
            open_session(double, clock, attribution="process")

    def test_a_transient_error_in_the_probe_does_not_reject(self, nvml: FakeNvml, clock: FakeClock):
        nvml.fail(PROCESS_CALL, UNKNOWN, times=1)
        session = open_session(nvml, clock, [0], attribution="process")
        assert session.read(0, START).source == PROCESS_SOURCE

    def test_process_read_errors_propagate(self, nvml: FakeNvml, clock: FakeClock):
        session = open_session(nvml, clock, attribution="process")
        nvml.fail(PROCESS_CALL, UNKNOWN, times=1)
        with pytest.raises(NvmlError, match="NVML_ERROR_UNKNOWN"):
            session.read(0, START)

    def test_a_lost_gpu_while_probing_for_process_samples(self, nvml: FakeNvml, clock: FakeClock):
        nvml.fail(PROCESS_CALL, GPU_IS_LOST, device=0)
        session = open_session(nvml, clock, attribution="process")
        with pytest.raises(NvmlDeviceLostError):
            session.read(0, START)

    def test_warns_inside_a_pid_namespace(
        self,
        nvml: FakeNvml,
        clock: FakeClock,
        tmp_path: Any,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ):
        link = tmp_path / "pid"
        link.symlink_to("pid:[4026532999]")
        monkeypatch.setattr(processes, "PID_NAMESPACE", str(link))
        open_session(nvml, clock, attribution="process")
        assert "PID namespace" in caplog.text

    def test_pid_namespace_detection(self, tmp_path: Any):
        link = tmp_path / "pid"
        link.symlink_to("pid:[4026531836]")
        assert processes.in_initial_pid_namespace(str(link)) is True
        link.unlink()
        link.symlink_to("pid:[4026532999]")
        assert processes.in_initial_pid_namespace(str(link)) is False
        assert processes.in_initial_pid_namespace(str(tmp_path / "missing")) is None
