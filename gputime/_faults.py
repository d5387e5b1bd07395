"""One way to report a fault: on logger ``gputime``, once per kind.

Instrumentation never raises into user code, so every fault it meets is
logged instead, and logged once: a driver that fails on every read must not
flood the application's log. :data:`PROCESS` remembers the kinds logged by
the backends (an NVML warning is about the machine, not one tracker); each
tracker has a :class:`FaultLog` of its own. A forked child logs its own faults
afresh (see :mod:`gputime._fork`).

Nothing here may run inside a garbage collection or under a gputime lock:
logging takes the logging handlers' locks (see ``docs/design.md``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Hashable

from gputime import _fork

logger = logging.getLogger("gputime")


class OnceLog:
    """Logs each kind of message once (thread-safe)."""

    def __init__(self) -> None:
        self._seen: set[Hashable] = set()
        self._lock = threading.Lock()

    def first(self, kind: Hashable) -> bool:
        """True the first time ``kind`` is asked about, False every time after."""
        with self._lock:
            if kind in self._seen:
                return False
            self._seen.add(kind)
            return True

    def log(self, kind: Hashable, level: int, message: str, *args: object) -> None:
        """Log ``message % args`` at ``level``, the first time ``kind`` is logged."""
        if self.first(kind):
            logger.log(level, message, *args)

    def _after_fork_in_child(self) -> None:
        # The lock may have been held by a thread that does not exist in the
        # child, and the child's faults are its own.
        self._lock = threading.Lock()
        self._seen = set()


class FaultLog(OnceLog):
    """A tracker's faults: each kind and exception type logged once, at WARNING."""

    def report(self, kind: str, exc: BaseException, where: object = None) -> None:
        """Log that ``kind`` failed with ``exc`` (in ``where``), unless already logged."""
        if not self.first((kind, type(exc))):
            return
        logger.warning(
            "gputime: %s failed%s: %r (further %s faults of this type are not logged)",
            kind,
            f" in {where!r}" if where is not None else "",
            exc,
            kind,
            # A read's traceback says nothing the message does not: the driver failed.
            exc_info=exc if kind != "read" else None,
        )


#: What the backends logged (once per process).
PROCESS = OnceLog()
_fork.register(PROCESS)


def log_once(kind: Hashable, level: int, message: str, *args: object) -> None:
    """Log ``message % args`` at ``level`` once per process and ``kind``."""
    PROCESS.log(kind, level, message, *args)
