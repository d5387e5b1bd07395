"""The process tree of ``gputime run``'s child, found by walking ``/proc``.

NVML's per-process samples name processes by id. ``gputime run`` counts the
child and every descendant, including those that start (fork or exec) while it
runs, so it hands the NVML backend a :class:`ProcessTree`: a callable that
returns the ids found so far and looks again at most every ``min_rescan``
seconds.

What it finds is remembered for the whole run: a descendant that used the GPU
and exited before the next read still has samples in the driver's buffer under
its id. Remembered processes that are still alive are walked again, so a
grandchild whose parent exited (and which the kernel reparented away from the
tree) keeps its place, with its own later children. A remembered id whose
process start time changed belongs to another process now (the id was reused)
and is dropped.

Children are read from ``/proc/PID/task/TID/children`` (one small read per
thread of each process in the tree); where the kernel lacks that file
(``CONFIG_PROC_CHILDREN``), every process's ``stat`` is read once per scan
instead. Without ``/proc`` (not Linux) only the child itself is counted.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

__all__ = ["ProcessTree"]

#: A scan is at least this far (seconds) from the previous one.
DEFAULT_MIN_RESCAN = 0.05


class ProcessTree:
    """The descendants of one root process, found while they run; remembered.

    Args:
        root: The root process id, or ``None`` until it is known (set
            :attr:`root` once the child started).
        proc: Where procfs is mounted (tests point it at a directory tree).
        min_rescan: A call returns what the previous scan found if that scan is
            more recent than this many seconds.
        clock: Monotonic seconds, for ``min_rescan``.

    Thread-safe: the NVML backend calls it from the sampler thread while
    ``gputime run``'s main thread calls :meth:`refresh`.
    """

    def __init__(
        self,
        root: int | None = None,
        *,
        proc: str = "/proc",
        min_rescan: float = DEFAULT_MIN_RESCAN,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._root = root
        self._proc = proc
        self._min_rescan = min_rescan
        self._clock = clock
        self._lock = threading.Lock()
        #: Every process found, with its start time (``None``: unknown).
        self._known: dict[int, int | None] = {}
        self._scanned_at: float | None = None
        self._found: frozenset[int] = frozenset()
        self.children_files = os.path.exists(os.path.join(proc, "self", "task")) and any(
            os.path.exists(os.path.join(proc, "self", "task", tid, "children"))
            for tid in _listdir(os.path.join(proc, "self", "task"))
        )

    @property
    def root(self) -> int | None:
        """The root process id (the child of ``gputime run``)."""
        return self._root

    @root.setter
    def root(self, pid: int) -> None:
        with self._lock:
            self._root = pid
            self._scanned_at = None

    def __call__(self) -> frozenset[int]:
        """The ids found so far (the root included), after a scan if the last is stale."""
        with self._lock:
            now = self._clock()
            if self._scanned_at is None or now - self._scanned_at >= self._min_rescan:
                self._scan(now)
            return self._found

    def refresh(self) -> frozenset[int]:
        """Scan now, however recent the last scan; return what :meth:`__call__` would."""
        with self._lock:
            self._scan(self._clock())
            return self._found

    # -- scanning

    def _scan(self, now: float) -> None:
        self._scanned_at = now
        root = self._root
        if root is None:
            return
        parents = None if self.children_files else self._parent_map()
        walk = [root]
        starts: dict[int, int | None] = {}  # read once per scan
        for pid, remembered in list(self._known.items()):
            started = starts[pid] = self._start_time(pid)
            if started is None:
                continue  # gone: kept, its samples may still be unread
            if remembered is None or remembered != started:
                # The id names another process now (a gone process never
                # comes back): not ours, unless a process of ours started it.
                del self._known[pid]
            else:
                walk.append(pid)
        visited: set[int] = set()
        while walk:
            pid = walk.pop()
            if pid in visited:
                continue
            visited.add(pid)
            # Found from the root or from a live process of ours: ours.
            started = starts[pid] if pid in starts else self._start_time(pid)
            self._known[pid] = started
            if started is not None:
                walk.extend(self._children(pid) if parents is None else parents.get(pid, ()))
        self._found = frozenset(self._known)

    def _children(self, pid: int) -> list[int]:
        tasks = os.path.join(self._proc, str(pid), "task")
        children: list[int] = []
        for tid in _listdir(tasks):
            text = _read(os.path.join(tasks, tid, "children"))
            if text:
                children.extend(int(part) for part in text.split() if part.isdigit())
        return children

    def _parent_map(self) -> dict[int, list[int]]:
        """Every process's children, from every ``/proc/PID/stat`` (the slow way)."""
        children: dict[int, list[int]] = {}
        for entry in _listdir(self._proc):
            if not entry.isdigit():
                continue
            fields = _stat_fields(_read(os.path.join(self._proc, entry, "stat")))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry))
        return children

    def _start_time(self, pid: int) -> int | None:
        fields = _stat_fields(_read(os.path.join(self._proc, str(pid), "stat")))
        if fields is None or len(fields) < 20:
            return None
        return int(fields[19]) if fields[19].isdigit() else None


def _stat_fields(text: str | None) -> list[str] | None:
    """The fields of a ``stat`` line after the command name: state, ppid, ...

    The command name is in parentheses and may itself hold spaces and
    parentheses, so the fields start after the last ``)``. Index 1 is the
    parent's id, index 19 the start time (fields 4 and 22 of proc(5)).
    """
    if not text:
        return None
    _, sep, rest = text.rpartition(")")
    if not sep:
        return None
    fields = rest.split()
    if len(fields) < 2 or not fields[1].isdigit():
        return None
    return fields


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as file:
            return file.read()
    except OSError:
        return None
