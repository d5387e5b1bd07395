"""The ``gputime`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from gputime._version import __version__


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gputime", description="How much GPU time each service's tasks really used."
    )
    parser.add_argument("--version", action="version", version=f"gputime {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo", help="run a small multi-service workload on a simulated GPU (no GPU needed)"
    )
    demo.add_argument(
        "--seconds", type=float, default=3.0, help="how long the workload runs (default 3)"
    )
    demo.add_argument("--seed", type=int, default=7, help="random seed of the workload")
    commands.add_parser(
        "devices", help="list the NVIDIA GPUs NVML sees and which calls gputime can use on them"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _build_parser().parse_args(argv)
    if args.command == "demo":
        from gputime._demo import run_demo  # noqa: PLC0415 - only the demo needs it

        if not 0 < args.seconds <= 3600:
            print("gputime demo: --seconds must be in (0, 3600]", file=sys.stderr)
            return 2
        print(f"gputime demo: 4 services on a simulated GPU for {args.seconds:g} s ...")
        run_demo(args.seconds, seed=args.seed)
        return 0
    return _devices()


def _devices() -> int:
    from gputime._backends import BackendUnavailable  # noqa: PLC0415 - keeps start-up light
    from gputime._backends._nvml import list_devices  # noqa: PLC0415 - loads NVML only here

    try:
        devices = list_devices()
    except BackendUnavailable as exc:
        print(f"gputime devices: no NVIDIA GPU can be measured: {exc}")
        return 1
    if not devices:
        print("gputime devices: NVML runs but sees no GPU")
        return 1
    for device in devices:
        period = f"{device.sample_period:.3f} s" if device.sample_period is not None else "unknown"
        mig = "  MIG enabled: utilisation unavailable" if device.mig_enabled else ""
        print(f"[{device.index}] {device.name}  {device.uuid}  sample period {period}{mig}")
        if device.error:
            print(f"    error: {device.error}")
        for call, state in device.calls.items():
            print(f"    {call:<45} {state}")
    return 0
