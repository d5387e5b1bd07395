"""Constructing the NVML backend: what it says when NVML cannot start, or sees no GPU."""

from __future__ import annotations

import pytest

from gputime._backends._base import BackendUnavailable
from gputime._backends.nvml import NvmlBackend, list_devices
from gputime._backends.nvml.runtime import RUNTIME
from gputime.testing import FakeClock
from tests.nvml.support import installed
from tests.nvml_double import UNKNOWN, FakeNvml


class TestConstruction:
    def test_driver_not_loaded(self, nvml: FakeNvml):
        nvml.driver_loaded = False
        with pytest.raises(BackendUnavailable, match="driver is not loaded"):
            NvmlBackend()

    @pytest.mark.parametrize(
        ("code", "message"),
        [
            (4, "no permission"),
            (18, "does not match the loaded kernel driver"),
            (UNKNOWN, "NVML could not start: NVML_ERROR_UNKNOWN"),
        ],
    )
    def test_init_failures_say_what_is_missing(self, nvml: FakeNvml, code: int, message: str):
        nvml.fail("nvmlInitWithFlags", code)
        with pytest.raises(BackendUnavailable, match=message):
            NvmlBackend()

    def test_no_library(self, monkeypatch: pytest.MonkeyPatch):
        import pynvml

        def no_library(name: str) -> None:
            raise OSError(f"{name}: cannot open shared object file")

        RUNTIME.forget()
        monkeypatch.setattr(pynvml, "nvmlLib", None)
        monkeypatch.setattr(pynvml, "CDLL", no_library)
        with pytest.raises(BackendUnavailable, match=r"libnvidia-ml\.so\.1 was not found"):
            NvmlBackend()
        with pytest.raises(BackendUnavailable, match="libnvidia-ml"):
            list_devices()

    def test_no_bindings(self, monkeypatch: pytest.MonkeyPatch):
        monkeypatch.setitem(__import__("sys").modules, "pynvml", None)
        with pytest.raises(BackendUnavailable, match="nvidia-ml-py"):
            NvmlBackend()

    def test_bindings_failing_in_an_unexpected_way(self, nvml: FakeNvml):
        nvml.remove_function("nvmlDeviceGetCount_v2")
        with pytest.raises(BackendUnavailable, match="FUNCTION_NOT_FOUND"):
            NvmlBackend()

    def test_no_gpu(self, clock: FakeClock):
        with installed(FakeNvml(clock, 0)), pytest.raises(BackendUnavailable, match="no GPU"):
            NvmlBackend()

    def test_device_count_failing(self, nvml: FakeNvml):
        nvml.fail("nvmlDeviceGetCount_v2", UNKNOWN)
        with pytest.raises(BackendUnavailable, match="UNKNOWN"):
            NvmlBackend()

    def test_open_failing_to_initialise_again(self, nvml: FakeNvml, clock: FakeClock):
        backend = NvmlBackend(wall_clock_ns=nvml.wall_ns)
        backend.open(clock=clock, devices=None, attribution="device").close()
        nvml.driver_loaded = False
        with pytest.raises(BackendUnavailable, match="driver is not loaded"):
            backend.open(clock=clock, devices=None, attribution="device")

    def test_repr(self, nvml: FakeNvml):
        assert nvml.gpus[1].uuid in repr(NvmlBackend())
