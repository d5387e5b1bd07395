"""``gpu_task``: one small class that is both decorator and context manager.

The wrapper is chosen once, at decoration time, by the kind of callable
(coroutine, generator, async generator or plain function), and every entry makes
a fresh :class:`~gputime.TaskHandle`, so one decorated function runs
concurrently in many threads and asyncio tasks.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import sys
from collections.abc import AsyncGenerator, Callable, Coroutine, Generator, Mapping
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

from gputime import _default, _gcsafe, _validate, _wrappers
from gputime._handle import TaskHandle

if TYPE_CHECKING:
    from types import TracebackType

    from gputime._tracker import Tracker

P = ParamSpec("P")
R = TypeVar("R")
Y = TypeVar("Y")
S = TypeVar("S")

_ATTRIBUTE_SCALARS = (str, bool, int, float)


class gpu_task:  # noqa: N801 - lower case: used like a function (the public name is fixed)
    """Measure a block or a function as one task of ``service``.

    Use it as ``with gpu_task("tts") as task:``, ``async with ...``, or as a
    decorator on def, async def, generator and async-generator functions and
    methods. The decorated function keeps its name, docstring and signature.

    One object may be entered many times at once (from several threads or
    asyncio tasks, or nested); entries made in one context are left in
    reverse order, as nested ``with`` blocks are.

    Args:
        service: The service the task belongs to.
        name: Span name; ``gpu_task {service}`` if ``None``.
        span: False makes no span: the attributes go on the current span.
        attributes: Extra span attributes (str, bool, int, float, or lists of one of them).
        tracker: The tracker to use; the process-wide default one if ``None``
            (looked up at each entry, so ``configure()`` applies to decorated
            functions too).

    Raises:
        TypeError: ``service`` is not a string, or an attribute has a type
            OpenTelemetry cannot carry.
        ValueError: ``service`` is empty or blank.
    """

    __slots__ = ("_current", "_open", "attributes", "name", "service", "span", "tracker")

    def __init__(
        self,
        service: str,
        *,
        name: str | None = None,
        span: bool = True,
        attributes: Mapping[str, Any] | None = None,
        tracker: Tracker | None = None,
    ) -> None:
        self.service: str = _validate.service(service)
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a string or None, not {type(name).__name__}")
        if tracker is not None and not _is_tracker(tracker):
            raise TypeError(f"tracker must be a gputime.Tracker, not {type(tracker).__name__}")
        self.name: str | None = name
        self.span: bool = bool(span)
        self.attributes: dict[str, Any] | None = _check_attributes(attributes)
        self.tracker: Tracker | None = tracker
        # Handles entered with ``with`` and not yet left, oldest first, and
        # which of them is current in each context (made on first use).
        self._open: list[TaskHandle] = []
        self._current: contextvars.ContextVar[TaskHandle] | None = None

    # -- entering and leaving -----------------------------------------------------------

    def _start(self, activate: bool = True) -> TaskHandle:
        tracker = self.tracker or _default._default or _default.get_tracker()
        return tracker._start_task(self, activate)

    def __enter__(self) -> TaskHandle:
        handle = self._start()
        current = self._current
        if current is None:
            current = self._current = contextvars.ContextVar("gputime.task")
        # Inside a garbage collection a context variable must not be set (see
        # _gcsafe); the handle is then only found as the newest open one.
        handle._cm_token = (
            None if _gcsafe.collecting and _gcsafe.in_collection() else current.set(handle)
        )
        self._open.append(handle)
        return handle

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        handle = self._leave()
        if handle is not None:
            handle._tracker._end_task(handle, exc)

    def _leave(self) -> TaskHandle | None:
        """The handle an exit closes; never raises into the user's ``with``.

        With one handle open (a fresh ``gpu_task(...)`` per ``with``, the usual
        case) it is that one, whatever context the exit runs in: a generator
        holding the block may be resumed from another thread or task. When one
        object is entered several times at once (shared between threads or
        tasks, or nested), the context variable tells which entry this is.
        """
        open_handles = self._open
        current = self._current
        if not open_handles or current is None:
            return None  # __exit__ without __enter__: nothing to close
        handle = open_handles[-1]
        if len(open_handles) > 1:
            candidate = current.get(None)
            if candidate is not None and candidate in open_handles:
                handle = candidate
        try:
            open_handles.remove(handle)
        except ValueError:  # another thread took the same fallback handle
            return None
        token = handle._cm_token
        if isinstance(token, contextvars.Token) and not (
            _gcsafe.collecting and _gcsafe.in_collection()
        ):
            # Left in another context than entered in: nothing to undo here.
            with contextlib.suppress(ValueError, RuntimeError):
                current.reset(token)
        return handle

    async def __aenter__(self) -> TaskHandle:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    # -- decorating ---------------------------------------------------------------------

    @overload
    def __call__(
        self, func: Callable[P, Coroutine[Any, Any, R]]
    ) -> Callable[P, Coroutine[Any, Any, R]]: ...

    @overload
    def __call__(
        self, func: Callable[P, AsyncGenerator[Y, S]]
    ) -> Callable[P, AsyncGenerator[Y, S]]: ...

    @overload
    def __call__(
        self, func: Callable[P, Generator[Y, S, R]]
    ) -> Callable[P, Generator[Y, S, R]]: ...

    @overload
    def __call__(self, func: Callable[P, R]) -> Callable[P, R]: ...

    def __call__(self, func: Callable[..., Any]) -> Callable[..., Any]:
        # First, and by type alone: an isinstance() check would evaluate a
        # Celery proxy, creating its task before the app is configured.
        celery_object = _celery_object(func)
        if celery_object is not None:
            raise TypeError(self._celery_order_message(celery_object))
        if isinstance(func, (classmethod, staticmethod)):
            # Decorated above @classmethod / @staticmethod: wrap the function and
            # put it back in the same kind of descriptor, so binding is unchanged.
            return type(func)(self(func.__func__))
        if not callable(func):
            raise TypeError(f"gpu_task decorates functions, not {type(func).__name__}")
        # A callable object is also judged by its __call__: an async one must
        # be measured over the await, not over making the coroutine.
        kinds = (func, type(func).__call__)
        if any(inspect.isasyncgenfunction(kind) for kind in kinds):
            return _wrappers.async_generator(self, func)
        if any(inspect.iscoroutinefunction(kind) for kind in kinds):
            return _wrappers.coroutine(self, func)
        if any(inspect.isgeneratorfunction(kind) for kind in kinds):
            return _wrappers.generator(self, func)
        if inspect.isfunction(func) or inspect.ismethod(func):
            return _wrappers.function(self, func)
        # Other callables (partials, callable objects, builtins): a transparent
        # proxy keeps their attributes, isinstance checks and binding behaviour.
        # wrapt is imported here, not with gputime: it costs more to import
        # than the rest of gputime (it pulls asyncio in), and most users only
        # ever decorate functions.
        import wrapt  # noqa: PLC0415 - see above

        return wrapt.FunctionWrapper(func, functools.partial(_wrappers.proxy_call, self))

    def _celery_order_message(self, what: str) -> str:
        return (
            f"{self!r} was placed above @app.task, on {what}: Celery's worker runs the "
            "task's function, not the object the decorator returns, so the task would go "
            "unmeasured. Put @gpu_task below @app.task (or @shared_task):\n\n"
            "    @app.task\n"
            f"    @gpu_task({self.service!r})\n"
            "    def my_task(...): ...\n\n"
            "or measure every task through Celery's signals with "
            "gputime.integrations.celery.instrument(app)."
        )

    def __repr__(self) -> str:
        return f"gpu_task({self.service!r})"


def _is_tracker(value: object) -> bool:
    # Without importing the tracker's module (it loads OpenTelemetry): where it
    # is not loaded yet, no tracker can exist.
    module = sys.modules.get("gputime._tracker")
    return module is not None and isinstance(value, module.Tracker)


def _celery_object(func: object) -> str | None:
    """What ``func`` is, if it is a Celery task or the proxy that stands for one.

    Judged by the type's own name and module, without importing Celery (an
    optional dependency) and without touching the object: ``app.task`` returns
    a lazy proxy until the app is finalised, and any attribute read or
    ``isinstance`` check on it would create the task early, binding it to a
    configuration that may not be loaded yet. A proxy is refused without
    asking what it stands for: ``@shared_task`` returns one that resolves to a
    different task object for each app, so no single object could be
    instrumented anyway.
    """
    for cls in type(func).__mro__:
        module = cls.__module__
        if module == "celery.app.task" and cls.__name__ == "Task":
            name = getattr(func, "name", None)
            return f"the Celery task {name!r}" if isinstance(name, str) else "a Celery task"
        if module == "celery.local" and cls.__name__ in {"Proxy", "PromiseProxy"}:
            return "a Celery task proxy (what @app.task and @shared_task return)"
    return None


def _check_attributes(attributes: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if attributes is None:
        return None
    if not isinstance(attributes, Mapping):
        raise TypeError(f"attributes must be a mapping, not {type(attributes).__name__}")
    checked: dict[str, Any] = {}
    for key, value in attributes.items():
        if not isinstance(key, str) or not key:
            raise TypeError(f"attributes: key {key!r} is not a non-empty string")
        if isinstance(value, _ATTRIBUTE_SCALARS):
            checked[key] = value
        elif isinstance(value, (list, tuple)) and _homogeneous(value):
            checked[key] = tuple(value)
        else:
            raise TypeError(
                f"attributes[{key!r}]={value!r}: OpenTelemetry attributes are str, bool, "
                "int, float, or a list of one of those"
            )
    return checked


def _homogeneous(values: list[Any] | tuple[Any, ...]) -> bool:
    kinds = {type(v) for v in values}
    return len(kinds) <= 1 and all(k in _ATTRIBUTE_SCALARS for k in kinds)
