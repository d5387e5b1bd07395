"""A one-line progress display for long commands, on a terminal only."""

from __future__ import annotations

from typing import TextIO

#: Characters of the bar between the brackets.
BAR_WIDTH = 24


class Progress:
    """Redraws one line (``\\r``) on ``stream`` while work runs.

    Draws nothing unless ``stream`` is a terminal: piped or redirected output
    (logs, CI, ``| tee``) gets no carriage returns or partial lines.

    Args:
        total: The expected length of the work, in seconds.
        stream: Where to draw (stderr, so that stdout stays the command's result).
    """

    def __init__(self, total: float, stream: TextIO) -> None:
        self.total = total
        self.stream = stream
        self.enabled = _isatty(stream)
        self._width = 0

    def update(self, done: float, note: str = "") -> None:
        """Show ``done`` seconds of ``total``, with a short note after the bar."""
        if not self.enabled:
            return
        fraction = min(1.0, max(0.0, done / self.total)) if self.total > 0 else 1.0
        filled = round(fraction * BAR_WIDTH)
        line = (
            f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {fraction:4.0%} "
            f"{done:.1f}/{self.total:g} s"
        )
        if note:
            line += f"  {note}"
        # Pad over the previous line's tail, which may have been longer.
        padded = line.ljust(self._width)
        self._width = len(line)
        self.stream.write(f"\r{padded}")
        self.stream.flush()

    def close(self) -> None:
        """Erase the line, so that what follows starts on a clean line."""
        if self.enabled and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
