"""The OpenTelemetry emitter: spans for tasks, metrics for services (placeholder)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider

    from gputime._tracker import TaskHandle, Tracker


class Emitter:
    """Turns task starts and ends into spans and service totals into metrics."""

    def __init__(
        self,
        tracker: Tracker,
        tracer_provider: TracerProvider | None,
        meter_provider: MeterProvider | None,
    ) -> None:
        self._tracker = tracker

    def task_started(self, handle: TaskHandle, activate: bool) -> None:
        """A task began; with ``activate`` its span becomes current until it ends."""

    def task_ended(self, handle: TaskHandle, exc: BaseException | None) -> None:
        """A task ended (figures final); ``exc`` is what it raised, if anything."""

    def activate(self, handle: TaskHandle) -> object:
        """Make the task's span current (generators: around each resume)."""
        return None

    def deactivate(self, token: object) -> None:
        """Undo :meth:`activate`."""
