"""The simulated market: deterministic for a seed, realistic enough to trade on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TypeVar

import pytest

from bixweb.errors import ConfigError
from bixweb.feeds import Feed, open_feed
from bixweb.feeds.simulated import (
    CATALOG,
    DEFAULT_SYMBOLS,
    TRADE_IDS_PER_MS,
    SimulatedFeed,
    SimulatedMarket,
    now_ms,
    trade_id_base,
)
from bixweb.model import Book, History, MarketEvent, Trade

T0 = 1_764_160_000_000
T = TypeVar("T")


def first_events(seed: int, count: int = 1000, start: int = T0) -> list[MarketEvent]:
    sim = SimulatedMarket(DEFAULT_SYMBOLS, seed=seed, tick_rate=10.0)
    events: list[MarketEvent] = []
    tick = 0
    while len(events) < count:
        events.extend(sim.tick(start + tick * 100))
        tick += 1
    return events[:count]


def without_time(event: MarketEvent) -> tuple[object, ...]:
    if isinstance(event, Trade):
        return (event.symbol, event.id, event.price, event.qty, event.side)
    assert isinstance(event, Book)
    return (event.symbol, event.bids, event.asks)


def test_same_seed_same_first_1000_events() -> None:
    assert first_events(1) == first_events(1)
    assert [without_time(e) for e in first_events(1)] == [without_time(e) for e in first_events(1, start=T0 + 12345)]


def test_another_seed_another_market() -> None:
    assert [without_time(e) for e in first_events(1)] != [without_time(e) for e in first_events(2)]


def test_history_is_deterministic_and_ends_at_the_start_price() -> None:
    a = SimulatedMarket(["BTCUSDT"], seed=5).history(T0)
    b = SimulatedMarket(["BTCUSDT"], seed=5).history(T0)
    assert a == b
    minutes = a[0].minutes
    assert len(minutes) == 1440
    assert minutes[-1].close == CATALOG["BTCUSDT"].price
    assert all(c.low <= min(c.open, c.close) <= max(c.open, c.close) <= c.high for c in minutes)
    assert minutes[-1].start + 60_000 <= T0


def test_ticks_move_every_symbol_with_consistent_books_and_trades() -> None:
    sim = SimulatedMarket(DEFAULT_SYMBOLS, seed=3, book_depth=5)
    assert len(DEFAULT_SYMBOLS) >= 12
    trades: dict[str, list[Trade]] = {}
    for n in range(200):
        for event in sim.tick(T0 + n * 100):
            if isinstance(event, Book):
                assert len(event.bids) == len(event.asks) == 5
                assert event.best_bid < event.best_ask
                assert [p for p, _ in event.bids] == sorted((p for p, _ in event.bids), reverse=True)
                assert [p for p, _ in event.asks] == sorted(p for p, _ in event.asks)
            else:
                assert isinstance(event, Trade)
                trades.setdefault(event.symbol, []).append(event)
    assert set(trades) == set(DEFAULT_SYMBOLS)
    for symbol, prints in trades.items():
        ids = [t.id for t in prints]
        assert ids == list(range(ids[0], ids[0] + len(ids)))
        start = CATALOG[symbol].price
        assert all(0.8 * start < t.price < 1.2 * start and t.qty > 0 for t in prints), symbol
        assert {t.side for t in prints} == {"buy", "sell"}


def test_unknown_symbols_are_refused_by_name() -> None:
    with pytest.raises(ConfigError, match="NOPEUSDT"):
        SimulatedMarket(["BTCUSDT", "NOPEUSDT"])


async def test_the_feed_yields_history_then_ticks_at_the_tick_rate() -> None:
    feed = SimulatedFeed(SimulatedMarket(["BTCUSDT"], seed=1, tick_rate=50.0), 50.0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    batches = [batch async for batch in islice_async(feed.events(), 11)]
    elapsed = loop.time() - started
    assert isinstance(batches[0][0], History)
    assert all(any(isinstance(e, Book) for e in b) for b in batches[1:])
    assert 0.15 < elapsed < 1.0  # ten ticks at 50/s


async def test_at_max_speed_the_market_keeps_its_own_clock_and_does_not_wait() -> None:
    feed = SimulatedFeed(SimulatedMarket(["BTCUSDT"], seed=1, tick_rate=10.0), 10.0, speed=None)
    loop = asyncio.get_running_loop()
    started = loop.time()
    batches = [batch async for batch in islice_async(feed.events(), 301)]
    assert loop.time() - started < 1.0  # 30 s of market
    assert isinstance(batches[0][0], History)
    books = [next(e for e in batch if isinstance(e, Book)) for batch in batches[1:]]
    first = books[0].time
    assert [b.time - first for b in books] == [n * 100 for n in range(300)]
    again = SimulatedMarket(["BTCUSDT"], seed=1, tick_rate=10.0)
    again.history(first - 100)
    assert [again.tick(first + n * 100) for n in range(300)] == batches[1:]  # the same market, only sooner


async def islice_async(source: AsyncIterator[T], count: int) -> AsyncIterator[T]:
    n = 0
    async for item in source:
        yield item
        n += 1
        if n == count:
            return


def trade_ids(market: SimulatedMarket, ticks: int = 300) -> dict[str, list[int]]:
    ids: dict[str, list[int]] = {}
    for n in range(ticks):
        for event in market.tick(T0 + n * 100):
            if isinstance(event, Trade):
                ids.setdefault(event.symbol, []).append(event.id)
    return ids


def test_a_restart_with_the_same_seed_repeats_the_market_but_no_trade_id() -> None:
    first = SimulatedMarket(DEFAULT_SYMBOLS, seed=9, id_base=trade_id_base(T0))
    first_ids = trade_ids(first)
    # the next run starts when the first has lived its 30 s (300 ticks of 100 ms)
    again = SimulatedMarket(DEFAULT_SYMBOLS, seed=9, id_base=trade_id_base(T0 + 30_000))
    again_ids = trade_ids(again)
    for symbol, ids in first_ids.items():
        assert ids == list(range(ids[0], ids[0] + len(ids)))  # still increasing by one per trade
        assert max(ids) < min(again_ids[symbol]), symbol
    same = SimulatedMarket(DEFAULT_SYMBOLS, seed=9, id_base=trade_id_base(T0))
    assert trade_ids(same) == first_ids  # deterministic for a seed and a start


async def test_the_served_feed_numbers_trades_from_its_start_time() -> None:
    def first_trade_id(feed: Feed) -> int:
        assert isinstance(feed, SimulatedFeed)
        return trade_ids(feed.market, 20)["BTCUSDT"][0]

    options = {"symbols": ["BTCUSDT"], "seed": 9, "tick_rate": 10.0, "book_depth": 5}
    before = trade_id_base(now_ms())
    first = first_trade_id(open_feed("simulated://", **options))
    await asyncio.sleep(0.01)
    second = first_trade_id(open_feed("simulated://", **options))
    assert before < first < trade_id_base(now_ms()) + 2_000_000
    assert second - first >= 10 * TRADE_IDS_PER_MS  # 10 ms later: 10,000 ids above
