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
   any generator closed early does. Not while another thread of the program
   is alive (a daemon thread runs on through the exit handlers, and may be
   iterating one): their tasks then end where they stand, as in 3;
3. every other task still open ends where it stands, as a cancelled one does
   (no error): a ``with`` block in a suspended generator or coroutine or one
   never left, a task from ``start_task`` never ended, a pending decorated
   coroutine or async generator (their clean-up runs later, when Python closes
   them, if ever), a task in a daemon thread.

The wrapper's or the block's own end, if it still comes, changes nothing: the
ledger ends a task once (``Ledger.end`` returns False), and the task's span,
ended here, is never made current again.

Tasks begun before a fork belong to the parent process and are left alone (a
decorated generator a forked child inherited is closed there, as Python would
close it at the child's exit anyway). Finding open tasks costs one pass over the
garbage collector's objects (frozen ones included), made only when some tracker
has a task running; nothing is tracked per task (0.3 s on a heap of five
million objects).

The hook moves behind every exit handler registered before a tracker was made,
and before a pending OpenTelemetry provider was taken up (an SDK set up after
the tracker registers its shutdown then), but never once the interpreter has
begun to exit: a handler registered then would not run at all.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import inspect
import threading
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
    move_last()


def move_last() -> None:
    """Run the hook before every exit handler registered so far (unless exiting already)."""
    if _exiting:
        return  # re-registering now would unregister it for good
    atexit.unregister(_at_exit)
    atexit.register(_at_exit)


def _at_exit() -> None:
    with contextlib.suppress(BaseException):  # nothing may escape at exit
        end_open_tasks()


#: Set when the interpreter begins to exit (before any exit handler runs).
_exiting = False


def _mark_exiting() -> None:
    global _exiting  # one flag, set once, read by move_last
    _exiting = True


# threading runs these before the exit handlers, once the main thread is done
# (private, in CPython since 3.9); without it, a tracker made by an exit handler
# could unregister the hook.
with contextlib.suppress(AttributeError, RuntimeError):
    threading._register_atexit(_mark_exiting)  # type: ignore[attr-defined]


def end_open_tasks() -> None:
    """Emit recorded ends, close suspended decorated generators, end every other open task.

    Every task is tried, whatever another's end raises; a ``KeyboardInterrupt``
    or ``SystemExit`` raised by a generator's clean-up is raised again once
    every task has ended.
    """
    trackers = list(_trackers)
    _emit_recorded(trackers)
    if not any(tracker._ledger.active_tasks for tracker in trackers):
        return
    if gc.get_freeze_count():
        gc.unfreeze()  # gc.get_objects() leaves frozen objects out; the process is ending
    generators, handles = _open_work()
    interrupted: BaseException | None = None
    if not _other_threads_alive():
        for generator in generators:
            try:
                if inspect.getgeneratorstate(generator) == inspect.GEN_SUSPENDED:
                    # The wrapper ends its task, as at an early close; if the
                    # generator's own clean-up raises, its task ended with that error.
                    generator.close()
            except Exception:  # noqa: BLE001 - its task ended with it; go on
                continue
            except BaseException as exc:  # noqa: BLE001 - every task ends first
                interrupted = interrupted or exc
    for handle in handles:
        try:
            _end(handle)
        except Exception:  # noqa: BLE001 - one task's failure must not keep the others open
            continue
        except BaseException as exc:  # noqa: BLE001 - as above
            interrupted = interrupted or exc
    _emit_recorded(trackers)
    if interrupted is not None:
        raise interrupted


def _other_threads_alive() -> bool:
    """Whether a thread besides the main one and gputime's samplers is still running."""
    main = threading.main_thread()
    return any(
        thread is not main and thread.is_alive() and not thread.name.startswith("gputime-")
        for thread in threading.enumerate()
    )


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
        # getattr: an object still being built on another thread lacks its slots.
        if kind is types.GeneratorType:
            if getattr(obj, "gi_code", None) in codes:
                generators.append(obj)
        elif kind is TaskHandle and getattr(obj, "end_time", 0) is None:
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
