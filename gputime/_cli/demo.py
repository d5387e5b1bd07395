"""``gputime demo``: the simulated multi-service workload, with progress on a terminal."""

from __future__ import annotations

import argparse
import io
import signal
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any

from gputime._cli._common import (
    EXIT_INTERRUPTED,
    EXIT_MISSING_EXTRA,
    EXIT_OK,
    HelpFormatter,
    Output,
    add_outputs,
    check_outputs,
    describe,
    missing_extras,
    plot_output,
    trace_output,
    tracker_options,
    write_outputs,
)
from gputime._cli._progress import Progress

if TYPE_CHECKING:
    from gputime import ServiceStats, Tracker

NAME = "demo"
MAX_SECONDS = 3600.0

EPILOG = """\
examples:
  gputime demo                       # 3 s, prints a table of the four services
  gputime demo --seconds 60 --seed 3 # longer; progress on the terminal (stderr)
  gputime demo --trace demo.json     # then open demo.json in ui.perfetto.dev
  gputime demo --plot demo.png       # a picture (pip install 'gputime[plot]')
"""


@dataclass(frozen=True)
class DemoResult:
    """What the demo's output files are written from.

    Attributes:
        stats: The final per-service figures.
        tracker: The demo's tracker, still open while outputs are written.
        title: What a picture of it is titled.
    """

    stats: Mapping[str, ServiceStats]
    tracker: Tracker
    title: str = "gputime demo"


#: Files ``gputime demo`` can write: its timeline as a trace and as a picture.
OUTPUTS: tuple[Output[DemoResult], ...] = (trace_output(), plot_output())


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """Add ``demo`` to the subcommands."""
    parser: argparse.ArgumentParser = commands.add_parser(
        NAME,
        help="run a small multi-service workload on a simulated GPU (no GPU needed)",
        description=describe(
            "Four services (nmt, tts, yourtts, rust) share one simulated GPU; "
            "prints each service's tasks and GPU milliseconds."
        ),
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=3.0,
        help=f"how long the workload runs, at most {MAX_SECONDS:g} (default 3)",
    )
    parser.add_argument("--seed", type=int, default=7, help="random seed of the workload")
    add_outputs(parser, OUTPUTS)
    return parser


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run the demo; Ctrl-C ends it at once with exit status 130."""
    from gputime._demo import run_demo  # noqa: PLC0415 - only the demo needs the workload

    if not 0 < args.seconds <= MAX_SECONDS:
        parser.error(f"--seconds must be in (0, {MAX_SECONDS:g}], not {args.seconds:g}")
    check_outputs(parser, args, OUTPUTS)
    if missing_extras(NAME, args, OUTPUTS):
        return EXIT_MISSING_EXTRA
    print(f"gputime demo: 4 services on a simulated GPU for {args.seconds:g} s ...", flush=True)
    stop = threading.Event()
    interrupted: list[int] = []

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        # Ends the workload at once; no KeyboardInterrupt lands in the middle
        # of the tracker or the worker threads.
        interrupted.append(signum)
        stop.set()

    progress = Progress(args.seconds, sys.stderr)

    def show(elapsed: float, stats: Mapping[str, ServiceStats]) -> None:
        tasks = sum(s.task_count for s in stats.values())
        progress.update(elapsed, f"{tasks} tasks")

    def finish(tracker: Tracker, stats: dict[str, ServiceStats]) -> None:
        progress.close()  # before any message about an output file
        title = f"gputime demo --seconds {args.seconds:g} --seed {args.seed}"
        write_outputs(NAME, args, OUTPUTS, DemoResult(stats, tracker, title))

    # The table waits until the progress line is erased: both share the terminal.
    table = io.StringIO()
    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        run_demo(
            args.seconds,
            seed=args.seed,
            out=table,
            stop=stop,
            progress=show if progress.enabled else None,
            tracker_options=tracker_options(args, OUTPUTS),
            finish=finish,
        )
    finally:
        progress.close()
        signal.signal(signal.SIGINT, previous)
    if interrupted:
        print("gputime demo: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    sys.stdout.write(table.getvalue())
    return EXIT_OK
