"""Checks of user input, each raising an error that names the argument and its value.

Bad input gets a clear error at the call that passed it; after construction,
instrumentation never raises into user code.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypeVar

from gputime._types import ATTRIBUTIONS, Attribution

T = TypeVar("T")


def is_real(value: object) -> bool:
    """An ``int`` or ``float`` that is not a ``bool`` (``True`` is no number of seconds)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def finite(
    name: str, value: object, *, positive: bool = False, minimum: float | None = None
) -> float:
    """``value`` as a float, if it is a finite number (above 0, or at least ``minimum``).

    Raises:
        ValueError: Naming ``name`` and ``value``.
    """
    if not is_real(value) or not math.isfinite(value):  # type: ignore[arg-type] # is_real checked it
        raise ValueError(f"{name}={value!r}: must be a finite number")
    number = float(value)  # type: ignore[arg-type] # is_real checked it
    if positive and number <= 0:
        raise ValueError(f"{name}={value!r}: must be a finite number > 0")
    if minimum is not None and number < minimum:
        raise ValueError(f"{name}={value!r}: must be a finite number >= {minimum:g}")
    return number


def count(name: str, value: object, *, minimum: int = 0) -> int:
    """``value`` if it is an ``int`` (not a ``bool``) of at least ``minimum``.

    Raises:
        ValueError: Naming ``name`` and ``value``.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name}={value!r}: must be {what}")
    return value


def service(value: object) -> str:
    """A service name: a non-blank string.

    Raises:
        TypeError: Not a string.
        ValueError: Empty or blank.
    """
    if not isinstance(value, str):
        raise TypeError(f"service must be a string, not {type(value).__name__}: {value!r}")
    if not value.strip():
        raise ValueError(f"service={value!r}: must not be empty or blank")
    return value


def attribution_(value: object) -> Attribution:
    """One of :data:`~gputime._types.ATTRIBUTIONS`.

    Raises:
        ValueError: Naming the value and the choices.
    """
    for known in ATTRIBUTIONS:
        if value == known:
            return known
    raise ValueError(f"attribution={value!r}: must be one of {', '.join(map(repr, ATTRIBUTIONS))}")


def tracker_options(
    interval: object, threshold: object, attribution: object, devices: object, clock: object
) -> tuple[float, float, Attribution]:
    """Checks of ``Tracker``'s keyword arguments; returns interval, threshold, attribution.

    Raises:
        ValueError: Naming the argument and its value.
    """
    interval = finite("interval", interval, positive=True)
    number = finite("threshold", threshold)
    if not 0 <= number < 100:
        raise ValueError(f"threshold={threshold!r}: must be in [0, 100)")
    if devices is not None and (
        isinstance(devices, (str, bytes)) or not isinstance(devices, Sequence)
    ):
        raise ValueError(f"devices={devices!r}: must be None or a list of indices or ids")
    if clock is not None and not callable(clock):
        raise ValueError(f"clock={clock!r}: must be a callable returning seconds")
    return interval, number, attribution_(attribution)


def callable_(name: str, value: T) -> T:
    """``value`` if it is callable.

    Raises:
        TypeError: Naming what it is instead.
    """
    if not callable(value):
        raise TypeError(f"{name} must be callable, not {type(value).__name__}")
    return value
