"""What a bot client has learnt from the server, as values: positions, tickers, books, trades, candles.

:class:`MarketView` takes each (unwrapped) server message and says which
messages to deliver, in which order, and which streams need a resync. No
sockets and no event loop; :mod:`bixweb.client.websocket` drives it.

The rules, per stream (``"trades:BTCUSDT"``), within one ``epoch``:

* **dedupe**: a data message whose ``seq`` is not above the last one
  delivered is dropped and counted in :attr:`MarketView.duplicates` (a
  replay may repeat messages already received);
* **gaps**: trades must be contiguous. A trade past ``last + 1`` is held
  back, with every later one, and a :class:`Resync` asks the server for what
  is missing; once it arrives the held trades follow in ``seq`` order. Other
  streams (ticker, book, candles) carry state that the server conflates for
  slow readers, so their ``seq`` may skip: that is no gap;
* **checksums**: a book (a ``book`` message or an ``initial_data`` book) is
  applied and delivered only if its ``checksum`` matches
  :func:`bixweb.protocol.book_checksum`; otherwise it is dropped, counted in
  :attr:`MarketView.checksum_failures`, and a :class:`Resync` fetches the
  server's latest book.

A message from another epoch than the stream's position starts the stream
over (the server restarted and lost its numbering).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from bixweb.client.streams import Message, message_stream
from bixweb.model import BOOK, REPLAYED, TICKER, canonical_symbol, stream_key
from bixweb.protocol import Since, book_checksum

log = logging.getLogger("bixweb.client")

TRADE_HISTORY: Final = 1000
"""Trades kept per symbol for ``get_trades`` (the newest)."""
CANDLE_HISTORY: Final = 1000
"""Candles kept per symbol and interval for ``get_candles`` (the newest)."""
MAX_HELD: Final = 10_000
"""Trades held back per stream while a gap is being filled; past it they go out with the gap."""


@dataclass(frozen=True, slots=True)
class Resync:
    """A ``subscribe`` the client should send for one stream: ``since`` is where it stands."""

    channel: str
    symbol: str
    since: Since
    reason: Literal["gap", "checksum"]

    @property
    def stream(self) -> str:
        """The stream key (``"trades:BTCUSDT"``)."""
        return stream_key(self.channel, self.symbol)


@dataclass(slots=True)
class Received:
    """What to do with one server message."""

    deliver: list[Message] = field(default_factory=list)
    """Messages for the queue and the callbacks, in order (none for a duplicate or a bad book)."""
    resyncs: list[Resync] = field(default_factory=list)


def book_verified(data: Mapping[str, Any]) -> bool:
    """Whether a book's ``checksum`` matches its levels (a book without one passes)."""
    checksum = data.get("checksum")
    if checksum is None:
        return True
    try:
        return bool(book_checksum(data["bids"], data["asks"]) == checksum)
    except (KeyError, TypeError, ValueError):
        return False


def _channel_symbol(key: str) -> tuple[str, str]:
    channel, _, symbol = key.partition(":")
    return channel, symbol


class MarketView:
    """Positions (``epoch``, last ``seq``) per stream, latest tickers and verified books; no I/O.

    The receive loop calls :meth:`receive` with every message; any thread
    may read (:meth:`ticker`, :meth:`book`, :meth:`seq`, the counters).
    """

    def __init__(self, trade_history: int = TRADE_HISTORY, candle_history: int = CANDLE_HISTORY) -> None:
        self._lock = threading.Lock()
        self._tickers: dict[str, Message] = {}
        self._books: dict[str, Message] = {}
        self._trade_history, self._candle_history = trade_history, candle_history
        self._trades: dict[str, deque[Message]] = {}
        self._candles: dict[tuple[str, str], deque[Message]] = {}  # (symbol, interval)
        self._positions: dict[str, tuple[int, int]] = {}
        self._held: dict[str, dict[int, Message]] = {}
        self._resyncing: set[str] = set()
        self.epoch: int | None = None
        """The server epoch last seen (``welcome``, ``initial_data`` or a data message)."""
        self.gaps = 0
        """Trades streams found missing messages (each gap once, however many are missing)."""
        self.duplicates = 0
        """Data messages dropped because their stream had already reached their ``seq``."""
        self.checksum_failures = 0
        """Books dropped because their checksum did not match."""

    # -- lifecycle -------------------------------------------------------------

    def connection_lost(self) -> None:
        """Forget held trades and pending resyncs; positions stay, for a resume."""
        with self._lock:
            self._held.clear()
            self._resyncing.clear()

    def reset(self) -> None:
        """Forget positions too: the next connection starts over from snapshots."""
        with self._lock:
            self._positions.clear()
            self._held.clear()
            self._resyncing.clear()

    def forget(self, keys: Iterable[str]) -> None:
        """Stop tracking streams (after an ``unsubscribe``)."""
        with self._lock:
            for key in keys:
                self._positions.pop(key, None)
                self._held.pop(key, None)
                self._resyncing.discard(key)
                channel, symbol = _channel_symbol(key)
                if channel == "trades":
                    self._trades.pop(symbol, None)
                elif channel.startswith("candles_"):
                    self._candles.pop((symbol, channel.removeprefix("candles_")), None)

    def resync_finished(self, key: str) -> None:
        """The resync of ``key`` was answered (or failed): a new failure may ask again."""
        with self._lock:
            self._resyncing.discard(key)

    # -- readers ---------------------------------------------------------------

    def positions(self) -> dict[str, tuple[int, int]]:
        """``{stream: (epoch, seq)}`` of every tracked stream: where a resume starts."""
        with self._lock:
            return dict(self._positions)

    def seq(self, key: str) -> int | None:
        """The last ``seq`` delivered on stream ``key``."""
        with self._lock:
            position = self._positions.get(key)
            return position[1] if position is not None else None

    def ticker(self, symbol: str) -> Message | None:
        """The latest ticker of ``symbol``: ``{"symbol", "price", "bid", …}``."""
        name = canonical_symbol(symbol)
        with self._lock:
            ticker = self._tickers.get(name)
            return {"symbol": name, **ticker} if ticker is not None else None

    def tickers(self) -> dict[str, Message]:
        """The latest ticker of every symbol, by symbol (each with its ``symbol``)."""
        with self._lock:
            return {symbol: {"symbol": symbol, **ticker} for symbol, ticker in self._tickers.items()}

    def trades(self, symbol: str, n: int) -> list[Message]:
        """The last ``n`` trades of ``symbol`` the client has (oldest first)."""
        if n < 0:
            raise ValueError("n must be 0 or more")
        with self._lock:
            trades = self._trades.get(canonical_symbol(symbol), ())
            return [dict(trade) for trade in list(trades)[max(0, len(trades) - n) :]]

    def candles(self, symbol: str, interval: str) -> list[Message]:
        """The candles of ``symbol`` and ``interval`` the client has (oldest first; the last may be forming)."""
        with self._lock:
            return [dict(candle) for candle in self._candles.get((canonical_symbol(symbol), interval), ())]

    def book(self, symbol: str) -> Message | None:
        """The latest verified book of ``symbol`` (``bids``, ``asks``, ``time``, ``checksum``)."""
        with self._lock:
            book = self._books.get(canonical_symbol(symbol))
            if book is None:
                return None
            return {
                **book,
                "bids": [list(level) for level in book["bids"]],
                "asks": [list(level) for level in book["asks"]],
            }

    # -- the rules -------------------------------------------------------------

    def receive(self, message: Message) -> Received:
        """Take one (unwrapped) server message; say what to deliver and what to resync."""
        kind = message.get("type")
        with self._lock:
            if kind == "welcome":
                self._see_epoch(message.get("epoch"))
                return Received([message])
            if kind == "initial_data":
                return self._snapshot(message)
            key = message_stream(message)
            seq = message.get("seq")
            if key is None or not isinstance(seq, int):
                return Received([message])
            epoch = message.get("epoch")
            if not isinstance(epoch, int):
                epoch = self.epoch if self.epoch is not None else 0
            self._see_epoch(epoch)
            return self._data(key, epoch, seq, message)

    def _see_epoch(self, epoch: object) -> None:
        if isinstance(epoch, int):
            self.epoch = epoch

    def _data(self, key: str, epoch: int, seq: int, message: Message) -> Received:
        position = self._positions.get(key)
        if position is not None and position[0] != epoch:
            log.warning("%s: epoch %d after %d; starting the stream over", key, epoch, position[0])
            self._held.pop(key, None)
            position = None
        held = self._held.get(key)
        if position is not None and (seq <= position[1] or (held is not None and seq in held)):
            self.duplicates += 1
            return Received()
        channel = _channel_symbol(key)[0]
        if channel in REPLAYED and position is not None and seq > position[1] + 1:  # trades, alerts
            return self._hold(key, epoch, seq, message, position[1])
        if channel == BOOK and not book_verified(message.get("data", {})):
            return self._bad_book(key, epoch, seq if position is None else position[1] + 1, seq)
        self._accept(key, epoch, seq, message)
        return Received([message, *self._release(key)])

    def _accept(self, key: str, epoch: int, seq: int, message: Message) -> None:
        self._positions[key] = (epoch, seq)
        self._record(message)

    def _record(self, message: Message) -> None:
        """Keep what a delivered message says for the readers (``ticker``, ``book``, ``trades``, ``candles``)."""
        kind = message.get("type")
        if kind == "market_update":
            self._tickers[message["symbol"]] = message["data"]
        elif kind == "book":
            self._books[message["symbol"]] = message["data"]
        elif kind == "trade":
            self._trade_series(message["symbol"]).append(message["data"])
        elif kind == "candle":
            self._add_candle(message["symbol"], str(message.get("interval")), message["data"])

    def _trade_series(self, symbol: str) -> deque[Message]:
        series = self._trades.get(symbol)
        if series is None:
            series = self._trades[symbol] = deque(maxlen=self._trade_history)
        return series

    def _add_candle(self, symbol: str, interval: str, candle: Message) -> None:
        series = self._candles.get((symbol, interval))
        if series is None:
            series = self._candles[(symbol, interval)] = deque(maxlen=self._candle_history)
        if series and series[-1].get("start") == candle.get("start"):
            series[-1] = candle  # the forming candle again
        elif not series or candle.get("start", 0) > series[-1].get("start", 0):
            series.append(candle)

    def _take_history(self, message: Message) -> None:
        """An ``initial_data``'s trades and candles: newer than what the client has, or all of it."""
        for symbol, trades in message.get("trades", {}).items():
            if trades:
                series = self._trade_series(symbol)
                first = trades[0].get("id", 0)
                if series and series[-1].get("id", 0) < first - 1:
                    series.clear()  # missed trades between: no silent hole in get_trades()
                kept = [t for t in series if t.get("id", 0) < first]
                series.clear()
                series.extend([*kept, *trades])
        for interval, by_symbol in message.get("candles", {}).items():
            for symbol, candles in by_symbol.items():
                if candles:
                    old = self._candles.pop((symbol, interval), ())
                    for candle in [c for c in old if c.get("start", 0) < candles[0].get("start", 0)] + candles:
                        self._add_candle(symbol, interval, candle)

    def _hold(self, key: str, epoch: int, seq: int, message: Message, last: int) -> Received:
        held = self._held.setdefault(key, {})
        first = not held
        held[seq] = message
        if len(held) > MAX_HELD:
            log.error("%s: the gap after seq %d was not filled; delivering %d held trades", key, last, len(held))
            out = [held[n] for n in sorted(held)]
            for released in out:
                self._record(released)
            self._positions[key] = (epoch, max(held))
            del self._held[key]
            return Received(out)
        if not first:
            return Received()  # the gap is already being filled
        return Received(resyncs=[self._gap(key, epoch, last, seq)])

    def _gap(self, key: str, epoch: int, last: int, seq: int) -> Resync:
        self.gaps += 1
        log.warning("gap on %s: seq %d after %d; asking for the rest", key, seq, last)
        channel, symbol = _channel_symbol(key)
        self._resyncing.add(key)
        return Resync(channel, symbol, Since(epoch, {key: last}), "gap")

    def _release(self, key: str) -> list[Message]:
        """Held trades that now follow on: in order, up to the next hole."""
        held = self._held.get(key)
        position = self._positions.get(key)
        if not held or position is None:
            return []
        epoch, last = position
        for seq in [n for n in held if n <= last]:
            del held[seq]  # covered by a snapshot
        out: list[Message] = []
        while last + 1 in held:
            last += 1
            out.append(held.pop(last))
            self._record(out[-1])
        self._positions[key] = (epoch, last)
        if not held:
            del self._held[key]
        return out

    def _bad_book(self, key: str, epoch: int, first_missing: int, seq: int) -> Received:
        """Drop a book that fails its checksum; ask for the server's latest unless already asking."""
        self.checksum_failures += 1
        log.warning("book checksum mismatch on %s at seq %d; fetching it again", key, seq)
        if key in self._resyncing:
            return Received()
        self._resyncing.add(key)
        channel, symbol = _channel_symbol(key)
        # Anything below the bad seq: the server then replays its latest book.
        return Received(resyncs=[Resync(channel, symbol, Since(epoch, {key: max(0, first_missing - 1)}), "checksum")])

    def _snapshot(self, message: Message) -> Received:
        """An ``initial_data``: its streams start over from it (a bad book is left out and refetched)."""
        epoch = message.get("epoch")
        if not isinstance(epoch, int):
            epoch = self.epoch if self.epoch is not None else 0
        self._see_epoch(epoch)
        seqs: Mapping[str, int] = message.get("seq", {})
        tickers: Mapping[str, Message] = message.get("tickers", {})
        books: Mapping[str, Message] = message.get("books", {})
        self._tickers.update(tickers)
        self._take_history(message)
        good_books: dict[str, Message] = {}
        resyncs: list[Resync] = []
        for key, seq in seqs.items():
            channel, symbol = _channel_symbol(key)
            self._positions[key] = (epoch, seq)
            if channel == TICKER and symbol not in tickers:
                self._tickers.pop(symbol, None)
            elif channel == BOOK:
                book = books.get(symbol)
                if book is None:
                    self._books.pop(symbol, None)
                elif book_verified(book):
                    self._books[symbol] = good_books[symbol] = book
                else:
                    self._positions[key] = (epoch, max(0, seq - 1))
                    resyncs += self._bad_book(key, epoch, seq, seq).resyncs
        if len(good_books) != len(books):
            message = {**message, "books": good_books}
            if not good_books:
                del message["books"]
        out = [message]
        for key in seqs:
            out += self._release(key)
            if key in self._held:  # held trades beyond another hole: ask again
                resyncs.append(self._gap(key, epoch, self._positions[key][1], min(self._held[key])))
        return Received(out, resyncs)
