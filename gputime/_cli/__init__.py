"""The ``gputime`` command line: ``run``, ``watch``, ``devices``, ``demo``.

One module per command, each with ``NAME``, ``add_parser(subcommands)`` and
``run(args, parser) -> exit status``. Conventions shared by all: results on
stdout, everything else (errors, warnings, progress, ``run``'s summary) on
stderr; gputime's own failures exit 1 (no GPU where one is required), 2 (usage),
3 (an optional extra missing), 4 (a metrics endpoint unreadable), 130 (interrupted).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import ModuleType

from gputime._cli import demo, devices, run, watch
from gputime._cli._common import EXIT_INTERRUPTED, EXIT_USAGE, HelpFormatter, error
from gputime._version import __version__

__all__ = ["main"]

#: The subcommands, in the order ``--help`` lists them.
COMMANDS: tuple[ModuleType, ...] = (run, watch, devices, demo)

EPILOG = """\
examples:
  gputime run -s nmt -- python translate.py    # one command's GPU time, like time
  gputime watch localhost:9464                 # live table of a process's services
  gputime devices --json                       # what NVML sees, machine-readable
  gputime demo --seconds 10                    # a simulated workload, no GPU needed

exit status: gputime run exits with the command's status. gputime's own failures:
1 no GPU where one is required, 2 usage error, 3 an optional extra is missing,
4 a metrics endpoint cannot be read, 130 interrupted (Ctrl-C).
"""


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser and each subcommand's parser, by name."""
    parser = argparse.ArgumentParser(
        prog="gputime",
        description="How much GPU time each service's tasks really used.",
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("-V", "--version", action="version", version=f"gputime {__version__}")
    commands = parser.add_subparsers(dest="subcommand", required=True, metavar="COMMAND")
    parsers = {module.NAME: module.add_parser(commands) for module in COMMANDS}
    return parser, parsers


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    parser, parsers = build_parser()
    try:
        args = _parse(parser, parsers, arguments)
        command = next(module for module in COMMANDS if args.subcommand == module.NAME)
        with _warnings_to_stderr():
            status: int = command.run(args, parsers[args.subcommand])
            return status
    except SystemExit as exc:  # argparse: --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    except KeyboardInterrupt:
        error(arguments[0] if arguments else "", "interrupted")
        return EXIT_INTERRUPTED


def _parse(
    parser: argparse.ArgumentParser,
    parsers: dict[str, argparse.ArgumentParser],
    arguments: list[str],
) -> argparse.Namespace:
    """Parse, with ``run``'s command taken as given and usage errors from the subcommand.

    ``gputime run -s nmt -- CMD ...``: everything after the first ``--`` is the
    command, untouched, whatever argparse version would make of a ``--`` or
    of options in it. A ``--`` that comes after the command started belongs
    to the command.
    """
    if "--" in arguments:
        split = arguments.index("--")
        args, extras = parser.parse_known_args(arguments[:split])
        if args.subcommand == run.NAME and not args.command:
            _no_extras(parsers[args.subcommand], extras)
            args.command = arguments[split + 1 :]
            return args
    args, extras = parser.parse_known_args(arguments)
    _no_extras(parsers[args.subcommand], extras)
    return args


def _no_extras(parser: argparse.ArgumentParser, extras: list[str]) -> None:
    # argparse reports a subcommand's unknown options from the top-level parser,
    # with the top-level usage; the subcommand's usage says what it takes.
    if extras:
        parser.error(f"unrecognized arguments: {' '.join(extras)}")


@contextmanager
def _warnings_to_stderr() -> Iterator[None]:
    """gputime's log warnings (NVML faults, fallbacks) on stderr while a command runs."""
    logger = logging.getLogger("gputime")
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
