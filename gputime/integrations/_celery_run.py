"""One Celery run as one gputime task, with its span current while the body runs.

:class:`Run` starts the run's task and makes its span current in
``task_prerun``, and in ``task_postrun`` takes that context back, only while it
is still the current one, before ending the task. Apart from the signal
handlers (:mod:`gputime.integrations.celery`, which decide which runs are
measured, under which service, and how each ended) because this part answers to
OpenTelemetry's rules rather than Celery's: another instrumentation may attach
its own context over ours in the same signals (docs/design.md, "The Celery
integration"). Nothing here imports Celery.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import TYPE_CHECKING

from opentelemetry import context as otel_context
from opentelemetry import trace as otel_trace

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span

    from gputime._handle import TaskHandle
    from gputime._task import gpu_task

#: A context a run made current and could not take back when the run ended,
#: because another instrumentation had made its own context current over it.
#: ``opentelemetry-instrumentation-celery`` does, if connected after gputime:
#: both attach in ``task_prerun`` and detach in ``task_postrun``, and Celery
#: calls each signal's handlers in the order they connected, so it detaches
#: after gputime's handler ran, putting gputime's context back. The next run in
#: the same context takes it away before anything else
#: (:func:`take_back_leftover`). Per context, so per thread, and per greenlet
#: under gevent or eventlet.
_leftover: contextvars.ContextVar[tuple[object, Context | None] | None] = contextvars.ContextVar(
    "gputime.celery.leftover", default=None
)


class Run:
    """One run of a task: its handle and, while its span is current, how to undo that."""

    __slots__ = ("attached", "handle", "span", "token")

    def __init__(self) -> None:
        self.handle: TaskHandle | None = None  # None until it started (or if it failed to)
        self.token: object = None
        self.attached: Context | None = None
        self.span: Span | None = None

    def start(self, spec: gpu_task) -> None:
        """Start the run's task and make its span current (where an SDK records spans).

        Called outside every lock: the task's start listeners run here.
        """
        handle = self.handle = spec._start(False)
        token = handle.tracker._activate(handle)  # None where no SDK records spans
        if token is not None:
            self.token = token
            self.attached = otel_context.get_current()
            self.span = otel_trace.get_current_span()

    def end(
        self,
        error: BaseException | None,
        state: object,
        report: Callable[[str, BaseException], None],
    ) -> None:
        """Put the run's Celery ``state`` on its span, take its context back, end its task.

        Only for a run whose task started (:attr:`handle` set).

        Args:
            error: What the run failed with; ``None`` if it did not fail.
            state: The state Celery gave ``task_postrun`` (``None`` if none).
            report: Where a fault of the SDK's is reported (never raised).
        """
        handle = self.handle
        assert handle is not None  # the caller ends only runs that started
        span = self.span
        if span is not None and isinstance(state, str):
            try:
                span.set_attribute("celery.state", state)
            except Exception as exc:  # noqa: BLE001 - an SDK fault is not the task's
                report("celery span", exc)
        if self.token is not None:
            _restore(self.token, self.attached)
        handle.end(error)


def _restore(token: object, attached: Context | None) -> None:
    """Make current again what was before the run's span, if that is ours to do.

    Only while our context is still the current one. Over another
    instrumentation's context, resetting ours would take that one away too
    while its handler has still to run, and its own detach would then put ours
    back all the same: leave it, and take it away at the next run (see
    :data:`_leftover`).
    """
    if otel_context.get_current() is attached:
        otel_context.detach(token)  # type: ignore[arg-type] # made by attach()
    else:
        _leftover.set((token, attached))


def take_back_leftover() -> None:
    """Undo a context left current by the previous run in this context, if any."""
    left = _leftover.get()
    if left is None:
        return
    _leftover.set(None)
    token, attached = left
    if otel_context.get_current() is attached:
        otel_context.detach(token)  # type: ignore[arg-type] # made by attach()
