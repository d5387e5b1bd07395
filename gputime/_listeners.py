"""Who hears about tasks: the listeners, and the timeline recorder they can feed.

A base class of :class:`gputime.Tracker`. The task path
(:mod:`gputime._taskpath`) calls the listener tuples kept here; a timeline is
installed as two of them (a start and an end listener) and the channels'
sample sink, and removed again by identity, so that off it costs nothing. The
tracker builds the parts used here; this class only declares them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

from gputime import _validate
from gputime._taskpath import Listener
from gputime._timeline import DEFAULT_MAX_SAMPLES, DEFAULT_MAX_TASKS, Timeline, hooks

if TYPE_CHECKING:
    from gputime._channels import SampleSink
    from gputime._faults import FaultLog
    from gputime._ledger import Ledger
    from gputime._reads import DeviceReader
    from gputime._types import Clock

ListenerT = TypeVar("ListenerT", bound=Listener)


class Listeners:
    """The task listeners, and the timeline installed among them."""

    clock: Clock
    _ledger: Ledger
    _reader: DeviceReader
    _faults: FaultLog
    # The seed's setOnTaskStartCallback / setOnTaskEndCallback.
    _start_listeners: tuple[Listener, ...]
    _end_listeners: tuple[Listener, ...]
    _timeline: Timeline | None
    # The timeline's listeners and sink as installed, removed by identity.
    _timeline_hooks: tuple[Listener, Listener, SampleSink] | None

    def on_task_start(self, listener: ListenerT) -> ListenerT:
        """Call ``listener(task)`` when a task starts; usable as a decorator."""
        self._start_listeners = (*self._start_listeners, _validate.callable_("listener", listener))
        return listener

    def on_task_end(self, listener: ListenerT) -> ListenerT:
        """Call ``listener(task)`` when a task ends (figures final); usable as a decorator."""
        self._end_listeners = (*self._end_listeners, _validate.callable_("listener", listener))
        return listener

    def _adopt_listeners(self, old: Listeners) -> None:
        """Take over ``old``'s listeners, ahead of any of our own (``configure()``).

        Not those that feed ``old``'s timeline: a timeline is one tracker's.
        """
        hooks = old._timeline_hooks or ()
        starts = tuple(f for f in old._start_listeners if f not in hooks)
        ends = tuple(f for f in old._end_listeners if f not in hooks)
        self._start_listeners = _merged(starts, self._start_listeners)
        self._end_listeners = _merged(ends, self._end_listeners)

    @property
    def timeline(self) -> Timeline | None:
        """The :class:`~gputime.Timeline` being recorded, ``None`` when off (the default)."""
        return self._timeline

    def record_timeline(
        self,
        *,
        max_tasks: int = DEFAULT_MAX_TASKS,
        max_samples: int = DEFAULT_MAX_SAMPLES,
    ) -> Timeline:
        """Start recording a timeline now, and return it; the one recording, if any.

        For a tracker made without ``timeline=`` (the default tracker:
        ``gputime.get_tracker().record_timeline()``). Tasks that began before
        are recorded when they end. The bounds apply to a new timeline only:
        where one is being recorded, it is returned as it is.

        Args:
            max_tasks: Task windows kept (a ring: the oldest go first).
            max_samples: Device readings kept, likewise.

        Raises:
            ValueError: A bound that is not a positive integer.
        """
        current = self._timeline
        if current is not None:
            return current
        timeline = Timeline(max_tasks=max_tasks, max_samples=max_samples)
        self._attach_timeline(timeline)
        return timeline

    def stop_timeline(self) -> Timeline | None:
        """Stop recording; returns the timeline (still readable), ``None`` if none was on.

        A task running now is not recorded when it ends (nor shown as running).
        """
        timeline, installed = self._timeline, self._timeline_hooks
        if timeline is None or installed is None:
            return None
        started, ended, _ = installed
        self._ledger.channels.on_sample = None
        self._start_listeners = tuple(f for f in self._start_listeners if f is not started)
        self._end_listeners = tuple(f for f in self._end_listeners if f is not ended)
        self._timeline = None
        self._timeline_hooks = None
        timeline._unbind()
        return timeline

    def _attach_timeline(self, timeline: Timeline) -> None:
        """Feed ``timeline``: task listeners (run outside every lock) and the sample sink.

        Nothing is added to the task path: the listener tuples are checked
        there already, and the channels check their sink per credited reading.
        """
        timeline._bind(self, self._reader.measured, self._ledger.profile, self.clock, self._faults)
        installed = self._timeline_hooks = hooks(timeline)
        started, ended, sink = installed
        self._timeline = timeline
        self._start_listeners = (started, *self._start_listeners)
        self._end_listeners = (ended, *self._end_listeners)
        self._ledger.channels.on_sample = sink


def _merged(first: tuple[Listener, ...], then: tuple[Listener, ...]) -> tuple[Listener, ...]:
    """``first`` then ``then``, each listener once."""
    return (*first, *(listener for listener in then if listener not in first))
