"""Tests of ``bixweb.client``: pure helpers without sockets, the client against the real server."""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from bixweb.client import (
    MarketView,
    Received,
    Resync,
    WebSocketClient,
    backoff_delays,
    book_verified,
    error_from_message,
    message_stream,
    resume_requests,
    subscription_requests,
    unwrap,
)
from bixweb.errors import ProtocolError
from bixweb.feeds.simulated import DEFAULT_SYMBOLS
from bixweb.protocol import Since, book_checksum
from bixweb.web.service import SERVICE
from tests.client_fixtures import (
    ClientFactory,
    ServerFactory,
    bixweb_server_fixture,  # noqa: F401 - fixture "bixweb_server"
    bot_connections,
    eventually,
    make_bixweb_server_fixture,  # noqa: F401 - fixture "make_bixweb_server"
    make_client_fixture,  # noqa: F401 - fixture "make_client"
    tap_frames,
    ws_url,
)
from tests.support import ROOT, ServerProcess, free_port

Start = Callable[..., ServerProcess]

Message = dict[str, Any]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def of_type(messages: list[Message], kind: str, symbol: str | None = None) -> list[Message]:
    return [m for m in messages if m["type"] == kind and (symbol is None or m.get("symbol") == symbol)]


# -- pure helpers -------------------------------------------------------------


def test_backoff_delays_grow_with_full_jitter_up_to_the_maximum() -> None:
    delays = list(itertools.islice(backoff_delays(1.0, 30.0, random.Random(7)), 60))
    ceilings = [min(30.0, 2.0**n) for n in range(60)]
    assert all(0.0 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    assert max(delays) <= 30.0
    assert statistics.mean(delays[:2]) < statistics.mean(delays[10:])  # grows
    assert len(set(delays)) == len(delays)  # jittered, not a fixed ladder
    assert delays == list(itertools.islice(backoff_delays(1.0, 30.0, random.Random(7)), 60))  # deterministic
    firsts = [next(backoff_delays(1.0, 30.0, random.Random(seed))) for seed in range(500)]
    assert 0.9 < max(firsts) <= 1.0 and 0.4 < statistics.mean(firsts) < 0.6  # first wait: up to ~initial
    with pytest.raises(ValueError):
        next(backoff_delays(0.0, 1.0))
    with pytest.raises(ValueError):
        next(backoff_delays(2.0, 1.0))


def test_unwrap_yields_batch_messages_in_order() -> None:
    inner = [{"type": "trade", "seq": 1}, {"type": "market_update", "seq": 2}]
    assert list(unwrap({"type": "batch", "messages": inner})) == inner
    assert list(unwrap({"type": "status"})) == [{"type": "status"}]
    deep: dict[str, object] = {"type": "trade", "seq": 9}
    for _ in range(5_000):  # a broken server's nesting is not followed down (no RecursionError)
        deep = {"type": "batch", "messages": [deep]}
    assert list(unwrap({"type": "batch", "messages": [*inner, deep, "x", 3]})) == inner
    assert list(unwrap({"type": "batch", "messages": {"not": "a list"}})) == []


def test_message_stream_follows_the_protocol_table() -> None:
    assert message_stream({"type": "market_update", "symbol": "BTCUSDT"}) == "ticker:BTCUSDT"
    assert message_stream({"type": "trade", "symbol": "BTCUSDT"}) == "trades:BTCUSDT"
    assert message_stream({"type": "book", "symbol": "ETHUSDT"}) == "book:ETHUSDT"
    assert message_stream({"type": "candle", "symbol": "ETHUSDT", "interval": "1m"}) == "candles_1m:ETHUSDT"
    assert message_stream({"type": "status"}) is None


def test_subscription_requests_turn_one_set_into_another() -> None:
    have = {("ticker", "BTCUSDT"), ("ticker", "SOLUSDT")}
    want = {("ticker", "BTCUSDT"), ("trades", "ETHUSDT"), ("book", "ETHUSDT")}
    assert subscription_requests(have, want) == [
        ("unsubscribe", ["SOLUSDT"], ["ticker"]),
        ("subscribe", ["ETHUSDT"], ["book", "trades"]),
    ]
    assert subscription_requests(want, want) == []
    many = {("trades", f"S{n:03d}") for n in range(450)}
    assert [len(symbols) for _, symbols, _ in subscription_requests(set(), many)] == [200, 200, 50]


def trade(seq: int, *, symbol: str = "BTCUSDT", epoch: int = 1) -> Message:
    data = {"id": 5_000 + seq, "price": 100.0, "qty": 1.0, "side": "buy", "time": seq}
    return {"type": "trade", "ts": seq, "epoch": epoch, "symbol": symbol, "seq": seq, "data": data}


def book(seq: int, *, symbol: str = "BTCUSDT", epoch: int = 1, bid: float = 99.5, bad: bool = False) -> Message:
    return {"type": "book", "ts": seq, "epoch": epoch, "symbol": symbol, "seq": seq, "data": book_data(bid, bad=bad)}


def book_data(bid: float, *, bad: bool = False) -> Message:
    bids, asks = [[bid, 2.0], [bid - 0.5, 3.0]], [[bid + 1.0, 1.5]]
    return {"bids": bids, "asks": asks, "time": 1, "checksum": book_checksum(bids, asks) + (1 if bad else 0)}


def snapshot(epoch: int, seq: dict[str, int], **parts: Any) -> Message:
    return {"type": "initial_data", "ts": 1, "epoch": epoch, "seq": seq, **parts}


def test_resume_requests_carry_since_for_every_stream_they_name() -> None:
    wanted = {
        ("ticker", "BTCUSDT"),
        ("trades", "BTCUSDT"),
        ("trades", "ETHUSDT"),
        ("book", "ETHUSDT"),
        ("ticker", "SOLUSDT"),
    }
    positions = {
        "ticker:BTCUSDT": (7, 10),
        "trades:BTCUSDT": (7, 20),
        "trades:ETHUSDT": (7, 30),
        "book:ETHUSDT": (7, 5),
        "book:XRPUSDT": (7, 1),
    }
    assert resume_requests(wanted, positions) == [
        (["ETHUSDT"], ["book"], Since(7, {"book:ETHUSDT": 5})),
        (["BTCUSDT"], ["ticker"], Since(7, {"ticker:BTCUSDT": 10})),
        (["BTCUSDT", "ETHUSDT"], ["trades"], Since(7, {"trades:BTCUSDT": 20, "trades:ETHUSDT": 30})),
        (["SOLUSDT"], ["ticker"], None),  # no position: start over from a snapshot
    ]
    # streams seen in different epochs never share a since
    two_epochs = resume_requests(
        {("ticker", "BTCUSDT"), ("ticker", "ETHUSDT")}, {"ticker:BTCUSDT": (1, 3), "ticker:ETHUSDT": (2, 4)}
    )
    assert [since for _, _, since in two_epochs] == [Since(1, {"ticker:BTCUSDT": 3}), Since(2, {"ticker:ETHUSDT": 4})]
    assert resume_requests(set(), positions) == []


def test_resume_requests_keep_since_within_the_protocol_limit() -> None:
    channels = ["ticker", "trades", "book", "candles_1s", "candles_1m", "candles_5m", "candles_1h"]
    symbols = [f"S{n:03d}USDT" for n in range(300)]
    wanted = {(c, s) for c in channels for s in symbols}
    positions = {f"{c}:{s}": (9, 1) for c, s in wanted}
    requests = resume_requests(wanted, positions)
    assert [len(names) for names, _, _ in requests] == [142, 142, 16]  # 142 x 7 <= 1000 streams
    covered: set[str] = set()
    for names, chans, since in requests:
        assert since is not None and set(since.seq) == {f"{c}:{s}" for c in chans for s in names}
        assert len(since.seq) <= 1000
        covered |= set(since.seq)
    assert covered == set(positions)


def test_market_view_dedupes_and_holds_trades_back_until_a_gap_is_filled() -> None:
    view = MarketView()
    first = snapshot(1, {"trades:BTCUSDT": 10}, trades={"BTCUSDT": []})
    assert view.receive(first) == Received([first])
    assert view.receive(trade(11)).deliver == [trade(11)]
    assert view.receive(trade(11)) == Received() and view.duplicates == 1
    gap = view.receive(trade(13))
    assert gap == Received(resyncs=[Resync("trades", "BTCUSDT", Since(1, {"trades:BTCUSDT": 11}), "gap")])
    assert gap.resyncs[0].stream == "trades:BTCUSDT"
    assert view.receive(trade(14)) == Received()  # held too; the gap is already being filled
    assert view.gaps == 1 and view.seq("trades:BTCUSDT") == 11
    assert view.receive(trade(13)) == Received() and view.duplicates == 2  # already held
    assert view.receive(trade(12)).deliver == [trade(12), trade(13), trade(14)]  # the replay, then the held
    assert view.receive(trade(13)) == Received() and view.duplicates == 3  # the replay goes on
    assert view.receive(trade(15)).deliver == [trade(15)]
    assert view.gaps == 1 and view.seq("trades:BTCUSDT") == 15
    # trades on another symbol are another stream
    assert view.receive(trade(3, symbol="ETHUSDT")).deliver == [trade(3, symbol="ETHUSDT")]


def test_alerts_are_tracked_like_trades_a_gap_asks_for_the_rest() -> None:
    view = MarketView()

    def alert(seq: int) -> dict[str, Any]:
        return {"type": "alert", "epoch": 1, "symbol": "BTCUSDT", "seq": seq, "data": {"rule_id": "r"}}

    assert view.receive(alert(1)).deliver == [alert(1)]
    gap = view.receive(alert(3))
    assert gap == Received(resyncs=[Resync("alerts", "BTCUSDT", Since(1, {"alerts:BTCUSDT": 1}), "gap")])
    assert view.receive(alert(2)).deliver == [alert(2), alert(3)]
    assert view.positions()["alerts:BTCUSDT"] == (1, 3)  # so a resume names it in since


def test_market_view_state_streams_may_skip_and_a_new_epoch_starts_over() -> None:
    view = MarketView()
    update = {"type": "market_update", "epoch": 1, "symbol": "BTCUSDT", "seq": 4, "data": {"price": 2.0}}
    assert view.receive(update).deliver == [update]
    skipped = {**update, "seq": 9, "data": {"price": 3.0}}  # conflated by the server: no gap
    assert view.receive(skipped).deliver == [skipped]
    assert view.receive({**update, "seq": 8}) == Received()  # older
    candle = {"type": "candle", "epoch": 1, "symbol": "BTCUSDT", "interval": "1m", "seq": 3, "data": {}}
    assert view.receive(candle).deliver == [candle] and view.receive({**candle, "seq": 7}).deliver
    assert view.gaps == 0 and view.duplicates == 1 and view.ticker("BTCUSDT") == {"symbol": "BTCUSDT", "price": 3.0}
    assert view.receive(trade(40)).deliver == [trade(40)]
    # the server restarted: numbering starts again, nothing is a duplicate or a gap
    assert view.receive(trade(1, epoch=2)).deliver == [trade(1, epoch=2)]
    assert view.receive({**update, "epoch": 2, "seq": 1}).deliver
    assert view.epoch == 2 and view.gaps == 0 and view.duplicates == 1
    assert view.positions() == {"ticker:BTCUSDT": (2, 1), "candles_1m:BTCUSDT": (1, 7), "trades:BTCUSDT": (2, 1)}
    view.receive({"type": "welcome", "epoch": 3, "subscriptions": {}})
    assert view.epoch == 3


def test_market_view_checks_book_checksums() -> None:
    assert book_verified(book_data(99.5)) and not book_verified(book_data(99.5, bad=True))
    assert book_verified({"bids": [], "asks": []})  # no checksum to check
    assert not book_verified({"bids": [["x"]], "asks": [], "checksum": 1})
    view = MarketView()
    assert view.receive(book(5)).deliver == [book(5)]
    bad = view.receive(book(6, bid=98.0, bad=True))
    assert bad == Received(resyncs=[Resync("book", "BTCUSDT", Since(1, {"book:BTCUSDT": 5}), "checksum")])
    assert view.book("BTCUSDT") == book(5)["data"] and view.seq("book:BTCUSDT") == 5
    assert view.receive(book(7, bad=True)) == Received()  # a resync is already on its way
    assert view.checksum_failures == 2
    view.resync_finished("book:BTCUSDT")
    assert view.receive(book(7, bid=97.0)).deliver == [book(7, bid=97.0)]  # the server's latest, replayed
    assert view.book("BTCUSDT") == book_data(97.0) and view.book("ETHUSDT") is None
    assert view.receive(book(8, bad=True)).resyncs[0].since == Since(1, {"book:BTCUSDT": 7})


def test_market_view_snapshots_start_streams_over_and_leave_out_bad_books() -> None:
    view = MarketView()
    view.receive(snapshot(1, {"trades:BTCUSDT": 10, "ticker:ETHUSDT": 3}, tickers={"ETHUSDT": {"price": 1.0}}))
    view.receive(trade(13))  # a gap: held
    view.receive(trade(14))
    first = snapshot(1, {"trades:BTCUSDT": 13}, trades={"BTCUSDT": []})  # could not replay: recovered false
    assert view.receive(first).deliver == [first, trade(14)]  # 13 is in the snapshot, 14 follows it
    view.connection_lost()
    books = {"BTCUSDT": book_data(50.0), "ETHUSDT": book_data(60.0, bad=True)}
    fresh = snapshot(2, {"ticker:ETHUSDT": 0, "book:BTCUSDT": 4, "book:ETHUSDT": 9}, books=books, recovered=False)
    received = view.receive(fresh)
    assert received.deliver == [{**fresh, "books": {"BTCUSDT": book_data(50.0)}}]
    assert received.resyncs == [Resync("book", "ETHUSDT", Since(2, {"book:ETHUSDT": 8}), "checksum")]
    assert view.ticker("ETHUSDT") is None  # no price in the new epoch yet
    assert view.book("BTCUSDT") == book_data(50.0) and view.book("ETHUSDT") is None
    assert view.epoch == 2 and view.checksum_failures == 1
    assert view.positions() == {
        "trades:BTCUSDT": (1, 14),
        "ticker:ETHUSDT": (2, 0),
        "book:BTCUSDT": (2, 4),
        "book:ETHUSDT": (2, 8),
    }
    view.reset()
    assert view.positions() == {} and view.book("BTCUSDT") is not None  # values stay, positions go


def test_market_view_asks_again_when_a_snapshot_leaves_a_hole_before_held_trades() -> None:
    view = MarketView()
    view.receive(trade(11))
    view.receive(trade(13))  # gap 1: 12 is missing
    view.receive(trade(16))
    first = snapshot(1, {"trades:BTCUSDT": 14})
    received = view.receive(first)  # covers 13 but not 15
    assert received == Received([first], [Resync("trades", "BTCUSDT", Since(1, {"trades:BTCUSDT": 14}), "gap")])
    assert view.gaps == 2
    assert view.receive(trade(15)).deliver == [trade(15), trade(16)]


def test_market_view_forgets_held_trades_with_the_connection() -> None:
    view = MarketView()
    view.receive(trade(1))
    view.receive(trade(3))
    view.connection_lost()  # the resume asks from seq 1 again
    assert view.positions() == {"trades:BTCUSDT": (1, 1)}
    assert view.receive(trade(3)).resyncs  # not a duplicate of the forgotten one: a gap again
    view.forget(["trades:BTCUSDT"])
    assert view.positions() == {} and view.receive(trade(9)).deliver == [trade(9)]


def test_error_from_message() -> None:
    error = error_from_message(
        {"type": "error", "ts": 1, "code": "unknown_symbol", "message": "no", "id": 3, "path": "$.symbols[0]"}
    )
    assert (error.code, error.request_id, error.path) == ("unknown_symbol", 3, "$.symbols[0]")
    assert error_from_message({"type": "error", "code": "brand_new", "message": "?"}).code == "internal_error"


def test_url_carries_the_initial_subscription() -> None:
    client = WebSocketClient(host="localhost", port=9000, symbols=["BTCUSDT", "ETHUSDT"], channels="ticker,trades")
    assert client.url == "ws://localhost:9000/ws?symbols=BTCUSDT,ETHUSDT&channels=ticker,trades"
    assert client.resume_url == "ws://localhost:9000/ws?channels=none"
    assert WebSocketClient().url == "ws://127.0.0.1:8080/ws"
    assert WebSocketClient("ws://h/ws?token=x").resume_url == "ws://h/ws?token=x&channels=none"


def test_client_module_does_not_import_aiohttp_web() -> None:
    code = "import sys, bixweb.client; print('aiohttp.web' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30, check=True)
    assert out.stdout.strip() == "False"


# -- against the real app, in-process -----------------------------------------


@pytest.mark.timeout(20)
async def test_receives_welcome_initial_data_and_updates(bixweb_server: TestServer, make_client: ClientFactory) -> None:
    seen: list[Message] = []
    client = make_client(ws_url(bixweb_server), on_message=[seen.append])
    await client.connect()
    assert client.is_connected()
    await eventually(lambda: len(of_type(seen, "market_update")) >= 40)
    assert [m["type"] for m in seen[:2]] == ["welcome", "initial_data"]
    assert not of_type(seen, "batch")  # unwrapped
    # 20 tickers a tick at 20 ticks/s come in batches: many updates share one flush window
    assert max(sum(1 for _ in group) for _, group in itertools.groupby(m["ts"] for m in seen[2:])) > 1
    price = client.get_latest_price("BTCUSDT")
    assert isinstance(price, float) and price > 0
    data = client.get_latest_data()
    assert set(data) == set(DEFAULT_SYMBOLS)
    assert data["BTCUSDT"]["price"] == price
    assert abs(now_ms() - data["BTCUSDT"]["time"]) < 5_000  # fresh
    assert client.gaps == 0 and client.dropped == 0 and client.welcome is not None
    await client.disconnect()
    assert not client.is_connected() and client.close_code == 1000
    await asyncio.sleep(0.3)
    assert not client.is_connected() and client.connections == 1  # no reconnect after disconnect()


@pytest.mark.timeout(20)
async def test_subscribe_and_unsubscribe(bixweb_server: TestServer, make_client: ClientFactory) -> None:
    seen: list[Message] = []
    client = make_client(ws_url(bixweb_server), on_message=[seen.append])
    await client.connect()
    ack = await client.subscribe(["SOLUSDT"], ["trades"])
    assert ack["type"] == "ack" and ack["op"] == "subscribe"
    assert (ack["symbols"], ack["channels"]) == (["SOLUSDT"], ["trades"])
    assert ack["subscriptions"]["trades"] == ["SOLUSDT"]
    first_id = ack["id"]
    await eventually(lambda: len(of_type(seen, "trade")) >= 5)
    assert {m["symbol"] for m in of_type(seen, "trade")} == {"SOLUSDT"}
    assert client.subscriptions["trades"] == ["SOLUSDT"]

    # two requests in flight at once: each gets its own answer, matched by id
    book_ack, unsub_ack = await asyncio.gather(
        client.subscribe("BTCUSDT", "book"), client.unsubscribe(["SOLUSDT"], ["trades"])
    )
    assert (book_ack["op"], book_ack["id"], book_ack["channels"]) == ("subscribe", first_id + 1, ["book"])
    assert (unsub_ack["op"], unsub_ack["id"], unsub_ack["symbols"]) == ("unsubscribe", first_id + 2, ["SOLUSDT"])
    mark = len(seen)
    await eventually(lambda: len(of_type(seen[mark:], "book")) >= 3)
    assert not of_type(seen[mark:], "trade")
    assert "trades" not in client.subscriptions and client.subscriptions["book"] == ["BTCUSDT"]

    with pytest.raises(ProtocolError) as refused:
        await client.subscribe(["FOOUSDT"], ["trades"])
    assert refused.value.code == "unknown_symbol"
    assert refused.value.request_id == first_id + 3

    client.request_timeout = 1e-6  # no answer can be that fast
    with pytest.raises(TimeoutError):
        await client.subscribe(["ETHUSDT"], ["book"])
    client.request_timeout = 10.0
    assert (await client.unsubscribe(["ETHUSDT"], ["book"]))["id"] == first_id + 5
    # the late ack still reached the callbacks, and answered nothing
    assert [a["id"] for a in of_type(seen, "ack")][-2:] == [first_id + 4, first_id + 5]
    assert client.is_connected() and client.gaps == 0


@pytest.mark.timeout(20)
async def test_queue_keeps_the_newest_messages(bixweb_server: TestServer, make_client: ClientFactory) -> None:
    seen: list[Message] = []
    client = make_client(ws_url(bixweb_server), queue_size=5, on_message=[seen.append])
    await client.connect()
    await eventually(lambda: client.dropped > 20)
    kept = client.queue
    assert len(kept) == 5
    assert kept == seen[-5:]
    assert client.dropped == len(seen) - 5
    assert min(m["ts"] for m in kept) >= max(m["ts"] for m in seen[:-5])


@pytest.mark.timeout(20)
async def test_async_for_drives_the_client_and_yields_unwrapped_messages(
    bixweb_server: TestServer, make_client: ClientFactory
) -> None:
    client = make_client(ws_url(bixweb_server), channels=["ticker", "trades"])
    got: list[Message] = []
    async with asyncio.timeout(10):
        async for message in client:  # no connect(): iterating starts the receive loop
            got.append(message)
            if len(of_type(got, "trade")) >= 10 and len(of_type(got, "market_update")) >= 10:
                break
    assert [m["type"] for m in got[:2]] == ["welcome", "initial_data"]
    assert {m["type"] for m in got[2:]} <= {"market_update", "trade", "status"}
    assert client.is_connected()
    await client.disconnect()
    async with asyncio.timeout(5):
        rest = [m async for m in client]  # what was still queued, then the end
    assert not of_type(rest, "batch")
    assert await client.get_message(timeout=0.05) is None


@pytest.mark.timeout(20)
async def test_callbacks_sync_async_and_failing(
    bixweb_server: TestServer, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    sync_seen: list[Message] = []
    async_seen: list[Message] = []

    def explode(message: Message) -> None:
        raise RuntimeError("boom")

    async def record(message: Message) -> None:
        await asyncio.sleep(0)
        async_seen.append(message)

    client = make_client(ws_url(bixweb_server), on_message=[explode, sync_seen.append])
    client.on_message.append(record)
    with caplog.at_level(logging.ERROR, logger="bixweb.client"):
        await client.connect()
        await eventually(lambda: len(async_seen) >= 30)
    assert sync_seen[: len(async_seen)] == async_seen
    assert async_seen[0]["type"] == "welcome"
    assert "callback" in caplog.text and "boom" in caplog.text
    assert client.is_connected()


def trade_ids(messages: list[Message], symbol: str) -> list[int]:
    """Trade ids in the order the callbacks got them: trade messages, and the new trades of a
    snapshot that stood in for a replay (``recovered: false``)."""
    ids: list[int] = []
    for m in messages:
        if m["type"] == "trade" and m["symbol"] == symbol:
            ids.append(m["data"]["id"])
        elif m["type"] == "initial_data" and m.get("recovered") is False and ids:
            ids += [t["id"] for t in m.get("trades", {}).get(symbol, []) if t["id"] > ids[-1]]
    return ids


def assert_every_trade_once(seen: list[Message], server: TestServer, symbol: str) -> list[int]:
    """The trades delivered are the server's, contiguous in seq and in id, none twice; returns the seqs."""
    trades = of_type(seen, "trade", symbol)
    seqs = [t["seq"] for t in trades]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "trades out of order, missing or twice"
    ids = trade_ids(seen, symbol)
    assert ids == list(range(ids[0], ids[0] + len(ids)))
    published = [m for m in server.app[SERVICE].market.recent[f"trades:{symbol}"] if seqs[0] <= m["seq"] <= seqs[-1]]
    assert [(m["seq"], m["data"]["id"]) for m in published] == [(t["seq"], t["data"]["id"]) for t in trades]
    return seqs


@pytest.mark.timeout(30)
async def test_resumes_after_the_server_drops_the_connection(
    make_bixweb_server: ServerFactory, make_client: ClientFactory
) -> None:
    server = await make_bixweb_server(tick_rate=40.0)
    seen: list[Message] = []
    client = make_client(
        ws_url(server),
        symbols="BTCUSDT,ETHUSDT",
        channels="ticker,trades,book",
        reconnect_initial=0.3,
        reconnect_max=0.3,
        rng=random.Random(0),  # waits 0.25 s, then 0.23 s
        on_message=[seen.append],
    )
    market = server.app[SERVICE].market
    await eventually(lambda: all(market.states[s].trades for s in ("BTCUSDT", "ETHUSDT")))
    await client.connect()
    for drop in (1, 2):
        await asyncio.sleep(1.0)
        [conn] = [c for c in bot_connections(server) if not c.closing]
        conn.close_soon(1011, "test")
        await eventually(lambda: client.resumes == drop)  # noqa: B023 - awaited at once
        assert client.recovered is True and client.close_code == 1011
    await asyncio.sleep(1.0)

    [conn] = [c for c in bot_connections(server) if not c.closing]
    assert conn.request.query["channels"] == "none"  # resumed: no initial subscription
    assert client.connections == 3 and client.is_connected()
    initial = of_type(seen, "initial_data")
    assert len(initial) == 1  # only the first connection's snapshot
    acks = of_type(seen, "ack")  # one request per group: both symbols share all three channels
    assert [(a["symbols"], a["channels"], a["recovered"]) for a in acks] == [
        (["BTCUSDT", "ETHUSDT"], ["book", "ticker", "trades"], True)
    ] * 2
    replayed = 0
    for ack in acks:  # what was missed while disconnected comes first, older than the ack
        for m in itertools.takewhile(lambda m: m["ts"] < ack["ts"], seen[seen.index(ack) + 1 :]):  # noqa: B023
            replayed += m["type"] == "trade"
    assert replayed > 0
    for symbol in ("BTCUSDT", "ETHUSDT"):
        seqs = assert_every_trade_once(seen, server, symbol)
        assert seqs[0] == initial[0]["seq"][f"trades:{symbol}"] + 1  # from the snapshot on, nothing lost
        assert len(seqs) > 60
        assert initial[0]["trades"][symbol][-1]["id"] + 1 == of_type(seen, "trade", symbol)[0]["data"]["id"]
    tickers = of_type(seen, "market_update", "BTCUSDT")
    assert [t["seq"] for t in tickers] == sorted({t["seq"] for t in tickers})  # increasing, none twice
    assert client.gaps == 0 and client.checksum_failures == 0
    assert client.get_book("ETHUSDT") == of_type(seen, "book", "ETHUSDT")[-1]["data"]


@pytest.mark.timeout(20)
@pytest.mark.parametrize("replay_depth", [1_000, 1])
async def test_a_missed_trade_is_a_gap_that_a_resync_fills(
    make_bixweb_server: ServerFactory,
    make_client: ClientFactory,
    monkeypatch: pytest.MonkeyPatch,
    replay_depth: int,
) -> None:
    server = await make_bixweb_server(tick_rate=40.0, replay_depth=replay_depth)
    seen: list[Message] = []
    client = make_client(ws_url(server), symbols="BTCUSDT", channels="trades", on_message=[seen.append])
    count = itertools.count(1)
    lost: list[Message] = []

    def lose_the_fifth_trade(message: Message) -> Message | None:
        if message["type"] == "trade" and next(count) == 5:
            lost.append(message)
            return None
        return message

    tap_frames(monkeypatch, client, lose_the_fifth_trade)
    await client.connect()
    await eventually(lambda: bool(lost) and (client.view.seq("trades:BTCUSDT") or 0) > lost[0]["seq"] + 20)
    [gone] = lost
    assert client.gaps == 1 and client.resyncs == 1 and client.connections == 1
    ack = of_type(seen, "ack")[0]
    assert (ack["symbols"], ack["channels"]) == (["BTCUSDT"], ["trades"])
    if replay_depth > 1:  # the server still had it: replayed, in order
        assert ack["recovered"] is True and gone in seen
        assert client.duplicates >= 1  # the replay repeats the trade that revealed the gap
    else:  # too old for the server: a snapshot stands in for the replay
        assert ack["recovered"] is False and gone not in seen
        [_, fresh] = of_type(seen, "initial_data")
        assert fresh["recovered"] is False
        assert gone["data"] in fresh["trades"]["BTCUSDT"]
    ids = trade_ids(seen, "BTCUSDT")
    assert ids == list(range(ids[0], ids[0] + len(ids)))  # no id missing, none twice
    assert gone["data"]["id"] in ids
    if replay_depth > 1:
        assert_every_trade_once(seen, server, "BTCUSDT")


@pytest.mark.timeout(20)
async def test_a_resync_that_fails_falls_back_to_reconnecting_and_resuming(
    make_bixweb_server: ServerFactory, make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await make_bixweb_server(tick_rate=40.0)
    seen: list[Message] = []
    client = make_client(
        ws_url(server), symbols="BTCUSDT", channels="trades", reconnect_initial=0.1, on_message=[seen.append]
    )
    count = itertools.count(1)

    def lose_a_trade_and_the_resync(message: Message) -> Message | None:
        if message["type"] == "trade" and next(count) == 5:
            client.request_timeout = 1e-6  # the resync this gap causes cannot be answered in time
            return None
        if message["type"] == "welcome":
            client.request_timeout = 10.0  # the resume after the reconnect can
        return message

    tap_frames(monkeypatch, client, lose_a_trade_and_the_resync)
    await client.connect()
    await eventually(lambda: client.resumes == 1)
    await eventually(lambda: len(of_type(seen, "trade")) > 30)
    assert client.gaps == 1 and client.resyncs == 1 and client.connections == 2
    assert client.recovered is True and client.close_code == 1000  # the client closed it
    assert_every_trade_once(seen, server, "BTCUSDT")


@pytest.mark.timeout(20)
@pytest.mark.parametrize("where", ["book", "initial_data"])
async def test_a_book_failing_its_checksum_is_dropped_and_fetched_again(
    make_bixweb_server: ServerFactory, make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    server = await make_bixweb_server(tick_rate=40.0)
    seen: list[Message] = []
    client = make_client(ws_url(server), symbols="BTCUSDT", channels="book", on_message=[seen.append])
    count = itertools.count(1)
    tampered: list[int] = []

    def tamper_one_book(message: Message) -> Message | None:
        if tampered:
            return message
        if where == "book" and message["type"] == "book" and next(count) == 3:
            message["data"]["bids"][0][1] += 1.0
            tampered.append(message["seq"])
        elif where == "initial_data" and message["type"] == "initial_data":
            message["books"]["BTCUSDT"]["asks"][0][1] += 1.0
            tampered.append(message["seq"]["book:BTCUSDT"])
        return message

    tap_frames(monkeypatch, client, tamper_one_book)
    await eventually(lambda: server.app[SERVICE].market.states["BTCUSDT"].book is not None)  # one to tamper with
    await client.connect()
    await eventually(lambda: bool(tampered) and (client.view.seq("book:BTCUSDT") or 0) >= tampered[0])
    await asyncio.sleep(0.2)
    assert client.checksum_failures == 1 and client.resyncs == 1 and client.connections == 1
    [ack] = of_type(seen, "ack")  # subscribe with since below the bad seq: the server replays its latest book
    assert (ack["symbols"], ack["channels"], ack["recovered"]) == (["BTCUSDT"], ["book"], True)
    books = of_type(seen, "book")
    assert all(book_verified(b["data"]) for b in books)  # the bad one never reached the callbacks
    assert [b for b in books if b["seq"] >= tampered[0]]  # a good one came after it
    [initial] = of_type(seen, "initial_data")
    if where == "initial_data":
        assert "books" not in initial  # left out rather than delivered unverified
    else:
        assert book_verified(initial["books"]["BTCUSDT"])
    fresh = client.get_book("BTCUSDT")
    assert fresh is not None and book_verified(fresh) and fresh == books[-1]["data"]
    assert client.gaps == 0


@pytest.mark.timeout(20)
async def test_connect_after_disconnect_starts_over_instead_of_resuming(
    bixweb_server: TestServer, make_client: ClientFactory
) -> None:
    seen: list[Message] = []
    client = make_client(ws_url(bixweb_server), symbols="BTCUSDT", channels="trades", on_message=[seen.append])
    await client.connect()
    await eventually(lambda: len(of_type(seen, "trade")) >= 3)
    await client.disconnect()
    mark = len(seen)
    await client.connect()
    await eventually(lambda: len(of_type(seen[mark:], "trade")) >= 3)
    after = seen[mark:]
    assert [m["type"] for m in after[:2]] == ["welcome", "initial_data"]
    assert after[0]["subscriptions"] == {"trades": ["BTCUSDT"]} and "recovered" not in after[1]
    assert client.recovered is None and client.resumes == 0 and not of_type(after, "ack")
    assert of_type(after, "trade")[0]["seq"] == after[1]["seq"]["trades:BTCUSDT"] + 1
    assert client.gaps == 0 and client.connections == 2


# -- against a real server process --------------------------------------------


@pytest.mark.timeout(45)
async def test_resumes_after_a_server_restart_from_fresh_snapshots(
    server_process: Start, make_client: ClientFactory
) -> None:
    args = ("--port", str(free_port()), "--tick-rate", "20")
    first = server_process(*args)
    seen: list[Message] = []
    client = make_client(
        first.url,
        symbols="BTCUSDT,SOLUSDT",
        channels="ticker",
        reconnect_initial=0.2,
        reconnect_max=1.0,
        on_message=[seen.append],
    )
    await client.connect()
    await client.subscribe(["ETHUSDT"], ["trades"])
    await client.unsubscribe(["SOLUSDT"], ["ticker"])
    await eventually(lambda: bool(of_type(seen, "trade", "ETHUSDT")))
    wanted = {"ticker": ["BTCUSDT"], "trades": ["ETHUSDT"]}
    assert client.subscriptions == wanted and client.recovered is None
    old_epoch = client.epoch
    assert old_epoch is not None and {epoch for epoch, _ in client.view.positions().values()} == {old_epoch}

    assert await asyncio.to_thread(first.stop) == 0  # SIGTERM: a graceful restart
    await eventually(lambda: not client.is_connected())
    assert client.close_code == 1012  # service restart
    down_ms = now_ms()
    mark = len(seen)
    await asyncio.to_thread(server_process, *args)  # the same port again, a new epoch

    await eventually(lambda: client.resumes == 1, timeout=10)
    assert client.recovered is False  # the new server cannot know what the old one sent
    await eventually(lambda: bool(of_type(seen[mark:], "trade", "ETHUSDT")), timeout=10)
    await eventually(lambda: client.get_latest_data()["BTCUSDT"]["time"] > down_ms, timeout=10)
    assert client.get_latest_price("BTCUSDT") == client.get_latest_data()["BTCUSDT"]["price"]
    after = seen[mark:]
    assert client.connections == 2 and client.epoch != old_epoch
    welcome = after[0]
    assert welcome["type"] == "welcome" and welcome["subscriptions"] == {}  # ?channels=none
    assert welcome["epoch"] == client.epoch
    acks = of_type(after, "ack")  # one subscribe with since per group, each refused a replay
    assert [(a["op"], a["symbols"], a["channels"], a["recovered"]) for a in acks] == [
        ("subscribe", ["BTCUSDT"], ["ticker"], False),
        ("subscribe", ["ETHUSDT"], ["trades"], False),
    ]
    assert acks[-1]["subscriptions"] == wanted == client.subscriptions
    snapshots = of_type(after, "initial_data")
    assert [(s["recovered"], s["epoch"], list(s["seq"])) for s in snapshots] == [
        (False, client.epoch, ["ticker:BTCUSDT"]),
        (False, client.epoch, ["trades:ETHUSDT"]),
    ]
    # the view started over in the new epoch
    assert {epoch for epoch, _ in client.view.positions().values()} == {client.epoch}
    assert set(client.view.positions()) == {"ticker:BTCUSDT", "trades:ETHUSDT"}
    assert not of_type(after, "market_update", "SOLUSDT")
    assert client.gaps == 0 and client.duplicates == 0


@pytest.mark.timeout(30)
def test_background_thread_for_synchronous_programs(server_process: Start) -> None:
    server = server_process("--tick-rate", "20")
    client = WebSocketClient(server.url, symbols=["BTCUSDT", "ETHUSDT"], reconnect_initial=0.2)
    thread = client.start_background()
    try:
        assert thread.daemon and thread.is_alive()
        deadline = time.monotonic() + 5
        while client.get_latest_price("BTCUSDT") is None:
            assert time.monotonic() < deadline, "no price within 5 s"
            time.sleep(0.02)
        assert client.is_connected()
        assert set(client.get_latest_data()) == {"BTCUSDT", "ETHUSDT"}
    finally:
        client.stop()
    assert not thread.is_alive()
    assert not client.is_connected() and client.close_code == 1000
