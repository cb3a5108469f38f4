"""Market events and values: frozen dataclasses, no I/O.

Prices and quantities are floats already rounded to the symbol's tick and lot
size by whoever produced them (the feed); bixweb never does arithmetic on a
price that is sent on without rounding it again.

A feed reports :data:`MarketEvent` values. Every feed sends trades and books;
the simulated market sends its past as :class:`History` and leaves the market
to derive tickers and candles from trades; an exchange also sends its own
24 h statistics (:class:`TickerStats`) and candles (:class:`CandleUpdate`),
which the market takes over its own estimates.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Final, Literal

Side = Literal["buy", "sell"]


class Interval(Enum):
    """Candle intervals, valued by their length in milliseconds."""

    S1 = 1_000
    M1 = 60_000
    M5 = 300_000
    H1 = 3_600_000

    @property
    def label(self) -> str:
        return INTERVAL_LABELS[self]

    @property
    def channel(self) -> str:
        return f"candles_{self.label}"

    def start_of(self, time_ms: int) -> int:
        """The open time of the candle that contains ``time_ms``."""
        return time_ms - time_ms % self.value

    @classmethod
    def from_label(cls, label: str) -> Interval:
        return LABEL_INTERVALS[label]


INTERVAL_LABELS: Final = {
    Interval.S1: "1s",
    Interval.M1: "1m",
    Interval.M5: "5m",
    Interval.H1: "1h",
}
LABEL_INTERVALS: Final = {label: interval for interval, label in INTERVAL_LABELS.items()}

TICKER: Final = "ticker"
TRADES: Final = "trades"
BOOK: Final = "book"
ALERTS: Final = "alerts"
"""Alerts that fired for a symbol; like trades, every message counts (none is conflated)."""
CHANNELS: Final = (TICKER, TRADES, BOOK, *(i.channel for i in Interval), ALERTS)
REPLAYED: Final = frozenset({TRADES, ALERTS})
"""Channels whose every message a resuming client gets again; the others send their latest state."""
CHANNEL_INTERVALS: Final = {i.channel: i for i in Interval}


def stream_key(channel: str, symbol: str) -> str:
    """The name of one stream: ``"trades:BTCUSDT"``."""
    return f"{channel}:{symbol}"


def canonical_symbol(name: str) -> str:
    """A symbol as bixweb names it, in upper case: ``"btcusdt"`` is ``"BTCUSDT"``.

    Clients may name symbols in any case. Only ASCII is folded: a name with
    other characters stays as it is (and is unknown), so that no letter from
    elsewhere in Unicode stands in for an ASCII one (``"ı".upper()`` is ``"I"``).
    """
    return name.upper() if name.isascii() else name


@dataclass(frozen=True, slots=True)
class Trade:
    """One executed trade, as a feed reports it."""

    symbol: str
    id: int
    price: float
    qty: float
    side: Side
    time: int


@dataclass(frozen=True, slots=True)
class Book:
    """The top levels of one order book: (price, quantity), best first."""

    symbol: str
    bids: tuple[tuple[float, float], ...]
    asks: tuple[tuple[float, float], ...]
    time: int

    @property
    def best_bid(self) -> float:
        return self.bids[0][0] if self.bids else 0.0

    @property
    def best_ask(self) -> float:
        return self.asks[0][0] if self.asks else 0.0


@dataclass(frozen=True, slots=True)
class Candle:
    """OHLC and volume for one interval starting at ``start`` (ms)."""

    start: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    closed: bool = False


@dataclass(frozen=True, slots=True)
class Ticker:
    """The latest price of a symbol with its rolling 24 h statistics."""

    symbol: str
    price: float
    bid: float
    ask: float
    open: float
    high: float
    low: float
    volume: float
    quote_volume: float
    time: int

    @property
    def change(self) -> float:
        return self.price - self.open

    @property
    def change_pct(self) -> float:
        return 100.0 * (self.price - self.open) / self.open if self.open else 0.0


@dataclass(frozen=True, slots=True)
class History:
    """Closed one-minute candles before the feed started (oldest first).

    A feed sends this once per symbol at start so the 24 h statistics and
    the charts have a past.
    """

    symbol: str
    minutes: tuple[Candle, ...]


@dataclass(frozen=True, slots=True)
class TickerStats:
    """An exchange's own rolling 24 h statistics of a symbol, as of ``time``.

    They count every trade of the day, also those before bixweb connected,
    so the market prefers them to the statistics it derives from trades.
    """

    symbol: str
    price: float
    """Last trade price."""
    bid: float
    ask: float
    open: float
    high: float
    low: float
    volume: float
    """In the base asset."""
    quote_volume: float
    time: int


@dataclass(frozen=True, slots=True)
class CandleUpdate:
    """An exchange's own candle of one interval, forming or closed, as of ``time``.

    It replaces the candle the market derived from trades for the same
    interval and start: the exchange saw every trade in it.
    """

    symbol: str
    interval: Interval
    candle: Candle
    time: int


MarketEvent = Trade | Book | History | TickerStats | CandleUpdate


def event_time(event: MarketEvent) -> int | None:
    """The market time an event reports, if it reports one (a :class:`History` does not)."""
    if isinstance(event, History):
        return None
    return event.time
