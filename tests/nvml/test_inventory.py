"""``list_devices``: every GPU NVML sees, the calls each supports, its period and clock."""

from __future__ import annotations

import pytest

from gputime._backends._base import BackendUnavailable
from gputime._backends.nvml import list_devices
from gputime.testing import FakeClock
from tests.nvml.support import P, installed
from tests.nvml_double import (
    EPOCH_US,
    GPU_IS_LOST,
    NOT_FOUND,
    NOT_SUPPORTED,
    UNKNOWN,
    FakeGpu,
    FakeNvml,
)


class TestListDevices:
    def test_devices_and_their_calls(self, clock: FakeClock):
        gpus = [
            FakeGpu(0, "GPU-a", period=0.5),
            FakeGpu(1, "GPU-b", mig=True, energy_supported=False),
            FakeGpu(2, "GPU-c", samples_supported=False),
            FakeGpu(3, "GPU-d", timestamp_base="boottime"),
            FakeGpu(4, "GPU-e"),
        ]
        with installed(FakeNvml(clock, gpus)) as double:
            double.worked_earlier()
            double.gpus[4].util.set(5.0, 0.0)  # never busy: its buffer is empty
            double.remove_function("nvmlDeviceGetProcessesUtilizationInfo")
            double.fail("nvmlDeviceGetProcessUtilization", UNKNOWN, device=2)
            devices = list_devices(**double.backend_clocks())
            assert double.refcount == 0  # initialised for the listing only
        first, mig, old, boot, idle = devices
        assert (first.index, first.uuid, first.mig_enabled) == (0, "GPU-a", False)
        assert first.sample_period == pytest.approx(0.5, abs=1e-5)
        assert first.timestamp_base == "wall"
        assert boot.timestamp_base == "boottime"
        assert boot.sample_period == pytest.approx(P, abs=1e-5)
        assert (idle.sample_period, idle.timestamp_base) == (None, None)
        assert first.calls == {
            "nvmlDeviceGetSamples": "supported",
            "nvmlDeviceGetUtilizationRates": "supported",
            "nvmlDeviceGetTotalEnergyConsumption": "supported",
            "nvmlDeviceGetProcessesUtilizationInfo": "missing",
            "nvmlDeviceGetProcessUtilization": "supported",
        }
        assert mig.mig_enabled
        assert mig.calls["nvmlDeviceGetSamples"] == "not supported"
        assert mig.calls["nvmlDeviceGetTotalEnergyConsumption"] == "not supported"
        assert old.sample_period is None
        assert old.calls["nvmlDeviceGetProcessUtilization"] == "error: NVML_ERROR_UNKNOWN (999)"

    def test_a_call_the_bindings_lack_is_missing(
        self, nvml: FakeNvml, monkeypatch: pytest.MonkeyPatch
    ):
        # nvidia-ml-py older than a call (the floor, 12.535, for this one) has
        # no binding for it, whatever the driver offers.
        import pynvml

        monkeypatch.delattr(pynvml, "nvmlDeviceGetProcessesUtilizationInfo", raising=False)
        first, second = list_devices()
        for device in (first, second):
            assert device.error is None
            assert device.calls["nvmlDeviceGetProcessesUtilizationInfo"] == "missing"
            assert device.calls["nvmlDeviceGetProcessUtilization"] == "supported"

    def test_an_unusable_device_is_listed_with_its_error(self, nvml: FakeNvml):
        nvml.fail("nvmlDeviceGetHandleByIndex_v2", GPU_IS_LOST, times=1)
        lost, fine = list_devices()
        assert lost.error == "NVML_ERROR_GPU_IS_LOST (15)"
        assert lost.calls == {}
        assert fine.error is None

    def test_enumeration_failing(self, nvml: FakeNvml):
        nvml.fail("nvmlDeviceGetCount_v2", NOT_SUPPORTED)
        with pytest.raises(BackendUnavailable):
            list_devices()

    def test_empty_sample_buffer_is_supported(self, nvml: FakeNvml):
        nvml.fail("nvmlDeviceGetSamples", NOT_FOUND)
        assert list_devices()[0].calls["nvmlDeviceGetSamples"] == "supported"

    def test_the_wall_clock_is_consistent_with_the_double(self, nvml: FakeNvml, clock: FakeClock):
        assert nvml.wall_ns() == (EPOCH_US + 10_000_000) * 1000
