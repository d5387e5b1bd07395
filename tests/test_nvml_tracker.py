"""The NVML backend behind a real Tracker, the ``auto`` fallback, and import hygiene."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator

import pytest

from gputime import Tracker
from gputime._backends import NoGpu, _nvml, resolve_backend
from gputime._backends._base import BackendUnavailable
from gputime._backends._nvml import NvmlBackend
from gputime.testing import FakeClock
from tests.nvml_double import GPU_IS_LOST, UNKNOWN, FakeGpu, FakeNvml
from tests.test_nvml_backend import START, P, installed


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
def nvml(clock: FakeClock) -> Iterator[FakeNvml]:
    with installed(FakeNvml(clock, 2)) as double:
        yield double


def tracker_on(nvml: FakeNvml, clock: FakeClock, **kwargs: object) -> Tracker:
    backend = NvmlBackend(wall_clock_ns=nvml.wall_ns)
    return Tracker(backend=backend, clock=clock, threaded=False, **kwargs)  # type: ignore[arg-type]


def test_busy_time_through_a_tracker(nvml: FakeNvml, clock: FakeClock):
    with tracker_on(nvml, clock, devices=[0]) as tracker:
        nvml.set_utilization(100)
        with tracker.gpu_task("nmt") as task:
            clock.advance(1.0)
            tracker.poll()
            clock.advance(1.0)
        assert task.gpu_ms == pytest.approx(2000.0, abs=0.01)
        assert task.gpu_util_ms == pytest.approx(2000.0, abs=0.01)
        assert task.status == "ok"
        assert task.energy_mj == pytest.approx(120_000.0, rel=0.01)  # 60 W for 2 s
        clock.advance(P)
        tracker.poll()
        stats = tracker.stats("nmt")
        assert stats.gpu_ms == pytest.approx(2000.0, abs=0.01)
        assert stats.status == "ok"


def test_idle_gpu_with_a_stopped_driver_is_ok_and_zero(clock: FakeClock):
    gpu = FakeGpu(0, "GPU-a", sample_when_idle=False)
    with installed(FakeNvml(clock, [gpu])) as double, tracker_on(double, clock) as tracker:
        with tracker.gpu_task("tts") as task:
            for _ in range(6):
                clock.advance(0.5)
                tracker.poll()
        assert task.gpu_ms == 0.0
        assert task.status == "ok"


def test_a_lost_gpu_makes_figures_partial(nvml: FakeNvml, clock: FakeClock):
    with tracker_on(nvml, clock) as tracker:
        nvml.set_utilization(100, device=1)
        with tracker.gpu_task("nmt") as task:
            clock.advance(0.5)
            tracker.poll()
            nvml.fail("nvmlDeviceGetSamples", GPU_IS_LOST, device=0)
            clock.advance(0.5)
            tracker.poll()
            clock.advance(0.5)
        assert task.status == "partial"
        assert task.gpu_ms == pytest.approx(1500.0, abs=0.01)  # device 1 still counts


def test_a_transient_error_is_recovered_but_reported(nvml: FakeNvml, clock: FakeClock):
    with tracker_on(nvml, clock, devices=[0]) as tracker:
        nvml.set_utilization(100)
        with tracker.gpu_task("nmt") as task:
            clock.advance(0.5)
            nvml.fail("nvmlDeviceGetSamples", UNKNOWN, times=1)
            tracker.poll()
            clock.advance(0.5)
        assert task.gpu_ms == pytest.approx(1000.0, abs=0.01)
        assert task.status == "partial"


def test_a_mig_gpu_is_unavailable_not_idle(clock: FakeClock):
    gpu = FakeGpu(0, "GPU-m", mig=True, mig_instances=("MIG-1",))
    with installed(FakeNvml(clock, [gpu])) as double, tracker_on(double, clock) as tracker:
        with tracker.gpu_task("nmt") as task:
            clock.advance(1)
        assert task.status == "unavailable"
        assert task.energy_mj is None


def test_a_mig_gpu_beside_a_normal_one_is_never_read_and_makes_figures_partial(
    clock: FakeClock,
):
    gpus = [FakeGpu(0, "GPU-a"), FakeGpu(1, "GPU-m", mig=True, mig_instances=("MIG-1",))]
    with installed(FakeNvml(clock, gpus)) as double, tracker_on(double, clock) as tracker:
        double.set_utilization(100, device=0)
        with tracker.gpu_task("nmt") as task:
            clock.advance(1.0)
            tracker.poll()
            clock.advance(1.0)
        assert task.gpu_ms == pytest.approx(2000.0, abs=0.01)  # the normal GPU only
        assert task.status == "partial"
        assert task.coverage == pytest.approx(0.5)
        clock.advance(P)
        tracker.poll()
        stats = tracker.stats("nmt")
        assert (stats.status, stats.coverage) == ("partial", pytest.approx(0.5))
        assert tracker.stats("unseen").status == "partial"
        assert double.calls["nvmlDeviceGetSamples"] > 0
        assert tracker.device_ids == ("GPU-a", "GPU-m")


def test_auto_falls_back_to_none_with_one_warning(
    clock: FakeClock, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
):
    import gputime._backends as backends

    monkeypatch.setattr(backends, "_warned_auto_fallback", False)
    double = FakeNvml(clock, 1)
    double.driver_loaded = False
    with installed(double):
        with caplog.at_level(logging.WARNING, "gputime"):
            first = resolve_backend("auto")
            second = resolve_backend("auto")
        assert isinstance(first, NoGpu)
        assert isinstance(second, NoGpu)
        assert caplog.text.count("driver is not loaded") == 1
        with pytest.raises(BackendUnavailable, match="driver is not loaded"):
            resolve_backend("nvml")


def test_auto_picks_nvml_where_it_works(nvml: FakeNvml):
    assert isinstance(resolve_backend("auto"), NvmlBackend)


def test_importing_gputime_loads_no_bindings_and_warns_nothing():
    code = (
        "import sys, warnings\n"
        "warnings.simplefilter('error')\n"
        "import gputime\n"
        "assert 'pynvml' not in sys.modules, 'gputime imported pynvml'\n"
        "import gputime._backends._nvml\n"
        "assert 'pynvml' not in sys.modules\n"
        "import pynvml\n"  # nvidia-ml-py's module: no deprecation warning either
    )
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_runtime_forget_is_the_fork_hook():
    # Registered with os.register_at_fork; exercised for real by the fork test.
    runtime = _nvml._Runtime()
    generation = runtime.generation
    runtime.forget()
    assert runtime.generation == generation + 1


def test_task_exits_skip_reads_that_cannot_bring_a_new_sample(nvml: FakeNvml, clock: FakeClock):
    with tracker_on(nvml, clock, devices=[0]) as tracker:
        nvml.set_utilization(100)
        with tracker.gpu_task("warm"):
            clock.advance(1.0)
            tracker.poll()
        # Just after a sample: the next cannot come for a period (half, with jitter).
        clock.advance(P - (clock() - START) % P + 0.001)
        with tracker.gpu_task("short"):  # the first after idle reads the newest sample
            clock.advance(0.001)
        reads = nvml.calls["nvmlDeviceGetSamples"]
        for _ in range(20):
            with tracker.gpu_task("short") as task:
                clock.advance(0.001)
        assert nvml.calls["nvmlDeviceGetSamples"] == reads  # no driver call at exit
        assert task.gpu_ms == pytest.approx(1.0, abs=0.01)  # the newest sample over the tail
        clock.advance(P)  # a new sample may be out now: the exit reads
        with tracker.gpu_task("short"):
            clock.advance(0.001)
        assert nvml.calls["nvmlDeviceGetSamples"] > reads


@pytest.mark.parametrize("busy", [True, False], ids=["busy", "idle"])
@pytest.mark.parametrize("sample_when_idle", [True, False], ids=["idle-samples", "no-idle-samples"])
def test_exits_read_the_driver_at_most_once_per_sample_period(
    clock: FakeClock, busy: bool, sample_when_idle: bool
):
    gpu = FakeGpu(0, "GPU-00000000-aaaa-bbbb-cccc-000000000000", sample_when_idle=sample_when_idle)
    with installed(FakeNvml(clock, [gpu])) as nvml, tracker_on(nvml, clock) as tracker:
        nvml.set_utilization(60 if busy else 0)
        with tracker.gpu_task("warm"):
            clock.advance(1.0)
            tracker.poll()

        def reads() -> float:
            # pynvml's nvmlDeviceGetSamples makes two C calls (size, then fill).
            return (
                nvml.calls["nvmlDeviceGetSamples"] / 2 + nvml.calls["nvmlDeviceGetUtilizationRates"]
            )

        before = reads()
        seconds = 3.0
        for _ in range(3000):  # back to back, 1 ms each: 18 sample periods
            with tracker.gpu_task("short") as task:
                clock.advance(seconds / 3000)
        assert reads() - before <= seconds / P + 1
        assert tracker.stats("short").task_count == 3000
        assert task.status == "ok"
        if busy:
            assert task.gpu_util_ms == pytest.approx(0.6, abs=0.01)
            # Learned from the driver's timestamps (the double's are exact).
            assert tracker._session.sample_jitter < 0.005  # type: ignore[attr-defined]
