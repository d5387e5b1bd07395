"""``gputime devices``: what NVML sees, and which of gputime's NVML calls work there."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from gputime import BackendUnavailable
from gputime._cli._common import EXIT_NO_GPU, EXIT_OK, HelpFormatter, describe, error
from gputime._version import __version__

NAME = "devices"

EPILOG = """\
examples:
  gputime devices                    # one block per GPU: sample period, clock, NVML calls
  gputime devices --json | jq '.devices[].uuid'

exit status: 0 when NVML sees at least one GPU, 1 when no GPU can be measured
(no driver, no NVML library, or NVML sees none; the reason goes to stderr).
"""


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """Add ``devices`` to the subcommands."""
    parser: argparse.ArgumentParser = commands.add_parser(
        NAME,
        help="list the NVIDIA GPUs NVML sees and which calls gputime can use on them",
        description=describe(
            "List the NVIDIA GPUs NVML sees: UUID, name, MIG mode, the driver's "
            "utilisation sample period and the clock it stamps samples with, and for each NVML "
            "call gputime uses whether the driver supports it."
        ),
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object (machine-readable)"
    )
    return parser


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """List the devices; exit status 1 where no GPU can be measured."""
    from gputime._backends.nvml import list_devices  # noqa: PLC0415 - loads NVML only here

    try:
        devices = list_devices()
    except BackendUnavailable as exc:
        error(NAME, f"no NVIDIA GPU can be measured: {exc}")
        return EXIT_NO_GPU
    if not devices:
        error(NAME, "NVML runs but sees no GPU")
        return EXIT_NO_GPU
    if args.json:
        document = {
            "gputime_version": __version__,
            "devices": [
                {
                    "index": device.index,
                    "uuid": device.uuid,
                    "name": device.name,
                    "mig_enabled": device.mig_enabled,
                    "sample_period": device.sample_period,
                    "timestamp_base": device.timestamp_base,
                    "calls": dict(device.calls),
                    "error": device.error,
                }
                for device in devices
            ],
        }
        json.dump(document, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return EXIT_OK
    for device in devices:
        period = f"{device.sample_period:.3f} s" if device.sample_period is not None else "unknown"
        base = _BASES.get(device.timestamp_base or "", "unknown (no sample buffered)")
        mig = "  MIG enabled: utilisation unavailable" if device.mig_enabled else ""
        print(f"[{device.index}] {device.name}  {device.uuid}{mig}")
        if device.error:
            print(f"    error: {device.error}")
            continue
        print(f"    sample period   {period}")
        print(f"    timestamps      {base}")
        for call, state in device.calls.items():
            print(f"    {call:<45} {state}")
    return EXIT_OK


#: How ``gputime devices`` names the clocks NVML may stamp samples with.
_BASES = {
    "wall": "wall clock (CLOCK_REALTIME, as documented)",
    "boottime": "time since boot (CLOCK_BOOTTIME)",
    "monotonic": "CLOCK_MONOTONIC",
}
