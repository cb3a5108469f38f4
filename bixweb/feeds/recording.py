"""The recording format: normalized feed events as JSON lines, optionally gzipped.

The first line is a header, every other line one flush window::

    {"format": "bixweb-recording", "version": 1, "created_ms": 1764160000000,
     "feed": "simulated://", "symbols": ["BTCUSDT", "ETHUSDT"]}
    {"t": 1764160000100, "events": [{"type": "trade", "symbol": "BTCUSDT", …}, …]}

``t`` is the window's market time: the latest time its events report (for a
window of :class:`~bixweb.model.History` alone, when it was recorded).
Replay paces windows by ``t`` and passes the events on unchanged, times
included. The event objects are listed in ``docs/feeds.md``.

Encoding and decoding are pure; :class:`RecordingReader` reads a file and
turns every fault into a :class:`~bixweb.errors.FeedError` naming the file
and line. A file is gzip when it starts with gzip's magic bytes, whatever
its name.
"""

from __future__ import annotations

import gzip
import math
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Final, cast

import orjson

from bixweb.errors import FeedError
from bixweb.model import (
    INTERVAL_LABELS,
    LABEL_INTERVALS,
    Book,
    Candle,
    CandleUpdate,
    History,
    MarketEvent,
    TickerStats,
    Trade,
    event_time,
)

FORMAT: Final = "bixweb-recording"
VERSION: Final = 1
GZIP_MAGIC: Final = b"\x1f\x8b"

Json = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Header:
    version: int
    created_ms: int
    feed: str
    symbols: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Window:
    """One flush window: its market time and its events."""

    t: int
    events: tuple[MarketEvent, ...]


def window_time(events: Sequence[MarketEvent]) -> int | None:
    """The market time of a window: the latest time its events report (None if none does)."""
    times = [t for t in map(event_time, events) if t is not None]
    return max(times) if times else None


# -- encoding -------------------------------------------------------------------


def _candle_fields(c: Candle) -> Json:
    return {
        "start": c.start,
        "open": c.open,
        "high": c.high,
        "low": c.low,
        "close": c.close,
        "volume": c.volume,
        "closed": c.closed,
    }


def encode_event(event: MarketEvent) -> Json:
    """One event as a JSON object tagged by ``type``."""
    if isinstance(event, Trade):
        return {
            "type": "trade",
            "symbol": event.symbol,
            "id": event.id,
            "price": event.price,
            "qty": event.qty,
            "side": event.side,
            "time": event.time,
        }
    if isinstance(event, Book):
        return {
            "type": "book",
            "symbol": event.symbol,
            "bids": [list(level) for level in event.bids],
            "asks": [list(level) for level in event.asks],
            "time": event.time,
        }
    if isinstance(event, History):
        return {
            "type": "history",
            "symbol": event.symbol,
            "minutes": [[c.start, c.open, c.high, c.low, c.close, c.volume] for c in event.minutes],
        }
    if isinstance(event, TickerStats):
        return {
            "type": "ticker_stats",
            "symbol": event.symbol,
            "price": event.price,
            "bid": event.bid,
            "ask": event.ask,
            "open": event.open,
            "high": event.high,
            "low": event.low,
            "volume": event.volume,
            "quote_volume": event.quote_volume,
            "time": event.time,
        }
    return {
        "type": "candle",
        "symbol": event.symbol,
        "interval": INTERVAL_LABELS[event.interval],
        **_candle_fields(event.candle),
        "time": event.time,
    }


def header_line(feed: str, symbols: Sequence[str], created_ms: int) -> bytes:
    return (
        orjson.dumps(
            {"format": FORMAT, "version": VERSION, "created_ms": created_ms, "feed": feed, "symbols": list(symbols)}
        )
        + b"\n"
    )


def window_line(t: int, events: Sequence[MarketEvent]) -> bytes:
    return orjson.dumps({"t": t, "events": [encode_event(e) for e in events]}) + b"\n"


# -- decoding: ValueError names what is wrong ---------------------------------------


def _get(obj: Mapping[str, Any], key: str) -> Any:
    if key not in obj:
        raise ValueError(f"{obj.get('type', 'the object')} without {key!r}")
    return obj[key]


def _number(obj: Mapping[str, Any], key: str) -> float:
    value = _get(obj, key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{key!r} is not a number of at least 0")
    return float(value)


def _int(obj: Mapping[str, Any], key: str, minimum: int = 0) -> int:
    value = _get(obj, key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{key!r} is not an integer of at least {minimum}")
    return value


def _str(obj: Mapping[str, Any], key: str) -> str:
    value = _get(obj, key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key!r} is not a string")
    return value


def _levels(obj: Mapping[str, Any], key: str) -> tuple[tuple[float, float], ...]:
    value = _get(obj, key)
    if not isinstance(value, list):
        raise ValueError(f"{key!r} is not a list")
    levels = []
    for level in value:
        if not isinstance(level, list) or len(level) != 2:
            raise ValueError(f"{key!r} holds a level that is not [price, qty]")
        levels.append((_number({"price": level[0]}, "price"), _number({"qty": level[1]}, "qty")))
    return tuple(levels)


def _candle(obj: Mapping[str, Any], closed: bool) -> Candle:
    return Candle(
        _int(obj, "start"),
        _number(obj, "open"),
        _number(obj, "high"),
        _number(obj, "low"),
        _number(obj, "close"),
        _number(obj, "volume"),
        closed,
    )


def _minute(row: Any) -> Candle:
    if not isinstance(row, list) or len(row) != 6:
        raise ValueError("a history minute is not [start, open, high, low, close, volume]")
    return _candle(dict(zip(("start", "open", "high", "low", "close", "volume"), row, strict=True)), True)


def decode_event(obj: Any) -> MarketEvent:
    """The event an object of :func:`encode_event` stands for; ValueError if it stands for none."""
    if not isinstance(obj, dict):
        raise ValueError("an event is not an object")
    kind, symbol = obj.get("type"), _str(obj, "symbol")
    if kind == "trade":
        side = _str(obj, "side")
        if side not in ("buy", "sell"):
            raise ValueError("'side' is neither buy nor sell")
        return Trade(
            symbol,
            _int(obj, "id", 1),
            _number(obj, "price"),
            _number(obj, "qty"),
            "buy" if side == "buy" else "sell",
            _int(obj, "time"),
        )
    if kind == "book":
        return Book(symbol, _levels(obj, "bids"), _levels(obj, "asks"), _int(obj, "time"))
    if kind == "history":
        minutes = _get(obj, "minutes")
        if not isinstance(minutes, list):
            raise ValueError("'minutes' is not a list")
        return History(symbol, tuple(_minute(row) for row in minutes))
    if kind == "ticker_stats":
        return TickerStats(
            symbol,
            price=_number(obj, "price"),
            bid=_number(obj, "bid"),
            ask=_number(obj, "ask"),
            open=_number(obj, "open"),
            high=_number(obj, "high"),
            low=_number(obj, "low"),
            volume=_number(obj, "volume"),
            quote_volume=_number(obj, "quote_volume"),
            time=_int(obj, "time"),
        )
    if kind == "candle":
        interval = LABEL_INTERVALS.get(_str(obj, "interval"))
        closed = _get(obj, "closed")
        if interval is None or not isinstance(closed, bool):
            raise ValueError("a candle without a known 'interval' or a boolean 'closed'")
        return CandleUpdate(symbol, interval, _candle(obj, closed), _int(obj, "time"))
    raise ValueError("an event of no known 'type'")


def parse_header(line: bytes) -> Header:
    """The header line; ValueError if this is no bixweb recording, or one of a later version."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        obj = None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise ValueError("not a bixweb recording (its first line is no recording header)")
    version = _int(obj, "version", 1)
    if version > VERSION:
        raise ValueError(f"recording format version {version}; this bixweb reads version {VERSION} and older")
    symbols = _get(obj, "symbols")
    if not isinstance(symbols, list) or not all(isinstance(s, str) for s in symbols):
        raise ValueError("'symbols' is not a list of symbols")
    return Header(version, _int(obj, "created_ms"), _str(obj, "feed"), tuple(symbols))


def parse_window(line: bytes) -> Window:
    """One window line; ValueError naming the fault."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise ValueError("not JSON") from None
    if not isinstance(obj, dict):
        raise ValueError("not a window object")
    events = _get(obj, "events")
    if not isinstance(events, list):
        raise ValueError("'events' is not a list")
    return Window(_int(obj, "t"), tuple(decode_event(e) for e in events))


# -- files ----------------------------------------------------------------------------------


def open_for_writing(path: Path, *, compress: bool) -> BinaryIO:
    """A new recording file, gzip when ``compress``."""
    if compress:
        return cast(BinaryIO, gzip.open(path, "wb", compresslevel=6))
    return path.open("wb")


_READ_ERRORS: Final = (OSError, EOFError, zlib.error)


class RecordingReader:
    """Reads one recording: its header, then its windows; faults become :class:`FeedError`.

    A last line cut short (a recorder killed mid-write) ends the windows
    early, with :attr:`truncated` set; a bad line before that is an error.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.line = 0
        self.truncated = False
        try:
            self._raw = path.open("rb")
        except OSError as exc:
            raise FeedError(f"cannot read the recording {path}: {exc.strerror or exc}") from None
        self.size = max(1, path.stat().st_size)
        self._stream: BinaryIO = self._raw
        if self._raw.read(2) == GZIP_MAGIC:
            self._raw.seek(0)
            self._stream = cast(BinaryIO, gzip.GzipFile(fileobj=self._raw, mode="rb"))
        else:
            self._raw.seek(0)
        self.header = self._header()

    def close(self) -> None:
        self._stream.close()
        self._raw.close()

    def __enter__(self) -> RecordingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def fraction(self) -> float:
        """How much of the file has been read, 0 to 1."""
        return min(1.0, self._raw.tell() / self.size)

    def _error(self, reason: str) -> FeedError:
        return FeedError(f"the recording {self.path}, line {self.line}: {reason}")

    def _next_line(self) -> bytes | None:
        try:
            line = self._stream.readline()
        except _READ_ERRORS as exc:
            if isinstance(exc, EOFError):
                self.truncated = True  # a gzip stream cut short: what came before stands
                return None
            raise self._error(f"unreadable ({type(exc).__name__}: {exc})") from None
        if not line:
            return None
        self.line += 1
        if not line.endswith(b"\n"):
            self.truncated = True
            return None
        return line

    def _header(self) -> Header:
        line = self._next_line()
        if line is None:
            self.line = max(self.line, 1)
            raise self._error("empty or cut short before its header: not a bixweb recording")
        try:
            return parse_header(line)
        except ValueError as exc:
            raise self._error(str(exc)) from None

    def windows(self) -> Iterator[Window]:
        """The windows after the header, in order."""
        while (line := self._next_line()) is not None:
            if not line.strip():
                continue
            try:
                yield parse_window(line)
            except ValueError as exc:
                raise self._error(str(exc)) from None
