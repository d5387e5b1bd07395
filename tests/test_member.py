"""A tracker's metric counters never go down: reset carries (gputime._member).

``Tracker.reset()`` zeroes the ledger; the counters exported through the SDK go
on from where they were, whether the reset is told to the tracker's member (the
exact hook) or only noticed at the next collection (docs/opentelemetry.md).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from opentelemetry.metrics import NoOpMeterProvider

import gputime
from gputime import Tracker
from gputime.testing import SimulatedGpu
from tests.otel_sdk import P, Sdk


def zeroing_reset(tracker: Tracker) -> Callable[[str | None], dict[str, gputime.ServiceStats]]:
    """A ledger reset that returns the snapshots it zeroed, as the exact hook is given."""

    def ledger_reset(service: str | None) -> dict[str, gputime.ServiceStats]:
        before = tracker._ledger.stats(service)
        tracker._ledger.reset(service)
        return before

    return ledger_reset


class TestResetKeepsCountersMonotonic:
    def test_reset_noticed_at_collection(self, traced: Tracker, sdk: Sdk, clock, busy):
        with traced.gpu_task("nmt"):
            clock.advance(6 * P)
        clock.advance(P)
        traced.poll()
        assert sdk.value("gputime.gpu.busy_time") == pytest.approx(1.0)
        traced.reset("nmt")
        assert traced.stats("nmt").gpu_ms == 0.0
        with traced.gpu_task("nmt"):
            clock.advance(3 * P)
        clock.advance(P)
        traced.poll()
        assert sdk.value("gputime.gpu.busy_time") == pytest.approx(1.5)
        assert sdk.value("gputime.gpu.util_time") == pytest.approx(1.5)

    def test_never_decreases_even_when_a_reset_is_missed(
        self, traced: Tracker, sdk: Sdk, clock, busy
    ):
        with traced.gpu_task("nmt"):
            clock.advance(3 * P)
        clock.advance(P)
        traced.poll()
        seen = [sdk.value("gputime.gpu.busy_time")]
        for seconds in (1.0, 0.25, 2.0):
            traced.reset()
            with traced.gpu_task("nmt"):
                clock.advance(seconds)
            clock.advance(P)
            traced.poll()
            seen.append(sdk.value("gputime.gpu.busy_time"))
        assert seen == sorted(seen)

    def test_reset_hook_is_exact(self, traced: Tracker, sdk: Sdk, clock, busy):
        ledger_reset = zeroing_reset(traced)
        with traced.gpu_task("nmt"):
            clock.advance(3 * P)
        clock.advance(P)
        traced.poll()
        assert sdk.value("gputime.gpu.busy_time") == pytest.approx(0.5)
        with traced.gpu_task("nmt"):
            clock.advance(6 * P)
        clock.advance(P)
        traced.poll()
        # No collection between this growth and the reset, and the growth after the
        # reset exceeds what was there: only the hook can count it all.
        traced._member.reset("nmt", ledger_reset)
        with traced.gpu_task("nmt"):
            clock.advance(12 * P)
        clock.advance(P)
        traced.poll()
        assert sdk.value("gputime.gpu.busy_time") == pytest.approx(0.5 + 1.0 + 2.0)
        traced._member.reset(None, ledger_reset)
        assert sdk.value("gputime.gpu.busy_time") == pytest.approx(3.5)

    def test_reset_hook_before_any_collection(self, traced: Tracker, sdk: Sdk, clock, busy):
        ledger_reset = zeroing_reset(traced)

        with traced.gpu_task("nmt"):
            clock.advance(6 * P)
        clock.advance(P)
        traced.poll()
        traced._member.reset("nmt", ledger_reset)
        assert sdk.value("gputime.gpu.busy_time") == pytest.approx(1.0)

    def test_reset_without_metrics(self, gpu: SimulatedGpu):
        with Tracker(backend=gpu, threaded=False, meter_provider=NoOpMeterProvider()) as t:
            assert t._member is None  # nothing records: no counters to keep monotonic
            with t.gpu_task("nmt"):
                pass
            t.reset("nmt")
            assert t.stats("nmt").task_count == 0

    def test_reset_hook_tolerates_a_ledger_that_returns_nothing(
        self, traced: Tracker, sdk: Sdk, clock, busy
    ):
        with traced.gpu_task("nmt"):
            clock.advance(6 * P)
        clock.advance(P)
        traced.poll()
        assert sdk.value("gputime.gpu.busy_time") == pytest.approx(1.0)
        traced._member.reset("nmt", traced._ledger.reset)  # type: ignore[arg-type]
        assert sdk.value("gputime.gpu.busy_time") == pytest.approx(1.0)
