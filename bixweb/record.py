"""``python -m bixweb record``: write a feed's normalized events to a file, for ``replay://``.

Every flush window the feed yields becomes one JSON line (the format is in
:mod:`bixweb.feeds.recording` and ``docs/feeds.md``), gzip when the file
ends in ``.gz`` or with ``--gzip``. ``--duration`` counts market time, the
span of the windows' times (with a feed that falls silent, the clock ends it
a little later): on a live feed the two are the same; the simulated
market on its own clock (``--feed 'simulated://?speed=max'``) records a
stretch of market in a fraction of the time. Without ``--duration`` it
records until Ctrl-C; the file is complete either way.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

from bixweb import values
from bixweb.config import CommandParser, add_options, settings_from
from bixweb.errors import BixwebError, ConfigError
from bixweb.feeds import Feed, open_feed
from bixweb.feeds.progress import TerminalProgress, terminal_progress
from bixweb.feeds.recording import header_line, open_for_writing, window_line, window_time
from bixweb.logs import configure as configure_logging
from bixweb.logs import event
from bixweb.model import MarketEvent

log = logging.getLogger("bixweb.record")

FLUSH_EVERY: Final = 1.0
"""Seconds between flushes of the file, so a reader (or a crash) finds whole lines."""
SILENCE_SLACK: Final = 2.0
"""Seconds the clock may run past ``--duration`` before a feed that fell silent ends the recording."""


@dataclass(slots=True)
class Summary:
    windows: int = 0
    events: int = 0
    first_ms: int | None = None
    last_ms: int | None = None

    @property
    def span_s(self) -> float:
        if self.first_ms is None or self.last_ms is None:
            return 0.0
        return (self.last_ms - self.first_ms) / 1000.0


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def finished(summary: Summary, duration: float | None, wall_elapsed: float) -> bool:
    """Whether a recording of ``duration`` seconds is complete: its market time spans it, or the
    clock (since the first window) has run past it, for a feed that fell silent."""
    return duration is not None and (summary.span_s >= duration or wall_elapsed >= duration + SILENCE_SLACK)


async def _closing(feed: Feed) -> AsyncGenerator[list[MarketEvent], None]:
    events = feed.events()
    try:
        async for window in events:
            yield window
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()


async def record(
    feed: Feed,
    out: BinaryIO,
    *,
    duration: float | None,
    progress: TerminalProgress | None = None,
    summary: Summary | None = None,
) -> Summary:
    """Write the windows of ``feed`` to ``out`` (after its header) until ``duration`` is done:
    until the windows' market times span it (or, should the feed fall silent, the clock has).

    ``summary``, if given, is kept up to date as windows are written (it
    survives a Ctrl-C that interrupts this).
    """
    summary = summary if summary is not None else Summary()
    loop = asyncio.get_running_loop()
    began: float | None = None
    flushed = loop.time()
    stream = _closing(feed)
    try:
        async for events in stream:
            began = loop.time() if began is None else began
            reported = window_time(events)
            # A window reporting no time (a history) is stamped with the clock; the span counts market time.
            t = reported if reported is not None else max(wall_ms(), summary.last_ms or 0)
            out.write(window_line(t, events))
            summary.windows += 1
            summary.events += len(events)
            if reported is not None:
                summary.first_ms = reported if summary.first_ms is None else summary.first_ms
                summary.last_ms = max(reported, summary.last_ms or reported)
            now = loop.time()
            if now - flushed >= FLUSH_EVERY:
                out.flush()
                flushed = now
            if progress is not None:
                fraction = None if duration is None else summary.span_s / duration
                progress.update(fraction, f"{summary.span_s:.1f} s of market, {summary.events} events")
            if finished(summary, duration, now - began):
                break
    finally:
        await stream.aclose()
        if progress is not None:
            progress.update(1.0 if duration else None, f"{summary.span_s:.1f} s, {summary.events} events", force=True)
            progress.close()
    return summary


RECORD_OPTIONS: Final = frozenset({"feed", "symbols", "seed", "tick_rate", "book_depth", "log_level", "log_format"})
"""The server options a recording reads (and their ``BIXWEB_*`` variables)."""


def duration(text: str) -> float:
    """``--duration``: a finite number (main refuses one not above 0), in one line that says so."""
    try:
        return values.number(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="bixweb record",
        description="Record a feed's normalized events as JSON lines, to play back with --feed replay://FILE. "
        "--feed 'simulated://?speed=max' records simulated market time without waiting. "
        "Options also come from their BIXWEB_* variables, as for the server.",
    )
    recording = parser.add_argument_group("recording", "what is written, and for how long")
    recording.add_argument("--out", required=True, metavar="FILE", help="file to write (gzip if it ends in .gz)")
    recording.add_argument(
        "--duration", type=duration, metavar="S", help="seconds of market time to record (default: until Ctrl-C)"
    )
    recording.add_argument("--gzip", action="store_true", help="compress even if FILE does not end in .gz")
    add_options(parser, RECORD_OPTIONS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    try:
        settings = settings_from(args, os.environ, RECORD_OPTIONS)
        if args.duration is not None and not args.duration > 0:
            raise ConfigError("--duration: not above 0 seconds")
        configure_logging(settings.log_level, settings.log_format)
        feed = open_feed(
            settings.feed,
            symbols=settings.symbols,
            seed=settings.seed,
            tick_rate=settings.tick_rate,
            book_depth=settings.book_depth,
        )
        try:
            file = open_for_writing(out, compress=args.gzip or out.name.endswith(".gz"))
        except OSError as exc:
            raise ConfigError(f"--out: cannot write {out}: {exc.strerror or exc}") from None
        with file:
            file.write(header_line(settings.feed.split("?")[0], settings.symbols, wall_ms()))
            summary = Summary()
            try:
                asyncio.run(
                    record(feed, file, duration=args.duration, progress=terminal_progress("record"), summary=summary)
                )
            except KeyboardInterrupt:
                print("bixweb record: stopped; the file holds what came before", file=sys.stderr)
    except BixwebError as exc:
        print(f"bixweb: {exc}", file=sys.stderr)
        return 2
    event(
        log,
        logging.INFO,
        "recorded",
        file=out,
        windows=summary.windows,
        events=summary.events,
        market_s=round(summary.span_s, 3),
    )
    return 0
