"""The Binance adapter: its pure mappings on sample payloads, and the real app on a local fake exchange."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient

from bixweb.errors import ConfigError
from bixweb.feeds import open_feed, upstream_connected
from bixweb.feeds.adapter import Frame, Intake, MalformedFrame, Parsed
from bixweb.feeds.binance import BinanceAdapter, open_binance, parse_frame, stream_names
from bixweb.feeds.exchange import ConnectionOptions, ExchangeFeed
from bixweb.model import Book, Candle, CandleUpdate, Interval, TickerStats, Trade
from bixweb.retry import backoff
from bixweb.web.app import create_app
from tests.fake_exchange import FakeExchange, depth_payload, kline_event, ticker_event, trade_event
from tests.support import assert_valid, fast_settings, unwrap

Message = dict[str, Any]
Factory = Callable[..., Any]
T0 = 1_764_158_400_000  # a whole hour
SYMBOLS = ("BTCUSDT", "ETHUSDT")


def frame(stream: str, data: dict[str, Any]) -> str:
    return json.dumps({"stream": stream, "data": data})


# -- the pure mappings ---------------------------------------------------------------


def test_every_symbol_gets_four_lowercase_streams_on_one_combined_url() -> None:
    assert stream_names(["BTCUSDT"]) == ["btcusdt@ticker", "btcusdt@trade", "btcusdt@depth20@100ms", "btcusdt@kline_1m"]
    url = BinanceAdapter("ws://127.0.0.1:9/").connect_url(["BTCUSDT", "ETHUSDT"])
    assert url.startswith("ws://127.0.0.1:9/stream?streams=btcusdt@ticker/btcusdt@trade/")
    assert url.endswith("/ethusdt@depth20@100ms/ethusdt@kline_1m")
    assert BinanceAdapter().connect_url(["BTCUSDT"]).startswith("wss://stream.binance.com:9443/stream?streams=")


def test_a_24h_ticker_becomes_the_exchanges_statistics() -> None:
    data = ticker_event(
        "BTCUSDT",
        last=95_000.5,
        bid=95_000.4,
        ask=95_000.6,
        open=93_000.0,
        high=96_000.0,
        low=92_000.0,
        volume=1234.5,
        quote_volume=117_000_000.25,
        time=T0,
    )
    assert parse_frame(frame("btcusdt@ticker", data), T0 + 7, 10) == Parsed(
        (
            TickerStats(
                "BTCUSDT",
                price=95_000.5,
                bid=95_000.4,
                ask=95_000.6,
                open=93_000.0,
                high=96_000.0,
                low=92_000.0,
                volume=1234.5,
                quote_volume=117_000_000.25,
                time=T0,
            ),
        )
    )


def test_a_trade_takes_the_takers_side_from_the_maker_flag() -> None:
    sold = trade_event("ETHUSDT", 77, 3400.12, 0.5, buyer_is_maker=True, time=T0)
    bought = trade_event("ETHUSDT", 78, 3400.13, 0.25, buyer_is_maker=False, time=T0 + 1)
    assert parse_frame(frame("ethusdt@trade", sold), 0, 10).events == (Trade("ETHUSDT", 77, 3400.12, 0.5, "sell", T0),)
    assert parse_frame(frame("ethusdt@trade", bought), 0, 10).events == (
        Trade("ETHUSDT", 78, 3400.13, 0.25, "buy", T0 + 1),
    )


def test_partial_depth_takes_its_symbol_from_the_stream_and_its_time_from_receipt() -> None:
    bids = [(100.0 - n, 1.0 + n) for n in range(20)]
    asks = [(101.0 + n, 2.0 + n) for n in range(20)]
    parsed = parse_frame(frame("solusdt@depth20@100ms", depth_payload(bids, asks, 42)), T0 + 5, 3)
    assert parsed.events == (Book("SOLUSDT", tuple(bids[:3]), tuple(asks[:3]), T0 + 5),)


def test_a_kline_becomes_the_exchanges_candle_of_its_interval() -> None:
    data = kline_event(
        "BTCUSDT", start=T0, open=1.0, high=3.0, low=0.5, close=2.0, volume=10.25, closed=True, time=T0 + 60_001
    )
    assert parse_frame(frame("btcusdt@kline_1m", data), 0, 10).events == (
        CandleUpdate("BTCUSDT", Interval.M1, Candle(T0, 1.0, 3.0, 0.5, 2.0, 10.25, True), T0 + 60_001),
    )


def test_replies_are_no_events_and_a_shutdown_notice_asks_for_a_new_connection() -> None:
    assert parse_frame('{"result": null, "id": 1}', 0, 10) == Parsed()
    assert parse_frame('{"event": {"e": "serverShutdown", "E": 1}}', 0, 10) == Parsed(reconnect=True)
    assert parse_frame('{"e": "serverShutdown", "E": 1}', 0, 10) == Parsed(reconnect=True)


GOOD_TRADE = trade_event("BTCUSDT", 5, 1.0, 1.0, buyer_is_maker=False, time=T0)


@pytest.mark.parametrize(
    ("text", "fault"),
    [
        ("SECRET{", "not JSON"),
        ('["SECRET"]', "not a JSON object"),
        ('{"stream": "btcusdt@trade"}', "not a combined-stream frame"),
        (frame("btcusdt@bookTicker", {"u": 1}), "did not ask for"),
        (frame("btcusdt@trade", {**GOOD_TRADE, "p": "SECRET"}), "'p' is not a decimal string"),
        (frame("btcusdt@trade", {**GOOD_TRADE, "p": "-1.0"}), "'p' is not a decimal string"),
        (frame("btcusdt@trade", {**GOOD_TRADE, "q": "nan"}), "'q' is not a decimal string"),
        (frame("btcusdt@trade", {**GOOD_TRADE, "q": 1.5}), "'q' is not a decimal string"),
        (frame("btcusdt@trade", {**GOOD_TRADE, "t": 0}), "'t' is not an integer of at least 1"),
        (frame("btcusdt@trade", {**GOOD_TRADE, "m": "SECRET"}), "'m' is not a boolean"),
        (frame("btcusdt@trade", {**GOOD_TRADE, "s": "SECRET lower"}), "names no symbol"),
        (frame("btcusdt@trade", {k: v for k, v in GOOD_TRADE.items() if k != "T"}), "without 'T'"),
        (frame("btcusdt@trade", {**GOOD_TRADE, "e": "aggTrade"}), "another event type"),
        (frame("btcusdt@depth20@100ms", {"lastUpdateId": 1, "bids": [["1.0"]], "asks": []}), "not [price, quantity]"),
        (frame("btcusdt@depth20@100ms", {"bids": [], "asks": []}), "without 'lastUpdateId'"),
        (
            frame(
                "btcusdt@kline_1m",
                {
                    **kline_event("BTCUSDT", start=T0, open=1, high=1, low=1, close=1, volume=1, closed=False, time=T0),
                    "k": "SECRET",
                },
            ),
            "'k' is not an object",
        ),
        (
            frame(
                "btcusdt@kline_3m",
                kline_event(
                    "BTCUSDT", start=T0, open=1, high=1, low=1, close=1, volume=1, closed=False, time=T0, interval="3m"
                ),
            ),
            "interval",
        ),
        (
            frame(
                "btcusdt@kline_1m",
                kline_event("BTCUSDT", start=T0 + 5, open=1, high=1, low=1, close=1, volume=1, closed=False, time=T0),
            ),
            "not the start of its interval",
        ),
    ],
)
def test_a_malformed_frame_is_refused_naming_the_fault_not_the_content(text: str, fault: str) -> None:
    with pytest.raises(MalformedFrame, match=".*") as caught:
        parse_frame(text, 0, 10)
    assert fault in str(caught.value)
    assert "SECRET" not in str(caught.value) and "nan" not in str(caught.value)


def test_reconnect_delays_grow_exponentially_with_jitter_up_to_the_cap() -> None:
    delays = backoff(0.5, 8.0, rng=random.Random(3))
    taken = [next(delays) for _ in range(8)]
    ceilings = [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0]
    assert all(c / 2 <= d <= c for d, c in zip(taken, ceilings, strict=True)), taken
    assert len(set(taken)) == len(taken)  # jittered, not in step
    assert [next(backoff(0.5, 8.0, rng=random.Random(3))) for _ in range(2)] == [taken[0]] * 2


def test_binance_urls_are_checked_at_start_up() -> None:
    feed = open_feed(
        "binance://?url=ws://127.0.0.1:9&rotate=3600&silence=30&flush=0",
        symbols=SYMBOLS,
        seed=1,
        tick_rate=1.0,
        book_depth=5,
    )
    assert isinstance(feed, ExchangeFeed) and upstream_connected(feed) is False
    assert feed.options.rotate_after == 3600 and feed.options.silence == 30 and feed.options.flush == 0
    for url, fault in [
        ("binance://stream.binance.com", "no host"),
        ("binance://?url=http://example.org", "not a ws://"),
        ("binance://?speed=2", "no option 'speed'"),
        ("binance://?rotate=0", "rotate"),
        ("binance://?silence=soon", "silence"),
    ]:
        with pytest.raises(ConfigError, match=fault):
            open_binance(url, symbols=SYMBOLS, book_depth=5)
    with pytest.raises(ConfigError, match="at most 256 symbols"):
        open_binance("binance://", symbols=[f"S{n}USDT" for n in range(257)], book_depth=5)


# -- the intake: frames of several connections → events ---------------------------------------------------


def intake(symbols: tuple[str, ...] = SYMBOLS, unlisted_after_ms: int = 60_000) -> Intake:
    return Intake(BinanceAdapter(book_depth=5), symbols, unlisted_after_ms=unlisted_after_ms)


def trade_frame(connection: int, trade_id: int, symbol: str = "BTCUSDT") -> Frame:
    data = trade_event(symbol, trade_id, 100.0, 1.0, buyer_is_maker=False, time=T0 + trade_id)
    return Frame(connection, T0, frame(f"{symbol.lower()}@trade", data))


def book_frame(connection: int, bid: float) -> Frame:
    return Frame(connection, T0 + int(bid), frame("btcusdt@depth20@100ms", depth_payload([(bid, 1.0)], [], 1)))


def test_while_two_connections_overlap_each_trade_counts_once_and_only_the_new_ones_states() -> None:
    take = intake()
    take.newest = 1
    first = take.take([trade_frame(1, 1), trade_frame(1, 2), book_frame(1, 10.0)], T0)
    take.newest = 2
    overlap = take.take(
        [
            trade_frame(2, 2),
            trade_frame(1, 3),
            book_frame(1, 11.0),
            trade_frame(2, 3),
            trade_frame(2, 4),
            book_frame(2, 12.0),
        ],
        T0,
    )
    assert [(type(e).__name__, getattr(e, "id", None)) for e in first + overlap] == [
        ("Trade", 1),
        ("Trade", 2),
        ("Book", None),
        ("Trade", 3),
        ("Trade", 4),
        ("Book", None),
    ]
    assert isinstance(overlap[-1], Book) and overlap[-1].best_bid == 12.0


def test_malformed_frames_are_counted_and_logged_without_content_at_most_once_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    take = intake()
    caplog.set_level(logging.WARNING, "bixweb.feeds")
    bad = Frame(1, T0, "SECRET payload {")
    assert take.take([bad, bad, trade_frame(1, 1), bad], T0) == [Trade("BTCUSDT", 1, 100.0, 1.0, "buy", T0 + 1)]
    take.take([bad], T0 + 30_000)
    take.take([bad], T0 + 61_000)
    assert take.malformed == 5
    reports = [r.getMessage() for r in caplog.records if r.getMessage().startswith("feed_malformed_frame")]
    assert len(reports) == 2, reports
    assert "feed_malformed_frame" in reports[0] and "total=1" in reports[0]
    assert "since_last_report=4" in reports[1] and "total=5" in reports[1]
    assert "SECRET" not in caplog.text


def test_symbols_not_carried_are_dropped_and_silent_symbols_told_once(caplog: pytest.LogCaptureFixture) -> None:
    take = intake(("BTCUSDT", "NOPEUSDT"), unlisted_after_ms=1_000)
    caplog.set_level(logging.WARNING, "bixweb.feeds")
    for n in range(3):
        assert take.take([trade_frame(1, n + 1, "ETHUSDT")], T0 + n) == []
    assert len(take.take([trade_frame(1, 1)], T0 + 10)) == 1
    take.take([trade_frame(1, 2)], T0 + 500)
    take.take([trade_frame(1, 3)], T0 + 1_100)
    take.take([trade_frame(1, 4)], T0 + 5_000)
    messages = [r.getMessage() for r in caplog.records]
    assert [m.split()[0] for m in messages] == ["feed_foreign_symbol", "feed_silent_symbols"]
    assert "symbol=ETHUSDT" in messages[0] and "symbols=NOPEUSDT" in messages[1]


def test_a_shutdown_notice_on_the_newest_connection_asks_for_a_replacement() -> None:
    take = intake()
    take.newest = 2
    take.take([Frame(1, T0, '{"event": {"e": "serverShutdown", "E": 1}}')], T0)
    assert not take.reconnect_asked  # the old one is going anyway
    take.take([Frame(2, T0, '{"event": {"e": "serverShutdown", "E": 1}}')], T0)
    assert take.reconnect_asked


# -- the real app on the fake exchange ---------------------------------------------------------------------


@pytest.fixture
async def exchange(aiohttp_server: Factory) -> tuple[FakeExchange, str]:
    fake = FakeExchange(SYMBOLS)
    server = await aiohttp_server(fake.app)
    return fake, f"ws://127.0.0.1:{server.port}"


async def start_app(aiohttp_client: Factory, feed: str | ExchangeFeed) -> TestClient[Any, Any]:
    """The real app on ``feed``: a feed URL (opened by the app, as ``--feed`` is) or a feed made here."""
    settings = fast_settings(
        symbols=SYMBOLS, stale_after=1.0, status_interval=0.5, feed=feed if isinstance(feed, str) else "simulated://"
    )
    app = create_app(settings, feed=None if isinstance(feed, str) else feed)
    client: TestClient[Any, Any] = await aiohttp_client(app)
    return client


async def messages(ws: aiohttp.ClientWebSocketResponse, timeout: float) -> list[Message]:
    msg = await ws.receive(timeout=timeout)
    assert msg.type is WSMsgType.TEXT, msg
    frame = json.loads(msg.data)
    assert_valid(frame)
    return unwrap(frame)


async def read_until(
    ws: aiohttp.ClientWebSocketResponse, done: Callable[[Message], bool], timeout: float = 5.0
) -> list[Message]:
    """Messages up to and including the first for which ``done`` holds."""
    seen: list[Message] = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"timed out; saw {[m['type'] for m in seen][-20:]}"
        for m in await messages(ws, left):
            seen.append(m)
            if done(m):
                return seen


def is_trade(trade_id: int) -> Callable[[Message], bool]:
    return lambda m: m["type"] == "trade" and m["data"]["id"] == trade_id


def is_status(feed: str) -> Callable[[Message], bool]:
    return lambda m: m["type"] == "status" and m["feed"] == feed


async def test_tickers_trades_books_and_candles_arrive_normalized(
    aiohttp_client: Factory, exchange: tuple[FakeExchange, str]
) -> None:
    fake, upstream = exchange
    client = await start_app(aiohttp_client, f"binance://?url={upstream}&flush=0.01")
    peer = await fake.wait_for_peers(1)
    assert peer.streams == set(stream_names(SYMBOLS)) and not fake.refused
    async with client.ws_connect("/ws?symbols=BTCUSDT&channels=ticker,trades,book,candles_1m") as ws:
        await read_until(ws, lambda m: m["type"] == "initial_data")
        await fake.publish(
            "btcusdt@ticker",
            ticker_event(
                "BTCUSDT",
                last=95_000.0,
                bid=94_999.0,
                ask=95_001.0,
                open=93_000.0,
                high=96_000.0,
                low=92_000.0,
                volume=1234.5,
                quote_volume=117_000_000.0,
                time=T0 + 1_000,
            ),
        )
        seen = await read_until(ws, lambda m: m["type"] == "market_update")
        assert seen[-1]["data"] == {
            "price": 95_000.0,
            "bid": 94_999.0,
            "ask": 95_001.0,
            "open": 93_000.0,
            "high": 96_000.0,
            "low": 92_000.0,
            "volume": 1234.5,
            "quote_volume": 117_000_000.0,
            "change": 2000.0,
            "change_pct": 2.1505,
            "time": T0 + 1_000,
        }
        trade_id = await fake.trade("BTCUSDT", 96_500.0, 0.25, buyer_is_maker=True, time=T0 + 2_000)
        seen = await read_until(ws, lambda m: m["type"] == "market_update" and m["data"]["price"] == 96_500.0)
        (trade,) = [m for m in seen if m["type"] == "trade"]
        assert trade["data"] == {"id": trade_id, "price": 96_500.0, "qty": 0.25, "side": "sell", "time": T0 + 2_000}
        assert seen[-1]["data"]["high"] == 96_500.0  # the range stretches to the last price
        levels = [(96_499.0 - n, 1.0 + n) for n in range(20)], [(96_501.0 + n, 2.0 + n) for n in range(20)]
        await fake.publish("btcusdt@depth20@100ms", depth_payload(*levels, 7))
        seen = await read_until(ws, lambda m: m["type"] == "book")
        book = seen[-1]["data"]
        assert book["bids"] == [list(level) for level in levels[0][:10]]
        assert book["asks"] == [list(level) for level in levels[1][:10]]
        assert abs(book["time"] - time.time() * 1000) < 5_000
        await fake.publish(
            "btcusdt@kline_1m",
            kline_event(
                "BTCUSDT",
                start=T0,
                open=95_100.0,
                high=96_600.0,
                low=94_900.0,
                close=96_500.0,
                volume=321.5,
                closed=False,
                time=T0 + 2_100,
            ),
        )
        seen = await read_until(ws, lambda m: m["type"] == "candle" and m["data"]["volume"] == 321.5)
        assert seen[-1]["interval"] == "1m" and seen[-1]["data"] == {
            "start": T0,
            "open": 95_100.0,
            "high": 96_600.0,
            "low": 94_900.0,
            "close": 96_500.0,
            "volume": 321.5,
            "closed": False,
        }


async def test_a_dropped_or_closed_upstream_connection_is_made_again_and_data_flows(
    aiohttp_client: Factory, exchange: tuple[FakeExchange, str]
) -> None:
    fake, upstream = exchange
    client = await start_app(aiohttp_client, f"binance://?url={upstream}&flush=0.01")
    await fake.wait_for_peers(1)
    async with client.ws_connect("/ws?symbols=ETHUSDT&channels=trades") as ws:
        await read_until(ws, lambda m: m["type"] == "initial_data")
        first = await fake.trade("ETHUSDT", 3400.0, time=T0)
        await read_until(ws, is_trade(first))
        fake.drop()  # a reset, no closing handshake
        await fake.wait_for_peers(2, timeout=5.0)
        second = await fake.trade("ETHUSDT", 3401.0, time=T0 + 1)
        await read_until(ws, is_trade(second))
        await fake.close_all(1001)  # as Binance does at 24 h
        await fake.wait_for_peers(3, timeout=5.0)
        third = await fake.trade("ETHUSDT", 3402.0, time=T0 + 2)
        seen = await read_until(ws, is_trade(third))
        assert [m["data"]["id"] for m in seen if m["type"] == "trade"] == [third]


async def test_a_silent_upstream_turns_the_status_stale_and_its_return_live(
    aiohttp_client: Factory, exchange: tuple[FakeExchange, str]
) -> None:
    fake, upstream = exchange
    feed = open_binance(f"binance://?url={upstream}&flush=0.01", symbols=SYMBOLS, book_depth=10)
    client = await start_app(aiohttp_client, feed)
    await fake.wait_for_peers(1)
    flow = asyncio.create_task(fake.run_trades("BTCUSDT", period=0.05))
    try:
        async with client.ws_connect("/ws?symbols=BTCUSDT&channels=ticker") as ws:
            await read_until(ws, is_status("live"), timeout=5.0)
            fake.pause()  # the socket stays open and answers pings; only data stops
            silent_at = time.monotonic()
            await read_until(ws, is_status("stale"), timeout=5.0)
            assert 0.8 < time.monotonic() - silent_at < 3.0  # --stale-after 1
            assert upstream_connected(feed) is True
            fake.resume()
            await read_until(ws, is_status("live"), timeout=5.0)
        assert len(fake.peers) == 1  # no reconnect was needed, and none faked liveness
    finally:
        flow.cancel()


async def test_the_exchanges_pings_are_answered_with_their_payload(
    aiohttp_client: Factory, exchange: tuple[FakeExchange, str]
) -> None:
    fake, upstream = exchange
    await start_app(aiohttp_client, f"binance://?url={upstream}")
    peer = await fake.wait_for_peers(1)
    await fake.ping(b"1764158400000")
    async with asyncio.timeout(2.0):
        while b"1764158400000" not in peer.pongs:
            await asyncio.sleep(0.01)


async def test_connections_are_replaced_before_their_age_limit_losing_and_repeating_no_trade(
    aiohttp_client: Factory, exchange: tuple[FakeExchange, str]
) -> None:
    fake, upstream = exchange
    # 1 s between a replacement's close and the next one: a busy machine may take a while to close
    options = ConnectionOptions(rotate_after=1.2, overlap=0.2, flush=0.01)
    feed = ExchangeFeed(BinanceAdapter(upstream, book_depth=10), SYMBOLS, options)
    client = await start_app(aiohttp_client, feed)
    await fake.wait_for_peers(1)
    async with client.ws_connect("/ws?symbols=BTCUSDT&channels=trades") as ws:
        snapshot = await read_until(ws, lambda m: m["type"] == "initial_data")
        flow = asyncio.create_task(fake.run_trades("BTCUSDT", period=0.005))
        try:
            await fake.wait_for_peers(4, timeout=10.0)
        finally:
            flow.cancel()
        last = await fake.trade("BTCUSDT", 100.0, time=T0)
        seen = await read_until(ws, is_trade(last))
    trades = snapshot[-1].get("trades", {}).get("BTCUSDT", []) + [m["data"] for m in seen if m["type"] == "trade"]
    ids = [t["id"] for t in trades]
    assert len(ids) > 100
    assert ids == list(range(ids[0], ids[0] + len(ids))), "a trade was lost or repeated across a replacement"
    seqs = [m["seq"] for m in seen if m["type"] == "trade"]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert fake.most_open == 2  # make before break
    async with asyncio.timeout(2.0):
        while len(fake.open_peers) > 1:  # the last replaced connection closes after its overlap
            await asyncio.sleep(0.01)


async def test_malformed_upstream_frames_are_counted_and_the_feed_goes_on(
    aiohttp_client: Factory, exchange: tuple[FakeExchange, str], caplog: pytest.LogCaptureFixture
) -> None:
    fake, upstream = exchange
    feed = ExchangeFeed(BinanceAdapter(upstream, book_depth=10), SYMBOLS, ConnectionOptions(flush=0.01))
    client = await start_app(aiohttp_client, feed)
    await fake.wait_for_peers(1)
    async with client.ws_connect("/ws?symbols=BTCUSDT&channels=trades") as ws:
        await read_until(ws, lambda m: m["type"] == "initial_data")
        await fake.send_raw("SECRET not json")
        await fake.send_raw(b"\x00SECRET binary")
        await fake.send_raw(frame("btcusdt@trade", {"e": "trade", "s": "SECRET"}))
        good = await fake.trade("BTCUSDT", 101.0, time=T0)
        await read_until(ws, is_trade(good))
    assert feed.intake.malformed == 3
    assert len(fake.peers) == 1
    assert "feed_malformed_frame" in caplog.text and "SECRET" not in caplog.text


async def test_an_unreachable_upstream_is_down_not_merely_stale(aiohttp_client: Factory) -> None:
    from tests.support import free_port

    client = await start_app(aiohttp_client, f"binance://?url=ws://127.0.0.1:{free_port()}&flush=0.01")
    async with client.ws_connect("/ws?symbols=BTCUSDT&channels=ticker") as ws:
        await read_until(ws, is_status("down"), timeout=5.0)  # no link to the exchange at all
    health = await (await client.get("/healthz")).json()
    assert health["feed"] == "down"
