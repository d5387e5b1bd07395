"""The duration histogram: ``gputime.task.duration``, its buckets, and whether the meter took them.

One :class:`DurationHistogram` per meter provider, made with that provider's
metric set (:mod:`gputime._metrics`); the emitter records each task's duration
on its :attr:`~DurationHistogram.instrument`. Apart from the counters because
its difficulty is another: the buckets are *advice* that only
opentelemetry-api/sdk 1.30 and later take, so making the instrument may have to
fall back, and the user is told once where it did (``docs/compatibility.md``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from gputime import _providers
from gputime._faults import log_once

if TYPE_CHECKING:
    from opentelemetry.metrics import Histogram, Meter, MeterProvider

#: Bucket boundaries of ``gputime.task.duration`` in seconds: GPU tasks run from
#: a few milliseconds (one kernel batch) to minutes (a long synthesis or a
#: training step), so the buckets step 1-2.5-5 from 1 ms to 10 s and then
#: widen to 10 minutes.
DURATION_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
)

NAME = "gputime.task.duration"
UNIT = "s"
DESCRIPTION = "Duration of the service's tasks, on the tracker's clock"


class DurationHistogram:
    """``gputime.task.duration`` on one meter provider.

    Args:
        meter: The provider's meter (the API's proxy meter for the global
            provider while no SDK is installed).

    Attributes:
        instrument: The histogram to record on.
        buckets_advised: Whether the meter took :data:`DURATION_BUCKETS` as advice.
    """

    __slots__ = ("buckets_advised", "instrument")

    def __init__(self, meter: Meter) -> None:
        self.buckets_advised = True
        self.instrument: Histogram = self._make(meter)

    def _make(self, meter: Meter) -> Histogram:
        try:
            histogram = meter.create_histogram(
                NAME,
                unit=UNIT,
                description=DESCRIPTION,
                explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
            )
        except TypeError:
            # opentelemetry-api/sdk < 1.30 (or a meter of another make) takes no
            # bucket advice: the SDK's default buckets, made for milliseconds,
            # put every task under 5 s in one bucket. check_buckets_advised()
            # says so once an SDK records.
            self.buckets_advised = False
            return meter.create_histogram(NAME, unit=UNIT, description=DESCRIPTION)
        self.buckets_advised = True
        return histogram

    def check_buckets_advised(self) -> None:
        """Warn once per process when the recording meter took no bucket advice.

        Called where the histogram is bound to a recording meter (never under a
        lock, never from the garbage collector).
        """
        if not self.buckets_advised:
            log_once(
                "bucket-advice",
                logging.WARNING,
                "gputime: this OpenTelemetry meter takes no bucket advice (opentelemetry-api "
                "and -sdk < 1.30): gputime.task.duration gets the SDK's default buckets, "
                "which put every task under 5 s in one bucket. Upgrade to 1.30 or later, "
                "or give the SDK's MeterProvider a View with gputime's buckets "
                "(docs/compatibility.md).",
            )

    def use_real_meter(self, provider: MeterProvider) -> Histogram:
        """The global SDK arrived: record on its histogram directly, not through the proxy."""
        meter = provider.get_meter(_providers.SCOPE, _providers.VERSION)
        if isinstance(meter, _providers.load_metrics().NoOpMeter):
            self.buckets_advised = True  # nothing records: no buckets to be wrong
            return self.instrument
        # The SDK already made this instrument for the proxy: it hands back the same one.
        self.instrument = self._make(meter)
        return self.instrument
