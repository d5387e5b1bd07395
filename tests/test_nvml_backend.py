"""The NVML backend, rule by rule, through the real ``pynvml`` bindings and the NVML double.

Every test installs :class:`tests.nvml_double.FakeNvml` as ``pynvml.nvmlLib``: the
backend's calls go through the unmodified ``pynvml`` wrappers and ctypes into the
double's C-callable entry points. The tracker clock is a FakeClock starting at
10 s, so every GPU already has a buffer of samples when a test begins.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from gputime import _faults
from gputime._backends._base import BackendUnavailable, Reading
from gputime._backends.nvml import (
    NvmlBackend,
    NvmlDeviceLostError,
    NvmlError,
    NvmlUnavailableError,
    clocks,
    driver,
    errors,
    inventory,
    list_devices,
    processes,
    runtime,
    utilization,
)
from gputime.testing import FakeClock
from tests.nvml_double import (
    DEVICE_CALLS,
    DRIVER_MODELS,
    EPOCH_US,
    GPU_IS_LOST,
    NOT_FOUND,
    NOT_SUPPORTED,
    PROCESS_CALL,
    PROCESS_INFO_BOUND,
    PROCESS_SOURCE,
    RESET_REQUIRED,
    UNINITIALIZED,
    UNKNOWN,
    FakeGpu,
    FakeNvml,
)

P = 1 / 6
START = 10.0

#: Tests of the newer per-process call itself: the bindings at the declared floor
#: (nvidia-ml-py 12.535) cannot make it, so there they are not applicable.
needs_process_info = pytest.mark.skipif(
    not PROCESS_INFO_BOUND,
    reason="these nvidia-ml-py bindings lack nvmlDeviceGetProcessesUtilizationInfo",
)
#: DEVICE_CALLS, with the newer per-process call marked as above.
SWEPT_CALLS = [
    pytest.param(call, marks=needs_process_info)
    if call == "nvmlDeviceGetProcessesUtilizationInfo"
    else call
    for call in DEVICE_CALLS
]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture(params=DRIVER_MODELS)
def model(request: pytest.FixtureRequest) -> str:
    """Each driver model of idle time: real drivers record no sample while idle."""
    return str(request.param)


@pytest.fixture
def nvml(clock: FakeClock, model: str) -> Iterator[FakeNvml]:
    """Two GPUs that were busy from 5 s to 9 s, before the test begins at 10 s."""
    double = FakeNvml(clock, 2, model=model)
    double.worked_earlier()
    with installed(double):
        yield double


class installed:  # noqa: N801 - used like a function, as a context manager
    """Install a double with a fresh process-wide NVML state; check it on the way out."""

    def __init__(self, double: FakeNvml) -> None:
        self.double = double
        self._logged = _faults.PROCESS

    def __enter__(self) -> FakeNvml:
        runtime.RUNTIME.forget()
        # NVML's warnings are logged once per process: each test starts afresh.
        self._logged = _faults.PROCESS
        _faults.PROCESS = _faults.OnceLog()
        self.double.install()
        return self.double

    def __exit__(self, *exc: object) -> None:
        FakeNvml.uninstall()
        runtime.RUNTIME.forget()
        _faults.PROCESS = self._logged
        assert not self.double.errors, self.double.errors


def open_session(
    nvml: FakeNvml,
    clock: FakeClock,
    devices: Any = None,
    attribution: Any = "device",
    **kwargs: Any,
) -> Any:
    backend = NvmlBackend(**nvml.backend_clocks(), **kwargs)
    return backend.open(clock=clock, devices=devices, attribution=attribution)


def at(k: int, period: float = P) -> float:
    """Tracker time of driver sample ``k``."""
    return k * period


def is_empty(reading: Reading, source: str) -> bool:
    return not reading.utilization and reading.source == source


def values(reading: Reading) -> list[float | None]:
    return [value for _, value in reading.utilization]


def ends(reading: Reading) -> list[float]:
    return [end for end, _ in reading.utilization]


def heard(reading: Reading) -> bool:
    """Whether a read told anything: samples, or (an idle real driver) an idle claim."""
    return bool(reading.utilization) or reading.idle_until is not None


# --------------------------------------------------------------------------- lifecycle


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
        inside, release = threading.Event(), threading.Event()

        def block(name: str) -> None:
            if name == "nvmlDeviceGetSamples" and threading.current_thread() is not main:
                inside.set()
                assert release.wait(10)

        main = threading.current_thread()
        nvml.before_call = block
        reader = threading.Thread(target=session.read, args=(0, START))
        reader.start()
        assert inside.wait(10)
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
        self, nvml: FakeNvml, clock: FakeClock, caplog: pytest.LogCaptureFixture
    ):
        session = open_session(nvml, clock)
        session._driver._inflight = 1  # a read that never returns
        wait = driver.CLOSE_WAIT
        driver.CLOSE_WAIT = 0.01
        try:
            session.close()
        finally:
            driver.CLOSE_WAIT = wait
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

    def test_a_forked_child_seen_from_inside(self, nvml: FakeNvml, clock: FakeClock):
        # What the child of the fork test runs, in this process so coverage sees it.
        session = open_session(nvml, clock)
        nvml.set_utilization(100)
        clock.advance(1)
        session.after_fork()
        runtime.RUNTIME.forget()  # the at-fork hook
        session._driver._pid = -1  # this process is now "the child"
        reading = session.read(0, START)
        assert values(reading) == [100.0] * 6
        assert nvml.calls["nvmlInitWithFlags"] == 2
        session.close()
        assert nvml.refcount == 1  # the child's own reference only

    def test_a_child_failing_to_initialise(self, nvml: FakeNvml, clock: FakeClock):
        session = open_session(nvml, clock)
        nvml.set_utilization(100)
        runtime.RUNTIME.forget()
        session._driver._pid = -1
        nvml.fail("nvmlInitWithFlags", UNKNOWN, times=1)
        with pytest.raises(NvmlError, match=r"nvmlInit failed: NVML_ERROR_UNKNOWN"):
            session.read(0, START)
        clock.advance(P)
        assert len(session.read(0, START).utilization) == 1

    def test_reinit_done_by_another_thread_is_not_repeated(self, nvml: FakeNvml):
        import pynvml

        fresh = runtime.Runtime()
        fresh.ensure(pynvml)
        seen = fresh.generation
        fresh.reinit(pynvml, seen)
        fresh.reinit(pynvml, seen)  # the second caller saw the same generation
        assert nvml.calls["nvmlInitWithFlags"] == 2

    def test_a_child_that_never_reads_does_not_shut_down(self, nvml: FakeNvml, clock: FakeClock):
        session = open_session(nvml, clock)
        session._driver._pid = -1  # as seen from a forked child
        session.close()
        assert nvml.calls["nvmlShutdown"] == 0


# --------------------------------------------------------------------------- devices


class TestDevices:
    def test_all_devices_reported_by_uuid(self, nvml: FakeNvml, clock: FakeClock):
        session = open_session(nvml, clock)
        assert [d.id for d in session.devices] == [g.uuid for g in nvml.gpus]
        assert [d.index for d in session.devices] == [0, 1]
        assert session.devices[0].name == "NVIDIA H100 80GB HBM3"
        assert session.devices[0].details == {
            "uuid": nvml.gpus[0].uuid,
            "mig": False,
            "utilization": True,
            "energy": True,
        }
        assert session.measures_utilization
        assert session.measures_energy

    def test_explicit_devices_by_index_uuid_prefix_and_digit_string(
        self, nvml: FakeNvml, clock: FakeClock
    ):
        uuid0, uuid1 = nvml.gpus[0].uuid, nvml.gpus[1].uuid
        assert [d.id for d in open_session(nvml, clock, [1]).devices] == [uuid1]
        assert [d.id for d in open_session(nvml, clock, [uuid1, 0]).devices] == [uuid1, uuid0]
        assert [d.id for d in open_session(nvml, clock, [uuid0[:12]]).devices] == [uuid0]
        assert [d.id for d in open_session(nvml, clock, ["1"]).devices] == [uuid1]
        assert open_session(nvml, clock, []).devices == ()

    @pytest.mark.parametrize("selector", [2, -1, "GPU-ffff", "GPU-0000000", "MIG-nope", "x", 1.5])
    def test_a_device_that_does_not_exist_is_named(
        self, nvml: FakeNvml, clock: FakeClock, selector: object
    ):
        with pytest.raises(ValueError, match=repr(selector).replace("[", r"\[")):
            open_session(nvml, clock, [selector])
        assert nvml.refcount == 0  # the failed open released its reference

    def test_bool_and_duplicates_are_rejected(self, nvml: FakeNvml, clock: FakeClock):
        with pytest.raises(ValueError, match="True"):
            open_session(nvml, clock, [True])
        with pytest.raises(ValueError, match="named twice"):
            open_session(nvml, clock, [0, nvml.gpus[0].uuid])

    def test_unknown_attribution(self, nvml: FakeNvml, clock: FakeClock):
        with pytest.raises(ValueError, match="attribution='bogus'"):
            open_session(nvml, clock, attribution="bogus")

    def test_an_inaccessible_device_is_not_visible_and_cannot_be_chosen(self, clock: FakeClock):
        double = FakeNvml(clock, 3)
        with installed(double):
            double.fail("nvmlDeviceGetUUID", 4, device=1)
            backend = NvmlBackend(wall_clock_ns=double.wall_ns)
            double.clear_faults()
            session = backend.open(clock=clock, devices=None, attribution="device")
            assert [d.index for d in session.devices] == [0, 2]
            with pytest.raises(ValueError, match=r"cannot be used.*NO_PERMISSION"):
                backend.open(clock=clock, devices=[1], attribution="device")
            info = {d.index: d for d in list_devices()}
            assert info[1].error is None  # the fault is gone now

    def test_the_device_name_is_cosmetic(self, nvml: FakeNvml, clock: FakeClock):
        nvml.fail("nvmlDeviceGetName", UNKNOWN)
        assert open_session(nvml, clock).devices[0].name == "NVIDIA GPU"


class TestCudaVisibleDevices:
    @pytest.fixture
    def four(self, clock: FakeClock) -> Iterator[FakeNvml]:
        gpus = [FakeGpu(i, f"GPU-{i}{i}{i}-{i:04d}") for i in range(4)]
        gpus[3].uuid = "GPU-111-9999"  # shares the prefix "GPU-111" with GPU 1
        with installed(FakeNvml(clock, gpus)) as double:
            yield double

    @pytest.mark.parametrize(
        ("env", "expected"),
        [
            ("2,0", [2, 0]),
            ("GPU-222,GPU-000-0000", [2, 0]),
            (" 1 , 2 ", [1, 2]),
            ("0,7,1", [0]),  # CUDA stops at the first invalid entry
            ("0,-1,1", [0]),
            ("2,GPU-111,0", [2]),  # an ambiguous prefix is invalid
            ("GPU-111-0,0,0", [1, 0]),
            ("", []),
            ("NoDevFiles", []),
        ],
    )
    def test_entries(
        self,
        four: FakeNvml,
        clock: FakeClock,
        monkeypatch: pytest.MonkeyPatch,
        env: str,
        expected: list[int],
    ):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", env)
        session = open_session(four, clock)
        assert [d.index for d in session.devices] == expected
        assert [d.id for d in session.devices] == [four.gpus[i].uuid for i in expected]
        assert session.measures_utilization == bool(expected)

    def test_nothing_visible_warns_once(
        self,
        four: FakeNvml,
        clock: FakeClock,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
        open_session(four, clock)
        open_session(four, clock)
        assert caplog.text.count("leaves no GPU visible") == 1

    def test_indices_warn_when_cuda_order_may_differ(
        self,
        four: FakeNvml,
        clock: FakeClock,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ):
        four.gpus[2].name = "NVIDIA A10"
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,2")
        monkeypatch.setenv("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
        open_session(four, clock)
        assert "fastest first" not in caplog.text
        monkeypatch.delenv("CUDA_DEVICE_ORDER")
        open_session(four, clock)
        assert "fastest first" in caplog.text

    def test_same_models_do_not_warn(
        self,
        four: FakeNvml,
        clock: FakeClock,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
        monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)
        open_session(four, clock)
        assert "fastest first" not in caplog.text


# --------------------------------------------------------------------------- MIG


class TestMig:
    @pytest.fixture
    def mig(self, clock: FakeClock) -> Iterator[FakeNvml]:
        gpus = [
            FakeGpu(0, "GPU-aaaa-0000"),
            FakeGpu(1, "GPU-bbbb-1111", mig=True, mig_instances=("MIG-cccc-0", "MIG-cccc-1")),
            FakeGpu(2, "GPU-dddd-2222", mig=None),  # not MIG-capable
        ]
        with installed(FakeNvml(clock, gpus)) as double:
            yield double

    def test_mig_device_is_unavailable_with_one_warning(
        self, mig: FakeNvml, clock: FakeClock, caplog: pytest.LogCaptureFixture
    ):
        session = open_session(mig, clock)
        assert [d.details["utilization"] for d in session.devices] == [True, False, True]
        assert session.devices[1].details["mig"] is True
        assert session.measures_utilization  # the other devices measure
        assert not session.measures_energy  # a total without the MIG GPU would be silently low
        with pytest.raises(NvmlUnavailableError, match="MIG"):
            session.read(1, START)
        open_session(mig, clock)
        assert caplog.text.count("MIG mode") == 1
        energy_calls = mig.calls["nvmlDeviceGetTotalEnergyConsumption"]
        session.read(0, START)
        assert mig.calls["nvmlDeviceGetTotalEnergyConsumption"] == energy_calls

    def test_only_mig_means_no_gpu_figure(self, mig: FakeNvml, clock: FakeClock):
        session = open_session(mig, clock, [1])
        assert not session.measures_utilization
        assert not session.measures_energy

    def test_mig_instances_in_cuda_visible_devices(
        self, mig: FakeNvml, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
    ):
        monkeypatch.setenv(
            "CUDA_VISIBLE_DEVICES", "MIG-cccc-1,MIG-GPU-bbbb-1111/1/0,MIG-GPU-ffff/1/0"
        )
        session = open_session(mig, clock)
        assert [d.id for d in session.devices] == ["MIG-cccc-1", "MIG-GPU-bbbb-1111/1/0"]
        assert [d.index for d in session.devices] == [1, 1]
        assert not session.measures_utilization

    def test_explicit_mig_instance(self, mig: FakeNvml, clock: FakeClock):
        session = open_session(mig, clock, ["MIG-cccc-0"])
        assert session.devices[0].details == {
            "uuid": "GPU-bbbb-1111",
            "mig": True,
            "utilization": False,
            "energy": False,
        }

    def test_a_mig_id_whose_parent_is_not_usable(self, mig: FakeNvml, clock: FakeClock):
        mig.fail("nvmlDeviceGetUUID", UNKNOWN, device=1, times=1)
        backend = NvmlBackend(wall_clock_ns=mig.wall_ns)  # GPU 1 unusable at enumeration
        with pytest.raises(ValueError, match="MIG-cccc-0"):
            backend.open(clock=clock, devices=["MIG-cccc-0"], attribution="device")

    def test_mig_rejects_process_attribution(self, mig: FakeNvml, clock: FakeClock):
        with pytest.raises(ValueError, match=r"attribution='process'.*MIG"):
            open_session(mig, clock, attribution="process")


# --------------------------------------------------------------------------- sampling


class TestSampling:
    def test_samples_on_the_tracker_clock(self, nvml: FakeNvml, clock: FakeClock, model: str):
        session = open_session(nvml, clock)
        nvml.set_utilization(100)
        clock.advance(0.5)
        nvml.set_utilization(30)
        clock.advance(0.5)
        reading = session.read(0, START)
        assert reading.source == "samples"
        assert ends(reading) == pytest.approx([START + at(k) for k in range(1, 7)], abs=1e-6)
        assert values(reading) == [100, 100, 100, 30, 30, 30]
        assert reading.power  # energy is measured too
        assert reading.idle_until is None  # the newest sample is as new as can be
        idle = session.read(1, START)
        if model == "idle-samples":
            assert values(idle) == [0.0] * 6
            assert idle.idle_until is None
        else:
            # Nothing recorded while idle: the absence is the reading, up to
            # where a sample still on its way could reach back.
            assert idle.utilization == []
            assert idle.idle_until == pytest.approx(START + 1 - P, abs=1e-5)

    def test_only_samples_newer_than_since(self, nvml: FakeNvml, clock: FakeClock):
        session = open_session(nvml, clock)
        nvml.set_utilization(100)
        clock.advance(1)
        reading = session.read(0, START + at(4))
        assert ends(reading) == pytest.approx([START + at(5), START + at(6)], abs=1e-6)

    def test_nothing_new_is_an_empty_reading(self, clock: FakeClock):
        with installed(FakeNvml(clock, 1, period=1.0)) as double:
            double.worked_earlier()
            session = open_session(double, clock)
            assert session.sample_period == pytest.approx(1.0, abs=1e-5)
            clock.advance(0.4)
            assert is_empty(session.read(0, START), "samples")
            # Asking beyond the newest sample: the driver answers NOT_FOUND.
            assert is_empty(session.read(0, START + 0.3), "samples")
            assert double.calls["nvmlDeviceGetUtilizationRates"] == 0

    def test_garbage_rows_are_dropped_sorted_and_deduplicated(
        self, nvml: FakeNvml, clock: FakeClock, caplog: pytest.LogCaptureFixture
    ):
        caplog.set_level(logging.DEBUG, "gputime")
        session = open_session(nvml, clock)
        nvml.set_utilization(40)
        clock.advance(0.5)
        gpu = nvml.gpus[0]
        gpu.reverse_order = True
        stamp = nvml.wall_us(START + at(2))
        gpu.injected = [
            (0, 50),  # no timestamp
            (nvml.wall_us(START + at(1)) + 1, 101),  # impossible value
            (stamp, 40),  # a duplicate
            (nvml.wall_us(START + 60), 10),  # from the future
            (nvml.wall_us(START - 5), 10),  # older than asked for: not garbage, not new
        ]
        reading = session.read(0, START)
        assert ends(reading) == pytest.approx([START + at(k) for k in (1, 2, 3)], abs=1e-6)
        assert values(reading) == [40, 40, 40]
        assert "dropped 3 malformed" in caplog.text

    def test_rows_of_other_value_types(self, nvml: FakeNvml, clock: FakeClock):
        assert utilization.sample_value(0, type("V", (), {"dVal": 12.5})()) == 12.5
        assert utilization.sample_value(42, object()) is None

    def test_period_is_estimated_per_device_and_the_longest_reported(self, clock: FakeClock):
        gpus = [FakeGpu(0, "GPU-a", period=1 / 6), FakeGpu(1, "GPU-b", period=1.0)]
        with installed(FakeNvml(clock, gpus)) as double:
            double.worked_earlier()
            assert open_session(double, clock).sample_period == pytest.approx(1.0, abs=1e-5)
            assert open_session(double, clock, [0]).sample_period == pytest.approx(1 / 6, abs=1e-5)

    def test_period_defaults_to_one_sixth_before_any_sample(self, clock: FakeClock):
        gpu = FakeGpu(0, "GPU-a", period=0.5, sample_when_idle=False)
        with installed(FakeNvml(clock, [gpu])) as double:
            session = open_session(double, clock)
            assert session.sample_period == pytest.approx(1 / 6, abs=1e-5)
            double.set_utilization(100)
            clock.advance(2)
            session.read(0, START)
            assert session.sample_period == pytest.approx(0.5, abs=1e-5)

    def test_a_silent_buffer_is_confirmed_idle_by_the_rates_once_a_period(self, clock: FakeClock):
        gpu = FakeGpu(0, "GPU-a")
        with installed(FakeNvml(clock, [gpu])) as double:
            double.set_utilization(100)
            clock.advance(1)
            double.set_utilization(0)
            clock.advance(1)
            session = open_session(double, clock)  # learns P from the buffer
            clock.advance(0.1)
            # Newest sample at 11 s, now 12.1 s: the driver recorded nothing since,
            # up to its newest tick (12 s), which the rates confirm idle.
            reading = session.read(0, START + 1.0)
            assert reading.source == "samples"
            assert reading.utilization == []
            assert reading.idle_until == pytest.approx(START + 2.0, abs=1e-5)
            assert double.calls["nvmlDeviceGetUtilizationRates"] == 1  # said 0: idle
            clock.advance(0.05)
            assert session.read(0, START + 1.0).idle_until == pytest.approx(START + 2.0, abs=1e-5)
            assert double.calls["nvmlDeviceGetUtilizationRates"] == 1  # not again so soon
            clock.advance(P)
            session.read(0, START + 1.0)
            assert double.calls["nvmlDeviceGetUtilizationRates"] == 2

    def test_a_buffer_that_records_nothing_while_busy_gives_way_to_the_rates(
        self, clock: FakeClock, caplog: pytest.LogCaptureFixture
    ):
        gpu = FakeGpu(0, "GPU-a", records_samples=False)
        with installed(FakeNvml(clock, [gpu])) as double:
            session = open_session(double, clock)
            double.set_utilization(100)
            clock.advance(0.5)
            # Silent for less than two of the longest periods: nothing to say yet
            # (a sample of a 1 s period may still be on its way).
            assert is_empty(session.read(0, START), "samples")
            assert double.calls["nvmlDeviceGetUtilizationRates"] == 0
            clock.advance(2)
            reading = session.read(0, START)
            assert reading.source == "utilization-rates"
            assert reading.idle_until is None
            # Not read: the stretch the silent buffer was taken for idle, up to
            # the last period, which the rates cover.
            assert reading.utilization == [(START + 1.5, None), (START + 2.5, 100.0)]
            assert "records no samples" in caplog.text
            clock.advance(0.5)
            assert session.read(0, START + 2.5).utilization == [(START + 3.0, 100.0)]

    def test_the_first_sample_after_an_idle_pause_starts_after_it(self, clock: FakeClock):
        gpu = FakeGpu(0, "GPU-a", sample_when_idle=False)
        with installed(FakeNvml(clock, [gpu])) as double:
            double.set_utilization(100)
            clock.advance(1)
            double.set_utilization(0)
            clock.advance(1)
            session = open_session(double, clock)
            double.set_utilization(100)
            clock.advance(0.2)
            # Since 11 s there was no sample until 12 s + P: idle, not lost.
            reading = session.read(0, START + 1.0)
            assert values(reading) == [0.0, 100.0]
            assert ends(reading) == pytest.approx([START + 2.0, START + 2.0 + P], abs=1e-6)

    def test_idle_ticks_between_samples_are_idle_not_the_next_sample(self, clock: FakeClock):
        gpu = FakeGpu(0, "GPU-a")
        with installed(FakeNvml(clock, [gpu])) as double:
            double.worked_earlier()
            session = open_session(double, clock)
            double.set_utilization(100)
            clock.advance(P)
            double.set_utilization(0)
            clock.advance(3 * P)
            double.set_utilization(100)
            clock.advance(P)
            reading = session.read(0, START)
            # Sample 5 covers one period, not the three idle ones before it.
            assert values(reading) == [100.0, 0.0, 100.0]
            assert ends(reading) == pytest.approx(
                [START + at(1), START + at(4), START + at(5)], abs=1e-6
            )

    def test_an_overrun_buffer_marks_the_lost_stretch(self, clock: FakeClock):
        gpu = FakeGpu(0, "GPU-a", capacity=40)
        with installed(FakeNvml(clock, [gpu])) as double:
            double.worked_earlier()
            session = open_session(double, clock)
            double.set_utilization(100)
            clock.advance(10)  # 60 samples; the driver keeps 40
            reading = session.read(0, START)
            assert values(reading) == [None] + [100.0] * 40
            assert ends(reading)[0] == pytest.approx(START + at(20), abs=1e-6)

    def test_a_long_idle_stretch_is_not_an_overrun(self, clock: FakeClock):
        gpu = FakeGpu(0, "GPU-a", capacity=100)
        with installed(FakeNvml(clock, [gpu])) as double:
            double.worked_earlier(1.0, 9.0)  # 48 samples in the buffer
            session = open_session(double, clock)
            clock.advance(10)  # idle: nothing recorded
            double.set_utilization(100)
            clock.advance(P)
            # Ten seconds behind, but the buffer still reaches back: idle.
            assert values(session.read(0, START)) == [0.0, 100.0]

    def test_a_buffer_too_short_to_have_overrun_never_lost_anything(self, clock: FakeClock):
        gpu = FakeGpu(0, "GPU-a")
        with installed(FakeNvml(clock, [gpu])) as double:
            session = open_session(double, clock)  # a fresh GPU: it never held a sample
            clock.advance(10)
            double.set_utilization(100)
            clock.advance(3 * P)
            assert values(session.read(0, START)) == [0.0, 100.0, 100.0, 100.0]

    def test_overrun_check_failure_counts_the_stretch_as_lost(self, clock: FakeClock):
        gpu = FakeGpu(0, "GPU-a", capacity=40)
        with installed(FakeNvml(clock, [gpu])) as double:
            double.worked_earlier()
            session = open_session(double, clock)
            double.set_utilization(100)
            clock.advance(10)
            real = double.functions["nvmlDeviceGetSamples"]
            calls = 0

            def second_call_fails(name: str) -> None:
                nonlocal calls
                if name == "nvmlDeviceGetSamples":
                    calls += 1
                    if calls == 3:  # size + fill of the read, then the whole-buffer check
                        double.fail("nvmlDeviceGetSamples", UNKNOWN, times=1)

            double.before_call = second_call_fails
            assert values(session.read(0, START))[0] is None
            assert double.functions["nvmlDeviceGetSamples"] is real

    def test_lost_gpu_during_the_overrun_check(self, clock: FakeClock):
        gpu = FakeGpu(0, "GPU-a", capacity=40)
        with installed(FakeNvml(clock, [gpu])) as double:
            double.worked_earlier()
            session = open_session(double, clock)
            double.set_utilization(100)
            clock.advance(10)
            calls = 0

            def lose(name: str) -> None:
                nonlocal calls
                calls += name == "nvmlDeviceGetSamples"
                if calls == 3:
                    double.fail("nvmlDeviceGetSamples", GPU_IS_LOST)

            double.before_call = lose
            with pytest.raises(NvmlDeviceLostError):
                session.read(0, START)

    def test_samples_not_supported_uses_rates_and_remembers(
        self, clock: FakeClock, caplog: pytest.LogCaptureFixture
    ):
        caplog.set_level(logging.INFO, "gputime")
        gpu = FakeGpu(0, "GPU-a", samples_supported=False)
        with installed(FakeNvml(clock, [gpu])) as double:
            session = open_session(double, clock)
            double.set_utilization(100)
            clock.advance(0.5)
            for _ in range(3):
                reading = session.read(0, START)
                assert reading.source == "utilization-rates"
                assert reading.utilization == [(START + 0.5, 100.0)]
            assert double.calls["nvmlDeviceGetSamples"] == 1  # the probe at open only

    def test_samples_becoming_unsupported_at_read_time(
        self, nvml: FakeNvml, clock: FakeClock, caplog: pytest.LogCaptureFixture
    ):
        caplog.set_level(logging.INFO, "gputime")
        session = open_session(nvml, clock)
        nvml.gpus[0].samples_supported = False
        clock.advance(0.5)
        assert session.read(0, START).source == "utilization-rates"
        assert "no utilisation sample buffer" in caplog.text

    def test_rates_with_an_impossible_value_fail_the_read(self, clock: FakeClock):
        gpu = FakeGpu(0, "GPU-a", samples_supported=False)
        with installed(FakeNvml(clock, [gpu])) as double:
            session = open_session(double, clock)
            double.gpus[0].util.set(START, 250)
            clock.advance(0.5)
            with pytest.raises(NvmlError, match="250%"):
                session.read(0, START)

    def test_no_utilization_source_at_all(self, clock: FakeClock, caplog: pytest.LogCaptureFixture):
        gpus = [
            FakeGpu(0, "GPU-a", samples_supported=False, rates_supported=False),
            FakeGpu(1, "GPU-b", samples_supported=False),
        ]
        with installed(FakeNvml(clock, gpus)) as double:
            session = open_session(double, clock)
            assert [d.details["utilization"] for d in session.devices] == [False, True]
            assert "neither utilisation samples nor utilisation rates" in caplog.text
            with pytest.raises(NvmlUnavailableError, match="not supported"):
                session.read(0, START)
            # GPU 1 loses its rates later: it becomes unavailable too.
            double.gpus[1].rates_supported = False
            with pytest.raises(NvmlUnavailableError, match="neither"):
                session.read(1, START)
            assert session.devices[1].details["utilization"] is False
            assert not open_session(double, clock, [0]).measures_utilization

    def test_idle_claims_need_no_rates(self, clock: FakeClock):
        gpu = FakeGpu(0, "GPU-a", rates_supported=False)
        with installed(FakeNvml(clock, [gpu])) as double:
            double.set_utilization(100)
            clock.advance(1)
            double.set_utilization(0)
            clock.advance(2)
            session = open_session(double, clock)
            reading = session.read(0, START + 1.0)
            assert reading.source == "samples"
            assert reading.idle_until == pytest.approx(START + 3 - P, abs=1e-5)
            clock.advance(1)
            assert session.read(0, START + 1.0).idle_until == pytest.approx(START + 4 - P)
            assert double.calls["nvmlDeviceGetUtilizationRates"] == 1  # remembered

    def test_unknown_period_waits_a_full_second_before_calling_the_driver_idle(
        self, clock: FakeClock
    ):
        gpu = FakeGpu(0, "GPU-a")
        with installed(FakeNvml(clock, [gpu])) as double:
            session = open_session(double, clock)  # empty buffer: period unknown
            clock.advance(1.5)
            reading = session.read(0, START)
            # A sample of a 1 s period could still be on its way: idle until then.
            assert reading.idle_until == pytest.approx(START + 1.5 - 1.0 - 0.02)
            assert double.calls["nvmlDeviceGetUtilizationRates"] == 0
            clock.advance(0.6)  # silent for over two of the longest periods
            assert session.read(0, START).idle_until == pytest.approx(START + 2.1 - 1.02)
            assert double.calls["nvmlDeviceGetUtilizationRates"] == 1

    def test_an_unconfirmed_period_is_bounded_from_both_sides(self, clock: FakeClock):
        gpu = FakeGpu(0, "GPU-a", period=1 / 6)
        with installed(FakeNvml(clock, [gpu])) as double:
            session = open_session(double, clock)
            for _ in range(2):  # busy for one tick, then idle for one tick
                double.set_utilization(100)
                clock.advance(P)
                double.set_utilization(0)
                clock.advance(P)
            reading = session.read(0, START)
            # Two samples 2P apart: the period may be 2P or P. A sample reaches
            # back no further than P...
            assert values(reading) == [100.0, 0.0, 100.0]
            assert ends(reading) == pytest.approx(
                [START + at(1), START + at(2), START + at(3)], abs=1e-5
            )
            assert session.sample_period == pytest.approx(P, abs=1e-5)
            # ... and a claim waits for a sample of a 2P period.
            clock.advance(3 * P)
            claim = session.read(0, START + at(3)).idle_until
            assert claim == pytest.approx(START + 7 * P - 2 * P - 0.02, abs=1e-5)

    def test_wall_clock_step_is_followed(self, nvml: FakeNvml, clock: FakeClock):
        session = open_session(nvml, clock)
        nvml.set_utilization(100)
        clock.advance(1)
        session.read(0, START)
        nvml.step_wall_clock(-3600)  # NTP steps the wall clock back an hour
        clock.advance(1)
        reading = session.read(0, START + 1)
        # The samples stamped after the step still land at their tracker times.
        assert ends(reading)[-1] == pytest.approx(START + 2, abs=1e-6)
        assert values(reading)[-1] == 100.0

    def test_small_clock_jitter_keeps_the_mapping(self, nvml: FakeNvml, clock: FakeClock):
        session = open_session(nvml, clock)
        clock.advance(1)
        nvml.step_wall_clock(0.0005)  # within the tolerance: one sample, one tracker time
        first = session.read(0, START)
        clock.advance(1.1)
        second = session.read(0, START)
        assert ends(first) == ends(second)[: len(ends(first))]

    def test_mapping_takes_the_tightest_of_several_readings(self, nvml: FakeNvml):
        ticks = iter([0.0, 5.0, 1.0, 1.0001, 2.0, 2.5, 3.0, 3.2, 4.0, 4.3])
        walls = iter([10_000_000_000, 11_000_000_000, 12_000_000_000, 13_000_000_000, 14_0])
        mapping = clocks.ClockMap(lambda: next(ticks), lambda: next(walls))
        assert mapping.uncertainty == pytest.approx(0.00005)
        assert mapping.to_tracker(11_000_000) == pytest.approx(1.00005)
        assert mapping.to_raw_us(1.00005) == 11_000_000

    def test_concurrent_reads_are_consistent(self, nvml: FakeNvml, clock: FakeClock):
        session = open_session(nvml, clock)
        nvml.set_utilization(70)
        nvml.set_utilization(70, device=1)
        clock.advance(1)
        results: list[Reading] = []
        threads = [
            threading.Thread(target=lambda d=i % 2: results.append(session.read(d, START)))
            for i in range(16)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert len(results) == 16
        assert all(len(r.utilization) == 6 for r in results)


# --------------------------------------------------------------------------- energy


class TestEnergyCounterSteps:
    """The counter moves in steps; calibration learns when, so energy lands in its own stretch."""

    def test_calibration_learns_the_steps_and_reads_count_as_of_the_last_one(
        self, clock: FakeClock
    ):
        gpu = FakeGpu(0, "GPU-a", energy_update=0.1, energy_phase=0.037)
        with installed(FakeNvml(clock, [gpu])) as double:
            session = open_session(double, clock)
            assert session.calibration_due(clock())
            session.calibrate(sleep=clock.advance)
            assert not session.calibration_due(clock())
            assert session.calibration_due(clock() + 60.0)
            # A few hundred ms of reads every 2 ms, in the sampler thread only.
            assert 50 <= double.calls["nvmlDeviceGetTotalEnergyConsumption"] <= 200
            ((first, _),) = session.read(0, START).power
            double.set_power(700.0)
            clock.advance(0.55)
            ((end, power),) = session.read(0, START).power
            # Each read counts as of the counter's newest step, so a power
            # sample is exactly the energy between two steps.
            step = 0.037 + math.floor((clock() - 0.037) / 0.1 + 1e-9) * 0.1
            assert end == pytest.approx(step, abs=1e-6)
            assert end < clock()
            energy = double.energy_mj(at=end) - double.energy_mj(at=first)
            assert power * (end - first) == pytest.approx(energy, rel=1e-6)

    @pytest.mark.parametrize("update", [0.001, None], ids=["fine", "irregular"])
    def test_fine_or_irregular_counters_are_read_as_they_are(
        self, clock: FakeClock, update: float | None
    ):
        gpu = FakeGpu(0, "GPU-a", energy_update=update or 0.1)
        with installed(FakeNvml(clock, [gpu])) as double:
            session = open_session(double, clock)
            steps = iter([0.002, 0.002, 0.002, 0.05, 0.002, 0.002, 0.002])

            def irregular(seconds: float) -> None:
                # The counter steps 100 ms apart, then 50 ms after (a skipped beat).
                clock.advance(next(steps, seconds) if update is None else seconds)

            gpu.energy_update = update or 0.1
            session.calibrate(sleep=clock.advance if update else irregular)
            double.set_power(300.0)
            clock.advance(0.5)
            ((end, _power),) = session.read(0, START).power
            if update:
                assert end == clock()  # no correction: the steps are finer than it
            assert not session.calibration_due(clock())

    def test_a_failing_counter_calibrates_nothing(
        self, clock: FakeClock, caplog: pytest.LogCaptureFixture
    ):
        gpu = FakeGpu(0, "GPU-a")
        with installed(FakeNvml(clock, [gpu])) as double:
            session = open_session(double, clock)
            double.fail("nvmlDeviceGetTotalEnergyConsumption", UNKNOWN, times=1)
            session.calibrate(sleep=clock.advance)
            assert "nvmlDeviceGetTotalEnergyConsumption" in caplog.text
            clock.advance(0.5)
            ((end, _power),) = session.read(0, START).power
            assert end == clock()

    def test_a_closed_session_does_not_calibrate(self, nvml: FakeNvml, clock: FakeClock):
        session = open_session(nvml, clock)
        session.close()
        calls = nvml.calls["nvmlDeviceGetTotalEnergyConsumption"]
        session.calibrate(sleep=clock.advance)
        assert nvml.calls["nvmlDeviceGetTotalEnergyConsumption"] == calls


class TestEnergy:
    def test_mean_power_from_counter_deltas(self, nvml: FakeNvml, clock: FakeClock):
        session = open_session(nvml, clock)
        nvml.set_power(250.0)
        clock.advance(0.5)
        assert session.read(0, START).power == [(START + 0.5, pytest.approx(250_000.0))]
        nvml.set_power(100.0)
        clock.advance(1.0)
        assert session.read(0, START).power == [(START + 1.5, pytest.approx(100_000.0))]

    def test_a_stretch_shorter_than_the_counter_update_is_deferred_not_zero(
        self, nvml: FakeNvml, clock: FakeClock
    ):
        session = open_session(nvml, clock)
        clock.advance(0.5)
        session.read(0, START)
        before = nvml.energy_mj()
        clock.advance(0.05)  # the counter has not moved since the last read
        assert session.read(0, START).power == []
        clock.advance(0.1)
        # The next read covers the deferred stretch too: the counter's 100 ms
        # steps shift energy between reads, but the deltas add up exactly.
        delta = nvml.energy_mj() - before
        assert delta == 6000
        assert session.read(0, START).power == [(START + 0.65, pytest.approx(delta / 0.15))]

    def test_a_stuck_counter_reads_as_missing(self, nvml: FakeNvml, clock: FakeClock):
        session = open_session(nvml, clock)
        nvml.gpus[0].power.set(START, 0.0)  # the counter no longer moves
        clock.advance(1.5)
        assert session.read(0, START).power == [(START + 1.5, None)]

    def test_a_counter_that_goes_back_reads_as_missing(self, nvml: FakeNvml, clock: FakeClock):
        session = open_session(nvml, clock)
        nvml.gpus[0].energy_base_mj = 0  # the driver was reloaded
        clock.advance(0.5)
        assert session.read(0, START).power == [(START + 0.5, None)]
        clock.advance(0.5)
        assert session.read(0, START).power == [(START + 1.0, pytest.approx(60_000.0))]

    def test_unsupported_energy_is_absent_never_zero(self, clock: FakeClock):
        gpus = [FakeGpu(0, "GPU-a"), FakeGpu(1, "GPU-b", energy_supported=False)]
        with installed(FakeNvml(clock, gpus)) as double:
            assert open_session(double, clock, [0]).measures_energy
            session = open_session(double, clock)
            assert not session.measures_energy
            calls = double.calls["nvmlDeviceGetTotalEnergyConsumption"]
            clock.advance(1)
            assert session.read(0, START).power == ()
            assert double.calls["nvmlDeviceGetTotalEnergyConsumption"] == calls

    def test_a_failed_counter_read_is_recovered_by_the_next(
        self, nvml: FakeNvml, clock: FakeClock, caplog: pytest.LogCaptureFixture
    ):
        session = open_session(nvml, clock)
        nvml.set_utilization(100)
        nvml.fail("nvmlDeviceGetTotalEnergyConsumption", UNKNOWN, times=2)
        clock.advance(0.5)
        reading = session.read(0, START)
        assert reading.power == []
        assert len(reading.utilization) == 3  # utilisation still counts
        session.read(0, START)
        assert caplog.text.count("nvmlDeviceGetTotalEnergyConsumption") == 1
        clock.advance(0.5)
        assert session.read(0, START).power == [(START + 1.0, pytest.approx(60_000.0))]

    def test_without_a_baseline_the_first_read_sets_one(self, nvml: FakeNvml, clock: FakeClock):
        nvml.fail("nvmlDeviceGetTotalEnergyConsumption", UNKNOWN, times=2)  # the open probes
        session = open_session(nvml, clock)
        assert session.measures_energy
        clock.advance(0.5)
        assert session.read(0, START).power == []
        clock.advance(0.5)
        assert session.read(0, START).power == [(START + 1.0, pytest.approx(60_000.0))]

    def test_the_clock_not_moving_between_reads(self, nvml: FakeNvml, clock: FakeClock):
        session = open_session(nvml, clock)
        assert session.read(0, START).power == []


# --------------------------------------------------------------------------- process attribution


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


# --------------------------------------------------------------------------- errors


class TestErrors:
    @pytest.mark.parametrize("call", SWEPT_CALLS)
    @pytest.mark.parametrize("code", [GPU_IS_LOST, RESET_REQUIRED])
    def test_a_lost_gpu_stops_that_device(
        self, nvml: FakeNvml, clock: FakeClock, call: str, code: int
    ):
        session = open_session(nvml, clock, attribution=_attribution_for(call))
        _prefer(nvml, call)
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
        session = open_session(nvml, clock, attribution=_attribution_for(call))
        _prefer(nvml, call)
        nvml.set_utilization(100)
        nvml.set_process_utilization(os.getpid(), 100)
        nvml.fail(call, UNKNOWN, times=1)
        clock.advance(0.5)
        if call == inventory.ENERGY_CALL:
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
        session = open_session(nvml, clock, attribution=_attribution_for(call))
        _prefer(nvml, call)
        nvml.set_utilization(100)
        nvml.set_process_utilization(os.getpid(), 100)
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

    @pytest.mark.parametrize("call", ["nvmlDeviceGetSamples", inventory.ENERGY_CALL])
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

    def test_bindings_failing_otherwise(self, nvml: FakeNvml, clock: FakeClock):
        session = open_session(nvml, clock)
        nvml.remove_function("nvmlDeviceGetTotalEnergyConsumption")
        clock.advance(P)
        with pytest.raises(NvmlError, match="FUNCTION_NOT_FOUND"):
            session._driver.call(session._devs[0], "nvmlDeviceGetTotalEnergyConsumption")
        with pytest.raises(NvmlError, match="TypeError"):
            session._driver.call(session._devs[0], "nvmlDeviceGetSamples")  # missing arguments

    def test_a_missing_device_index(self, nvml: FakeNvml, clock: FakeClock):
        with pytest.raises(IndexError):
            open_session(nvml, clock).read(5, START)

    def test_error_names(self):
        assert errors.code_name(15) == "NVML_ERROR_GPU_IS_LOST (15)"
        assert errors.code_name(12345) == "unknown NVML error (12345)"


def _attribution_for(call: str) -> str:
    return "process" if "Process" in call else "device"


def _prefer(nvml: FakeNvml, call: str) -> None:
    """Make ``call`` one the backend actually makes on the next read."""
    if call == "nvmlDeviceGetUtilizationRates":
        nvml.gpus[0].samples_supported = False
        nvml.gpus[1].samples_supported = False
    if call == "nvmlDeviceGetProcessUtilization":
        nvml.remove_function("nvmlDeviceGetProcessesUtilizationInfo")


# --------------------------------------------------------------------------- construction


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

        runtime.RUNTIME.forget()
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
