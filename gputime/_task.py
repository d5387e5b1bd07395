"""``gpu_task``: one small class that is both decorator and context manager.

The wrapper is chosen once, at decoration time, by the kind of callable
(coroutine, generator, async generator or plain function), and every entry makes
a fresh :class:`~gputime.TaskHandle`, so one decorated function runs
concurrently in many threads and asyncio tasks.
"""

from __future__ import annotations

import contextvars
import inspect
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Generator, Mapping
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

import wrapt

from gputime._tracker import TaskHandle, Tracker, _check_service

if TYPE_CHECKING:
    from types import TracebackType

P = ParamSpec("P")
R = TypeVar("R")
Y = TypeVar("Y")
S = TypeVar("S")

_ATTRIBUTE_SCALARS = (str, bool, int, float)


class gpu_task:  # noqa: N801 - lower case: used like a function, as the spec names it
    """Measure a block or a function as one task of ``service``.

    Use it as ``with gpu_task("tts") as task:``, ``async with ...``, or as a
    decorator on def, async def, generator and async-generator functions and
    methods. The decorated function keeps its name, docstring and signature.

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

    __slots__ = ("_handles", "attributes", "name", "service", "span", "tracker")

    def __init__(
        self,
        service: str,
        *,
        name: str | None = None,
        span: bool = True,
        attributes: Mapping[str, Any] | None = None,
        tracker: Tracker | None = None,
    ) -> None:
        self.service = _check_service(service)
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a string or None, not {type(name).__name__}")
        if tracker is not None and not isinstance(tracker, Tracker):
            raise TypeError(f"tracker must be a gputime.Tracker, not {type(tracker).__name__}")
        self.name = name
        self.span = bool(span)
        self.attributes = _check_attributes(attributes)
        self.tracker = tracker
        self._handles: contextvars.ContextVar[TaskHandle] | None = None

    # -- entering and leaving -----------------------------------------------------------

    def _start(self, activate: bool = True) -> TaskHandle:
        tracker = self.tracker
        if tracker is None:
            from gputime._default import get_tracker  # noqa: PLC0415 - _default imports this module

            tracker = get_tracker()
        return tracker._start_task(self.service, self.name, self.span, self.attributes, activate)

    def __enter__(self) -> TaskHandle:
        handle = self._start()
        handles = self._handles
        if handles is None:
            handles = self._handles = contextvars.ContextVar("gputime.task")
        # The handle travels in a context variable, not on self: the same
        # gpu_task object may be entered in many threads and tasks at once.
        handle._cm_token = handles.set(handle)
        return handle

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        handles = self._handles
        assert handles is not None, "__exit__ without __enter__"
        handle = handles.get()
        handles.reset(handle._cm_token)  # type: ignore[arg-type] # set by __enter__
        handle._tracker._end_task(handle, exc)

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
        target = func.__func__ if isinstance(func, (classmethod, staticmethod)) else func
        if not callable(target):
            raise TypeError(f"gpu_task decorates functions, not {type(func).__name__}")
        if inspect.isasyncgenfunction(target):
            wrapper: Callable[..., Any] = self._wrap_async_generator
        elif inspect.iscoroutinefunction(target):
            wrapper = self._wrap_coroutine
        elif inspect.isgeneratorfunction(target):
            wrapper = self._wrap_generator
        else:
            wrapper = self._wrap_function
        return wrapt.FunctionWrapper(func, wrapper)

    def _wrap_function(
        self,
        wrapped: Callable[..., R],
        instance: object,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> R:
        handle = self._start()
        try:
            result = wrapped(*args, **kwargs)
        except BaseException as exc:
            handle._tracker._end_task(handle, exc)
            raise
        handle._tracker._end_task(handle, None)
        return result

    async def _wrap_coroutine(
        self,
        wrapped: Callable[..., Awaitable[R]],
        instance: object,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> R:
        handle = self._start()
        try:
            result = await wrapped(*args, **kwargs)
        except BaseException as exc:
            handle._tracker._end_task(handle, exc)
            raise
        handle._tracker._end_task(handle, None)
        return result

    def _wrap_generator(
        self,
        wrapped: Callable[..., Generator[Y, S, R]],
        instance: object,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Generator[Y, S, R]:
        return self._drive_generator(wrapped(*args, **kwargs))

    def _drive_generator(self, gen: Generator[Y, S, R]) -> Generator[Y, S, R]:
        # Delegates by hand rather than with ``yield from`` so that the task's
        # span is current only while the generator body runs, not while the
        # consumer holds it suspended.
        handle = self._start(activate=False)
        emitter = handle._tracker._emitter
        to_send: Any = None
        to_throw: BaseException | None = None
        try:
            while True:
                token = emitter.activate(handle)
                try:
                    item = gen.send(to_send) if to_throw is None else gen.throw(to_throw)
                finally:
                    emitter.deactivate(token)
                to_send, to_throw = None, None
                try:
                    to_send = yield item
                except GeneratorExit:
                    token = emitter.activate(handle)
                    try:
                        gen.close()
                    finally:
                        emitter.deactivate(token)
                    raise
                except BaseException as exc:  # noqa: BLE001 - forwarded into the generator
                    to_throw = exc
        except StopIteration as stop:
            handle._tracker._end_task(handle, None)
            return stop.value  # type: ignore[no-any-return] # the generator's return value
        except BaseException as exc:
            handle._tracker._end_task(handle, exc)
            raise

    def _wrap_async_generator(
        self,
        wrapped: Callable[..., AsyncGenerator[Y, S]],
        instance: object,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> AsyncGenerator[Y, S]:
        return self._drive_async_generator(wrapped(*args, **kwargs))

    async def _drive_async_generator(self, agen: AsyncGenerator[Y, S]) -> AsyncGenerator[Y, S]:
        handle = self._start(activate=False)
        emitter = handle._tracker._emitter
        to_send: Any = None
        to_throw: BaseException | None = None
        try:
            while True:
                token = emitter.activate(handle)
                try:
                    if to_throw is None:
                        item = await agen.asend(to_send)
                    else:
                        item = await agen.athrow(to_throw)
                finally:
                    emitter.deactivate(token)
                to_send, to_throw = None, None
                try:
                    to_send = yield item
                except GeneratorExit:
                    token = emitter.activate(handle)
                    try:
                        await agen.aclose()
                    finally:
                        emitter.deactivate(token)
                    raise
                except BaseException as exc:  # noqa: BLE001 - forwarded into the generator
                    to_throw = exc
        except StopAsyncIteration:
            handle._tracker._end_task(handle, None)
        except BaseException as exc:
            handle._tracker._end_task(handle, exc)
            raise

    def __repr__(self) -> str:
        return f"gpu_task({self.service!r})"


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
