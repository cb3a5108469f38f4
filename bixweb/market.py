"""Market state: one place that knows the latest of everything, per symbol.

:class:`Market` takes feed events (:mod:`bixweb.model`) and returns the
protocol messages they cause, each tagged with its stream key and carrying
its ``seq``. It does no I/O and never reads the clock: the caller passes
``now_ms``. Within one :meth:`Market.apply` call (one flush window) a
symbol's ticker and each forming candle are reported once, at their latest
value; trades, books and closed candles are reported as they come.

Tickers and candles are derived from trades, unless the feed sends the
exchange's own: a :class:`~bixweb.model.TickerStats` replaces the derived
24 h statistics, a :class:`~bixweb.model.CandleUpdate` the derived candle of
its interval and start. Either way the same messages come out.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from bixweb import protocol
from bixweb.alerts import Alert
from bixweb.model import (
    ALERTS,
    BOOK,
    CHANNEL_INTERVALS,
    REPLAYED,
    TICKER,
    TRADES,
    Book,
    Candle,
    CandleUpdate,
    History,
    Interval,
    MarketEvent,
    Ticker,
    TickerStats,
    Trade,
    stream_key,
)

DAY_MS = 86_400_000
MINUTES_PER_DAY = 1440

Message = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message for the subscribers of one stream."""

    stream: str
    message: Message
    conflate: bool = False
    """A complete state (ticker, book, forming candle): a newer one on its stream may replace it unsent."""


@dataclass(slots=True)
class _Window:
    """Rolling 24 h aggregates of the closed one-minute candles."""

    open: float = 0.0
    high: float = 0.0
    low: float = 0.0
    volume: float = 0.0
    quote_volume: float = 0.0


def _quote(candle: Candle) -> float:
    # Feeds report volume per candle, not per price: the typical price is
    # the usual estimate of what that volume cost in the quote asset.
    return candle.volume * (candle.high + candle.low + candle.close) / 3.0


def _merge(candle: Candle, price: float, qty: float) -> Candle:
    return replace(
        candle,
        high=max(candle.high, price),
        low=min(candle.low, price),
        close=price,
        volume=round(candle.volume + qty, 8),
    )


def _aggregate(start: int, minutes: Sequence[Candle]) -> Candle:
    return Candle(
        start=start,
        open=minutes[0].open,
        high=max(c.high for c in minutes),
        low=min(c.low for c in minutes),
        close=minutes[-1].close,
        volume=round(sum(c.volume for c in minutes), 8),
        closed=True,
    )


@dataclass(slots=True)
class SymbolState:
    """Everything bixweb keeps about one symbol."""

    symbol: str
    history_points: int
    trade_history: int
    price: float = 0.0
    direction: str = "flat"
    """Of the last price change: ``up``, ``down`` or ``flat``."""
    time: int = 0
    book: Book | None = None
    trades: deque[Trade] = field(init=False)
    closed: dict[Interval, deque[Candle]] = field(init=False)
    forming: dict[Interval, Candle | None] = field(init=False)
    window: _Window = field(default_factory=_Window)
    stats: TickerStats | None = None
    """The exchange's own 24 h statistics, when the feed sends them."""

    def __post_init__(self) -> None:
        self.trades = deque(maxlen=self.trade_history)
        self.closed = {
            interval: deque(
                maxlen=max(self.history_points, MINUTES_PER_DAY) if interval is Interval.M1 else self.history_points
            )
            for interval in Interval
        }
        self.forming = dict.fromkeys(Interval)

    @property
    def has_price(self) -> bool:
        return self.price > 0.0

    def set_price(self, price: float) -> None:
        if price != self.price:
            self.direction = "up" if price > self.price else "down"
        self.price = price

    def ticker(self) -> Ticker:
        """The ticker now: the exchange's statistics, else the closed-minute window plus the forming minute."""
        if self.stats is not None:
            return self._exchange_ticker(self.stats)
        w = self.window
        minute = self.forming[Interval.M1]
        if w.open:
            open_, high, low = w.open, w.high, w.low
        elif minute:
            open_, high, low = minute.open, minute.high, minute.low
        else:
            open_ = high = low = self.price
        volume, quote = w.volume, w.quote_volume
        if minute:
            high, low = max(high, minute.high), min(low, minute.low)
            volume, quote = volume + minute.volume, quote + _quote(minute)
        book = self.book
        return Ticker(
            symbol=self.symbol,
            price=self.price,
            bid=book.best_bid if book else self.price,
            ask=book.best_ask if book else self.price,
            open=open_,
            high=high,
            low=low,
            volume=round(volume, 8),
            quote_volume=round(quote, 2),
            time=self.time,
        )

    def _exchange_ticker(self, stats: TickerStats) -> Ticker:
        # Trades arrive between two statistics updates: the range stretches
        # to hold the last price, so that low <= price <= high always.
        price = self.price
        book = self.book
        return Ticker(
            symbol=self.symbol,
            price=price,
            bid=book.best_bid if book else stats.bid,
            ask=book.best_ask if book else stats.ask,
            open=stats.open,
            high=max(stats.high, price),
            low=min(stats.low, price) if stats.low > 0 else price,
            volume=stats.volume,
            quote_volume=stats.quote_volume,
            time=self.time,
        )

    def add_stats(self, stats: TickerStats) -> None:
        """Take the exchange's 24 h statistics; their last price wins unless a trade is newer."""
        self.stats = stats
        if stats.price > 0 and (not self.has_price or stats.time >= self.time):
            self.set_price(stats.price)
        self.time = max(self.time, stats.time)

    def candles(self, interval: Interval, limit: int) -> list[Candle]:
        """The last ``limit`` candles of ``interval``, oldest first, the forming one last."""
        forming = self.forming[interval]
        closed = self.closed[interval]
        wanted = limit - 1 if forming else limit
        out = list(closed)[-wanted:] if wanted > 0 else []
        if forming:
            out.append(forming)
        return out

    def recompute_window(self, now_ms: int) -> None:
        minutes = self.closed[Interval.M1]
        while minutes and minutes[0].start < now_ms - DAY_MS:
            minutes.popleft()
        if not minutes:
            self.window = _Window()
            return
        self.window = _Window(
            open=minutes[0].open,
            high=max(c.high for c in minutes),
            low=min(c.low for c in minutes),
            volume=sum(c.volume for c in minutes),
            quote_volume=sum(_quote(c) for c in minutes),
        )

    def load_history(self, minutes: Sequence[Candle], now_ms: int) -> None:
        """Take the closed minutes before the feed started.

        The 24 h window is reckoned from when the history was sent: now, or,
        for a recorded history replayed later, the minute after its last
        candle (a feed sends its history within that minute).
        """
        m1 = self.closed[Interval.M1]
        m1.extend(minutes)
        for interval in (Interval.M5, Interval.H1):
            groups: dict[int, list[Candle]] = {}
            for minute in minutes:
                groups.setdefault(interval.start_of(minute.start), []).append(minute)
            self.closed[interval].extend(_aggregate(start, group) for start, group in sorted(groups.items()))
        as_of = now_ms
        if minutes:
            self.price = minutes[-1].close
            self.time = minutes[-1].start + Interval.M1.value - 1
            as_of = min(now_ms, minutes[-1].start + 2 * Interval.M1.value)
        self.recompute_window(as_of)

    def _is_past(self, interval: Interval, start: int) -> bool:
        """Whether the candle starting at ``start`` is older than the forming one, or closed already."""
        current = self.forming[interval]
        if current is not None:
            return start < current.start
        closed = self.closed[interval]
        return bool(closed) and start <= closed[-1].start

    def add_trade(self, trade: Trade) -> list[tuple[Interval, Candle]]:
        """Apply a trade; return the candles it closed.

        A trade that belongs to a candle already closed (it arrived after the
        exchange's closed candle, which counts it) leaves the candles alone.
        """
        self.set_price(trade.price)
        self.time = max(self.time, trade.time)
        self.trades.append(trade)
        closed: list[tuple[Interval, Candle]] = []
        for interval in Interval:
            start = interval.start_of(trade.time)
            if self._is_past(interval, start):
                continue
            current = self.forming[interval]
            if current is not None and current.start != start:
                done = replace(current, closed=True)
                self.closed[interval].append(done)
                closed.append((interval, done))
                current = None
            if current is None:
                current = Candle(start, trade.price, trade.price, trade.price, trade.price, 0.0)
            self.forming[interval] = _merge(current, trade.price, trade.qty)
        if any(interval is Interval.M1 for interval, _ in closed):
            self.recompute_window(trade.time)
        return closed

    def set_candle(self, interval: Interval, candle: Candle) -> tuple[list[Candle], bool]:
        """Take the exchange's candle of ``interval``.

        Returns the closed candles to report and whether the forming one
        changed. A candle newer than the forming one closes that one first;
        one with the same start replaces it (and closes it, if the exchange
        says so); a closed candle for the last closed start corrects it.
        Older updates change nothing.
        """
        reported: list[Candle] = []
        closed = self.closed[interval]
        current = self.forming[interval]
        if current is not None and candle.start > current.start:
            done = replace(current, closed=True)
            closed.append(done)
            reported.append(done)
            current = self.forming[interval] = None
        latest = current.start if current is not None else closed[-1].start if closed else None
        changed = False
        if latest is None or candle.start > latest or (current is not None and candle.start == current.start):
            if candle.closed:
                closed.append(candle)
                self.forming[interval] = None
                reported.append(candle)
            else:
                self.forming[interval] = candle
                changed = True
        elif candle.closed and closed and candle.start == closed[-1].start and candle != closed[-1]:
            closed[-1] = candle
            reported.append(candle)
        if interval is Interval.M1 and reported:
            self.recompute_window(reported[-1].start + interval.value)
        return reported, changed


class Market:
    """The state of every symbol, updated from feed events.

    ``apply`` is the only way in; it returns the messages to fan out. Stream
    ``seq`` numbers are assigned here, once, so every subscriber sees the same
    numbering.
    """

    def __init__(
        self,
        symbols: Iterable[str],
        *,
        history_points: int = 100,
        trade_history: int = 100,
        replay_depth: int = 1_000,
        epoch: int = 0,
    ) -> None:
        self.history_points = history_points
        self.epoch = epoch
        """Names this run of the numbering: a server that loses its history starts a new epoch."""
        self.replay_depth = replay_depth
        self.recent: dict[str, deque[Message]] = {}
        """Per trades stream, the last ``replay_depth`` messages, for clients that resume."""
        self.latest: dict[str, Message] = {}
        """Per state stream (ticker, book, candles), its last message."""
        self.states: dict[str, SymbolState] = {
            s: SymbolState(s, history_points=history_points, trade_history=trade_history) for s in symbols
        }
        self.seq: dict[str, int] = {}
        self.last_event_ms: int | None = None

    @property
    def symbols(self) -> list[str]:
        return list(self.states)

    def _next_seq(self, channel: str, symbol: str) -> tuple[str, int]:
        stream = stream_key(channel, symbol)
        seq = self.seq.get(stream, 0) + 1
        self.seq[stream] = seq
        return stream, seq

    def _record(self, out: list[Outgoing], stream: str, message: Message, *, conflate: bool) -> None:
        """Keep ``message`` for resuming clients and queue it for fan-out."""
        if stream.partition(":")[0] in REPLAYED:
            recent = self.recent.get(stream)
            if recent is None:
                recent = self.recent[stream] = deque(maxlen=self.replay_depth)
            recent.append(message)
        else:
            self.latest[stream] = message
        out.append(Outgoing(stream, message, conflate))

    def _candle(self, out: list[Outgoing], symbol: str, interval: Interval, candle: Candle, now_ms: int) -> None:
        stream, seq = self._next_seq(interval.channel, symbol)
        message = protocol.candle_message(symbol, interval, candle, seq, now_ms, self.epoch)
        self._record(out, stream, message, conflate=not candle.closed)

    def apply(self, events: Iterable[MarketEvent], now_ms: int) -> list[Outgoing]:
        """Update the state from ``events``; return the messages they cause, in order."""
        out: list[Outgoing] = []
        touched: dict[str, None] = {}
        forming: dict[tuple[str, Interval], None] = {}
        for event in events:
            state = self.states.get(event.symbol)
            if state is None:
                continue
            self.last_event_ms = now_ms
            if not isinstance(event, CandleUpdate) or state.stats is None:
                touched[event.symbol] = None  # an exchange's candle changes no exchange ticker
            if isinstance(event, Trade):
                for interval, candle in state.add_trade(event):
                    self._candle(out, event.symbol, interval, candle, now_ms)
                stream, seq = self._next_seq(TRADES, event.symbol)
                self._record(out, stream, protocol.trade_message(event, seq, now_ms, self.epoch), conflate=False)
                forming.update(dict.fromkeys((event.symbol, i) for i in Interval))
            elif isinstance(event, Book):
                state.book = event
                state.time = max(state.time, event.time)
                stream, seq = self._next_seq(BOOK, event.symbol)
                self._record(out, stream, protocol.book_message(event, seq, now_ms, self.epoch), conflate=True)
            elif isinstance(event, History):
                state.load_history(event.minutes, now_ms)
            elif isinstance(event, TickerStats):
                state.add_stats(event)
            else:
                state.time = max(state.time, event.time)
                done, changed = state.set_candle(event.interval, event.candle)
                for candle in done:
                    self._candle(out, event.symbol, event.interval, candle, now_ms)
                if changed:
                    forming[(event.symbol, event.interval)] = None
        for symbol, interval in forming:
            latest = self.states[symbol].forming[interval]
            if latest is not None:
                self._candle(out, symbol, interval, latest, now_ms)
        for symbol in touched:
            state = self.states[symbol]
            if state.has_price:
                stream, seq = self._next_seq(TICKER, symbol)
                self._record(
                    out, stream, protocol.ticker_message(state.ticker(), seq, now_ms, self.epoch), conflate=True
                )
        return out

    def alert_outgoing(self, alert: Alert, now_ms: int) -> Outgoing:
        """Number and record an alert that fired, on its symbol's ``alerts`` stream."""
        stream, seq = self._next_seq(ALERTS, alert.symbol)
        message = protocol.alert_message(alert, seq, now_ms, self.epoch)
        out: list[Outgoing] = []
        self._record(out, stream, message, conflate=False)
        return out[0]

    def replay(self, since: protocol.Since, streams: Iterable[tuple[str, str]]) -> list[Message] | None:
        """What a client at ``since`` missed on ``streams``, or None if that cannot be told.

        Trades come back in full from the last ``replay_depth`` per stream;
        for state streams the latest message is enough. None when the epoch
        differs, a stream is not in ``since`` or is ahead of the server, or a
        trades gap is older than what is kept.
        """
        if since.epoch != self.epoch:
            return None
        missed: list[Message] = []
        for channel, symbol in streams:
            stream = stream_key(channel, symbol)
            last = since.seq.get(stream)
            current = self.seq.get(stream, 0)
            if last is None or last > current:
                return None
            if last == current:
                continue
            if channel not in REPLAYED:
                missed.append(self.latest[stream])
                continue
            recent = self.recent.get(stream, deque())
            if not recent or recent[0]["seq"] > last + 1:
                return None
            missed.extend(m for m in recent if m["seq"] > last)
        return missed

    def snapshot(self, streams: Iterable[tuple[str, str]], now_ms: int, *, recovered: bool | None = None) -> Message:
        """An ``initial_data`` message for ``(channel, symbol)`` pairs.

        Its ``seq`` map says where each stream stands: the next message on a
        stream has that seq + 1, so a subscriber that applies the snapshot and
        then the live messages misses nothing.
        """
        tickers: dict[str, Message] = {}
        trades: dict[str, list[Message]] = {}
        books: dict[str, Message] = {}
        candles: dict[str, dict[str, list[Message]]] = {}
        seq: dict[str, int] = {}
        for channel, symbol in streams:
            state = self.states[symbol]
            key = stream_key(channel, symbol)
            seq[key] = self.seq.get(key, 0)
            if channel == TICKER:
                if state.has_price:
                    tickers[symbol] = protocol.ticker_data(state.ticker())
            elif channel == TRADES:
                trades[symbol] = [protocol.trade_data(t) for t in state.trades]
            elif channel == BOOK:
                if state.book is not None:
                    books[symbol] = protocol.book_data(state.book)
            elif channel == ALERTS:
                pass  # its seq says where the stream stands; the history is in alert_list
            else:
                interval = CHANNEL_INTERVALS[channel]
                candles.setdefault(interval.label, {})[symbol] = [
                    protocol.candle_data(c) for c in state.candles(interval, self.history_points)
                ]
        return protocol.initial_data_message(
            now_ms, self.epoch, seq, tickers=tickers, trades=trades, books=books, candles=candles, recovered=recovered
        )
