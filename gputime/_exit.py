"""Tasks still open when the interpreter exits end before gputime is torn down.

Python closes the generators and coroutines it still holds at exit only while it
tears modules down. When ``__main__`` outlives gputime's modules (a context
variable in the main context holding one of its functions is enough), that
happens after gputime's module globals were cleared, and a task end run then
fails: its span and end listeners never see it. Even when it runs, the
OpenTelemetry SDK has shut down by then, so the span is dropped. A task ended
inside a garbage collection just before exit is recorded, and no later task
event emits it.

So an :mod:`atexit` hook, (re)registered whenever a tracker is made (exit
handlers run last registered first, so it runs before those registered
earlier, such as an OpenTelemetry SDK provider's shutdown), finishes them first:

1. ends recorded inside a collection are emitted;
2. decorated generators left suspended are closed, as Python would close them
   later: the generator's own clean-up runs inside its task, which then ends as
   any generator closed early does;
3. every other task still open ends where it stands, as a cancelled one does
   (no error): a ``with`` block in a suspended generator or coroutine or one
   never left, a task from ``start_task`` never ended, a pending decorated
   coroutine or async generator (their clean-up runs later, when Python closes
   them, if ever), a task in a daemon thread.

The wrapper's or the block's own end, if it still comes, changes nothing: the
ledger ends a task once (``Ledger.end`` returns False), and the task's span,
ended here, is never made current again.

Tasks begun before a fork belong to the parent process and are left alone.
Finding open tasks costs one pass over the garbage collector's objects, made
only when some tracker has a task running; nothing is tracked per task.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import inspect
import types
import weakref
from typing import TYPE_CHECKING

from gputime._handle import TaskHandle

if TYPE_CHECKING:
    from gputime._tracker import Tracker

#: Code objects of the decorated-generator wrappers (one per ``gpu_task`` kind of
#: wrapper; added at decoration time), so a wrapper generator is known by its code.
generator_codes: set[types.CodeType] = set()

_trackers: weakref.WeakSet[Tracker] = weakref.WeakSet()


def install(tracker: Tracker) -> None:
    """Watch ``tracker`` at exit, and run the hook before exit handlers registered so far."""
    _trackers.add(tracker)
    atexit.unregister(_at_exit)
    atexit.register(_at_exit)


def _at_exit() -> None:
    with contextlib.suppress(Exception):  # nothing may escape at exit
        end_open_tasks()


def end_open_tasks() -> None:
    """Emit recorded ends, close suspended decorated generators, end every other open task."""
    trackers = list(_trackers)
    _emit_recorded(trackers)
    if not any(tracker._ledger.active_tasks for tracker in trackers):
        return
    generators, handles = _open_work()
    for generator in generators:
        if inspect.getgeneratorstate(generator) == inspect.GEN_SUSPENDED:
            # The wrapper ends its task, as at an early close; if the generator's
            # own clean-up raises, its task ended with that error.
            with contextlib.suppress(Exception):
                generator.close()
    for handle in handles:
        with contextlib.suppress(Exception):  # one task's failure must not keep the others open
            _end(handle)
    _emit_recorded(trackers)


def _emit_recorded(trackers: list[Tracker]) -> None:
    """Apply and emit the ends recorded inside a collection (``stats()`` does both)."""
    for tracker in trackers:
        with contextlib.suppress(Exception):
            tracker.stats()


def _open_work() -> tuple[list[types.GeneratorType[object, object, object]], list[TaskHandle]]:
    """Suspended decorated generators and open task handles, from the collector's objects."""
    generators: list[types.GeneratorType[object, object, object]] = []
    handles: list[TaskHandle] = []
    codes = generator_codes
    for obj in gc.get_objects():
        kind = type(obj)
        if kind is types.GeneratorType:
            if obj.gi_code in codes:
                generators.append(obj)
        elif kind is TaskHandle and obj.end_time is None:
            handles.append(obj)
    return generators, handles


def _end(handle: TaskHandle) -> None:
    """End one open task where it stands (no error), unless another process owns it."""
    if handle.end_time is not None:
        return  # ended meanwhile (its generator was closed above)
    tracker = handle._tracker
    if 0 <= handle._generation != tracker._ledger.generation:
        return  # begun before a fork: the parent's task
    if hasattr(handle, "_cm_token"):
        # A ``with`` block: take it out of its block's open entries, so that a
        # later ``__exit__`` (Python closing the generator that holds it) finds
        # nothing to do. Whoever removes it first ends it.
        try:
            handle._spec._open.remove(handle)
        except ValueError:
            return
    tracker._end_task(handle, None)
