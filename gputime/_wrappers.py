"""The wrappers ``gpu_task`` puts around decorated callables, one per kind.

``gpu_task.__call__`` picks one, once, at decoration time, by the kind of
callable (as tenacity and stamina do): a plain call, a coroutine (measured over
the await), a generator or an async generator (measured from the first resume
to exhaustion or close, with the task's span current only while the body
runs), or a ``wrapt`` proxy for other callables. They are closures rather
than ``wrapt`` proxies where they can be: a closure call costs a sixth of a
proxy's, and this is the per-call cost users pay (docs/performance.md).
"""

from __future__ import annotations

import functools
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Generator
from typing import TYPE_CHECKING, Any, TypeVar, cast

from gputime import _default, _exit, _gcsafe

if TYPE_CHECKING:
    from types import FunctionType

    from gputime._task import gpu_task

R = TypeVar("R")
Y = TypeVar("Y")
S = TypeVar("S")


def function(spec: gpu_task, func: Callable[..., R]) -> Callable[..., R]:
    """A plain function or method: the task covers the call."""

    @functools.wraps(func)
    def gpu_task_wrapper(*args: Any, **kwargs: Any) -> R:
        # spec._start() written out: this is the per-call cost users pay.
        tracker = spec.tracker or _default._default or _default.get_tracker()
        handle = tracker._start_task(spec, True)
        try:
            result = func(*args, **kwargs)
        except BaseException as exc:
            handle._tracker._end_task(handle, exc)
            raise
        handle._tracker._end_task(handle, None)
        return result

    return gpu_task_wrapper


def proxy_call(
    spec: gpu_task,
    wrapped: Callable[..., R],
    instance: object,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> R:
    """The call of a ``wrapt`` proxy (partials, callable objects, builtins)."""
    handle = spec._start()
    try:
        result = wrapped(*args, **kwargs)
    except BaseException as exc:
        handle._tracker._end_task(handle, exc)
        raise
    handle._tracker._end_task(handle, None)
    return result


def coroutine(
    spec: gpu_task, func: Callable[..., Awaitable[R]]
) -> Callable[..., Coroutine[Any, Any, R]]:
    """A coroutine function: the task covers the await, from the first resume."""

    @functools.wraps(func)
    async def gpu_task_wrapper(*args: Any, **kwargs: Any) -> R:
        # Entered when the coroutine first runs: the task covers the await.
        tracker = spec.tracker or _default._default or _default.get_tracker()
        handle = tracker._start_task(spec, True)
        try:
            result = await func(*args, **kwargs)
        except BaseException as exc:
            handle._tracker._end_task(handle, exc)
            raise
        handle._tracker._end_task(handle, None)
        return result

    return gpu_task_wrapper


def generator(
    spec: gpu_task, func: Callable[..., Generator[Y, S, R]]
) -> Callable[..., Generator[Y, S, R]]:
    """A generator function: the task covers first resume to exhaustion or close."""
    start = spec._start

    @functools.wraps(func)
    def gpu_task_wrapper(*args: Any, **kwargs: Any) -> Generator[Y, S, R]:
        # A generator function itself, so nothing runs before the first
        # resume. Delegates by hand rather than with ``yield from`` so the
        # task's span is current only while the generator body runs, not
        # while the consumer holds it suspended.
        gen = func(*args, **kwargs)
        handle = start(activate=False)
        tracker = handle._tracker
        to_send: Any = None
        to_throw: BaseException | None = None
        try:
            while True:
                token = tracker._activate(handle)
                try:
                    item = gen.send(to_send) if to_throw is None else gen.throw(to_throw)
                finally:
                    tracker._deactivate(token)
                to_send, to_throw = None, None
                try:
                    to_send = yield item
                except GeneratorExit:
                    if _gcsafe.in_collection():
                        # Closed by the collector: no context change (see _gcsafe).
                        gen.close()
                        raise
                    token = tracker._activate(handle)
                    try:
                        gen.close()
                    finally:
                        tracker._deactivate(token)
                    raise
                except BaseException as exc:  # noqa: BLE001 - forwarded into the generator
                    to_throw = exc
        except StopIteration as stop:
            handle._tracker._end_task(handle, None)
            return stop.value  # type: ignore[no-any-return] # the generator's return value
        except BaseException as exc:
            handle._tracker._end_task(handle, exc)
            raise

    # Known by its code at interpreter exit, where a suspended one is closed.
    _exit.generator_codes.add(cast("FunctionType", gpu_task_wrapper).__code__)
    return gpu_task_wrapper


def async_generator(
    spec: gpu_task, func: Callable[..., AsyncGenerator[Y, S]]
) -> Callable[..., AsyncGenerator[Y, S]]:
    """An async generator function: as :func:`generator`, over ``async for``."""
    start = spec._start

    @functools.wraps(func)
    async def gpu_task_wrapper(*args: Any, **kwargs: Any) -> AsyncGenerator[Y, S]:
        agen = func(*args, **kwargs)
        handle = start(activate=False)
        tracker = handle._tracker
        to_send: Any = None
        to_throw: BaseException | None = None
        try:
            while True:
                token = tracker._activate(handle)
                try:
                    if to_throw is None:
                        item = await agen.asend(to_send)
                    else:
                        item = await agen.athrow(to_throw)
                finally:
                    tracker._deactivate(token)
                to_send, to_throw = None, None
                try:
                    to_send = yield item
                except GeneratorExit:
                    if _gcsafe.in_collection():
                        # Closed by the collector (no event loop hooks): as above.
                        await agen.aclose()
                        raise
                    token = tracker._activate(handle)
                    try:
                        await agen.aclose()
                    finally:
                        tracker._deactivate(token)
                    raise
                except BaseException as exc:  # noqa: BLE001 - forwarded into the generator
                    to_throw = exc
        except StopAsyncIteration:
            handle._tracker._end_task(handle, None)
        except BaseException as exc:
            handle._tracker._end_task(handle, exc)
            raise

    return gpu_task_wrapper
