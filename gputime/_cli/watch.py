"""``gputime watch``: a live table of the services a process exports through Prometheus.

Any process that exports gputime's metrics through a Prometheus endpoint can
be watched: typically one using ``opentelemetry-exporter-prometheus``, whose
endpoint is ``http://localhost:9464/metrics`` unless configured otherwise
(``OTEL_EXPORTER_PROMETHEUS_HOST`` / ``_PORT``). The exposition is parsed
with ``prometheus_client``'s text parser (the ``watch`` extra).

OpenTelemetry's Prometheus exporter names the metrics after the instrument, its
unit and its kind: ``gputime.gpu.busy_time`` (counter, s) becomes
``gputime_gpu_busy_time_seconds_total``, ``gputime.gpu.energy`` (J)
``gputime_gpu_energy_joules_total``, ``gputime.task.active``
``gputime_task_active`` and the histogram ``gputime.task.duration`` (s)
``gputime_task_duration_seconds_count`` (its count: the tasks that ended).
Older exporters leave out the unit or the ``_total``; both spellings are read.
Series that differ in other labels (a device, an error type, several
processes behind one endpoint) are summed per ``gputime_service``.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any, TextIO

from gputime._cli._common import (
    EXIT_MISSING_EXTRA,
    EXIT_OK,
    EXIT_UNREACHABLE,
    HelpFormatter,
    describe,
    error,
    positive_seconds,
)

NAME = "watch"
#: The OpenTelemetry Prometheus exporter's default endpoint.
DEFAULT_URL = "http://localhost:9464/metrics"
DEFAULT_INTERVAL = 2.0
#: Seconds to wait for the endpoint's answer.
FETCH_TIMEOUT = 5.0
#: The label OpenTelemetry's exporter makes of the ``gputime.service`` attribute.
SERVICE_LABEL = "gputime_service"

EPILOG = f"""\
examples:
  gputime watch                      # {DEFAULT_URL}, every {DEFAULT_INTERVAL:g} s
  gputime watch localhost:9100 --interval 1
  gputime watch http://10.0.0.5:9464/metrics --once   # one table, for scripts

columns: tasks ended, tasks active, GPU ms (busy time), GPU ms/s (over the last
interval: 1000 means one GPU busy all the time), util ms (utilisation-weighted),
energy in J where measured, and the service's state: running, idle, or restarted
(its counters went down: the exporting process started again).

needs the 'watch' extra: pip install 'gputime[watch]'. Exit status 3 without it,
4 when --once cannot read the endpoint.
"""

#: Sample names (every exporter version's spelling) -> the field they add to.
_FIELDS = (
    (re.compile(r"gputime_gpu_busy_time(_seconds)?(_total)?"), "busy_s"),
    (re.compile(r"gputime_gpu_util_time(_seconds)?(_total)?"), "util_s"),
    (re.compile(r"gputime_gpu_energy(_joules)?(_total)?"), "energy_j"),
    (re.compile(r"gputime_task_active"), "active"),
    (re.compile(r"gputime_task_duration(_seconds)?_count"), "tasks"),
)


class WatchError(Exception):
    """The endpoint could not be read, or did not answer in Prometheus's text format."""


@dataclass(frozen=True)
class ServiceRow:
    """One service's figures at one scrape (``None``: the endpoint has no such series)."""

    service: str
    tasks: float | None = None
    active: float | None = None
    busy_s: float | None = None
    util_s: float | None = None
    energy_j: float | None = None


@dataclass(frozen=True)
class Snapshot:
    """One scrape: when it was taken (monotonic seconds) and each service's row."""

    taken_at: float
    rows: dict[str, ServiceRow]


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """Add ``watch`` to the subcommands."""
    parser: argparse.ArgumentParser = commands.add_parser(
        NAME,
        help="a live table of the services a process exports through Prometheus",
        description=describe(
            "Show, refreshed every interval, the gputime services of a process "
            "that exports its metrics through a Prometheus endpoint (for example "
            "opentelemetry-exporter-prometheus)."
        ),
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "url",
        nargs="?",
        default=DEFAULT_URL,
        metavar="URL",
        help=f"the metrics endpoint, or HOST:PORT (default {DEFAULT_URL})",
    )
    parser.add_argument(
        "--interval",
        type=positive_seconds,
        default=DEFAULT_INTERVAL,
        metavar="S",
        help=f"seconds between refreshes (default {DEFAULT_INTERVAL:g})",
    )
    parser.add_argument("--once", action="store_true", help="print one table and exit")
    return parser


def normalise_url(text: str) -> str:
    """``HOST:PORT`` -> ``http://HOST:PORT/metrics``; an empty path becomes ``/metrics``.

    Raises:
        ValueError: Not an http(s) URL.
    """
    if "://" not in text:
        text = f"http://{text}"
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{text!r} is not an http(s) URL or HOST:PORT")
    if not parts.path:
        parts = parts._replace(path="/metrics")
    return urllib.parse.urlunsplit(parts)


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Show the table (once, or until Ctrl-C)."""
    try:
        url = normalise_url(args.url)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        import prometheus_client.parser  # noqa: F401, PLC0415 - an optional extra, checked here
    except ImportError:
        error(
            NAME,
            "needs the prometheus-client package: pip install 'gputime[watch]'",
        )
        return EXIT_MISSING_EXTRA
    if args.once:
        return _once(url)
    return _live(url, args.interval, sys.stdout)


def _once(url: str) -> int:
    try:
        snapshot = scrape(url)
    except WatchError as exc:
        error(NAME, str(exc))
        return EXIT_UNREACHABLE
    print(render(snapshot, None))
    if not snapshot.rows:
        error(NAME, f"no gputime services at {url} yet (no task has run there?)")
    return EXIT_OK


def _live(url: str, interval: float, out: TextIO) -> int:
    terminal = out.isatty()
    previous: Snapshot | None = None
    while True:
        try:
            snapshot: Snapshot | None = scrape(url)
            problem = ""
        except WatchError as exc:
            snapshot, problem = None, str(exc)
        header = (
            f"gputime watch {url}  every {interval:g} s  {time.strftime('%H:%M:%S')}"
            "  (Ctrl-C to quit)"
        )
        body = problem if snapshot is None else render(snapshot, previous)
        if snapshot is not None and not snapshot.rows:
            body += "\n(no gputime services yet)"
        # On a terminal the table is redrawn in place; elsewhere (a file, a
        # pipe) frames follow each other.
        frame = f"{header}\n{body}\n" if terminal else f"{header}\n{body}\n\n"
        out.write(("\x1b[H\x1b[2J" if terminal else "") + frame)
        out.flush()
        if snapshot is not None:
            previous = snapshot
        time.sleep(interval)


def fetch(url: str, timeout: float = FETCH_TIMEOUT) -> str:
    """The endpoint's text exposition.

    Raises:
        WatchError: Unreachable, an HTTP error, or no answer in time.
    """
    request = urllib.request.Request(
        url, headers={"Accept": "text/plain;version=0.0.4;q=1.0, */*;q=0.1"}
    )
    try:
        # http(s) only: normalise_url() turned every other scheme away.
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body: bytes = response.read()
            charset = response.headers.get_content_charset() or "utf-8"
    except urllib.error.HTTPError as exc:
        raise WatchError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        raise WatchError(f"cannot read {url}: {exc.reason}") from exc
    except TimeoutError as exc:
        raise WatchError(f"cannot read {url}: no answer within {timeout:g} s") from exc
    except OSError as exc:
        raise WatchError(f"cannot read {url}: {exc}") from exc
    return body.decode(charset, errors="replace")


def parse(text: str) -> dict[str, ServiceRow]:
    """Each service's figures in a Prometheus text exposition.

    Raises:
        WatchError: The text is not in Prometheus's text format.
    """
    from prometheus_client.parser import text_string_to_metric_families  # noqa: PLC0415 - extra

    sums: dict[str, dict[str, float]] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                service = sample.labels.get(SERVICE_LABEL)
                name = _field(sample.name)
                if service is None or name is None:
                    continue
                fields = sums.setdefault(service, {})
                fields[name] = fields.get(name, 0.0) + float(sample.value)
    except ValueError as exc:
        raise WatchError(f"not Prometheus's text format: {exc}") from exc
    return {service: ServiceRow(service, **fields) for service, fields in sums.items()}


def _field(sample_name: str) -> str | None:
    for pattern, name in _FIELDS:
        if pattern.fullmatch(sample_name):
            return name
    return None


def scrape(url: str) -> Snapshot:
    """Fetch and parse the endpoint once.

    Raises:
        WatchError: See :func:`fetch` and :func:`parse`.
    """
    text = fetch(url)
    return Snapshot(time.monotonic(), parse(text))


def rate(current: Snapshot, previous: Snapshot | None, service: str) -> float | None:
    """GPU ms per second of ``service`` between two scrapes (``None`` with no earlier one).

    A counter that went down started again from zero (its process
    restarted): as Prometheus's ``rate()`` does, all of its value counts as
    the increase.
    """
    if previous is None or service not in previous.rows:
        return None
    elapsed = current.taken_at - previous.taken_at
    now, before = current.rows[service].busy_s, previous.rows[service].busy_s
    if elapsed <= 0 or now is None or before is None:
        return None
    increase = now - before if now >= before else now
    return increase * 1000 / elapsed


def state(current: ServiceRow, previous: ServiceRow | None) -> str:
    """``running``, ``idle``, or ``restarted`` where a counter went down since the last scrape.

    gputime's ``reset()`` keeps the exported counters going up (it carries
    the totals it zeroed), so a counter that went down means the exporting
    process started again.
    """
    if previous is not None:
        for name in ("tasks", "busy_s", "util_s", "energy_j"):
            now, before = getattr(current, name), getattr(previous, name)
            if now is not None and before is not None and now < before:
                return "restarted"
    return "running" if current.active else "idle"


def render(snapshot: Snapshot, previous: Snapshot | None) -> str:
    """The table: one row per service, sorted by name."""
    width = max([16, *(len(service) for service in snapshot.rows)])
    header = (
        f"{'service':<{width}} {'tasks':>7} {'active':>6} {'GPU ms':>12} {'GPU ms/s':>9} "
        f"{'util ms':>12} {'energy J':>10}  state"
    )
    lines = [header, "-" * len(header)]
    # The histogram has a series once a task of the service ended: where
    # others have one, a service without is one with no task ended yet.
    counted = any(row.tasks is not None for row in snapshot.rows.values())
    for service in sorted(snapshot.rows):
        row = snapshot.rows[service]
        tasks = row.tasks if row.tasks is not None or not counted else 0.0
        before = previous.rows.get(service) if previous is not None else None
        per_second = rate(snapshot, previous, service)
        lines.append(
            f"{service:<{width}} {_number(tasks, 0):>7} {_number(row.active, 0):>6} "
            f"{_number(row.busy_s, 1, 1000):>12} {_number(per_second, 1):>9} "
            f"{_number(row.util_s, 1, 1000):>12} {_number(row.energy_j, 3):>10}  "
            f"{state(row, before)}"
        )
    return "\n".join(lines)


def _number(value: float | None, decimals: int, scale: float = 1.0) -> str:
    return "-" if value is None else f"{value * scale:.{decimals}f}"
