"""Where spans and metrics go: OpenTelemetry's providers, and whether anybody listens.

gputime goes through the OpenTelemetry *API* only; whatever SDK and exporters
the application set up (or none) decide where things land. A task must cost
next to nothing when no SDK listens, and must start being traced the moment one
is installed. The API keeps its global providers in private module attributes,
``None`` until set (they can be set only once): reading one is the cheapest
exact test for "has an SDK been installed since". Where an API has no such
attribute, :data:`UNKNOWN` sends every check to the public getters (slower,
still correct). Every read of the API's globals goes through this module's
:data:`trace_api` and :data:`metrics_internal` (the emitter reads them inline,
on every task start while no SDK is installed).

The metrics API costs a quarter of importing gputime, and a process that
imports gputime need not make a tracker: it is loaded by :func:`load_metrics`,
when the first tracker is made.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from opentelemetry import trace as trace_api

from gputime._version import __version__

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider

__all__ = [
    "SCOPE",
    "UNKNOWN",
    "VERSION",
    "global_meter_provider",
    "global_tracer_provider",
    "load_metrics",
    "metrics_api",
    "metrics_internal",
    "proxy_meter_provider",
    "trace_api",
]

#: Instrumentation scope name of the tracer and the meter.
SCOPE = "gputime"
VERSION = __version__

#: What a private name of the API reads as where the API has no such name.
UNKNOWN: Any = object()

#: The metrics API and its private module, once loaded (see :func:`load_metrics`).
metrics_api: Any = None
metrics_internal: Any = None


def load_metrics() -> Any:
    """The ``opentelemetry.metrics`` module, loaded on first use."""
    global metrics_api, metrics_internal
    if metrics_api is None:
        from opentelemetry import metrics  # noqa: PLC0415 - see the module docstring

        try:
            # Private: only the fast "is an SDK installed" check reads it; an
            # API without it takes the public getters instead.
            from opentelemetry.metrics import _internal  # noqa: PLC0415
        except ImportError:
            _internal = None  # type: ignore[assignment] # getattr(None, ..., UNKNOWN): the public path
        metrics_api, metrics_internal = metrics, _internal
    return metrics_api


def global_tracer_provider() -> TracerProvider | None:
    """The global tracer provider, ``None`` while none was set."""
    provider = trace_api.get_tracer_provider()
    return None if isinstance(provider, trace_api.ProxyTracerProvider) else provider


def global_meter_provider() -> MeterProvider | None:
    """The global meter provider, ``None`` while none was set."""
    metrics = load_metrics()
    if getattr(metrics_internal, "_METER_PROVIDER", UNKNOWN) is None:
        # Also loads a provider named by OTEL_PYTHON_METER_PROVIDER, if any.
        metrics.get_meter_provider()
    provider = getattr(metrics_internal, "_METER_PROVIDER", UNKNOWN)
    if provider is UNKNOWN:
        candidate = metrics.get_meter_provider()
        return None if type(candidate).__name__ == "_ProxyMeterProvider" else candidate
    return provider  # type: ignore[no-any-return] # checked above: a provider or None


def proxy_meter_provider() -> object:
    """The API's stand-in for the global meter provider (``UNKNOWN`` where it has none)."""
    load_metrics()
    return getattr(metrics_internal, "_PROXY_METER_PROVIDER", UNKNOWN)
