"""The NVML backend behind a real Tracker, the ``auto`` fallback, and import hygiene."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

from gputime import Tracker
from gputime._backends import NoGpu, resolve_backend
from gputime._backends._base import BackendUnavailable
from gputime._backends.nvml import NvmlBackend
from gputime.testing import FakeClock
from tests.nvml.support import START, P, installed
from tests.nvml_double import GPU_IS_LOST, UNKNOWN, FakeGpu, FakeNvml


def tracker_on(nvml: FakeNvml, clock: FakeClock, **kwargs: object) -> Tracker:
    backend = NvmlBackend(**nvml.backend_clocks())
    return Tracker(backend=backend, clock=clock, threaded=False, **kwargs)  # type: ignore[arg-type]


def settle(tracker: Tracker, clock: FakeClock) -> None:
    """What the sampler does after the last task: read until every window is covered."""
    for _ in range(20):
        deadline = tracker._ledger.settle_deadline
        if deadline is None:
            return
        clock.advance(max(0.0, deadline - clock()))
        tracker.poll()
        tracker._ledger.settle_done(deadline)


# -- idle time on real drivers (issue: a task ending after an idle stretch) -------------


@pytest.fixture(params=[0.0, 0.07], ids=["grid-0", "grid-70ms"])
def phase(request: pytest.FixtureRequest) -> float:
    """Where the driver's sample grid sits against the test's (and the polls') times."""
    return float(request.param)


@pytest.fixture(params=["fresh", "worked-before"])
def driver(clock: FakeClock, model: str, phase: float, request: pytest.FixtureRequest):
    """One GPU on each driver model and grid phase, freshly booted or with history."""
    double = FakeNvml(clock, 1, model=model, phase=phase)
    if request.param == "worked-before":
        double.worked_earlier()
    with installed(double):
        yield double


def test_a_task_on_an_idle_gpu_is_ok_and_zero(driver: FakeNvml, clock: FakeClock):
    with tracker_on(driver, clock) as tracker:
        with tracker.gpu_task("idle") as task:
            for _ in range(2):
                clock.advance(0.5)
                tracker.poll()
        assert (task.gpu_ms, task.gpu_util_ms, task.status) == (0.0, 0.0, "ok")
        assert task.coverage == pytest.approx(1.0)
        settle(tracker, clock)
        stats = tracker.stats("idle")
        assert (stats.gpu_ms, stats.status, stats.coverage) == (0.0, "ok", pytest.approx(1.0))


@pytest.mark.parametrize("polls", [True, False], ids=["polled", "exit-read-only"])
def test_a_burst_between_idle_stretches_is_credited_once(
    driver: FakeNvml, clock: FakeClock, polls: bool
):
    # The most common shape of an inference job: idle (loading), a GPU burst,
    # then CPU post-processing. Nothing after the burst may count as busy.
    with tracker_on(driver, clock) as tracker:
        with tracker.gpu_task("nmt") as task:
            for percent, seconds in ((0, 1.0), (100, 0.5), (0, 1.0)):
                driver.set_utilization(percent)
                for _ in range(round(seconds / 0.25)):
                    clock.advance(0.25)
                    if polls:
                        tracker.poll()
        assert task.status == "ok"
        assert task.gpu_util_ms == pytest.approx(500.0, abs=1.0)
        # A sample straddling an edge of the burst counts its whole period busy.
        assert 500.0 - 0.01 <= task.gpu_ms <= 500.0 + 2000 * P
        settle(tracker, clock)
        stats = tracker.stats("nmt")
        assert stats.status == "ok"
        assert stats.gpu_util_ms == pytest.approx(task.gpu_util_ms, abs=1e-6)
        assert stats.gpu_ms == pytest.approx(task.gpu_ms, abs=1e-6)


def test_the_tail_is_never_carried_across_a_stretch_shown_idle(driver: FakeNvml, clock: FakeClock):
    with tracker_on(driver, clock) as tracker:
        with tracker.gpu_task("nmt") as task:
            clock.advance(0.5)
            driver.set_utilization(100)
            clock.advance(0.5)
            tracker.poll()  # the newest sample read is a busy one...
            driver.set_utilization(0)
            clock.advance(0.4)  # ... and the next read is the exit's, past a silent stretch
        assert task.gpu_util_ms == pytest.approx(500.0, abs=1.0)
        assert task.status == "ok"


def test_the_energy_of_a_task_after_an_idle_spell_is_its_own(nvml: FakeNvml, clock: FakeClock):
    # Measured side by side on one NVML double, a 0.1 s task at 700 W after 2 s
    # idle read 10.6 J when its baseline was the read before the idle spell.
    with tracker_on(nvml, clock, devices=[0]) as tracker:
        with tracker.gpu_task("warm"):
            clock.advance(0.5)
        settle(tracker, clock)
        clock.advance(12.0 - (clock() - START))  # 2 s idle, to a 100 ms counter update
        calls = nvml.calls["nvmlDeviceGetTotalEnergyConsumption"]
        nvml.set_power(700.0)
        with tracker.gpu_task("short") as task:
            clock.advance(0.1)
        nvml.set_power(60.0)
        assert task.energy_mj == pytest.approx(70_000.0, rel=0.01)
        # One counter read at the start (the idle spell's), one at the exit.
        assert nvml.calls["nvmlDeviceGetTotalEnergyConsumption"] - calls == 2
        calls = nvml.calls["nvmlDeviceGetTotalEnergyConsumption"]
        for _ in range(10):  # back to back: no counter read at any start
            with tracker.gpu_task("short"):
                clock.advance(0.001)
        assert nvml.calls["nvmlDeviceGetTotalEnergyConsumption"] - calls <= 2


def test_process_attribution_counts_this_process_only(nvml: FakeNvml, clock: FakeClock):
    other = 4_000_000  # a co-tenant process
    with tracker_on(nvml, clock, devices=[0], attribution="process") as tracker:
        nvml.set_utilization(100)
        nvml.set_process_utilization(os.getpid(), 30)
        nvml.set_process_utilization(other, 70)
        with tracker.gpu_task("ours") as task:
            for _ in range(4):
                clock.advance(0.25)
                tracker.poll()
        # This process's own utilisation: busy whenever it is above the
        # threshold, weighted by its own share; not the device's busy time.
        assert task.gpu_ms == pytest.approx(1000.0, abs=0.01)
        assert task.gpu_util_ms == pytest.approx(300.0, abs=0.01)
        nvml.set_process_utilization(os.getpid(), 0)
        with tracker.gpu_task("theirs") as task:
            for _ in range(4):
                clock.advance(0.25)
                tracker.poll()
        assert (task.gpu_ms, task.gpu_util_ms, task.status) == (
            pytest.approx(0.0, abs=1000 * P),
            pytest.approx(0.0, abs=30 * 10 * P),
            "ok",
        )


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
    clock: FakeClock, caplog: pytest.LogCaptureFixture
):
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
        "import gputime._backends.nvml\n"
        "assert 'pynvml' not in sys.modules\n"
        "import pynvml\n"  # nvidia-ml-py's module: no deprecation warning either
    )
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_task_exits_skip_reads_that_cannot_bring_a_new_sample(nvml: FakeNvml, clock: FakeClock):
    with tracker_on(nvml, clock, devices=[0]) as tracker:
        nvml.set_utilization(100)
        with tracker.gpu_task("warm"):
            clock.advance(1.0)
            tracker.poll()
        # Just after a sample (and its jitter): the next cannot come for a period.
        clock.advance(P - (clock() - START) % P + 0.005)
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
            assert tracker._reader.session.sample_jitter < 0.005  # type: ignore[attr-defined]


def test_a_fresh_gpu_is_asked_once_whether_its_first_busy_sample_is_still_the_newest(
    clock: FakeClock, model: str
):
    # Until the period is known a claim waits for a 1 s period; the rates tell
    # at once that the driver has since taken an idle sample.
    double = FakeNvml(clock, 1, model=model)
    with installed(double), tracker_on(double, clock) as tracker:
        with tracker.gpu_task("first") as task:
            clock.advance(0.5)
            tracker.poll()
            double.set_utilization(100)
            clock.advance(P)
            double.set_utilization(0)
            clock.advance(0.25)
        assert task.gpu_util_ms == pytest.approx(1000 * P, abs=1.0)
        assert task.status == "ok"
        if model == "no-idle-samples":
            assert double.calls["nvmlDeviceGetUtilizationRates"] == 1


def test_the_sampler_thread_learns_when_the_energy_counter_steps():
    # A real clock and the real threaded sampler: the calibration (a few
    # hundred ms of counter reads) runs there, never on a task's path.
    import time

    start = time.monotonic()
    double = FakeNvml(lambda: time.monotonic() - start, 1)  # type: ignore[arg-type]
    with installed(double):
        backend = NvmlBackend(**double.backend_clocks())
        with Tracker(backend=backend, clock=double.clock, interval=0.05) as tracker:
            session = tracker._reader.session
            with tracker.gpu_task("calibrated"):
                deadline = time.monotonic() + 10.0
                while session.calibration_due(double.clock()) and time.monotonic() < deadline:
                    time.sleep(0.01)
            assert not session.calibration_due(double.clock())
            assert session._devs[0].counter.period == pytest.approx(0.1, abs=0.01)


@pytest.mark.parametrize("attribution", ["device", "process"])
def test_a_short_task_on_a_freshly_booted_idle_gpu_is_ok(
    clock: FakeClock, model: str, attribution: str
):
    # The driver never recorded a sample: nothing says a busy one is on its way.
    double = FakeNvml(clock, 1, model=model)
    with installed(double), tracker_on(double, clock, attribution=attribution) as tracker:
        with tracker.gpu_task("short") as task:
            clock.advance(0.05)
        assert (task.gpu_ms, task.status, task.coverage) == (0.0, "ok", pytest.approx(1.0))
        settle(tracker, clock)
        assert tracker.stats("short").status == "ok"


def test_a_process_row_appearing_between_the_size_query_and_the_read_is_retried(
    nvml: FakeNvml, clock: FakeClock
):
    # pynvml asks for the row count, then the rows; a row arriving in between
    # makes the second call answer INSUFFICIENT_SIZE.
    with tracker_on(nvml, clock, devices=[0], attribution="process") as tracker:
        nvml.set_process_utilization(os.getpid(), 50)
        calls = 0

        def grow(name: str) -> None:
            nonlocal calls
            if name == "nvmlDeviceGetProcessesUtilizationInfo":
                calls += 1
                if calls == 2:
                    nvml.fail(name, 7, times=1)  # NVML_ERROR_INSUFFICIENT_SIZE

        nvml.before_call = grow
        with tracker.gpu_task("ours") as task:
            clock.advance(0.5)
            tracker.poll()
            clock.advance(0.5)
        assert task.status == "ok"
        assert task.gpu_util_ms == pytest.approx(500.0, abs=1.0)
