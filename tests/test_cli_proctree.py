"""``gputime run``'s process tree: descendants found in ``/proc``, remembered, never adopted.

Most tests lay out a procfs of their own in a temporary directory (``stat`` files
and ``task/TID/children`` lists), so that exits, orphans and reused ids happen
exactly when the test says; one test walks the real ``/proc``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gputime._cli._proctree import ProcessTree, _stat_fields
from gputime.testing import FakeClock


class FakeProc:
    """A procfs in a directory: processes with a parent, a start time and threads."""

    def __init__(self, root: Path, *, children_files: bool = True) -> None:
        self.root = root
        self.children_files = children_files
        self.parents: dict[int, int] = {}
        (root / "self" / "task" / "1").mkdir(parents=True)
        if children_files:
            (root / "self" / "task" / "1" / "children").write_text("")

    def start(self, pid: int, parent: int, started: int = 100, comm: str = "python") -> None:
        folder = self.root / str(pid)
        (folder / "task" / str(pid)).mkdir(parents=True, exist_ok=True)
        # Fields after the name: state, ppid, then 17 more up to the start time (22nd).
        rest = ["S", str(parent), *["0"] * 17, str(started), "0", "0"]
        (folder / "stat").write_text(f"{pid} ({comm}) {' '.join(rest)}\n")
        self.parents[pid] = parent
        self._write_children()

    def exit(self, pid: int) -> None:
        for path in sorted((self.root / str(pid)).rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
        (self.root / str(pid)).rmdir()
        del self.parents[pid]
        # The kernel hands orphans to init.
        for child, parent in self.parents.items():
            if parent == pid:
                self.reparent(child, 1)
        self._write_children()

    def reparent(self, pid: int, parent: int) -> None:
        stat = self.root / str(pid) / "stat"
        name, _, rest = stat.read_text().rpartition(")")
        fields = rest.split()
        fields[1] = str(parent)
        stat.write_text(f"{name}) {' '.join(fields)}\n")
        self.parents[pid] = parent
        self._write_children()

    def thread(self, pid: int, tid: int) -> None:
        (self.root / str(pid) / "task" / str(tid)).mkdir(parents=True)
        self._write_children()

    def fork_from_thread(self, pid: int, tid: int, child: int) -> None:
        """``child`` forked by thread ``tid`` of ``pid``: listed under that thread."""
        self.start(child, pid)
        (self.root / str(pid) / "task" / str(pid) / "children").write_text(
            " ".join(str(c) for c, p in self.parents.items() if p == pid and c != child)
        )
        (self.root / str(pid) / "task" / str(tid) / "children").write_text(f"{child} ")

    def _write_children(self) -> None:
        if not self.children_files:
            return
        for pid in self.parents:
            task = self.root / str(pid) / "task" / str(pid)
            kids = [c for c, p in self.parents.items() if p == pid]
            task.mkdir(parents=True, exist_ok=True)
            (task / "children").write_text("".join(f"{c} " for c in kids))


@pytest.fixture(params=[True, False], ids=["children-files", "stat-scan"])
def proc(request: pytest.FixtureRequest, tmp_path: Path) -> FakeProc:
    return FakeProc(tmp_path, children_files=request.param)


def tree_of(proc: FakeProc, root: int | None = 10) -> ProcessTree:
    tree = ProcessTree(root, proc=str(proc.root), min_rescan=0)
    assert tree.children_files is proc.children_files
    return tree


def test_descendants_are_found_as_they_start(proc: FakeProc):
    proc.start(10, 1)
    proc.start(99, 1)  # not ours
    tree = tree_of(proc)
    assert tree() == {10}
    proc.start(11, 10)
    proc.start(12, 11)
    assert tree() == {10, 11, 12}


def test_nothing_before_the_root_is_known(proc: FakeProc):
    proc.start(10, 1)
    tree = tree_of(proc, root=None)
    assert tree() == frozenset()
    tree.root = 10
    assert tree.root == 10
    assert tree() == {10}


def test_a_descendant_that_exited_is_remembered(proc: FakeProc):
    """Its samples may still be in the driver's buffer, under its id."""
    proc.start(10, 1)
    proc.start(11, 10)
    tree = tree_of(proc)
    assert tree() == {10, 11}
    proc.exit(11)
    assert tree() == {10, 11}


def test_an_orphan_seen_before_keeps_its_place_with_its_children(proc: FakeProc):
    proc.start(10, 1)
    proc.start(11, 10)
    proc.start(12, 11)
    tree = tree_of(proc)
    assert tree() == {10, 11, 12}
    proc.exit(11)  # 12 goes to init
    assert proc.parents[12] == 1
    proc.start(13, 12)
    assert tree() == {10, 11, 12, 13}


def test_a_reused_id_is_dropped(proc: FakeProc):
    proc.start(10, 1)
    proc.start(11, 10, started=100)
    tree = tree_of(proc)
    assert tree() == {10, 11}
    proc.exit(11)
    proc.start(11, 1, started=500)  # another process, elsewhere, with the same id
    proc.start(14, 11)
    assert tree() == {10}


def test_a_reused_id_inside_the_tree_is_ours(proc: FakeProc):
    proc.start(10, 1)
    proc.start(11, 10, started=100)
    tree = tree_of(proc)
    assert tree() == {10, 11}
    proc.exit(11)
    proc.start(11, 10, started=500)  # the root started another child with that id
    assert tree() == {10, 11}


def test_an_id_first_seen_gone_then_alive_is_someone_elses(tmp_path: Path):
    """Listed by its parent, gone before its ``stat`` was read (children files only)."""
    proc = FakeProc(tmp_path)
    proc.start(10, 1)
    proc.start(11, 10)
    (proc.root / "11" / "stat").unlink()  # it exits between the two reads
    tree = tree_of(proc)
    assert tree() == {10, 11}
    proc.exit(11)
    proc.start(11, 1)
    assert tree() == {10}


def test_children_of_every_thread(tmp_path: Path):
    proc = FakeProc(tmp_path)
    proc.start(10, 1)
    proc.thread(10, 20)
    proc.fork_from_thread(10, 20, 11)
    assert tree_of(proc)() == {10, 11}


def test_scans_are_spaced(proc: FakeProc):
    clock = FakeClock()
    proc.start(10, 1)
    tree = ProcessTree(10, proc=str(proc.root), min_rescan=0.05, clock=clock)
    assert tree() == {10}
    proc.start(11, 10)
    assert tree() == {10}  # the previous scan is recent
    clock.advance(0.05)
    assert tree() == {10, 11}
    proc.start(12, 10)
    assert tree.refresh() == {10, 11, 12}  # however recent


def test_without_proc_only_the_root_counts(tmp_path: Path):
    tree = ProcessTree(10, proc=str(tmp_path / "nothing"))
    assert not tree.children_files
    assert tree() == {10}


@pytest.mark.parametrize(
    ("text", "parent", "started"),
    [
        ("7 (python) S 3 " + "0 " * 17 + "123 0", "3", "123"),
        ("7 (a) b (c)) S 4 " + "0 " * 17 + "9", "4", "9"),  # a name with ") ("
    ],
)
def test_stat_fields_after_the_name(text: str, parent: str, started: str):
    fields = _stat_fields(text)
    assert fields is not None
    assert fields[1] == parent
    assert fields[19] == started


@pytest.mark.parametrize("text", [None, "", "no parenthesis", "7 (x) S", "7 (x) S ?"])
def test_malformed_stat_lines_are_ignored(text: str | None):
    assert _stat_fields(text) is None


def test_a_short_stat_line_has_no_start_time(tmp_path: Path):
    FakeProc(tmp_path)  # a procfs with children files
    (tmp_path / "10").mkdir()
    (tmp_path / "10" / "stat").write_text("10 (x) S 1 0 0\n")
    assert ProcessTree(10, proc=str(tmp_path))() == {10}  # kept, never walked


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux's /proc")
def test_the_real_proc():
    script = "import subprocess, sys; subprocess.run([sys.executable, '-c', 'input()'])"
    with subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE) as child:
        tree = ProcessTree(child.pid, min_rescan=0)
        try:
            found: frozenset[int] = frozenset()
            for _ in range(200):  # until the grandchild started (bounded)
                found = tree()
                if len(found) == 2:
                    break
                subprocess.run([sys.executable, "-c", "pass"], check=True)
            assert child.pid in found
            assert len(found) == 2
            assert os.getpid() not in found
        finally:
            assert child.stdin is not None
            child.stdin.close()
