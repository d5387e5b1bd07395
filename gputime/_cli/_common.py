"""What every ``gputime`` command shares: exit codes, argument types, output files."""

from __future__ import annotations

import argparse
import math
import os
import sys
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

if TYPE_CHECKING:
    from gputime import Timeline, Tracker

#: The command did what it was asked.
EXIT_OK = 0
#: No GPU can be measured where the command needs one (``gputime devices``).
EXIT_NO_GPU = 1
#: Bad arguments (argparse's own code).
EXIT_USAGE = 2
#: An optional extra the command needs is not installed (``gputime[watch]``).
EXIT_MISSING_EXTRA = 3
#: The metrics endpoint could not be read (``gputime watch --once``).
EXIT_UNREACHABLE = 4
#: ``gputime run``: the command was found but could not be executed (as in shells).
EXIT_CANNOT_EXECUTE = 126
#: ``gputime run``: the command was not found (as in shells).
EXIT_NOT_FOUND = 127
#: Interrupted (Ctrl-C): 128 + SIGINT, as shells report it.
EXIT_INTERRUPTED = 130


def error(command: str, message: str) -> None:
    """Print ``gputime COMMAND: message`` on stderr."""
    print(f"gputime {command}: {message}", file=sys.stderr)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples in descriptions and epilogs as written."""


def describe(text: str, width: int = 80) -> str:
    """A description for :class:`HelpFormatter`, which does not wrap: wrapped here."""
    return textwrap.fill(" ".join(text.split()), width=width, break_on_hyphens=False)


def positive_seconds(text: str) -> float:
    """An argparse type: a finite number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be a number of seconds > 0")
    return value


def service_name(text: str) -> str:
    """An argparse type: a service name (not blank)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("a service name cannot be blank")
    return text


ResultT = TypeVar("ResultT")


@dataclass(frozen=True)
class Output(Generic[ResultT]):
    """A file a command writes at its end when its option is given.

    ``gputime run --json PATH`` is one, ``--trace PATH`` and ``--plot PATH``
    others: one ``write`` function and one entry in the command's ``OUTPUTS``.

    Attributes:
        option: The command-line option, such as ``"--json"``.
        help: Its help text.
        write: Writes the command's result to the path given.
        tracker_options: Keyword arguments the output needs on the command's
            ``Tracker`` (for example a timeline recorder switched on).
        requires: Raises ``ImportError``, with a message naming the extra to
            install, where an optional package the output needs is missing;
            checked before the command does any work.
    """

    option: str
    help: str
    write: Callable[[str, ResultT], None]
    tracker_options: Mapping[str, Any] = field(default_factory=dict)
    requires: Callable[[], object] | None = None

    @property
    def dest(self) -> str:
        """The argparse attribute that holds the path."""
        return self.option.lstrip("-").replace("-", "_")


def add_outputs(parser: argparse.ArgumentParser, outputs: Sequence[Output[Any]]) -> None:
    """Add each output's option (``--json PATH``) to ``parser``."""
    for output in outputs:
        parser.add_argument(output.option, metavar="PATH", dest=output.dest, help=output.help)


def requested(
    args: argparse.Namespace, outputs: Sequence[Output[ResultT]]
) -> list[Output[ResultT]]:
    """The outputs whose option was given."""
    return [output for output in outputs if getattr(args, output.dest, None) is not None]


def tracker_options(args: argparse.Namespace, outputs: Sequence[Output[Any]]) -> dict[str, Any]:
    """The ``Tracker`` keyword arguments the requested outputs need."""
    options: dict[str, Any] = {}
    for output in requested(args, outputs):
        options.update(output.tracker_options)
    return options


def check_outputs(
    parser: argparse.ArgumentParser, args: argparse.Namespace, outputs: Sequence[Output[Any]]
) -> None:
    """Fail as a usage error, before any work, where an output file cannot be written."""
    for output in requested(args, outputs):
        path = getattr(args, output.dest)
        folder = os.path.dirname(os.path.abspath(path))
        if os.path.isdir(path):
            parser.error(f"{output.option} {path}: is a directory")
        if not os.path.isdir(folder):
            parser.error(f"{output.option} {path}: no such directory {folder}")
        if not os.access(folder, os.W_OK):
            parser.error(f"{output.option} {path}: cannot write in {folder}")


def missing_extras(command: str, args: argparse.Namespace, outputs: Sequence[Output[Any]]) -> bool:
    """Whether an optional package a requested output needs is missing (said on stderr)."""
    missing = False
    for output in requested(args, outputs):
        if output.requires is None:
            continue
        try:
            output.requires()
        except ImportError as exc:
            error(command, f"{output.option}: {exc}")
            missing = True
    return missing


def write_outputs(
    command: str, args: argparse.Namespace, outputs: Sequence[Output[ResultT]], result: ResultT
) -> bool:
    """Write every requested output; a failure is reported on stderr, not raised.

    Returns:
        Whether every requested output was written.
    """
    ok = True
    for output in requested(args, outputs):
        path = getattr(args, output.dest)
        try:
            output.write(path, result)
        except OSError as exc:
            error(command, f"cannot write {output.option} {path}: {exc.strerror or exc}")
            ok = False
        except Exception as exc:  # noqa: BLE001 - one output failing must not lose the others
            error(command, f"cannot write {output.option} {path}: {exc!r}")
            ok = False
    return ok


# -- the timeline outputs (--trace, --plot) ---------------------------------------------


class TimelineResult(Protocol):
    """A command's result that outputs a timeline: its tracker and a title."""

    @property
    def tracker(self) -> Tracker | None:
        """The tracker that recorded the timeline, still open."""

    @property
    def title(self) -> str:
        """What the picture is of."""


def _timeline(result: TimelineResult) -> Timeline:
    tracker = result.tracker
    timeline = tracker.timeline if tracker is not None else None
    if timeline is None:  # pragma: no cover - the output's tracker_options ask for one
        raise RuntimeError("no timeline was recorded")
    return timeline


def _write_trace(path: str, result: TimelineResult) -> None:
    _timeline(result).write_trace(path)


def _write_plot(path: str, result: TimelineResult) -> None:
    _timeline(result).plot(path, title=result.title)


def _require_matplotlib() -> None:
    from gputime._plot import require_matplotlib  # noqa: PLC0415 - only --plot needs it

    require_matplotlib()


def trace_output() -> Output[Any]:
    """``--trace PATH``: the timeline as Chrome Trace Event / Perfetto JSON.

    For a command whose result is a :class:`TimelineResult`.
    """
    return Output(
        "--trace",
        "write a timeline to PATH as Chrome Trace Event / Perfetto JSON (open it in "
        "ui.perfetto.dev or chrome://tracing): a slice per task, utilisation per device",
        _write_trace,
        tracker_options={"timeline": True},
    )


def plot_output() -> Output[Any]:
    """``--plot PATH``: the timeline as a picture (the ``plot`` extra).

    For a command whose result is a :class:`TimelineResult`.
    """
    return Output(
        "--plot",
        "draw utilisation per device over time, each service's tasks beneath, as a PNG "
        "to PATH (needs the 'plot' extra: pip install 'gputime[plot]')",
        _write_plot,
        tracker_options={"timeline": True},
        requires=_require_matplotlib,
    )
