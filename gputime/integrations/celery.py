"""Celery: every task a worker runs, measured as one gputime task.

One call where the worker loads the app (the module that creates it)::

    from celery import Celery
    from gputime.integrations.celery import instrument

    app = Celery("proj", broker="redis://...")
    instrument(app)  # every task, each under its own name as the service

    @app.task(gputime_service="nmt")  # or name the service per task
    def translate(text): ...

It listens to Celery's ``task_prerun`` and ``task_postrun`` signals, which the
worker sends on the thread that runs the task, right before and right after its
body (see ``docs/celery.md``). Each run of a task, each retry included, is one
gputime task with the same figures, span, metrics and listeners as
``@gpu_task``; the span is current while the body runs, so spans the task
starts are its children. This module decides which runs are measured, under
which service, and how each ended; a run's task and the context of its span
are :mod:`gputime.integrations._celery_run`'s.

Importing this module imports Celery (the optional extra ``gputime[celery]``);
importing :mod:`gputime` does not.
"""

from __future__ import annotations

import itertools
import sys
import threading
from collections.abc import Callable
from typing import Any, Final, Literal

from gputime import _default, _fork
from gputime._task import gpu_task
from gputime._tracker import Tracker
from gputime.integrations._celery_run import Run, take_back_leftover

try:
    from celery import signals as _signals
    from celery.exceptions import Ignore, Reject, Retry
except ImportError as _missing:  # pragma: no cover - the test extra installs Celery
    raise ImportError(
        "gputime.integrations.celery needs Celery 5.3 or later: pip install 'gputime[celery]'"
    ) from _missing

__all__ = ["OPTION", "CeleryInstrumentation", "ServiceChooser", "instrument", "uninstrument"]

#: The task option that names a task's service (``@app.task(gputime_service="nmt")``,
#: or a class attribute of a task class): a string names the service, ``True``
#: opts the task in under the default service, ``False`` leaves it unmeasured.
OPTION: Final = "gputime_service"

#: The states of a run that did not fail: it succeeded, or Celery retries the
#: task (a new run), drops it on purpose (``Ignore``) or hands it back to the
#: broker (``Reject``).
_NOT_FAILED: Final = frozenset({"SUCCESS", "RETRY", "IGNORED", "REJECTED"})

#: A function given the Celery task object that returns the service of its
#: run, or ``None`` to leave the run unmeasured.
ServiceChooser = Callable[[Any], "str | None"]

#: What a run raises when it did not fail (the states above, as exceptions).
_NOT_FAILURES: Final = (Retry, Ignore, Reject)

_uids = itertools.count(1)
_active: list[CeleryInstrumentation] = []
_active_lock = threading.Lock()


class CeleryInstrumentation:
    """The signal handlers that :func:`instrument` connected; see there.

    Attributes:
        app: The only Celery app whose tasks are measured; ``None`` for every app.
        service: The service of a task that names none (``None``: the task's name).
        tasks: ``"all"`` or ``"opt-in"``.
        tracker: The tracker that measures; ``None`` for the default one.
    """

    def __init__(
        self,
        app: object | None,
        service: str | ServiceChooser | None,
        tasks: Literal["all", "opt-in"],
        tracker: Tracker | None,
    ) -> None:
        self.app: object | None = app
        self.service: str | ServiceChooser | None = service
        self.tasks: Literal["all", "opt-in"] = tasks
        self.tracker: Tracker | None = tracker
        self._uid = f"gputime.integrations.celery:{next(_uids)}"
        self._lock = threading.Lock()
        # Runs started and not yet ended, by the id of their Celery request
        # (the request object lives from before task_prerun to after
        # task_postrun, one per run, even for two runs of one task id).
        self._runs: dict[int, Run] = {}
        self._closing = False
        self._postrun_connected = False
        _fork.register(self)

    # -- connecting --------------------------------------------------------------------

    def _connect(self) -> None:
        # weak=False: bound methods would be collected at once otherwise;
        # the dispatch_uid makes a second connect of the same handler a no-op.
        _signals.task_postrun.connect(self._on_postrun, weak=False, dispatch_uid=self._uid)
        self._postrun_connected = True
        _signals.task_prerun.connect(self._on_prerun, weak=False, dispatch_uid=self._uid)

    @property
    def active(self) -> bool:
        """True until :meth:`uninstrument` is called."""
        return not self._closing

    @property
    def running(self) -> int:
        """Runs started through this instrumentation that have not ended yet."""
        with self._lock:
            return len(self._runs)

    def uninstrument(self) -> None:
        """Measure no new task; runs already started end as usual. Idempotent.

        ``task_prerun`` is disconnected now. ``task_postrun`` stays connected
        until the runs started before have ended, so none is left open (an open
        task would keep its service active and the sampler reading forever).
        """
        with _active_lock:
            if self in _active:
                _active.remove(self)
        _signals.task_prerun.disconnect(dispatch_uid=self._uid)
        with self._lock:
            self._closing = True
            drained = not self._runs
        if drained:
            self._disconnect_postrun()

    def _disconnect_postrun(self) -> None:
        with self._lock:
            if not self._postrun_connected:
                return
            self._postrun_connected = False
        # Safe from inside the handler itself: Celery sends to a copy of the list.
        _signals.task_postrun.disconnect(dispatch_uid=self._uid)

    def _after_fork_in_child(self) -> None:
        # A prefork child: runs open in the parent's other threads never end
        # here, and the lock may have been held by one of them.
        self._lock = threading.Lock()
        self._runs = {}

    # -- the handlers -------------------------------------------------------------------

    def _on_prerun(
        self, sender: Any = None, task_id: Any = None, task: Any = None, **_: Any
    ) -> None:
        """``task_prerun``: start the run's task and make its span current."""
        try:
            self._start(task if task is not None else sender, task_id)
        except Exception as exc:  # noqa: BLE001 - instrumentation never fails the task
            self._report("celery task_prerun", exc)

    def _on_postrun(
        self,
        sender: Any = None,
        task: Any = None,
        retval: Any = None,
        state: Any = None,
        **_: Any,
    ) -> None:
        """``task_postrun``: end the run's task, with the exception it failed with."""
        try:
            self._finish(task if task is not None else sender, retval, state)
        except Exception as exc:  # noqa: BLE001 - instrumentation never fails the task
            self._report("celery task_postrun", exc)

    def _start(self, task: Any, task_id: Any) -> None:
        # Before anything else, measured task or not: its spans must not
        # become children of a span that ended with the previous task.
        take_back_leftover()
        if self._closing or task is None:
            return
        if self.app is not None and getattr(task, "app", None) is not self.app:
            return
        service = self._service_of(task)
        if service is None:
            return
        attributes = {"celery.task_name": str(task.name), "celery.task_id": str(task_id)}
        spec = gpu_task(service, attributes=attributes, tracker=self.tracker)
        key = id(task.request)  # the request Celery pushed for this run
        run = Run()
        with self._lock:
            if self._closing:  # uninstrument() came in between: its drain must not wait
                return
            self._runs[key] = run
        # Outside the lock: listeners run on the task's start, and one that
        # runs a task eagerly would come back here.
        run.start(spec)

    def _finish(self, task: Any, retval: Any, state: Any) -> None:
        if task is None:
            return
        key = id(task.request)
        with self._lock:
            run = self._runs.get(key)
        try:
            if run is not None and run.handle is not None:
                run.end(_error_of(retval, state), state, self._report)
        finally:
            # Forgotten only once ended, so that ``running`` counts it until then.
            with self._lock:
                self._runs.pop(key, None)
                drained = self._closing and not self._runs
            if drained:
                self._disconnect_postrun()

    # -- which service ----------------------------------------------------------------

    def _service_of(self, task: Any) -> str | None:
        """The service a run of ``task`` counts under; ``None``: not measured."""
        option = getattr(task, OPTION, None)
        if isinstance(option, str):
            return option
        if option is False or (option is None and self.tasks == "opt-in"):
            return None
        if option is not None and option is not True:
            raise TypeError(
                f"task {task.name!r}: {OPTION} must be a string, True or False, "
                f"not {type(option).__name__}"
            )
        name = str(task.name)
        if option is None and name.startswith("celery."):
            # Celery's own tasks (chord_unlock polls every second): not GPU work.
            return None
        chooser = self.service
        if chooser is None:
            return name
        if isinstance(chooser, str):
            return chooser
        chosen = chooser(task)
        if chosen is not None and not isinstance(chosen, str):
            raise TypeError(
                f"service chooser {chooser!r} returned {type(chosen).__name__} for task "
                f"{name!r}: it must return a service name or None"
            )
        return chosen

    def _report(self, kind: str, exc: BaseException) -> None:
        """Log a fault once per kind and exception type, on logger ``gputime``.

        Should this fail too, Celery catches what a signal handler raises (and
        logs it), so the task runs on all the same.
        """
        tracker = self.tracker or _default.get_tracker()
        tracker._report_fault(kind, exc, self)

    def __repr__(self) -> str:
        state = "active" if self.active else "uninstrumented"
        return f"<CeleryInstrumentation {self.tasks} tasks, {state}>"


def _error_of(retval: Any, state: Any) -> BaseException | None:
    """What a run failed with, from what ``task_postrun`` was given; ``None``: it did not fail.

    Read in the ``task_postrun`` handler: for a run that left Celery's tracer
    with an exception, that exception is still the one being handled there.
    """
    if state in _NOT_FAILED:
        return None
    if state is None:
        # Something escaped Celery's tracer (a KeyboardInterrupt or
        # SystemExit in the body, a fault of Celery's own around it, an
        # eager apply() that propagates): task_postrun is sent from a
        # ``finally``, where the exception on its way out is still the one
        # being handled. An eager retry propagates as Retry: not a failure.
        error = sys.exc_info()[1]
        return None if isinstance(error, _NOT_FAILURES) else error
    # FAILURE: the tracer hands postrun the exception the body raised.
    return retval if isinstance(retval, BaseException) else None


def instrument(
    app: object | None = None,
    *,
    service: str | ServiceChooser | None = None,
    tasks: Literal["all", "opt-in"] = "all",
    tracker: Tracker | None = None,
) -> CeleryInstrumentation:
    """Measure the tasks Celery workers in this process run, each run as one task.

    Call it where the worker imports the app, before tasks run (a prefork
    worker's children inherit it). Each run (a retry is a new run) counts under
    the first of:

    1. the task's option ``gputime_service`` (``@app.task(gputime_service="nmt")``
       or a class attribute): a string is the service, ``True`` opts the task in
       with the default service below, ``False`` leaves it unmeasured;
    2. with ``tasks="opt-in"``, a task without the option is not measured;
    3. ``service``: a string (one service for every task), or a function given
       the task object that returns the service (or ``None``: not measured);
    4. the task's name (``proj.tasks.translate``).

    Celery's own tasks (``celery.*``, such as ``celery.chord_unlock``) are only
    measured if they carry the option.

    Args:
        app: Measure only this Celery app's tasks; ``None`` for every app.
        service: The service of tasks that do not name one (see above).
        tasks: ``"all"`` measures every task; ``"opt-in"`` only those with the option.
        tracker: The tracker that measures; the process-wide default one (looked
            up at each run, so ``gputime.configure()`` applies) if ``None``.

    Returns:
        The instrumentation; its ``uninstrument()`` stops measuring new runs.

    Raises:
        TypeError, ValueError: A bad argument (the message names it).
        RuntimeError: The app (or every app) is already instrumented.
    """
    if tasks not in ("all", "opt-in"):
        raise ValueError(f"tasks must be 'all' or 'opt-in', not {tasks!r}")
    if isinstance(service, str):
        gpu_task(service)  # the same checks as every task's service
    elif service is not None and not callable(service):
        raise TypeError(
            f"service must be a string, a function of the task, or None, "
            f"not {type(service).__name__}"
        )
    if tracker is not None and not isinstance(tracker, Tracker):
        raise TypeError(f"tracker must be a gputime.Tracker, not {type(tracker).__name__}")
    instrumentation = CeleryInstrumentation(app, service, tasks, tracker)
    with _active_lock:
        for other in _active:
            if app is None or other.app is None or other.app is app:
                raise RuntimeError(
                    f"{'every Celery app' if app is None else repr(app)} is already "
                    f"instrumented by {other!r}: call its uninstrument() first"
                )
        instrumentation._connect()
        _active.append(instrumentation)
    return instrumentation


def uninstrument() -> None:
    """Call ``uninstrument()`` on every instrumentation :func:`instrument` made."""
    with _active_lock:
        active = list(_active)
    for instrumentation in active:
        instrumentation.uninstrument()


def _reinit_lock_in_child() -> None:
    global _active_lock
    _active_lock = threading.Lock()


_fork.in_child(_reinit_lock_in_child)
