"""``gputime run``: one command's GPU time, measured like ``time`` measures CPU time.

The command runs as a child process, as one task of the service. By default
only the GPU use of the child and its descendants counts (``attribution
"process"``, from NVML's per-process samples); where that cannot work the
whole GPU is counted instead, with a warning. The command always runs, with or
without a GPU: measurement problems end up in the summary, never in the exit
status, which is the command's own. What was measured, and how it is shown (the
summary, ``--json``), is :mod:`gputime._cli._run_result`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from types import FrameType
from typing import TYPE_CHECKING, Any

from gputime import BackendUnavailable, Tracker
from gputime._cli._common import (
    EXIT_CANNOT_EXECUTE,
    EXIT_MISSING_EXTRA,
    EXIT_NOT_FOUND,
    HelpFormatter,
    Output,
    add_outputs,
    check_outputs,
    describe,
    error,
    missing_extras,
    plot_output,
    positive_seconds,
    service_name,
    trace_output,
    tracker_options,
    write_outputs,
)
from gputime._cli._proctree import ProcessTree
from gputime._cli._run_result import RunResult, device_figures, summary, write_json

if TYPE_CHECKING:
    from gputime._backends import Attribution, Backend

NAME = "run"
ATTRIBUTIONS = ("process", "device", "split")
DEFAULT_INTERVAL = 0.5
#: How often the main thread looks for new descendants while the command runs.
TREE_TICK = 0.1
#: The inode of the kernel's initial PID namespace (PROC_PID_INIT_INO).
_INIT_PID_NS = "pid:[4026531836]"

EPILOG = """\
examples:
  gputime run -s nmt -- python translate.py --batch 64
  gputime run -s train --json run.json -- torchrun --nproc-per-node 2 train.py
  gputime run -s nmt --attribution device -- ./serve-once.sh
  gputime run -s nmt --trace run.json -- python translate.py   # open in ui.perfetto.dev

The summary goes to stderr. The exit status is the command's: 128+N when signal N
ended it, 127 when it was not found, 126 when it could not be executed. SIGTERM sent
to gputime is passed on to the command, and SIGINT too unless the terminal already
sent it there (Ctrl-C reaches both when they share the terminal's process group).
"""


#: Files ``gputime run`` can write. ``--plot`` is an extension beyond the
#: fixed command-line interface, which has it for ``demo`` only (docs/cli.md).
OUTPUTS: tuple[Output[RunResult], ...] = (
    Output("--json", "write the figures as JSON to PATH", write_json),
    trace_output(),
    plot_output(),
)


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """Add ``run`` to the subcommands."""
    parser: argparse.ArgumentParser = commands.add_parser(
        NAME,
        help="run a command as one task of a service and print its GPU time (like time)",
        usage="gputime run -s SERVICE [options] -- CMD [ARGS...]",
        description=describe(
            "Run CMD as one task of SERVICE and print its GPU time on stderr: wall "
            "time, GPU-busy and utilisation-weighted milliseconds, energy, status and coverage, "
            "per device. By default only the GPU use of CMD and its descendants counts "
            "(NVML per-process samples)."
        ),
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "-s", "--service", required=True, type=service_name, help="the service the task belongs to"
    )
    parser.add_argument(
        "--attribution",
        choices=ATTRIBUTIONS,
        help="whose GPU use counts: 'process' (CMD and its descendants; the default, falling "
        "back to 'device' with a warning where the driver cannot tell processes apart), "
        "'device' (the whole GPU) or 'split' (as 'device' for one task)",
    )
    parser.add_argument(
        "--interval",
        type=positive_seconds,
        default=DEFAULT_INTERVAL,
        metavar="S",
        help=f"seconds between reads of the driver (default {DEFAULT_INTERVAL:g})",
    )
    add_outputs(parser, OUTPUTS)
    parser.add_argument("command", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def nvml_backend(child_pids: Callable[[], Iterable[int]]) -> Backend:
    """The NVML backend counting ``child_pids`` with this process (tests replace it).

    Raises:
        BackendUnavailable: No NVML library, driver or GPU.
    """
    from gputime._backends.nvml import NvmlBackend  # noqa: PLC0415 - loads NVML only here

    return NvmlBackend(child_pids=child_pids)


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run the command, print the summary, write the outputs; the command's exit status."""
    command: list[str] = list(args.command)
    if not command:
        parser.error("no command given: gputime run -s SERVICE -- CMD [ARGS...]")
    check_outputs(parser, args, OUTPUTS)
    if missing_extras(NAME, args, OUTPUTS):
        return EXIT_MISSING_EXTRA  # before the command runs: it would run unrecorded
    tree = ProcessTree()
    tracker, attribution, notes = open_tracker(args, tree, tracker_options(args, OUTPUTS))
    try:
        for note in notes:
            error(NAME, f"warning: {note}")
        result = _measure(args.service, command, tracker, tree, attribution, notes)
        print(summary(result), file=sys.stderr)
        write_outputs(NAME, args, OUTPUTS, result)
        return result.exit_code
    finally:
        tracker.close()


def open_tracker(
    args: argparse.Namespace, tree: ProcessTree, options: Mapping[str, Any]
) -> tuple[Tracker, Attribution | None, list[str]]:
    """The tracker for the command, the attribution it measures with, and warnings.

    Never raises for want of a GPU: without one (or where measuring fails to
    start) the tracker measures nothing and the attribution is ``None``.
    """
    notes: list[str] = []
    try:
        tracker, attribution = _measuring_tracker(args, tree, options, notes)
    except _UnmeasuredError as exc:
        notes.append(f"GPU figures unavailable: {exc}")
        return Tracker("none", **options), None, notes
    return tracker, attribution, notes


class _UnmeasuredError(Exception):
    """Why the command runs without GPU figures."""


def _measuring_tracker(
    args: argparse.Namespace, tree: ProcessTree, options: Mapping[str, Any], notes: list[str]
) -> tuple[Tracker, Attribution]:
    try:
        backend = nvml_backend(tree)
    except BackendUnavailable as exc:
        raise _UnmeasuredError(str(exc)) from exc
    except Exception as exc:
        raise _UnmeasuredError(f"NVML failed to start: {exc!r}") from exc
    explicit: Attribution | None = args.attribution
    attribution: Attribution = explicit or "process"
    if explicit is None and own_pid_namespace():
        attribution = "device"
        notes.append(
            "gputime runs in its own PID namespace (a container?), where NVML's process ids "
            "are not this system's: counting the whole GPU (attribution 'device'); "
            "--attribution process insists"
        )
    try:
        try:
            tracker = Tracker(backend, attribution=attribution, interval=args.interval, **options)
        except ValueError as exc:
            if explicit is not None:
                # An explicit choice is honoured: no figures rather than other figures.
                raise _UnmeasuredError(str(exc)) from exc
            notes.append(f"{exc}; counting the whole GPU instead (attribution 'device')")
            attribution = "device"
            tracker = Tracker(backend, attribution=attribution, interval=args.interval, **options)
    except _UnmeasuredError:
        raise
    except Exception as exc:
        raise _UnmeasuredError(f"NVML failed to start: {exc!r}") from exc
    if not tracker.devices:
        tracker.close()
        raise _UnmeasuredError("no GPU is visible to this process (CUDA_VISIBLE_DEVICES?)")
    return tracker, attribution


def own_pid_namespace(link: str = "/proc/self/ns/pid") -> bool:
    """Whether this process runs in a PID namespace of its own (a container's).

    NVML reports the host's process ids, so there per-process samples never
    match the command's. False where it cannot be told (no ``/proc``).
    """
    try:
        return os.readlink(link) != _INIT_PID_NS
    except OSError:
        return False


def _measure(
    service: str,
    command: list[str],
    tracker: Tracker,
    tree: ProcessTree,
    attribution: Attribution | None,
    notes: list[str],
) -> RunResult:
    forwarder = _Forwarder()
    # Python sets signal handlers from the main thread only; elsewhere (an
    # embedding application) the command gets the signals its group gets.
    main_thread = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, forwarder) for sig in _FORWARDED if main_thread}
    try:
        with tracker.gpu_task(service) as task:
            started = time.monotonic()
            exit_code = _run_child(command, forwarder, tree if attribution == "process" else None)
            wall_s = time.monotonic() - started
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    figures = task.figures
    return RunResult(
        service=service,
        command=command,
        exit_code=exit_code,
        wall_s=wall_s,
        gpu_ms=figures.gpu_ms,
        gpu_util_ms=figures.gpu_util_ms,
        energy_mj=figures.energy_mj,
        status=figures.status,
        coverage=figures.coverage,
        devices=device_figures(task, tracker),
        attribution=attribution,
        notes=notes,
        tracker=tracker,
    )


def _run_child(command: list[str], forwarder: _Forwarder, tree: ProcessTree | None) -> int:
    try:
        child = subprocess.Popen(command)
    except FileNotFoundError:
        error(NAME, f"{command[0]}: command not found")
        return EXIT_NOT_FOUND
    except OSError as exc:  # not executable, not a valid executable, ...
        error(NAME, f"{command[0]}: cannot execute: {exc.strerror or exc}")
        return EXIT_CANNOT_EXECUTE
    if tree is not None:
        tree.root = child.pid
    forwarder.attach(child)
    if tree is None or not tree.children_files:
        # Without cheap child lists, descendants are looked for at the driver
        # reads only (every --interval).
        returncode = child.wait()
    else:
        # Short-lived descendants are caught between driver reads too.
        while True:
            try:
                returncode = child.wait(timeout=TREE_TICK)
                break
            except subprocess.TimeoutExpired:
                tree.refresh()
    return returncode if returncode >= 0 else 128 - returncode


#: Signals passed on to the command.
_FORWARDED = (signal.SIGINT, signal.SIGTERM)


class _Forwarder:
    """The signal handler of ``gputime run``: passes SIGINT and SIGTERM on to the child."""

    def __init__(self) -> None:
        self.child: subprocess.Popen[bytes] | None = None
        self.pending: list[int] = []

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.child is None:
            self.pending.append(signum)  # the child gets it as soon as it exists
        else:
            self.forward(self.child, signum)

    def attach(self, child: subprocess.Popen[bytes]) -> None:
        self.child = child
        for signum in self.pending:
            self.forward(child, signum)
        self.pending.clear()

    @staticmethod
    def forward(child: subprocess.Popen[bytes], signum: int) -> None:
        if signum == signal.SIGINT and terminal_reached(child.pid):
            return  # Ctrl-C: the terminal sent it to the child already
        # The child may have been reaped in between.
        with contextlib.suppress(OSError):
            child.send_signal(signum)


def terminal_reached(child_pid: int, tty: str = "/dev/tty") -> bool:
    """Whether a SIGINT to gputime came from the terminal and reached the child too.

    The terminal sends Ctrl-C to its whole foreground process group: when
    gputime leads that group and the child is still in it, the child has its
    own SIGINT, and a second one would interrupt its clean-up.
    """
    try:
        fd = os.open(tty, os.O_RDONLY | os.O_NOCTTY)
    except OSError:
        return False  # no controlling terminal: the signal came from kill()
    try:
        group = os.getpgrp()
        return os.tcgetpgrp(fd) == group and os.getpgid(child_pid) == group
    except OSError:
        return False
    finally:
        os.close(fd)
