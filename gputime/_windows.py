"""Per-service activity windows, as running totals that answer "how much, between when".

A service is active while any of its tasks runs (its window is the union of its
tasks' windows). Two running totals of time describe it: ``A(t)``, seconds it
was active up to ``t``, and ``W(t)``, attribution-weighted active seconds: ``W``
grows like ``A`` under attribution ``device`` (and ``process``), and at ``1/N``
while ``N`` services are active under ``split``. A driver sample covering
``(t0, t1]`` then credits the service ``W(t1) - W(t0)`` of its busy time, exact at
the window's edges (``docs/design.md``, "The integration maths").
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable

#: Breakpoint lists are pruned when they reach this length, then again at twice
#: what was left: amortised O(1) per change.
PRUNE_MIN = 64


class Windows:
    """The running totals ``A(t)`` and ``W(t)`` of one service, as breakpoints.

    Breakpoint ``i`` says: at time ``bp_t[i]`` the totals were ``bps[i] = (A,
    W, rate)``, and from there ``W`` grows at ``rate`` (and ``A`` at 1 whenever
    ``rate`` is above 0). ``bp_t`` is kept apart for bisect. Breakpoints are
    only ever appended at or after the last one (events come in time order).
    """

    __slots__ = ("bp_t", "bps", "prune_at")

    def __init__(self) -> None:
        self.bp_t: list[float] = []
        self.bps: list[tuple[float, float, float]] = []
        self.prune_at = PRUNE_MIN

    def at(self, t: float) -> tuple[float, float]:
        """``(A(t), W(t))``."""
        bp_t = self.bp_t  # never empty while anyone asks: a window opened
        i = bisect_right(bp_t, t) - 1
        if i < 0:
            i = 0
            t = bp_t[0]
        a, w, rate = self.bps[i]
        if rate == 0.0:
            return a, w
        dt = t - bp_t[i]
        return a + dt, w + rate * dt

    def set_rate(self, t: float, rate: float) -> None:
        """From ``t`` on, ``W`` grows at ``rate`` (``t`` is never before the last breakpoint)."""
        bp_t = self.bp_t
        if not bp_t:
            bp_t.append(t)
            self.bps.append((0.0, 0.0, rate))
            return
        last_t = bp_t[-1]
        a, w, last_rate = self.bps[-1]
        if last_t >= t:
            # Same instant as the last change: only the rate from here on changes.
            self.bps[-1] = (a, w, rate)
            return
        if last_rate:
            dt = t - last_t
            a, w = a + dt, w + last_rate * dt
        bp_t.append(t)
        self.bps.append((a, w, rate))

    def weight(self, lo: float, hi: float) -> float:
        """``W(hi) - W(lo)``."""
        return self.at(hi)[1] - self.at(lo)[1]

    def active_between(self, lo: float, hi: float) -> float:
        """``A(hi) - A(lo)``: seconds active in ``(lo, hi]``."""
        return self.at(hi)[0] - self.at(lo)[0]

    def forget_before(self, t: float) -> None:
        """Drop breakpoints no query at or after ``t`` needs, when the list has grown."""
        if len(self.bp_t) < self.prune_at:
            return
        i = bisect_right(self.bp_t, t) - 1
        if i > 0:
            del self.bp_t[:i], self.bps[:i]
        self.prune_at = max(PRUNE_MIN, 2 * len(self.bp_t))

    def forget_all(self) -> None:
        """Every window is settled: no query needs any breakpoint."""
        self.bp_t.clear()
        self.bps.clear()


def split_rates(active: Iterable[Windows], count: int, now: float) -> None:
    """Under ``split``, the ``count`` active services share each moment equally from ``now`` on."""
    if count:
        rate = 1.0 / count
        for windows in active:
            windows.set_rate(now, rate)
