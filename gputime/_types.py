"""The vocabulary every module shares: statuses, attributions, clocks, device selectors, errors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

#: The status of a figure: every reading arrived, some did not, or no GPU figure exists.
Status = Literal["ok", "partial", "unavailable"]

#: How busy time is shared between services running at once (docs/semantics.md).
Attribution = Literal["device", "split", "process"]
ATTRIBUTIONS: tuple[Attribution, ...] = ("device", "split", "process")

#: Monotonic seconds.
Clock = Callable[[], float]

#: A device by index or by id (NVML UUID, ``MIG-...``, ``SIM-n``).
DeviceSelector = int | str


class BackendUnavailable(RuntimeError):  # noqa: N818 - names the condition users catch
    """The requested backend cannot run here (no library, no driver, no device).

    The message says what is missing. ``backend="auto"`` catches it and falls
    back to the ``"none"`` backend with one warning; an explicit backend name
    lets it propagate from the :class:`~gputime.Tracker` constructor.
    """
