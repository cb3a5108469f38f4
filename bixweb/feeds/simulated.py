"""The built-in simulated market: a seeded random walk over well-known pairs.

:class:`SimulatedMarket` is pure: given a seed and the times it is asked
about, it produces the same events every run. :class:`SimulatedFeed` drives
it from the event loop's clock.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from bixweb.errors import ConfigError
from bixweb.model import Book, Candle, History, MarketEvent, Side, Trade

MINUTE_MS = 60_000


@dataclass(frozen=True, slots=True)
class Instrument:
    """A simulated pair: where it starts and how it moves."""

    symbol: str
    price: float
    decimals: int
    """Price decimals (the tick is 10**-decimals)."""
    lot_decimals: int
    trade_qty: float
    """Typical trade size in the base asset."""
    volatility: float
    """Standard deviation of the log price per second."""

    @property
    def tick(self) -> float:
        return 10.0**-self.decimals


CATALOG: dict[str, Instrument] = {
    i.symbol: i
    for i in (
        Instrument("BTCUSDT", 95_000.0, 2, 5, 0.02, 0.00012),
        Instrument("ETHUSDT", 3_400.0, 2, 4, 0.4, 0.00015),
        Instrument("SOLUSDT", 180.0, 2, 3, 8.0, 0.00021),
        Instrument("BNBUSDT", 650.0, 2, 3, 2.0, 0.00015),
        Instrument("XRPUSDT", 2.2, 4, 1, 600.0, 0.00021),
        Instrument("ADAUSDT", 0.75, 4, 1, 1_500.0, 0.00024),
        Instrument("DOGEUSDT", 0.18, 5, 0, 6_000.0, 0.00027),
        Instrument("AVAXUSDT", 28.0, 3, 2, 40.0, 0.00024),
        Instrument("DOTUSDT", 5.5, 3, 2, 200.0, 0.00024),
        Instrument("LINKUSDT", 16.0, 3, 2, 60.0, 0.00024),
        Instrument("LTCUSDT", 95.0, 2, 3, 10.0, 0.00018),
        Instrument("TRXUSDT", 0.25, 5, 1, 5_000.0, 0.00015),
        Instrument("TONUSDT", 3.1, 3, 2, 300.0, 0.00024),
        Instrument("ATOMUSDT", 6.5, 3, 2, 150.0, 0.00024),
        Instrument("NEARUSDT", 3.2, 3, 1, 300.0, 0.00027),
        Instrument("UNIUSDT", 9.0, 3, 2, 100.0, 0.00027),
        Instrument("BCHUSDT", 450.0, 2, 3, 2.0, 0.00018),
        Instrument("XLMUSDT", 0.35, 5, 0, 3_000.0, 0.00021),
        Instrument("APTUSDT", 7.0, 3, 2, 120.0, 0.00027),
        Instrument("FILUSDT", 3.5, 3, 2, 250.0, 0.00027),
        Instrument("ARBUSDT", 0.6, 4, 1, 1_500.0, 0.0003),
        Instrument("OPUSDT", 1.4, 4, 1, 700.0, 0.0003),
        Instrument("SHIBUSDT", 0.000018, 8, 0, 50_000_000.0, 0.0003),
        Instrument("ETCUSDT", 22.0, 3, 2, 40.0, 0.00024),
    )
}
DEFAULT_SYMBOLS: tuple[str, ...] = tuple(CATALOG)[:20]


def instruments(symbols: Sequence[str]) -> list[Instrument]:
    """The catalogue entries for ``symbols``; :class:`ConfigError` names any it lacks."""
    unknown = [s for s in symbols if s not in CATALOG]
    if unknown:
        raise ConfigError(f"the simulated market has no {', '.join(unknown)}; it knows {', '.join(CATALOG)}")
    return [CATALOG[s] for s in symbols]


@dataclass(slots=True)
class _Walk:
    instrument: Instrument
    price: float
    next_trade_id: int


class SimulatedMarket:
    """A deterministic market: same seed and same times, same events.

    Each :meth:`tick` moves every symbol by one step of a random walk
    (scaled to ``1 / tick_rate`` seconds), prints zero to three trades at
    and around the new price and publishes a fresh top-of-book.

    Trade ids count up per symbol from ``id_base`` plus a seeded offset
    below 2,000,000. A run that must not repeat an earlier run's ids (the
    same seed gives the same offsets) takes :func:`trade_id_base` of its
    start time.
    """

    def __init__(
        self,
        symbols: Sequence[str],
        *,
        seed: int = 42,
        tick_rate: float = 10.0,
        book_depth: int = 10,
        id_base: int = 0,
    ) -> None:
        self._rng = random.Random(seed)
        self._step = 1.0 / tick_rate
        self._book_depth = book_depth
        self._walks = [
            _Walk(i, i.price, id_base + 1_000_000 + self._rng.randrange(1_000_000)) for i in instruments(symbols)
        ]

    @property
    def symbols(self) -> list[str]:
        return [w.instrument.symbol for w in self._walks]

    def history(self, now_ms: int, minutes: int = 1440) -> list[History]:
        """Closed one-minute candles for the day before ``now_ms``, ending at each start price."""
        rng = self._rng
        first = now_ms - now_ms % MINUTE_MS - minutes * MINUTE_MS
        out = []
        for walk in self._walks:
            inst = walk.instrument
            sigma = inst.volatility * math.sqrt(60.0)
            steps = [rng.gauss(0.0, sigma) for _ in range(minutes)]
            level = -sum(steps)
            closes = []
            for step in steps:
                level += step
                closes.append(walk.price * math.exp(level))
            candles = []
            prev = walk.price * math.exp(-sum(steps))
            for n, close in enumerate(closes):
                spread = abs(rng.gauss(0.0, sigma / 2))
                high = max(prev, close) * (1 + spread)
                low = min(prev, close) * (1 - spread)
                volume = inst.trade_qty * 60 * 10 * rng.uniform(0.5, 1.5)
                candles.append(
                    Candle(
                        start=first + n * MINUTE_MS,
                        open=round(prev, inst.decimals),
                        high=round(high, inst.decimals),
                        low=round(low, inst.decimals),
                        close=round(close, inst.decimals),
                        volume=round(volume, inst.lot_decimals),
                        closed=True,
                    )
                )
                prev = close
            out.append(History(inst.symbol, tuple(candles)))
        return out

    def tick(self, now_ms: int) -> list[MarketEvent]:
        """One step for every symbol: its trades, taken from the book, then the book."""
        rng = self._rng
        events: list[MarketEvent] = []
        for walk in self._walks:
            inst = walk.instrument
            move = rng.gauss(0.0, inst.volatility * math.sqrt(self._step))
            walk.price = max(walk.price * math.exp(move), inst.tick)
            book = self._book(inst, round(walk.price, inst.decimals), now_ms)
            side: Side = "buy" if move >= 0 else "sell"
            levels = book.asks if side == "buy" else book.bids
            for _ in range(rng.choices((0, 1, 2, 3), weights=(2, 4, 3, 1))[0]):
                price, available = levels[min(rng.randint(0, 1), len(levels) - 1)]
                qty = min(available, round(inst.trade_qty * rng.lognormvariate(0.0, 0.8), inst.lot_decimals))
                events.append(Trade(inst.symbol, walk.next_trade_id, price, qty or available, side, now_ms))
                walk.next_trade_id += 1
            events.append(book)
        return events

    def _book(self, inst: Instrument, price: float, now_ms: int) -> Book:
        rng = self._rng
        tick = inst.tick
        half = max(tick, round(price * 0.00005, inst.decimals))
        bids, asks = [], []
        bid, ask = price - half, price + half
        for _ in range(self._book_depth):
            bids.append((round(bid, inst.decimals), round(inst.trade_qty * rng.uniform(0.2, 8.0), inst.lot_decimals)))
            asks.append((round(ask, inst.decimals), round(inst.trade_qty * rng.uniform(0.2, 8.0), inst.lot_decimals)))
            bid -= tick * rng.randint(1, 5)
            ask += tick * rng.randint(1, 5)
        return Book(inst.symbol, tuple(b for b in bids if b[0] > 0), tuple(asks), now_ms)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


TRADE_IDS_PER_MS = 1_000


def trade_id_base(start_ms: int) -> int:
    """Where a run started at ``start_ms`` numbers its trades: above every earlier run's ids.

    A run that started ``d`` ms before this one had room for ``1,000 * d``
    ids per symbol, more than it can print in those ``d`` ms (at most three
    trades per symbol per tick), so a bot that deduplicates by trade id
    never takes a new run's trade for an old one. The ids stay below 2**53
    (exact in JavaScript) until the year 2255.
    """
    return start_ms * TRADE_IDS_PER_MS


class SimulatedFeed:
    """Drives a :class:`SimulatedMarket` at ``tick_rate`` ticks per second.

    At ``speed=1`` (the default) the ticks follow the wall clock. At another
    speed the market keeps its own clock, which starts at the wall clock and
    advances one tick period (``1 / tick_rate`` s) per tick, while the ticks
    come ``speed`` times as fast; ``speed=None`` does not wait at all (for
    recording a stretch of market quickly: ``simulated://?speed=max``).
    """

    def __init__(self, market: SimulatedMarket, tick_rate: float, *, speed: float | None = 1.0) -> None:
        self.market = market
        self.period = 1.0 / tick_rate
        self.speed = speed

    async def events(self) -> AsyncIterator[list[MarketEvent]]:
        """One list of events per tick, history first."""
        if self.speed != 1.0:
            async for events in self._own_clock(self.speed):
                yield events
            return
        yield list(self.market.history(now_ms()))
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        while True:
            deadline += self.period
            delay = deadline - loop.time()
            if delay < -self.period:
                deadline = loop.time()  # fell behind: carry on from now, no burst of catch-up ticks
            await asyncio.sleep(max(delay, 0.0))
            yield self.market.tick(now_ms())

    async def _own_clock(self, speed: float | None) -> AsyncIterator[list[MarketEvent]]:
        start = now_ms()
        yield list(self.market.history(start))
        loop = asyncio.get_running_loop()
        began = loop.time()
        ticks = 0
        while True:
            ticks += 1
            wait = 0.0 if speed is None else began + ticks * self.period / speed - loop.time()
            await asyncio.sleep(max(wait, 0.0))  # at max speed too: let the loop breathe
            yield self.market.tick(start + round(ticks * self.period * 1000))
