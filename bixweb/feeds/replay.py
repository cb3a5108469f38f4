"""``replay://FILE?speed=…``: a recording played back through the service.

Each window's events go out as recorded, times included, so one recording
always gives the same trades, in the same order, with the same ids and
``seq``. Only the pace is chosen: ``speed=1`` (the default) keeps the
recorded gaps between windows, ``speed=10`` divides them by ten,
``speed=max`` does not wait at all. At the end of the recording the feed
ends, and the app reports it ``stale`` once ``--stale-after`` has passed.

The file is opened and its header and first window checked when the feed
is made, so a missing, corrupt or empty recording stops the start-up with a
:class:`~bixweb.errors.FeedError`; a line that turns out bad later stops
the feed with one (the app then reports it ``down``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from urllib.parse import unquote, urlsplit

from bixweb.errors import ConfigError, FeedError
from bixweb.feeds.progress import TerminalProgress, terminal_progress
from bixweb.feeds.recording import Header, RecordingReader
from bixweb.feeds.urls import speed_option, url_options
from bixweb.logs import event
from bixweb.model import MarketEvent

log = logging.getLogger("bixweb.feeds.replay")


def replay_path(url: str) -> Path:
    """The file a ``replay://`` URL names: ``replay://rec.jsonl.gz``, ``replay:///abs/rec.jsonl``."""
    parts = urlsplit(url)
    path = unquote(parts.netloc + parts.path)
    if not path:
        raise ConfigError("replay:// needs a file: replay://FILE?speed=10")
    return Path(path)


def delay_before(t_ms: int, first_ms: int, speed: float | None, elapsed_s: float) -> float:
    """Seconds to wait before the window of market time ``t_ms``, ``elapsed_s`` into a replay
    that began at ``first_ms``; never negative."""
    if speed is None:
        return 0.0
    return max(0.0, (t_ms - first_ms) / 1000.0 / speed - elapsed_s)


class ReplayFeed:
    """Plays a recording (see the module docstring)."""

    def __init__(self, path: Path, *, speed: float | None = 1.0, progress: TerminalProgress | None = None) -> None:
        self.path = path
        self.speed = speed
        self.progress = progress
        with RecordingReader(path) as reader:
            self.header: Header = reader.header
            if next(reader.windows(), None) is None:
                cut = " (it is cut short before its first)" if reader.truncated else ""
                raise FeedError(f"the recording {path} holds no window of events{cut}")

    async def events(self) -> AsyncIterator[list[MarketEvent]]:
        loop = asyncio.get_running_loop()
        began = loop.time()
        first: int | None = None
        latest = 0
        windows = 0
        shown = "max" if self.speed is None else f"{self.speed:g}x"
        with RecordingReader(self.path) as reader:
            try:
                for window in reader.windows():
                    latest = max(latest, window.t)  # a clock that stepped back does not make replay wait
                    if first is None:
                        first = latest
                    await asyncio.sleep(delay_before(latest, first, self.speed, loop.time() - began))
                    windows += 1
                    if self.progress is not None:
                        self.progress.update(reader.fraction, f"{(latest - first) / 1000:.1f} s of market at {shown}")
                    yield list(window.events)
            finally:
                if self.progress is not None:
                    self.progress.update(reader.fraction, f"{windows} windows", force=True)
                    self.progress.close()
            if reader.truncated:
                event(
                    log,
                    logging.WARNING,
                    "replay_cut_short",
                    file=self.path,
                    line=reader.line,
                    action="replayed what came before",
                )
        event(log, logging.INFO, "replay_over", file=self.path, windows=windows)


def open_replay(url: str, *, symbols: Sequence[str]) -> ReplayFeed:
    """The feed for a ``replay://`` URL; the recording must carry some of ``symbols``."""
    options = url_options(url, {"speed"})
    speed = speed_option(options.get("speed", "1"))
    path = replay_path(url)
    feed = ReplayFeed(path, speed=speed, progress=terminal_progress("replay"))
    carried = [s for s in feed.header.symbols if s in symbols]
    if not carried:
        raise ConfigError(
            f"the recording {path} carries {', '.join(feed.header.symbols) or 'no symbols'}; "
            f"--symbols names none of them"
        )
    left_out = [s for s in symbols if s not in feed.header.symbols]
    if left_out:
        event(
            log,
            logging.INFO,
            "replay_symbols_missing",
            file=path,
            count=len(left_out),
            symbols=",".join(left_out),
            action="they stay empty",
        )
    return feed
