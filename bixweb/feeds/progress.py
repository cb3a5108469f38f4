"""A one-line progress bar for ``record`` and ``replay://`` when run at a terminal.

:func:`progress_line` is pure; :class:`TerminalProgress` redraws it on a
stream a few times a second, and :func:`terminal_progress` gives one only
when stderr is a terminal, so logs and pipes never see it.
"""

from __future__ import annotations

import sys
import time
from typing import Final, TextIO

BAR_WIDTH: Final = 30
REDRAW_EVERY: Final = 0.1


def progress_line(label: str, fraction: float | None, detail: str, width: int = BAR_WIDTH) -> str:
    """``record [#########.........]  31%  detail``; without a fraction, no bar."""
    if fraction is None:
        return f"{label}  {detail}"
    fraction = min(max(fraction, 0.0), 1.0)
    filled = int(fraction * width)
    return f"{label} [{'#' * filled}{'.' * (width - filled)}] {fraction * 100:3.0f}%  {detail}"


class TerminalProgress:
    """Redraws one line in place (carriage return), at most every :data:`REDRAW_EVERY` seconds."""

    def __init__(self, stream: TextIO, label: str) -> None:
        self.stream = stream
        self.label = label
        self._drawn = 0.0
        self._width = 0

    def update(self, fraction: float | None, detail: str, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._drawn < REDRAW_EVERY:
            return
        self._drawn = now
        line = progress_line(self.label, fraction, detail)
        self.stream.write("\r" + line.ljust(self._width))
        self.stream.flush()
        self._width = len(line)

    def close(self) -> None:
        """End the line, so what follows starts on its own."""
        if self._width:
            self.stream.write("\n")
            self.stream.flush()
            self._width = 0


def terminal_progress(label: str, stream: TextIO | None = None) -> TerminalProgress | None:
    """A progress bar on ``stream`` (stderr) if it is a terminal, else None."""
    stream = stream or sys.stderr
    try:
        interactive = stream.isatty()
    except (AttributeError, ValueError):
        interactive = False
    return TerminalProgress(stream, label) if interactive else None
