"""One tracker's part in its meter provider's metrics: its totals, monotonic across resets.

Counters must never go down, but ``reset(service)`` zeroes the ledger: a
tracker's :class:`Member` keeps, per service (and per device where the
counters go per device), an offset that carries what was counted before every
reset, and hands its metric set (:mod:`gputime._metrics`) monotonic totals at
each collection (see :meth:`Member.reset` and ``docs/opentelemetry.md``).

Apart from the metric set because the two change for different reasons: the
metric set is shared by every tracker on a provider (the instruments, the
series and their cap, one snapshot per export, what collected trackers left),
a member is one tracker's arithmetic from its ledger's figures to counters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gputime._faults import FaultLog
    from gputime._figures import DeviceFigures, ServiceStats
    from gputime._metrics import MetricSet

#: Columns of a counter series' values: busy seconds, util seconds, energy joules.
BUSY, UTIL, ENERGY = 0, 1, 2

#: One counter series of a service: its device (``None``: summed over devices)
#: and its monotonic (busy s, util s, energy J or ``None`` where not measured).
Series = tuple[str | None, tuple[float, float, float | None]]


class Member:
    """One tracker's part in a metric set: its totals, carried across resets.

    Made by :func:`gputime._metrics.join`, which adds it to its metric set
    (held weakly there: a collected tracker's member goes, its counts stay).

    Args:
        metric_set: The instruments of the tracker's meter provider (its lock
            holds the collections off while :meth:`reset` moves totals into
            the carries).
        totals: The tracker's service figures (the ledger's ``stats``, never
            ``Tracker.stats()``: that may finish deferred task ends, which call
            into the SDK, and totals are read inside the SDK's collection).
        faults: Where a failure to read the totals is reported.
        per_device: Report the counters per device (attribute ``hw.id``)
            instead of summed over devices.
    """

    __slots__ = ("__weakref__", "_carry", "_totals", "faults", "metric_set", "per_device")

    def __init__(
        self,
        metric_set: MetricSet,
        totals: Callable[[], dict[str, ServiceStats]],
        faults: FaultLog,
        per_device: bool = False,
    ) -> None:
        self.metric_set = metric_set
        self._totals = totals
        self.faults = faults
        self.per_device = per_device
        # Per (service, device), [offset, last raw total] for busy, util and
        # energy (see reset()).
        self._carry: dict[tuple[str, str | None], list[list[float]]] = {}

    def reset(
        self,
        service: str | None,
        ledger_reset: Callable[[str | None], Mapping[str, ServiceStats] | None],
    ) -> None:
        """Run the ledger's reset so that the exported counters stay monotonic.

        ``ledger_reset(service)`` zeroes the ledger and returns the snapshots it
        zeroed (taken under the ledger lock). Their totals are added to this
        member's per-service offsets while the metric callbacks are held off,
        so an exported counter goes on from exactly where it was. Without this
        hook (or if ``ledger_reset`` returns ``None``) a reset is still noticed
        at the next collection, as a total that went down, and what the service
        counted between the previous collection and the reset is lost (the
        counter stays monotonic, it only misses that stretch).
        """
        with self.metric_set.lock:
            zeroed = ledger_reset(service)
            if not zeroed:
                return
            for name, before in zeroed.items():
                for device, figures in self._series_of(before):
                    carry = self._carry_of(name, device)
                    for column, value in enumerate(_milli_totals(figures)):
                        carry[column][0] += value
                        carry[column][1] = 0.0

    def _carry_of(self, name: str, device: str | None) -> list[list[float]]:
        carry = self._carry.get((name, device))
        if carry is None:
            carry = self._carry[name, device] = [[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]
        return carry

    def _series_of(
        self, snapshot: ServiceStats
    ) -> Iterable[tuple[str | None, ServiceStats | DeviceFigures]]:
        """The counter series of one service: per device, or its totals."""
        if self.per_device and snapshot.devices:
            return snapshot.devices.items()
        return ((None, snapshot),)

    def observe(self) -> Iterable[tuple[str, list[Series], int]]:
        """Per service: per series (device or ``None``) monotonic (busy s, util s,
        energy J or None), and the service's running tasks.

        Called by the metric set with its lock held.
        """
        for name, snapshot in self._totals().items():
            series: list[Series] = []
            for device, figures in self._series_of(snapshot):
                carry = self._carry_of(name, device)
                out: list[float] = []
                for column, raw in enumerate(_milli_totals(figures)):
                    kept = carry[column]
                    if raw < kept[1]:
                        # The ledger went down: a reset this member was not
                        # told about. Keep what was seen before it.
                        kept[0] += kept[1]
                    kept[1] = raw
                    out.append(kept[0] + raw)
                energy = out[ENERGY] / 1000.0 if figures.energy_mj is not None else None
                series.append((device, (out[BUSY] / 1000.0, out[UTIL] / 1000.0, energy)))
            yield name, series, snapshot.active_tasks

    def _after_fork_in_child(self) -> None:
        # A new process starts at zero: nothing carried over.
        self._carry = {}


def _milli_totals(snapshot: ServiceStats | DeviceFigures) -> tuple[float, float, float]:
    """A snapshot's busy, util and energy totals, in milli-units."""
    return snapshot.gpu_ms, snapshot.gpu_util_ms, snapshot.energy_mj or 0.0
