"""What each NVML answer does to a read: a lost GPU, UNINITIALIZED, missing calls, anything else."""

from __future__ import annotations

import os
from typing import Any

import pytest

from gputime._backends.nvml import NvmlDeviceLostError, NvmlError
from gputime._backends.nvml.errors import code_name
from gputime._backends.nvml.inventory import ENERGY_CALL
from gputime.testing import FakeClock
from tests.nvml.support import START, SWEPT_CALLS, P, heard, installed, open_session, values
from tests.nvml_double import GPU_IS_LOST, RESET_REQUIRED, UNINITIALIZED, UNKNOWN, FakeGpu, FakeNvml


class TestErrors:
    @pytest.mark.parametrize("call", SWEPT_CALLS)
    @pytest.mark.parametrize("code", [GPU_IS_LOST, RESET_REQUIRED])
    def test_a_lost_gpu_stops_that_device(
        self, nvml: FakeNvml, clock: FakeClock, call: str, code: int
    ):
        session = session_calling(nvml, clock, call)
        nvml.fail(call, code, device=0)
        clock.advance(0.5)
        with pytest.raises(NvmlDeviceLostError, match=r"NVML_ERROR_(GPU_IS_LOST|RESET_REQUIRED)"):
            session.read(0, START)
        calls = sum(nvml.calls.values())
        with pytest.raises(NvmlDeviceLostError):
            session.read(0, START)
        assert sum(nvml.calls.values()) == calls  # no more NVML calls for that device
        assert heard(session.read(1, START))  # the other device goes on

    @pytest.mark.parametrize("call", SWEPT_CALLS)
    def test_other_errors_count_nothing_and_the_next_read_recovers(
        self, nvml: FakeNvml, clock: FakeClock, call: str
    ):
        session = session_calling(nvml, clock, call, busy=True)
        nvml.fail(call, UNKNOWN, times=1)
        clock.advance(0.5)
        if call == ENERGY_CALL:
            # Energy failures only defer the power sample: the counter is cumulative.
            assert session.read(0, START).power == []
        else:
            with pytest.raises(NvmlError) as caught:
                session.read(0, START)
            assert (caught.value.code, caught.value.device) == (UNKNOWN, nvml.gpus[0].uuid)
            assert str(caught.value) == (
                f"NVML {call} on {nvml.gpus[0].uuid} failed: NVML_ERROR_UNKNOWN (999)"
            )
        reading = session.read(0, START)  # since was not advanced: samples are recovered
        assert values(reading) == [100.0] * (1 if "Rates" in call else 3)

    @pytest.mark.parametrize("call", SWEPT_CALLS)
    def test_uninitialized_initialises_again_once(
        self, nvml: FakeNvml, clock: FakeClock, call: str
    ):
        session = session_calling(nvml, clock, call, busy=True)
        clock.advance(0.5)
        nvml.lose_initialisation()
        generation = nvml.generation
        assert values(session.read(0, START)) == [100.0] * (1 if "Rates" in call else 3)
        assert nvml.generation == generation + 1  # handles were looked up again by UUID
        assert heard(session.read(1, START))

    def test_uninitialized_twice_is_an_error(self, nvml: FakeNvml, clock: FakeClock):
        session = open_session(nvml, clock)
        nvml.fail("nvmlDeviceGetSamples", UNINITIALIZED, times=2)
        with pytest.raises(NvmlError, match="UNINITIALIZED"):
            session.read(0, START)
        assert len(session.read(0, START).utilization) == 0

    def test_reinitialisation_failing(self, nvml: FakeNvml, clock: FakeClock):
        session = open_session(nvml, clock)
        nvml.set_utilization(100)
        nvml.fail("nvmlDeviceGetSamples", UNINITIALIZED, times=1)
        nvml.fail("nvmlInitWithFlags", UNKNOWN, times=1)
        with pytest.raises(NvmlError, match="nvmlInit"):
            session.read(0, START)
        clock.advance(P)
        assert len(session.read(0, START).utilization) == 1

    def test_lookup_failures_after_reinitialisation(self, nvml: FakeNvml, clock: FakeClock):
        session = open_session(nvml, clock)
        nvml.set_utilization(100, device=1)
        clock.advance(P)
        nvml.lose_initialisation()
        nvml.fail("nvmlDeviceGetHandleByUUID", UNKNOWN, times=1)
        with pytest.raises(NvmlError, match="nvmlDeviceGetHandleByUUID"):
            session.read(0, START)
        nvml.fail("nvmlDeviceGetHandleByUUID", GPU_IS_LOST, device=None, times=1)
        with pytest.raises(NvmlDeviceLostError):
            session.read(0, START)  # GPU 0 did not come back
        assert len(session.read(1, START).utilization) == 1
        with pytest.raises(NvmlDeviceLostError):
            session.read(0, START)

    def test_a_device_lost_at_open_still_opens(self, nvml: FakeNvml, clock: FakeClock):
        nvml.fail("nvmlDeviceGetSamples", GPU_IS_LOST, device=0)
        session = open_session(nvml, clock)
        with pytest.raises(NvmlDeviceLostError):
            session.read(0, START)

    @pytest.mark.parametrize("call", ["nvmlDeviceGetSamples", ENERGY_CALL])
    def test_errors_while_probing_at_open_are_logged(
        self, nvml: FakeNvml, clock: FakeClock, caplog: pytest.LogCaptureFixture, call: str
    ):
        nvml.fail(call, UNKNOWN, times=1)
        session = open_session(nvml, clock)
        assert session.measures_utilization
        assert f"NVML {call}" in caplog.text

    def test_rates_probe_error_is_logged(self, clock: FakeClock, caplog: pytest.LogCaptureFixture):
        gpu = FakeGpu(0, "GPU-a", samples_supported=False)
        with installed(FakeNvml(clock, [gpu])) as double:
            double.fail("nvmlDeviceGetUtilizationRates", UNKNOWN, times=1)
            assert open_session(double, clock).measures_utilization
            assert "nvmlDeviceGetUtilizationRates" in caplog.text

    def test_bindings_failing_otherwise(
        self,
        nvml: FakeNvml,
        clock: FakeClock,
        caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch,
    ):
        import pynvml

        session = open_session(nvml, clock)
        nvml.remove_function("nvmlDeviceGetTotalEnergyConsumption")
        clock.advance(P)
        # The counter is cumulative: its failure only defers the power sample.
        assert session.read(0, START).power == []
        assert "NVML_ERROR_FUNCTION_NOT_FOUND" in caplog.text

        def changed(*args: object) -> None:
            raise TypeError("nvmlDeviceGetSamples() missing 1 required positional argument")

        monkeypatch.setattr(pynvml, "nvmlDeviceGetSamples", changed)
        with pytest.raises(NvmlError, match="TypeError"):
            session.read(0, START)

    def test_a_missing_device_index(self, nvml: FakeNvml, clock: FakeClock):
        with pytest.raises(IndexError):
            open_session(nvml, clock).read(5, START)

    def test_error_names(self):
        assert code_name(15) == "NVML_ERROR_GPU_IS_LOST (15)"
        assert code_name(12345) == "unknown NVML error (12345)"


def session_calling(nvml: FakeNvml, clock: FakeClock, call: str, *, busy: bool = False) -> Any:
    """A session whose reads make ``call`` (``busy``: the GPUs and this process at 100 %)."""
    session = open_session(nvml, clock, attribution="process" if "Process" in call else "device")
    if call == "nvmlDeviceGetUtilizationRates":
        nvml.gpus[0].samples_supported = False
        nvml.gpus[1].samples_supported = False
    if call == "nvmlDeviceGetProcessUtilization":
        nvml.remove_function("nvmlDeviceGetProcessesUtilizationInfo")
    if busy:
        nvml.set_utilization(100)
        nvml.set_process_utilization(os.getpid(), 100)
    return session
