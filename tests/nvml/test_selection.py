"""Which devices a session measures: indices, UUIDs, ``CUDA_VISIBLE_DEVICES``, MIG."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gputime._backends.nvml import NvmlBackend, NvmlUnavailableError, list_devices
from gputime.testing import FakeClock
from tests.nvml.support import START, installed, open_session
from tests.nvml_double import UNKNOWN, FakeGpu, FakeNvml


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
