"""Model-based test: random histories on the simulated driver against an exact oracle.

Hypothesis draws histories of clock steps, utilisation changes, task starts and
ends (nested, overlapping, returned, raised, cancelled, generators exhausted or
closed early, functions), polls, resets and read faults, on a ``SimulatedGpu`` with
one to three devices, attributions ``device`` and ``split`` and several thresholds,
and runs each on a ``Tracker(threaded=False)`` and on ``tests.oracle.Oracle``
(docs/semantics.md with exact arithmetic). After every step every figure is compared:
each task's ``gpu_ms``, ``gpu_util_ms``, ``status`` and ``coverage`` (live and
final, and what the end listener saw), each service's ``task_count``,
``active_tasks``, ``gpu_ms``, ``gpu_util_ms``, ``status`` and ``coverage``, and the
number of driver reads (rule 1: no read outside tasks and the settle).

Only public API is used: ``Tracker``, ``gpu_task`` (entered and left by hand, so
that tasks overlap in any order), ``TaskHandle``, ``ServiceStats`` and
``gputime.testing``. ``GPUTIME_HEAVY=1`` runs many more and longer histories.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Generator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from gputime import TaskHandle, Tracker, gpu_task
from gputime.testing import FakeClock, SimulatedGpu
from tests.mutations import MUTATIONS, applied, caught, mutated_code
from tests.oracle import Figures, Oracle, Task

HEAVY = os.environ.get("GPUTIME_HEAVY") == "1"

#: ``(sample period in seconds, units per period)``: a binary period (every
#: instant exact in floats) and the default 1/6 s (instants a few ulps off).
PERIODS = ((Fraction(1, 8), 8), (Fraction(1, 6), 8))
SERVICES = ("a", "b", "c", "d")
PERCENTS = (0, 1, 25, 49, 50, 51, 75, 99, 100)
THRESHOLDS = (0.0, 12.5, 50.0)
#: Where the clock starts, in eighths of a sample period: at the driver's start
#: (no sample yet), before its first sample, or several samples in.
START_EIGHTHS = (0, 3, 8, 48)

ABS_MS = 1e-6


class MismatchError(AssertionError):
    pass


@dataclass
class Open:
    """A task the history started and has not ended yet."""

    model: Task
    handle: TaskHandle
    end: Callable[[str], None]
    kind: str
    generator: Any = None


def close(actual: float, expected: Fraction, what: str) -> None:
    if abs(actual - float(expected)) > ABS_MS + 1e-9 * abs(float(expected)):
        raise MismatchError(f"{what}: gputime {actual!r}, oracle {float(expected)!r}")


def compare(actual: Any, expected: Figures, what: str) -> None:
    close(actual.gpu_ms, expected.gpu_ms, f"{what} gpu_ms")
    close(actual.gpu_util_ms, expected.gpu_util_ms, f"{what} gpu_util_ms")
    if actual.status != expected.status:
        raise MismatchError(f"{what} status: gputime {actual.status!r}, oracle {expected.status!r}")
    if abs(actual.coverage - float(expected.coverage)) > 1e-9:
        raise MismatchError(
            f"{what} coverage: gputime {actual.coverage!r}, oracle {float(expected.coverage)!r}"
        )


class TrackerModel(RuleBasedStateMachine):
    """One tracker and the oracle, told the same history."""

    def __init__(self) -> None:
        super().__init__()
        self.open: list[Open] = []
        self.ended: list[tuple[Task, TaskHandle]] = []
        self.seen_at_end: dict[int, Any] = {}
        self.service_floor: dict[str, float] = {}
        self.tracker: Tracker | None = None

    @initialize(
        devices=st.integers(1, 3),
        split=st.booleans(),
        threshold=st.sampled_from(THRESHOLDS),
        period=st.sampled_from(PERIODS),
        eighths=st.sampled_from(START_EIGHTHS),
    )
    def setup(self, devices: int, split: bool, threshold: float, period: Any, eighths: int) -> None:
        seconds, units = period
        self.unit_s = seconds / units
        start = eighths * units // 8
        self.clock = FakeClock(float(start * self.unit_s))
        self.gpu = SimulatedGpu(
            devices, sample_period=float(seconds), clock=self.clock, buffer_samples=10**7
        )
        self.tracker = Tracker(
            backend=self.gpu,
            threaded=False,
            attribution="split" if split else "device",
            threshold=threshold,
        )
        self.tracker.on_task_start(self._started)
        self.tracker.on_task_end(self._ended)
        self.oracle = Oracle(
            devices=devices,
            period_units=units,
            threshold=threshold,
            split=split,
            unit_ms=self.unit_s * 1000,
            start=start,
        )
        self.devices = devices

    def teardown(self) -> None:
        if self.tracker is not None:
            self.tracker.close()

    def _started(self, task: TaskHandle) -> None:
        self.last_started = task

    def _ended(self, task: TaskHandle) -> None:
        self.seen_at_end[id(task)] = task.figures

    # -- the history ------------------------------------------------------------------

    @rule(units=st.integers(0, 20))
    def advance(self, units: int) -> None:
        self.clock.advance(float(units * self.unit_s))
        self.oracle.advance(units)

    @rule(periods=st.integers(6, 30))
    def idle_spell(self, periods: int) -> None:
        units = periods * self.oracle.period
        self.clock.advance(float(units * self.unit_s))
        self.oracle.advance(units)

    @rule(data=st.data(), percent=st.sampled_from(PERCENTS))
    def set_utilization(self, data: st.DataObject, percent: int) -> None:
        device = data.draw(st.integers(0, self.devices - 1))
        self.gpu.set_utilization(percent, device=device)
        self.oracle.set_utilization(percent, device)

    @precondition(lambda self: len(self.open) < 8)
    @rule(service=st.sampled_from(SERVICES))
    def begin_block(self, service: str) -> None:
        assert self.tracker is not None
        block = gpu_task(service, tracker=self.tracker)
        handle = block.__enter__()

        def end(how: str) -> None:
            if how == "return":
                block.__exit__(None, None, None)
            elif how == "raise":
                error = ValueError("job failed")
                block.__exit__(ValueError, error, None)
                assert handle.error is error
            else:
                block.__exit__(asyncio.CancelledError, asyncio.CancelledError(), None)
                assert handle.error is None

        self._begun(service, handle, end, "block")

    @precondition(lambda self: len(self.open) < 8)
    @rule(service=st.sampled_from(SERVICES))
    def begin_generator(self, service: str) -> None:
        assert self.tracker is not None

        @self.tracker.gpu_task(service)
        def stream() -> Generator[int, str | None, None]:
            while (yield 1) != "stop":
                pass

        generator = stream()
        next(generator)  # the task starts at the first resume
        handle = self.last_started

        def end(how: str) -> None:
            if how == "return":
                with pytest.raises(StopIteration):
                    generator.send("stop")
            elif how == "raise":
                error = ValueError("consumer failed")
                with pytest.raises(ValueError, match="consumer failed"):
                    generator.throw(error)
                assert handle.error is error
            else:
                generator.close()
                assert handle.error is None

        self._begun(service, handle, end, "generator", generator=generator)

    @rule(service=st.sampled_from(SERVICES), units=st.integers(0, 12), raises=st.booleans())
    def run_function(self, service: str, units: int, raises: bool) -> None:
        assert self.tracker is not None
        model: list[Task] = []

        @self.tracker.gpu_task(service)
        def job() -> None:
            model.append(self.oracle.begin(service))
            self.clock.advance(float(units * self.unit_s))
            self.oracle.advance(units)
            if raises:
                raise KeyError("job failed")

        if raises:
            with pytest.raises(KeyError):
                job()
        else:
            job()
        handle = self.last_started
        self.oracle.end(model[0])
        self.ended.append((model[0], handle))
        self._check_task(model[0], handle, "function")

    @precondition(lambda self: self.open)
    @rule(data=st.data(), how=st.sampled_from(("return", "raise", "cancel")))
    def end_task(self, data: st.DataObject, how: str) -> None:
        index = data.draw(st.integers(0, len(self.open) - 1))
        task = self.open.pop(index)
        task.end(how)
        self.oracle.end(task.model)
        self.ended.append((task.model, task.handle))
        self._check_task(task.model, task.handle, task.kind)

    @precondition(lambda self: self.open)
    @rule(data=st.data())
    def step_generator(self, data: st.DataObject) -> None:
        generators = [task for task in self.open if task.kind == "generator"]
        if generators:
            task = data.draw(st.sampled_from(generators))
            assert next(task.generator) == 1

    @rule()
    def poll(self) -> None:
        assert self.tracker is not None
        self.tracker.poll()
        self.oracle.poll()

    @rule(service=st.none() | st.sampled_from(SERVICES))
    def reset(self, service: str | None) -> None:
        assert self.tracker is not None
        self.tracker.reset(service)
        self.oracle.reset(service)
        for name in [service] if service is not None else list(self.service_floor):
            self.service_floor.pop(name, None)

    @rule(times=st.none() | st.integers(0, 3))
    def fail_reads(self, times: int | None) -> None:
        self.gpu.fail_reads(times)
        self.oracle.fail_reads(times)

    # -- the comparison after every step ---------------------------------------------------

    @invariant()
    def figures_match_the_oracle(self) -> None:
        if self.tracker is None:
            return
        if self.gpu.reads != self.oracle.reads:
            raise MismatchError(
                f"driver reads: gputime {self.gpu.reads}, oracle {self.oracle.reads}"
            )
        for task in self.open:
            assert task.handle.running
            compare(task.handle.figures, self.oracle.task_figures(task.model), "running task")
        for model, handle in self.ended:
            assert not handle.running
            compare(handle.figures, self.oracle.task_figures(model), "ended task")
        stats = self.tracker.stats()
        if set(stats) != set(self.oracle.services):
            raise MismatchError(
                f"services: gputime {sorted(stats)}, oracle {sorted(self.oracle.services)}"
            )
        for name, actual in stats.items():
            count, active, expected = self.oracle.service_figures(name)
            if (actual.task_count, actual.active_tasks) != (count, active):
                raise MismatchError(
                    f"service {name} counts: gputime {(actual.task_count, actual.active_tasks)}, "
                    f"oracle {(count, active)}"
                )
            compare(actual, expected, f"service {name}")
            # Rule 4, checked on its own: never down between resets.
            if actual.gpu_ms < self.service_floor.get(name, 0.0):
                raise MismatchError(f"service {name} gpu_ms went down")
            self.service_floor[name] = actual.gpu_ms

    # -- helpers ------------------------------------------------------------------------------

    def _begun(
        self,
        service: str,
        handle: TaskHandle,
        end: Callable[[str], None],
        kind: str,
        generator: Any = None,
    ) -> None:
        model = self.oracle.begin(service)
        if handle.concurrency != model.concurrency:
            raise MismatchError(
                f"concurrency: gputime {handle.concurrency}, oracle {model.concurrency}"
            )
        self.open.append(Open(model, handle, end, kind, generator))

    def _check_task(self, model: Task, handle: TaskHandle, kind: str) -> None:
        expected = self.oracle.task_figures(model)
        compare(handle.figures, expected, f"ended {kind} task")
        compare(self.seen_at_end[id(handle)], expected, f"{kind} task seen by the end listener")


def run_model(
    examples: int,
    steps: int,
    machine: type[RuleBasedStateMachine] = TrackerModel,
    phases: tuple[Phase, ...] = tuple(Phase),
) -> None:
    run_state_machine_as_test(
        machine,
        settings=settings(
            phases=phases,
            max_examples=examples,
            stateful_step_count=steps,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


@pytest.mark.heavy
@pytest.mark.timeout(900 if HEAVY else 120)
def test_figures_match_the_exact_oracle_after_every_step():
    run_model(examples=2000 if HEAVY else 200, steps=100 if HEAVY else 50)


@pytest.mark.parametrize("name", [m.name for m in MUTATIONS])
def test_every_mutation_still_applies_to_the_ledger(name: str):
    """Each snippet is still in the ledger's code, once (else: update tests/mutations.py)."""
    mutation = next(m for m in MUTATIONS if m.name == name)
    func, _, _ = mutated_code(mutation)
    original = func.__code__
    with applied(mutation) as where:
        assert func.__code__.co_filename == f"<mutation {mutation.name}>"
        assert where.startswith(f"{mutation.module}.")
    assert func.__code__ is original


@pytest.mark.heavy
@pytest.mark.skipif(not HEAVY, reason="GPUTIME_HEAVY=1: a model run of up to 1000 histories each")
@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", [m.name for m in MUTATIONS])
def test_the_model_catches_a_mutation_of_the_ledger(name: str):
    mutation = next(m for m in MUTATIONS if m.name == name)
    found, message, _ = caught(mutation)
    assert found, f"the model test did not notice: {mutation.what}"
    assert message


def test_an_exit_after_the_drivers_first_sample_appeared_takes_it():
    """Regression: it took no read and read partial, 0 ms (the model draws such starts too)."""
    clock = FakeClock()
    gpu = SimulatedGpu(clock=clock)
    tracker = Tracker(backend=gpu, threaded=False)
    gpu.set_utilization(100)
    clock.advance(0.05)
    with tracker.gpu_task("a"):  # 0.05 .. 0.1: the driver has no sample yet
        clock.advance(0.05)
    clock.advance(0.05)
    with tracker.gpu_task("a") as task:  # 0.15 .. 0.2: sample 1 (to 1/6 s, 100 %) is out
        clock.advance(0.05)
    assert gpu.sample(1) == 100
    assert (task.gpu_ms, task.status) == (pytest.approx(50.0), "ok")
