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

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from bixweb.client import (
    MarketView,
    WebSocketClient,
    backoff_delays,
    error_from_message,
    message_stream,
    subscription_requests,
    unwrap,
)
from bixweb.errors import ProtocolError
from bixweb.feeds.simulated import DEFAULT_SYMBOLS
from tests.client_fixtures import (
    ClientFactory,
    bixweb_server_fixture,  # noqa: F401 - fixture "bixweb_server"
    eventually,
    make_client_fixture,  # noqa: F401 - fixture "make_client"
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


def test_market_view_tracks_seq_and_counts_gaps() -> None:
    view = MarketView()
    view.apply({"type": "initial_data", "seq": {"ticker:BTCUSDT": 10}, "tickers": {"BTCUSDT": {"price": 1.0}}})
    view.apply({"type": "market_update", "symbol": "BTCUSDT", "seq": 11, "data": {"price": 2.0}})
    view.apply({"type": "market_update", "symbol": "BTCUSDT", "seq": 11, "data": {"price": 9.0}})  # old
    assert view.gaps == 0 and view.ticker("BTCUSDT") == {"price": 2.0}
    view.apply({"type": "market_update", "symbol": "BTCUSDT", "seq": 14, "data": {"price": 3.0}})
    assert view.gaps == 1 and view.seq("ticker:BTCUSDT") == 14
    view.new_connection()  # counters restart with the server
    view.apply({"type": "initial_data", "seq": {"ticker:BTCUSDT": 1}})
    view.apply({"type": "market_update", "symbol": "BTCUSDT", "seq": 2, "data": {"price": 4.0}})
    assert view.gaps == 1 and view.tickers() == {"BTCUSDT": {"price": 4.0}}


def test_error_from_message() -> None:
    error = error_from_message(
        {"type": "error", "ts": 1, "code": "unknown_symbol", "message": "no", "id": 3, "path": "$.symbols[0]"}
    )
    assert (error.code, error.request_id, error.path) == ("unknown_symbol", 3, "$.symbols[0]")
    assert error_from_message({"type": "error", "code": "brand_new", "message": "?"}).code == "internal_error"


def test_url_carries_the_initial_subscription() -> None:
    client = WebSocketClient(host="localhost", port=9000, symbols=["BTCUSDT", "ETHUSDT"], channels="ticker,trades")
    assert client.url == "ws://localhost:9000/ws?symbols=BTCUSDT,ETHUSDT&channels=ticker,trades"
    assert WebSocketClient().url == "ws://127.0.0.1:8080/ws"


def test_client_module_does_not_import_aiohttp_web() -> None:
    code = "import sys, bixweb.client; print('aiohttp.web' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30, check=True)
    assert out.stdout.strip() == "False"


# -- against the real app, in-process -----------------------------------------


@pytest.mark.timeout(20)
async def test_receives_welcome_initial_data_and_updates(
    bixweb_server: TestServer, make_client: ClientFactory
) -> None:
    seen: list[Message] = []
    client = make_client(ws_url(bixweb_server), callbacks=[seen.append])
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
    client = make_client(ws_url(bixweb_server), callbacks=[seen.append])
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
    client = make_client(ws_url(bixweb_server), queue_size=5, callbacks=[seen.append])
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

    client = make_client(ws_url(bixweb_server), callbacks=[explode, sync_seen.append])
    client.callbacks.append(record)
    with caplog.at_level(logging.ERROR, logger="bixweb.client"):
        await client.connect()
        await eventually(lambda: len(async_seen) >= 30)
    assert sync_seen[: len(async_seen)] == async_seen
    assert async_seen[0]["type"] == "welcome"
    assert "callback" in caplog.text and "boom" in caplog.text
    assert client.is_connected()


@pytest.mark.timeout(20)
async def test_a_refused_upgrade_is_not_retried(bixweb_server: TestServer, make_client: ClientFactory) -> None:
    client = make_client(ws_url(bixweb_server), symbols=["FOOUSDT"], reconnect_initial=0.05)
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.connect()
    assert refused.value.status == 400
    async with asyncio.timeout(5):  # the run loop gives up at once instead of retrying a 4xx
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await client.receive_messages()
    assert client.connections == 0 and not client.is_connected()


# -- against a real server process --------------------------------------------


@pytest.mark.timeout(45)
async def test_reconnects_and_resubscribes_after_a_server_restart(
    server_process: Start, make_client: ClientFactory
) -> None:
    args = ("--port", str(free_port()), "--tick-rate", "20")
    first = server_process(*args)
    seen: list[Message] = []
    client = make_client(
        first.url, symbols="BTCUSDT,SOLUSDT", channels="ticker",
        reconnect_initial=0.2, reconnect_max=1.0, callbacks=[seen.append],
    )
    await client.connect()
    await client.subscribe(["ETHUSDT"], ["trades"])
    await client.unsubscribe(["SOLUSDT"], ["ticker"])
    await eventually(lambda: bool(of_type(seen, "trade", "ETHUSDT")))
    wanted = {"ticker": ["BTCUSDT"], "trades": ["ETHUSDT"]}
    assert client.subscriptions == wanted

    assert await asyncio.to_thread(first.stop) == 0  # SIGTERM: a graceful restart
    await eventually(lambda: not client.is_connected())
    assert client.close_code == 1012  # service restart
    down_ms = now_ms()
    mark = len(seen)
    await asyncio.to_thread(server_process, *args)  # the same port again

    await eventually(client.is_connected, timeout=10)
    await eventually(lambda: bool(of_type(seen[mark:], "trade", "ETHUSDT")), timeout=10)
    await eventually(lambda: client.get_latest_data()["BTCUSDT"]["time"] > down_ms, timeout=10)
    assert client.get_latest_price("BTCUSDT") == client.get_latest_data()["BTCUSDT"]["price"]
    after = seen[mark:]
    assert client.connections == 2
    assert [m["type"] for m in after[:2]] == ["welcome", "initial_data"]
    acks = of_type(after, "ack")
    assert [a["op"] for a in acks] == ["unsubscribe", "subscribe"]
    assert acks[-1]["subscriptions"] == wanted == client.subscriptions
    # nothing of the dropped SOLUSDT ticker once the unsubscribe took effect again
    assert not of_type(after[after.index(acks[0]) :], "market_update", "SOLUSDT")
    assert client.gaps == 0


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
