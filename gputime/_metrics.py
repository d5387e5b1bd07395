"""Per-service metrics: observable counters that never go down, one snapshot per export.

Metrics read the services' totals from observable instruments, at collection
time, so the GPU time of a long-running task shows as the sampler ingests it,
counted once however many tasks of the service overlap. Counters must never go
down, but ``reset(service)`` zeroes the ledger: each tracker's
:class:`~gputime._member.Member` carries what was counted before every reset
and hands its totals over monotonic.

The instruments of one meter provider are shared by every tracker that uses it
(an SDK meter hands back the first instrument of a name and drops the callbacks
of later ones), so a :class:`MetricSet` per provider sums its members' totals,
caps the number of distinct services, keeps the contribution of a tracker that
was garbage collected, and takes one snapshot per export, which all four
instruments report (they cannot disagree with each other).
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from gputime import _fork, _providers
from gputime._faults import FaultLog, log_once
from gputime._histogram import DurationHistogram
from gputime._member import BUSY, ENERGY, UTIL, Member

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, Meter, MeterProvider, Observation
    from opentelemetry.util.types import AttributeValue

    from gputime._figures import ServiceStats

#: How many distinct service names get their own metric series per meter
#: provider; later ones share the overflow series. Override with the
#: ``GPUTIME_METRICS_MAX_SERVICES`` environment variable (read when a provider's
#: set is made). Spans are not capped: a span is an event, not a time series.
MAX_SERVICES = 100
MAX_SERVICES_ENV = "GPUTIME_METRICS_MAX_SERVICES"

#: The ``gputime.service`` value of the overflow series.
OVERFLOW_SERVICE = "_overflow"

_OVERFLOW_ATTRIBUTES: Mapping[str, AttributeValue] = {
    "gputime.service": OVERFLOW_SERVICE,
    "otel.metric.overflow": True,
}

#: The column of the running-task count, after a counter series' (busy, util, energy).
_ACTIVE = 3

#: The attribute that names the device of a per-device series, as in
#: OpenTelemetry's ``hw.gpu.*`` semantic conventions (joins with DCGM series).
DEVICE_ATTRIBUTE = "hw.id"

#: A service's series: its name, or ``None`` for the overflow series.
SeriesKey = str | None
#: A counter series: the service's, and the device (``None``: summed over devices).
CounterKey = tuple[SeriesKey, str | None]
Totals = dict[CounterKey, list[float]]


def _max_services() -> int:
    raw = os.environ.get(MAX_SERVICES_ENV)
    if raw is None:
        return MAX_SERVICES
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        log_once(
            ("max-services", raw),
            logging.WARNING,
            "gputime: %s=%r is not a positive integer; using %d",
            MAX_SERVICES_ENV,
            raw,
            MAX_SERVICES,
        )
        return MAX_SERVICES
    return value


class MetricSet:
    """The instruments of one meter provider, shared by the trackers using it.

    Also owns the service-name cap: the first :data:`MAX_SERVICES` names seen
    get a series each, the rest share the overflow series (one warning).
    """

    @classmethod
    def for_provider(cls, key: object, meter: Meter) -> MetricSet:
        """The metric set of a provider (``key``), made on ``meter`` the first time."""
        with _registry_lock:
            found = _registry.get(key)
            if found is None:
                found = _registry[key] = cls(meter)
            return found

    def __init__(self, meter: Meter) -> None:
        # Guards the members, their last contributions, the retired and
        # exported totals, the series, the snapshot and every member's
        # carries. Held only over gputime's own arithmetic and ledger reads:
        # nothing logs, records into an SDK or calls a listener while it is held.
        self.lock = threading.Lock()
        self.max_services = _max_services()
        self._series: dict[str, Mapping[str, AttributeValue]] = {}
        # The attributes of per-device series, made once each.
        self._device_series: dict[CounterKey, Mapping[str, AttributeValue]] = {}
        self._own_series = 0
        #: The first service sent to the overflow series, until it is logged.
        self._overflowed: str | None = None
        # Members feeding the instruments, and what each contributed at the
        # last collection, so that a garbage-collected tracker's counts stay.
        self._members: dict[int, tuple[weakref.ref[Member], Totals]] = {}
        self._retired: Totals = {}
        self._exported: Totals = {}
        # One export's snapshot (counter totals, running tasks per service),
        # and the columns it has served: the first instrument a collection
        # asks takes it, the others reuse it.
        self._snapshot: tuple[Totals, dict[SeriesKey, int]] | None = None
        self._served: set[int] = set()
        #: ``gputime.task.duration``, which the emitter records on.
        self.duration = DurationHistogram(meter)
        for name, column, unit, description in (
            (
                "gputime.gpu.busy_time",
                BUSY,
                "s",
                "GPU-busy time of the service's tasks, summed over devices "
                "(time shared by overlapping tasks of one service counted once)",
            ),
            (
                "gputime.gpu.util_time",
                UTIL,
                "s",
                "Utilisation-weighted GPU time of the service's tasks, summed over devices",
            ),
            (
                "gputime.gpu.energy",
                ENERGY,
                "J",
                "GPU energy during the service's tasks, where the backend measures it",
            ),
        ):
            meter.create_observable_counter(
                name, callbacks=[self._callback(column)], unit=unit, description=description
            )
        meter.create_observable_up_down_counter(
            "gputime.task.active",
            callbacks=[self._callback(_ACTIVE)],
            unit="{task}",
            description="Tasks of the service running now",
        )

    # -- members and series ----------------------------------------------------------------

    def join(self, member: Member) -> None:
        """Add a tracker's totals to the instruments (held weakly)."""
        with self.lock:
            old = self._members.get(id(member))
            if old is not None:
                # The id of a member collected since the last collection, reused.
                self._retire(old[1])
            self._members[id(member)] = (weakref.ref(member), {})

    def _retire(self, last: Totals) -> None:
        for key, values in last.items():
            _add(self._retired.setdefault(key, [0.0, 0.0, -1.0]), values)

    def series_attributes(self, service: str) -> Mapping[str, AttributeValue]:
        """The metric attributes of a service (shared dict, never mutated)."""
        attrs = self._series.get(service)
        if attrs is not None:
            return attrs
        with self.lock:
            attrs = self._assign(service)
        self._log_overflow()
        return attrs

    def _assign(self, service: str) -> Mapping[str, AttributeValue]:
        attrs = self._series.get(service)
        if attrs is None:
            if self._own_series < self.max_services:
                self._own_series += 1
                attrs = {"gputime.service": service}
            else:
                attrs = _OVERFLOW_ATTRIBUTES
                if self._overflowed is None:
                    self._overflowed = service  # logged once the lock is released
            self._series[service] = attrs
        return attrs

    def _log_overflow(self) -> None:
        service, self._overflowed = self._overflowed, None
        if service is not None:
            log_once(
                ("overflow", id(self)),
                logging.WARNING,
                "gputime: more than %d service names; metrics of %r and later "
                "new services go to gputime.service=%r (spans keep the real name; "
                "raise the cap with %s)",
                self.max_services,
                service,
                OVERFLOW_SERVICE,
                MAX_SERVICES_ENV,
            )

    # -- collection --------------------------------------------------------------------------

    def _callback(self, column: int) -> Callable[[CallbackOptions], Iterable[Observation]]:
        # A weak reference: the SDK keeps callbacks for its whole life, and it
        # must not keep the metric set (and through it trackers) alive.
        ref = weakref.ref(self)

        def callback(options: CallbackOptions) -> Iterable[Observation]:
            metric_set = ref()
            if metric_set is None:  # pragma: no cover - the registry holds it while in use
                return []
            return metric_set._observations(column)

        return callback

    def _observations(self, column: int) -> list[Observation]:
        observation = _providers.load_metrics().Observation
        faults: list[tuple[Member, Exception]] = []
        with self.lock:
            snapshot = self._snapshot
            if snapshot is None or column in self._served:
                # A new export: the column asked again means the last one is over.
                snapshot = self._snapshot = self._collect(faults)
                self._served = set()
            self._served.add(column)
            counters, active = snapshot
            out = []
            if column == _ACTIVE:
                for key, running in active.items():
                    out.append(observation(running, self._attributes((key, None))))
            else:
                for counter_key, values in counters.items():
                    if values[column] >= 0.0:  # energy is -1 where not measured
                        out.append(observation(values[column], self._attributes(counter_key)))
        for member, exc in faults:
            member.faults.report("otel.metric", exc)
        self._log_overflow()
        return out

    def _attributes(self, key: CounterKey) -> Mapping[str, AttributeValue]:
        """The attributes of a series (shared dicts, never mutated)."""
        service, device = key
        attrs = _OVERFLOW_ATTRIBUTES if service is None else self._series[service]
        if device is None:
            return attrs
        found = self._device_series.get(key)
        if found is None:
            found = self._device_series[key] = {**attrs, DEVICE_ATTRIBUTE: device}
        return found

    def _collect(
        self, faults: list[tuple[Member, Exception]]
    ) -> tuple[Totals, dict[SeriesKey, int]]:
        """Per counter series [busy s, util s, energy J or -1]; per service running tasks.

        The counters are summed over the members, plus what retired (garbage
        collected) members left, and never below what was exported before.
        A member whose figures cannot be read goes into ``faults``, to be
        reported once the lock is released.
        """
        totals: Totals = {}
        active: dict[SeriesKey, int] = {}
        for key_id, (ref, last) in list(self._members.items()):
            member = ref()
            if member is None:
                del self._members[key_id]
                self._retire(last)
                continue
            contribution: Totals = {}
            try:
                observed = list(member.observe())
            except Exception as exc:  # noqa: BLE001 - a collection must not fail
                faults.append((member, exc))
                observed = []
            for service, series, running in observed:
                key = None if self._assign(service) is _OVERFLOW_ATTRIBUTES else service
                for device, (busy, util, energy) in series:
                    values = contribution.setdefault((key, device), [0.0, 0.0, -1.0])
                    _add(values, [busy, util, -1.0 if energy is None else energy])
                active[key] = active.get(key, 0) + running
            self._members[key_id] = (ref, contribution)
            for series_key, values in contribution.items():
                _add(totals.setdefault(series_key, [0.0, 0.0, -1.0]), values)
        for series_key, values in self._retired.items():
            _add(totals.setdefault(series_key, [0.0, 0.0, -1.0]), values)
        counters: Totals = {}
        for series_key, values in totals.items():
            exported = self._exported.setdefault(series_key, [0.0, 0.0, -1.0])
            for column in range(3):
                exported[column] = max(exported[column], values[column])
            counters[series_key] = list(exported)
            active.setdefault(series_key[0], 0)  # a service with counters has a running count
        return counters, active

    def _after_fork_in_child(self) -> None:
        self.lock = threading.Lock()
        self._retired = {}
        self._exported = {}
        self._snapshot = None
        self._served = set()
        self._members = {key: (ref, {}) for key, (ref, _) in self._members.items()}


class _GlobalKey:
    """Registry key of the global provider where the API has no proxy to key by."""


_GLOBAL = _GlobalKey()

# One metric set per meter provider, alive as long as the provider is.
_registry: weakref.WeakKeyDictionary[object, MetricSet] = weakref.WeakKeyDictionary()
_registry_lock = threading.Lock()


def join(
    meter_provider: MeterProvider | None,
    totals: Callable[[], dict[str, ServiceStats]],
    faults: FaultLog,
    per_device: bool = False,
) -> tuple[Member | None, bool]:
    """Join the metric set of ``meter_provider`` (the global one if ``None``).

    ``per_device``: the tracker's counters go per device (see :class:`~gputime._member.Member`).

    Returns:
        The tracker's member (``None`` where no meter records: a no-op
        provider), and whether the global provider is still unset (then the
        duration histogram records only once an SDK is installed, which the
        emitter looks for at each task start).
    """
    metrics = _providers.load_metrics()
    global_provider = _providers.global_meter_provider()
    proxy = _providers.proxy_meter_provider()
    is_global = (
        meter_provider is None or meter_provider is global_provider or meter_provider is proxy
    )
    key: Any
    if is_global:
        # The global provider. Its instruments are made once per process on the
        # API's meter (a proxy until an SDK is set, which then takes the
        # observable callbacks over by itself).
        meter = metrics.get_meter(_providers.SCOPE, _providers.VERSION)
        # Keyed by the API's proxy provider (one per process; tests that swap
        # the API's globals get a fresh one).
        key = _GLOBAL if proxy is _providers.UNKNOWN else proxy
    else:
        assert meter_provider is not None
        meter = meter_provider.get_meter(_providers.SCOPE, _providers.VERSION)
        key = meter_provider
    if isinstance(meter, metrics.NoOpMeter):
        return None, False
    metric_set = MetricSet.for_provider(key, meter)
    member = Member(metric_set, totals, faults, per_device)
    metric_set.join(member)
    if not is_global:
        metric_set.duration.check_buckets_advised()
        return member, False
    if global_provider is None:
        return member, True
    # The set may have been made on the proxy meter before the SDK came.
    metric_set.duration.use_real_meter(global_provider)
    metric_set.duration.check_buckets_advised()
    return member, False


def _add(into: list[float], values: list[float]) -> None:
    """Add busy, util and energy columns; energy -1 means 'not measured'."""
    into[BUSY] += values[BUSY]
    into[UTIL] += values[UTIL]
    if values[ENERGY] >= 0.0:
        into[ENERGY] = max(into[ENERGY], 0.0) + values[ENERGY]


def _after_fork_in_child() -> None:
    # The registry's lock may have been held by another thread at fork time.
    global _registry_lock
    _registry_lock = threading.Lock()
    for metric_set in list(_registry.values()):
        metric_set._after_fork_in_child()


_fork.in_child(_after_fork_in_child)
