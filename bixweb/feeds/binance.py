"""Binance spot market streams → bixweb's market events.

Only Binance's formats live here (the sockets are :mod:`bixweb.feeds.exchange`'s).
One combined-stream connection carries, for every symbol (lower case),
``<symbol>@ticker`` (24 h rolling statistics, every second),
``<symbol>@trade`` (each trade), ``<symbol>@depth20@100ms`` (the top 20
levels, every 100 ms) and ``<symbol>@kline_1m`` (the forming one-minute
candle, every 2 s). Each frame is ``{"stream": "<name>", "data": {…}}``;
prices and quantities are decimal strings; a partial-depth payload has no
symbol, so it is taken from the stream name. Binance does not refuse a
symbol it does not list: that stream stays silent.

Feed URL: ``binance://`` (``wss://stream.binance.com:9443``), options
``url=`` (another upstream with the same format, e.g. a test exchange),
``rotate=``, ``silence=`` and ``flush=`` in seconds (:class:`ConnectionOptions`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, Final
from urllib.parse import urlsplit

import orjson

from bixweb.errors import ConfigError
from bixweb.feeds.adapter import MalformedFrame, Parsed
from bixweb.feeds.exchange import ConnectionOptions, ExchangeFeed
from bixweb.feeds.urls import seconds, url_options
from bixweb.model import LABEL_INTERVALS, Book, Candle, CandleUpdate, Side, TickerStats, Trade

DEFAULT_URL: Final = "wss://stream.binance.com:9443"
CHANNELS: Final = ("ticker", "trade", "depth20@100ms", "kline_1m")
MAX_STREAMS: Final = 1024
"""Streams one Binance connection may carry."""
MAX_SYMBOLS: Final = MAX_STREAMS // len(CHANNELS)

_DECIMAL: Final = re.compile(r"[0-9]{1,24}(\.[0-9]{1,24})?")
_SYMBOL: Final = re.compile(r"[A-Z0-9]{2,20}")


def stream_names(symbols: Sequence[str]) -> list[str]:
    """The combined-stream names for ``symbols``: four per symbol, lower case."""
    return [f"{symbol.lower()}@{channel}" for symbol in symbols for channel in CHANNELS]


# -- fields: each check names the field, never the value -----------------------


def _field(data: Mapping[str, Any], key: str, what: str) -> Any:
    try:
        return data[key]
    except KeyError:
        raise MalformedFrame(f"{what} without {key!r}") from None


def _decimal(data: Mapping[str, Any], key: str, what: str) -> float:
    value = _field(data, key, what)
    if not isinstance(value, str) or not _DECIMAL.fullmatch(value):
        raise MalformedFrame(f"{what} {key!r} is not a decimal string")
    return float(value)


def _integer(data: Mapping[str, Any], key: str, what: str, minimum: int = 0) -> int:
    value = _field(data, key, what)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise MalformedFrame(f"{what} {key!r} is not an integer of at least {minimum}")
    return value


def _flag(data: Mapping[str, Any], key: str, what: str) -> bool:
    value = _field(data, key, what)
    if not isinstance(value, bool):
        raise MalformedFrame(f"{what} {key!r} is not a boolean")
    return value


def _symbol(text: Any, what: str) -> str:
    if not isinstance(text, str) or not _SYMBOL.fullmatch(text):
        raise MalformedFrame(f"{what} names no symbol")
    return text


def _event(data: Mapping[str, Any], expected: str) -> None:
    if data.get("e") != expected:
        raise MalformedFrame(f"a {expected} stream sent another event type")


def _levels(data: Mapping[str, Any], key: str, depth: int) -> tuple[tuple[float, float], ...]:
    levels = _field(data, key, "depth")
    if not isinstance(levels, list):
        raise MalformedFrame(f"depth {key!r} is not a list")
    out = []
    for level in levels[:depth]:
        if not isinstance(level, list) or len(level) < 2:
            raise MalformedFrame(f"depth {key!r} holds a level that is not [price, quantity]")
        out.append((_decimal({"p": level[0]}, "p", f"depth {key}"), _decimal({"q": level[1]}, "q", f"depth {key}")))
    return tuple(out)


# -- one mapping per stream --------------------------------------------------------


def ticker_stats(data: Mapping[str, Any]) -> TickerStats:
    """A ``24hrTicker`` event → the exchange's 24 h statistics."""
    _event(data, "24hrTicker")
    what = "ticker"
    return TickerStats(
        symbol=_symbol(data.get("s"), what),
        price=_decimal(data, "c", what),
        bid=_decimal(data, "b", what),
        ask=_decimal(data, "a", what),
        open=_decimal(data, "o", what),
        high=_decimal(data, "h", what),
        low=_decimal(data, "l", what),
        volume=_decimal(data, "v", what),
        quote_volume=_decimal(data, "q", what),
        time=_integer(data, "E", what),
    )


def trade(data: Mapping[str, Any]) -> Trade:
    """A ``trade`` event → a trade; the taker sold when the buyer was the maker (``m``)."""
    _event(data, "trade")
    what = "trade"
    side: Side = "sell" if _flag(data, "m", what) else "buy"
    return Trade(
        symbol=_symbol(data.get("s"), what),
        id=_integer(data, "t", what, minimum=1),
        price=_decimal(data, "p", what),
        qty=_decimal(data, "q", what),
        side=side,
        time=_integer(data, "T", what),
    )


def book(symbol: str, data: Mapping[str, Any], received_ms: int, depth: int) -> Book:
    """A partial-depth payload (no symbol, no time of its own) → the top ``depth`` levels per side."""
    _integer(data, "lastUpdateId", "depth")
    return Book(symbol, _levels(data, "bids", depth), _levels(data, "asks", depth), received_ms)


def candle_update(data: Mapping[str, Any]) -> CandleUpdate:
    """A ``kline`` event → the exchange's candle of its interval."""
    _event(data, "kline")
    k = _field(data, "k", "kline")
    if not isinstance(k, dict):
        raise MalformedFrame("kline 'k' is not an object")
    symbol = _symbol(data.get("s"), "kline")
    if k.get("s", symbol) != symbol:
        raise MalformedFrame("kline names two symbols")
    interval = LABEL_INTERVALS.get(k.get("i"))  # type: ignore[arg-type]
    if interval is None:
        raise MalformedFrame("kline of an interval bixweb does not carry")
    what = "kline"
    candle = Candle(
        start=_integer(k, "t", what),
        open=_decimal(k, "o", what),
        high=_decimal(k, "h", what),
        low=_decimal(k, "l", what),
        close=_decimal(k, "c", what),
        volume=_decimal(k, "v", what),
        closed=_flag(k, "x", what),
    )
    if candle.start % interval.value:
        raise MalformedFrame("kline 't' is not the start of its interval")
    return CandleUpdate(symbol, interval, candle, _integer(data, "E", what))


def _announces_shutdown(obj: Mapping[str, Any]) -> bool:
    # Binance announces a server shutdown before closing; where the event sits
    # differs between its APIs, so look in each place.
    for part in (obj, obj.get("event"), obj.get("data")):
        if isinstance(part, dict) and part.get("e") == "serverShutdown":
            return True
    return False


def parse_frame(frame: str | bytes, received_ms: int, depth: int) -> Parsed:
    """One combined-stream frame → its events (see the module docstring)."""
    try:
        obj = orjson.loads(frame)
    except orjson.JSONDecodeError:
        raise MalformedFrame("not JSON") from None
    if not isinstance(obj, dict):
        raise MalformedFrame("not a JSON object")
    if _announces_shutdown(obj):
        return Parsed(reconnect=True)
    stream, data = obj.get("stream"), obj.get("data")
    if stream is None and "id" in obj and "result" in obj:
        return Parsed()  # the answer to a request (bixweb sends none, but it is harmless)
    if not isinstance(stream, str) or not isinstance(data, dict):
        raise MalformedFrame("not a combined-stream frame {stream, data}")
    name, _, channel = stream.partition("@")
    if channel == "ticker":
        return Parsed((ticker_stats(data),))
    if channel == "trade":
        return Parsed((trade(data),))
    if channel.startswith("depth"):
        return Parsed((book(_symbol(name.upper(), "the depth stream"), data, received_ms, depth),))
    if channel.startswith("kline_"):
        return Parsed((candle_update(data),))
    raise MalformedFrame("a stream bixweb did not ask for")


class BinanceAdapter:
    """Binance's combined spot streams (see the module docstring)."""

    name = "binance"

    def __init__(self, base_url: str = DEFAULT_URL, *, book_depth: int = 10) -> None:
        self.base_url = base_url.rstrip("/")
        self.book_depth = book_depth

    def connect_url(self, symbols: Sequence[str]) -> str:
        return f"{self.base_url}/stream?streams={'/'.join(stream_names(symbols))}"

    def subscribe_frames(self, symbols: Sequence[str]) -> list[str]:
        return []  # the URL names the streams

    def parse(self, frame: str | bytes, received_ms: int) -> Parsed:
        return parse_frame(frame, received_ms, self.book_depth)


URL_OPTIONS: Final = {"url", "rotate", "silence", "flush"}


def open_binance(url: str, *, symbols: Sequence[str], book_depth: int) -> ExchangeFeed:
    """The feed for a ``binance://`` URL; :class:`ConfigError` for what will not work."""
    parts = urlsplit(url)
    if parts.netloc or parts.path:
        raise ConfigError(f"{url!r}: binance:// takes no host or path; another upstream goes in ?url=ws://…")
    options = url_options(url, URL_OPTIONS)
    base = options.get("url", DEFAULT_URL)
    if urlsplit(base).scheme not in ("ws", "wss") or not urlsplit(base).netloc:
        raise ConfigError(f"binance:// url={base!r} is not a ws:// or wss:// address")
    if len(symbols) > MAX_SYMBOLS:
        raise ConfigError(f"binance:// carries at most {MAX_SYMBOLS} symbols on its one connection, not {len(symbols)}")
    changes = {
        field: seconds(option, options[option], zero=option == "flush")
        for option, field in (("rotate", "rotate_after"), ("silence", "silence"), ("flush", "flush"))
        if option in options
    }
    connection = replace(ConnectionOptions(), **changes)
    return ExchangeFeed(BinanceAdapter(base, book_depth=book_depth), symbols, connection)
